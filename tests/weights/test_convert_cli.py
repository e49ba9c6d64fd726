"""python -m ssd_tf.weights.convert: .pth -> .weights.h5 that build_model(weights=...) loads."""
import numpy as np
import pytest

import ssd_tf
from ssd_tf.weights import convert
from ssd_tf.weights.mlperf import mlperf_ssd_r34_mapping

pytestmark = pytest.mark.torch


def test_convert_mlperf_state_dict_roundtrip(tmp_path, capsys):
    torch = pytest.importorskip("torch")  # torch alone imports fine after TF (torchvision does not)
    model = ssd_tf.build_model("ssd_resnet34", num_classes=4)
    rng = np.random.default_rng(0)
    state = {}
    for layer_name, entries in mlperf_ssd_r34_mapping(4).items():
        for (key, _), w in zip(entries, model.get_layer(layer_name).weights):
            shape = tuple(w.shape)
            shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape
            state[key] = torch.from_numpy(rng.normal(size=shape).astype("float32"))
    pth, out = tmp_path / "ref.pth", tmp_path / "out" / "ssd_r34.weights.h5"
    torch.save(state, pth)
    code = convert.main(["--source", "mlperf_ssd_r34", "--input", str(pth), "--output", str(out), "--num_classes", "4"])
    assert code == 0 and out.is_file()
    assert '"model": "ssd_resnet34"' in capsys.readouterr().out
    loaded = ssd_tf.build_model("ssd_resnet34", num_classes=4, weights=str(out))
    np.testing.assert_array_equal(
        loaded.get_layer("extra2_conv3x3").kernel.numpy(),
        state["additional_blocks.2.2.weight"].numpy().transpose(2, 3, 1, 0),
    )

    # Wrong model family and a wrong class count are reported, not silently converted.
    assert convert.main(["--source", "mlperf_ssd_r34", "--input", str(pth), "--output", str(out),
                         "--model", "ssd_vgg16"]) == 2
    assert "fits models ('ssd_resnet34',)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="conf_0"):
        convert.convert("mlperf_ssd_r34", pth, out, num_classes=81)
