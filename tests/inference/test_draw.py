"""Annotated pictures: colours per class, readable labels on small and large pictures, thresholds."""
import numpy as np
import pytest

from ssd_tf.inference.draw import PALETTE, class_color, draw_detections, font_size, side_by_side

LABELS = {4: "a", 9: "bb", 17: "person"}


def _has_color(picture, color, tol=8):
    pixels = np.asarray(picture).reshape(-1, 3).astype(int)
    return bool(np.any(np.all(np.abs(pixels - np.array(color)) <= tol, axis=1)))


def test_colour_per_class_by_label_map_position():
    assert class_color(4, LABELS) == PALETTE[0] and class_color(9, LABELS) == PALETTE[1]
    assert class_color(17, LABELS) == PALETTE[2]
    assert class_color(99, LABELS) == PALETTE[99 % len(PALETTE)]  # unknown id: by the id, still stable


def test_boxes_and_tags_drawn_in_the_class_colour():
    image = np.zeros((200, 300, 3), np.uint8)
    picture = draw_detections(image, [[20, 30, 120, 150], [60, 100, 190, 290]], [4, 9], [0.9, 0.8], LABELS,
                              min_side=0)
    assert picture.size == (300, 200)  # not enlarged: min_side=0
    assert _has_color(picture, class_color(4, LABELS)) and _has_color(picture, class_color(9, LABELS))
    # the box outline of class 4 sits on its left edge
    assert tuple(np.asarray(picture)[80, 30]) == class_color(4, LABELS)


def test_score_threshold_leaves_boxes_out():
    image = np.zeros((200, 300, 3), np.uint8)
    picture = draw_detections(image, [[20, 30, 120, 150], [60, 100, 190, 290]], [4, 9], [0.9, 0.2], LABELS,
                              score_threshold=0.3, min_side=0)
    assert _has_color(picture, class_color(4, LABELS)) and not _has_color(picture, class_color(9, LABELS))


def test_small_picture_is_enlarged_with_its_boxes():
    image = np.zeros((50, 60, 3), np.uint8)
    picture = draw_detections(image, [[10, 12, 40, 48]], [17], [0.75], LABELS, min_side=320)
    assert min(picture.size) == 320 and picture.size == (384, 320)  # aspect ratio kept
    # the box's left edge moved with the picture (x 12 -> 76.8)
    column = np.asarray(picture)[120:200, 70:84]
    assert np.any(np.all(column == np.array(class_color(17, LABELS)), axis=-1))
    # the tag with "person 0.75" is readable: at least ~13 px of text height
    tag = np.all(np.asarray(picture) == np.array(class_color(17, LABELS)), axis=-1)
    rows = np.flatnonzero(tag[:, 90:150].any(axis=1))
    assert rows.size and rows.max() - rows.min() >= 13


@pytest.mark.parametrize("shape", [(3000, 4000, 3), (480, 640, 3), (64, 64, 3)])
def test_label_size_follows_the_picture(shape):
    h, w = shape[:2]
    picture = draw_detections(np.full(shape, 255, np.uint8), [[0.3 * h, 0.1 * w, 0.9 * h, 0.9 * w]], [4], [0.5],
                              LABELS)
    top = round(0.3 * h * picture.height / h)  # the box's top edge in the (possibly enlarged) picture
    tag = np.all(np.asarray(picture)[:top] == np.array(class_color(4, LABELS)), axis=-1)
    rows = np.flatnonzero(tag.sum(axis=1) > 3)  # the filled tag above the box
    assert rows.size, "no label tag above the box"
    size = font_size(*picture.size)
    assert size >= 13 and size >= max(picture.size) / 41
    assert rows.max() - rows.min() + 1 >= 0.7 * size  # the tag is as tall as the text


def test_grayscale_and_float_inputs_and_no_boxes():
    gray = np.full((40, 40), 128, np.uint8)
    assert draw_detections(gray, np.zeros((0, 4)), [], [], LABELS).mode == "RGB"
    floats = np.full((40, 40, 3), 300.0)
    assert np.asarray(draw_detections(floats, [[1, 1, 30, 30]], [9], None, LABELS)).max() == 255


def test_side_by_side_keeps_both_pictures():
    left = draw_detections(np.zeros((60, 80, 3), np.uint8), [], [], None, LABELS, min_side=0)
    right = draw_detections(np.full((60, 80, 3), 255, np.uint8), [], [], [], LABELS, min_side=0)
    sheet = side_by_side(left, right)
    assert sheet.width >= 160 and sheet.height > 60
