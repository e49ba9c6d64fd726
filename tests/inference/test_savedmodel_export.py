"""--mode=export: the SavedModel runs in a Python that never imports this package, and gives --mode=predict's
detections on real COCO pictures (one of them grayscale)."""
import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from infer_helpers import ssd_main
from ssd_tf import config as config_lib
from ssd_tf.inference import predict

TOLERANCE = 1e-4
# Real pictures of coco_tiny: 000000566282 is a grayscale photograph stored as RGB; a one-channel JPEG copy of
# another one is made in the test's tmp dir.
COCO_IMAGES = ("000000566282.jpg", "000000005001.jpg", "000000010764.jpg")

# Runs in a fresh interpreter: imports of ssd_tf are made impossible before TensorFlow loads the SavedModel.
_LOADER = textwrap.dedent("""
    import json, sys

    class NoPackage:
        def find_spec(self, name, path=None, target=None):
            if name == "ssd_tf" or name.startswith("ssd_tf."):
                raise ImportError("the SavedModel tried to import " + name)
            return None

    sys.meta_path.insert(0, NoPackage())
    import numpy as np
    import tensorflow as tf

    export_dir, files = sys.argv[1], sys.argv[2:]
    model = tf.saved_model.load(export_dir)
    encoded = [open(f, "rb").read() for f in files]
    out = {"one_by_one": [], "uint8": []}
    for data in encoded:
        dets = model.signatures["serving_default"](images=tf.constant([data]))
        out["one_by_one"].append({k: v.numpy()[0].tolist() for k, v in dets.items()})
        pixels = tf.io.decode_image(data, channels=3, expand_animations=False)[None]
        dets = model.signatures["serving_uint8"](images=pixels)
        out["uint8"].append({k: v.numpy()[0].tolist() for k, v in dets.items()})
    batch = model.signatures["serving_default"](images=tf.constant(encoded))
    out["batch"] = {k: v.numpy().tolist() for k, v in batch.items()}
    out["signatures"] = sorted(model.signatures)
    out["outputs"] = {k: [str(v.dtype.name), v.shape.as_list()]
                      for k, v in model.signatures["serving_default"].structured_outputs.items()}
    with open(f"{export_dir}/assets/label_map.json") as f:
        out["label_map"] = json.load(f)
    out["ssd_tf_imported"] = any(m == "ssd_tf" or m.startswith("ssd_tf.") for m in sys.modules)
    print(json.dumps(out))
""")


def _load_without_package(export_dir, files, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    r = subprocess.run([sys.executable, "-c", _LOADER, str(export_dir), *map(str, files)], capture_output=True,
                       text=True, timeout=300, cwd=cwd, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _normalised(detections, height, width):
    """predict's COCO xywh pixels -> [ymin, xmin, ymax, xmax] normalised to the picture."""
    xywh = np.asarray([d["bbox"] for d in detections], np.float64).reshape(-1, 4)
    yxyx = np.stack([xywh[:, 1], xywh[:, 0], xywh[:, 1] + xywh[:, 3], xywh[:, 0] + xywh[:, 2]], axis=1)
    return yxyx / np.array([height, width, height, width])


@pytest.mark.slow
def test_savedmodel_equals_predict_on_real_pictures_without_the_package(tiny_model, shared_data, tmp_path):
    model_dir, _ = tiny_model
    src = shared_data / "coco_tiny" / "val2017"
    files = [src / name for name in COCO_IMAGES]
    gray = tmp_path / "gray_one_channel.jpg"  # a true one-channel JPEG
    Image.open(src / COCO_IMAGES[1]).convert("L").save(gray, quality=92)
    files.append(gray)
    assert Image.open(gray).mode == "L"

    # --mode=predict in this process (its CLI is tested in test_predict.py), --mode=export through the CLI
    out = tmp_path / "predicted"
    cfg = config_lib.load(str(model_dir))
    cfg.model.postprocess = dataclasses.replace(cfg.model.postprocess, score_threshold=0.2)
    args = predict.check_args(cfg, ",".join(map(str, files)), str(out), None)
    assert predict.predict(cfg, args, log=lambda *_: None, progress=False).num_images == len(files)
    export_dir = tmp_path / "saved_model"
    r = ssd_main("--mode=export", f"--model_dir={model_dir}", f"--export_dir={export_dir}", "--score_threshold=0.2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (export_dir / "saved_model.pb").exists() and (export_dir / "assets" / "label_map.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export-")]  # staging removed

    got = _load_without_package(export_dir, files, cwd=tmp_path)
    assert got["ssd_tf_imported"] is False
    assert got["signatures"] == ["serving_default", "serving_uint8"]
    assert got["outputs"]["detection_boxes"][0] == "float32" and got["outputs"]["detection_classes"][0] == "int64"
    assert got["label_map"] == [{"id": 4, "name": "a"}, {"id": 9, "name": "b"}]

    predicted = json.loads((out / "detections.json").read_text())
    worst = {"boxes": 0.0, "scores": 0.0, "uint8": 0.0, "batch_scores": 0.0}
    total = 0
    for i, path in enumerate(files):
        mine = [d for d in predicted if d["file_name"] == str(path)]
        width, height = Image.open(path).size
        saved = got["one_by_one"][i]
        n = int(saved["num_detections"])
        assert n == len(mine) > 0, (path, n, len(mine))
        total += n
        assert [int(c) for c in saved["detection_classes"][:n]] == [d["category_id"] for d in mine]
        boxes = np.asarray(saved["detection_boxes"][:n])
        worst["boxes"] = max(worst["boxes"], float(np.abs(boxes - _normalised(mine, height, width)).max()))
        worst["scores"] = max(worst["scores"], float(np.abs(
            np.asarray(saved["detection_scores"][:n]) - [d["score"] for d in mine]).max()))
        assert np.all(boxes >= 0) and np.all(boxes <= 1)
        # serving_uint8 on the decoded pixels: the same detections
        raw = got["uint8"][i]
        assert int(raw["num_detections"]) == n
        worst["uint8"] = max(worst["uint8"], float(np.abs(np.asarray(raw["detection_boxes"][:n]) - boxes).max()))
        # a batch of pictures of different sizes: the same detections (sorted scores: ties may reorder)
        b = got["batch"]
        assert int(b["num_detections"][i]) == n
        worst["batch_scores"] = max(worst["batch_scores"], float(np.abs(
            np.sort(np.asarray(b["detection_scores"][i][:n])) - np.sort(saved["detection_scores"][:n])).max()))
    print(f"SavedModel vs --mode=predict on {len(files)} pictures, {total} detections: max |difference| "
          + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
    for key, value in worst.items():
        assert value <= TOLERANCE, (key, value)
