"""Synthetic shapes dataset: determinism, tight boxes (against the drawn pixels), COCO validity."""
import filecmp
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from data_tools import make_shapes_dataset as shapes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZE = 128


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("shapes") / "a")
    return shapes.make_shapes_dataset(root, num_train=12, num_val=5, image_size=SIZE, seed=3)


def _all_files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_layout_and_coco_json(dataset):
    assert set(dataset) == {"root", "train_images", "val_images", "train_json", "val_json", "labels"}
    for split, n in (("train", 12), ("val", 5)):
        coco = json.load(open(dataset[f"{split}_json"]))
        assert [c["id"] for c in coco["categories"]] == [1, 2, 3, 4]
        assert [c["name"] for c in coco["categories"]] == list(shapes.CLASSES)
        assert len(coco["images"]) == n and len(os.listdir(dataset[f"{split}_images"])) == n
        per_image = {}
        for a in coco["annotations"]:
            per_image[a["image_id"]] = per_image.get(a["image_id"], 0) + 1
            x, y, w, h = a["bbox"]
            assert 0 <= x and 0 <= y and x + w <= SIZE and y + h <= SIZE
            assert max(w, h) <= shapes.MAX_SIZE_FRACTION * SIZE + 2 and a["iscrowd"] == 0 and 0 < a["area"] <= w * h
        assert set(per_image) == {im["id"] for im in coco["images"]}  # every image has 1..4 objects
        assert 1 <= min(per_image.values()) and max(per_image.values()) <= shapes.MAX_OBJECTS
        for im in coco["images"]:
            with Image.open(os.path.join(dataset[f"{split}_images"], im["file_name"])) as pil:
                assert pil.size == (im["width"], im["height"]) == (SIZE, SIZE) and pil.mode == "RGB"
    assert open(dataset["labels"]).read().split() == list(shapes.CLASSES)


def test_same_seed_byte_identical_other_seed_differs(dataset, tmp_path):
    again = shapes.make_shapes_dataset(str(tmp_path / "b"), num_train=12, num_val=5, image_size=SIZE, seed=3)
    files = _all_files(dataset["root"])
    assert files == _all_files(again["root"]) and len(files) == 12 + 5 + 3
    match, mismatch, errors = filecmp.cmpfiles(dataset["root"], again["root"], files, shallow=False)
    assert mismatch == [] and errors == []
    # val does not depend on num_train
    other = shapes.make_shapes_dataset(str(tmp_path / "c"), num_train=2, num_val=5, image_size=SIZE, seed=3)
    assert filecmp.cmp(dataset["val_json"], other["val_json"], shallow=False)
    diff = shapes.make_shapes_dataset(str(tmp_path / "d"), num_train=2, num_val=0, image_size=SIZE, seed=4)
    assert not filecmp.cmp(os.path.join(diff["train_images"], "000001.jpg"),
                           os.path.join(dataset["train_images"], "000001.jpg"), shallow=False)


def test_boxes_are_the_tight_bounds_of_the_drawn_pixels(dataset):
    """Re-render each image: the JSON box is the bound of the shape's visible pixels, and in the saved JPEG
    the shape's colour reaches every edge of its box and not beyond it."""
    coco = json.load(open(dataset["train_json"]))
    tile = shapes.noise_tile(3, SIZE)
    checked = 0
    for index, image in enumerate(coco["images"]):
        rendered, objs = shapes.render_sample(np.random.default_rng([3, 0, index]), SIZE, tile)
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        assert len(anns) == len(objs)
        jpeg = np.asarray(Image.open(os.path.join(dataset["train_images"], image["file_name"])), np.int16)
        assert np.abs(jpeg - rendered).mean() < 8.0  # the file is this rendering (JPEG q90 on noise: ~2-5)
        for a, o in zip(anns, objs):
            mask = o["visible_mask"]
            ys, xs = np.nonzero(mask)
            assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert a["area"] == mask.sum() and a["category_id"] == shapes.CLASSES.index(o["name"]) + 1
            # pixels of the JPEG close to the shape's colour, near the shape: their bounds = the box (±1 px JPEG)
            near = np.zeros_like(mask)
            y0, x0 = max(ys.min() - 3, 0), max(xs.min() - 3, 0)
            near[y0:ys.max() + 4, x0:xs.max() + 4] = True
            close = (np.abs(jpeg - o["colour"]).max(-1) < 24) & near & (np.abs(rendered.astype(np.int16) - o["colour"]).max(-1) < 24)
            cy, cx = np.nonzero(close)
            assert abs(cx.min() - xs.min()) <= 1 and abs(cx.max() - xs.max()) <= 1
            assert abs(cy.min() - ys.min()) <= 1 and abs(cy.max() - ys.max()) <= 1
            checked += 1
    assert checked >= 12


def test_shape_kinds_have_expected_geometry():
    """A square fills its box, a circle ~pi/4 of it, a triangle ~1/2, a cross 5/9 (unoccluded shapes)."""
    fill = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5, "cross": 5 / 9}
    seen = set()
    for i in range(40):
        _, objs = shapes.render_sample(np.random.default_rng([11, i]), 200)
        if len(objs) != 1:
            continue
        (o,) = objs
        x0, y0, x1, y1 = o["bbox"]
        ratio = o["area"] / ((x1 - x0 + 1) * (y1 - y0 + 1))
        assert abs(ratio - fill[o["name"]]) < 0.08, (o["name"], ratio)
        seen.add(o["name"])
    assert len(seen) >= 3


def test_argument_validation(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        shapes.make_shapes_dataset(str(tmp_path), 1, 1, image_size=8)
    with pytest.raises(ValueError, match="num_train"):
        shapes.make_shapes_dataset(str(tmp_path), -1, 1)


@pytest.mark.parametrize("how", ["module", "console"])
def test_cli_entry_points(tmp_path, how, console_script):
    cmd, env = [sys.executable, "-m", "data_tools.make_shapes_dataset"], dict(os.environ, PYTHONPATH=REPO)
    if how == "console":  # setup.py's entry point, run as pip's stub runs it
        cmd, env = console_script("make_shapes_dataset")
    proc = subprocess.run(cmd + [f"--output_dir={tmp_path}", "--num_train=1", "--num_val=1", "--image_size=64"],
                          capture_output=True, text=True, timeout=120, cwd=str(tmp_path), env=env)
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["annotations", "labels.txt", "train", "val"]


def test_cli_and_coco_converter_roundtrip(tmp_path):
    out = tmp_path / "s"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "data_tools", "make_shapes_dataset.py"),
                           f"--output_dir={out}", "--num_train=3", "--num_val=2", "--image_size=96", "--seed=1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["val_json"] == str(out / "annotations" / "instances_val.json")
    from data_tools.create_coco_tfrecord import convert_coco

    coco = json.load(open(out / "annotations" / "instances_train.json"))
    meta = convert_coco(image_dir=str(out / "train"), object_annotations_file=str(out / "annotations" / "instances_train.json"),
                        output_file_prefix=str(tmp_path / "rec" / "train"), num_shards=1, num_processes=1, progress=False)
    assert (meta["num_images"], meta["num_objects"], meta["skipped"]) == (3, len(coco["annotations"]), [])
