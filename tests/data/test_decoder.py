"""ssd_tf.data.decoder: the output dict, image formats -> RGB, defaults for other tools' records."""
import io

import numpy as np
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow")

from ssd_tf.data import example as ex  # noqa: E402
from ssd_tf.data.decoder import decode_example  # noqa: E402


def _encoded(mode, fmt, w=24, h=16, **save):
    rgb = (np.random.default_rng(1).random((h, w, 3)) * 255).astype(np.uint8)
    rgb[: h // 2] = (200, 30, 60)
    out = io.BytesIO()
    Image.fromarray(rgb).convert(mode).save(out, fmt, **save)
    return out.getvalue()


def _record(encoded, fmt="jpeg", n=2, **kw):
    boxes = dict(xmin=[0.1, 0.5][:n], ymin=[0.2, 0.25][:n], xmax=[0.4, 1.0][:n], ymax=[0.6, 0.75][:n])
    return ex.encode_example(encoded=encoded, image_format=fmt, height=16, width=24, source_id="42",
                             filename="a.jpg", labels=[3, 90][:n], texts=["a", "b"][:n], is_crowd=[0, 1][:n],
                             area=[5.0, 7.5][:n], difficult=[1, 0][:n], truncated=[0, 0][:n], **boxes, **kw)


def test_output_dict_in_graph_mode():
    ds = tf.data.Dataset.from_tensor_slices([_record(_encoded("RGB", "JPEG")), _record(_encoded("RGB", "JPEG"), n=0)])
    ds = ds.map(decode_example)
    spec = ds.element_spec
    assert spec["image"].shape.as_list() == [None, None, 3] and spec["image"].dtype == tf.uint8
    assert spec["boxes"].shape.as_list() == [None, 4] and spec["classes"].dtype == tf.int64
    assert spec["height"].dtype == tf.int32 and spec["source_id"].dtype == tf.string
    d, empty = list(ds)
    np.testing.assert_allclose(d["boxes"].numpy(), np.float32([[0.2, 0.1, 0.6, 0.4], [0.25, 0.5, 0.75, 1.0]]))
    assert d["classes"].numpy().tolist() == [3, 90] and d["is_crowd"].numpy().tolist() == [False, True]
    assert d["difficult"].numpy().tolist() == [True, False] and d["area"].numpy().tolist() == [5.0, 7.5]
    assert (int(d["height"]), int(d["width"])) == (16, 24) and d["source_id"].numpy() == b"42"
    assert d["filename"].numpy() == b"a.jpg"
    assert empty["boxes"].shape == (0, 4) and empty["classes"].shape == (0,) and empty["area"].shape == (0,)


@pytest.mark.parametrize("mode,fmt,tol", [("L", "JPEG", 2.0), ("CMYK", "JPEG", 2.0), ("RGB", "PNG", 0.0),
                                          ("RGBA", "PNG", 0.0), ("P", "PNG", 0.0), ("LA", "PNG", 0.0),
                                          ("RGB", "BMP", 0.0), ("P", "GIF", 0.0)])
def test_every_image_kind_becomes_rgb(mode, fmt, tol):
    data = _encoded(mode, fmt)
    d = decode_example(tf.constant(_record(data, fmt=fmt.lower())))
    want = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    assert d["image"].shape == (16, 24, 3) and d["image"].dtype == tf.uint8
    assert np.abs(d["image"].numpy().astype(int) - want).mean() <= tol


def test_missing_optional_keys_get_defaults():
    feats = ex.example_features(encoded=_encoded("RGB", "JPEG"), image_format="jpeg", height=16, width=24,
                                source_id="", filename="", xmin=[0.0], ymin=[0.0], xmax=[0.5], ymax=[0.25],
                                labels=[1], texts=["a"], is_crowd=[0], area=[1.0], difficult=[0], truncated=[0])
    keep = {ex.IMAGE_ENCODED, ex.BBOX_XMIN, ex.BBOX_YMIN, ex.BBOX_XMAX, ex.BBOX_YMAX}
    d = decode_example(tf.constant(ex.encode_features({k: v for k, v in feats.items() if k in keep})))
    assert (int(d["height"]), int(d["width"])) == (16, 24)  # from the image
    assert d["classes"].numpy().tolist() == [-1] and d["is_crowd"].numpy().tolist() == [False]
    assert d["difficult"].numpy().tolist() == [False]
    np.testing.assert_allclose(d["area"].numpy(), [0.5 * 24 * 0.25 * 16])  # box area in pixels
    assert d["source_id"].numpy() == b""


def test_reads_cvat_tfrecord_export(shared_data):
    """Written by another tool (CVAT's TF OD API export, no image bytes): decodes with defaults."""
    path = shared_data / "voc2012_sample" / "data" / "database" / "gts" / "tfrecord_format" / "default.tfrecord"
    raw = list(tf.data.TFRecordDataset(str(path)))
    decoded = list(tf.data.TFRecordDataset(str(path)).map(decode_example))
    assert len(decoded) == 100 and sum(int(d["boxes"].shape[0]) for d in decoded) == 273
    for r, d in zip(raw, decoded):
        f = tf.train.Example.FromString(r.numpy()).features.feature
        want = np.stack([f[f"image/object/bbox/{k}"].float_list.value for k in ("ymin", "xmin", "ymax", "xmax")], -1)
        np.testing.assert_array_equal(d["boxes"].numpy(), np.float32(want))
        assert d["classes"].numpy().tolist() == list(f["image/object/class/label"].int64_list.value)
        assert d["image"].shape == (f["image/height"].int64_list.value[0], f["image/width"].int64_list.value[0], 3)
        assert not d["is_crowd"].numpy().any() and not d["difficult"].numpy().any()
        assert d["filename"].numpy() == f["image/filename"].bytes_list.value[0]
