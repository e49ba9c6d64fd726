"""Helpers shared by the PyTorch parity tests (no torch import here: the reference side runs in a subprocess,
see torch_reference.py)."""
import importlib.util
import pathlib
import subprocess
import sys

import numpy as np

HELPER = pathlib.Path(__file__).with_name("torch_reference.py")
XY_TO_YX = [1, 0, 3, 2]  # (dx,dy,dw,dh) -> (dy,dx,dh,dw)


def torch_available():
    return importlib.util.find_spec("torch") is not None and importlib.util.find_spec("torchvision") is not None


def run_reference(kind, outdir):
    """Run torch_reference.py in a subprocess and load its reference.npz."""
    proc = subprocess.run([sys.executable, str(HELPER), kind, str(outdir)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{HELPER.name} {kind} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return dict(np.load(pathlib.Path(outdir) / "reference.npz"))


def match_detections(ours, ref, image, image_size=300.0):
    """Max |score diff| and |box diff| (pixels) after pairing each of our detections with the unused
    same-label reference detection of (almost) the same score; near-ties may come out in either order."""
    n = int(ours["num_detections"][image])
    count = int(ref["det_count"][image])
    assert n == count > 0, (n, count)
    ref_boxes, ref_scores = ref["det_boxes"][image, :count], ref["det_scores"][image, :count]
    ref_labels = ref["det_labels"][image, :count]
    our_boxes = np.asarray(ours["boxes"][image, :n])[:, XY_TO_YX] * image_size  # yxyx normalised -> xyxy px
    our_scores, our_labels = np.asarray(ours["scores"][image, :n]), np.asarray(ours["classes"][image, :n])
    free = np.ones(count, bool)
    worst_score = worst_box = 0.0
    for box, score, label in zip(our_boxes, our_scores, our_labels):
        candidates = np.where(free & (ref_labels == label) & (np.abs(ref_scores - score) <= 1e-4))[0]
        assert candidates.size, f"image {image}: no reference detection for label {label} score {score}"
        box_diff = np.abs(ref_boxes[candidates] - box).max(axis=1)
        best = candidates[np.argmin(box_diff)]
        free[best] = False
        worst_score = max(worst_score, float(abs(ref_scores[best] - score)))
        worst_box = max(worst_box, float(box_diff.min()))
    return worst_score, worst_box
