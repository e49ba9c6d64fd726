import numpy as np
import pytest
import tensorflow as tf

from ssd_tf.ops import grid_anchors as G

XY_TO_YX = [1, 0, 3, 2]

# REFERENCE_SPECS §3.2, cell anchors [x1, y1, x2, y2] per level in ratio order (0.5, 1, 2).
MRB_TABLE = {
    2: [[-22, -10, 25, 13], [-14, -14, 17, 17], [-10, -22, 13, 25]],
    3: [[-40, -20, 47, 27], [-28, -28, 35, 35], [-20, -44, 27, 51]],
    4: [[-84, -40, 99, 55], [-56, -56, 71, 71], [-36, -80, 51, 95]],
    5: [[-164, -72, 195, 103], [-112, -112, 143, 143], [-76, -168, 107, 199]],
    6: [[-332, -152, 395, 215], [-224, -224, 287, 287], [-148, -328, 211, 391]],
}
TV_TABLE = {
    2: [[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]],
    3: [[-45, -23, 45, 23], [-32, -32, 32, 32], [-23, -45, 23, 45]],
    4: [[-91, -45, 91, 45], [-64, -64, 64, 64], [-45, -91, 45, 91]],
    5: [[-181, -91, 181, 91], [-128, -128, 128, 128], [-91, -181, 91, 181]],
    6: [[-362, -181, 362, 181], [-256, -256, 256, 256], [-181, -362, 181, 362]],
}
IMAGE_SIZES = [(320, 480), (800, 1216), (512, 512), (224, 96)]


@pytest.mark.parametrize("style,table", [("detectron", MRB_TABLE), ("torchvision", TV_TABLE)])
def test_cell_anchors_equal_the_spec_table(style, table):
    for level, size, stride in zip(G.FPN_LEVELS, G.FPN_ANCHOR_SIZES, G.FPN_ANCHOR_STRIDES):
        cell = G.cell_anchors(size, style=style, stride=stride)
        assert cell.dtype == np.float32
        np.testing.assert_array_equal(cell[:, XY_TO_YX], table[level], err_msg=f"{style} P{level}")


def test_detectron_grid_is_table_plus_fixed_stride_shifts():
    anchors = G.grid_anchors((800, 1216), style="detectron").numpy()
    sizes = G.fpn_feature_sizes((800, 1216))
    counts = G.anchors_per_level(sizes)
    assert sizes == ((200, 304), (100, 152), (50, 76), (25, 38), (13, 19))
    assert anchors.shape == (sum(counts), 4)
    starts = np.cumsum((0,) + counts)
    for i, level in enumerate(G.FPN_LEVELS):
        h, w = sizes[i]
        per = anchors[starts[i]:starts[i + 1]].reshape(h, w, 3, 4)  # (y, x, a)
        stride = G.FPN_ANCHOR_STRIDES[i]
        cell = np.asarray(MRB_TABLE[level], np.float32)[:, XY_TO_YX]
        np.testing.assert_array_equal(per[0, 0], cell)
        np.testing.assert_array_equal(per[h - 1, w - 1], cell + stride * np.array([h - 1, w - 1, h - 1, w - 1]))
        np.testing.assert_array_equal(per[2, 5], cell + stride * np.array([2, 5, 2, 5]))


def test_torchvision_stride_is_image_over_feature_size():
    # P6 of an 800-pixel side has 13 cells: torchvision's stride is 800 // 13 = 61 there.
    anchors = G.grid_anchors((800, 1216)).numpy()
    counts = G.anchors_per_level(G.fpn_feature_sizes((800, 1216)))
    p6 = anchors[-counts[-1]:].reshape(13, 19, 3, 4)
    np.testing.assert_array_equal(p6[1, 1, 1], [61 - 256, 64 - 256, 61 + 256, 64 + 256])


def test_dynamic_image_size_and_xla():
    f = tf.function(lambda size: G.grid_anchors(size), jit_compile=True)
    got = f(tf.constant([320, 480])).numpy()
    np.testing.assert_array_equal(got, G.grid_anchors((320, 480)).numpy())


def test_anchor_visibility_maskrcnn_benchmark_rule():
    anchors = np.array([[0, 0, 10, 10], [-1, 0, 10, 10], [0, 0, 32, 10], [0, 0, 31.9, 47.9]], np.float32)
    vis = G.anchor_visibility(anchors, [[32, 48], [40, 40]]).numpy()
    assert vis.tolist() == [[True, False, False, True], [True, False, True, False]]
    assert G.anchor_visibility(anchors, [[32, 48]], straddle_thresh=1.0).numpy().tolist() == [[True] * 4]
    assert G.anchor_visibility(anchors, [[1, 1]], straddle_thresh=-1).numpy().all()


def test_argument_errors():
    with pytest.raises(ValueError, match="style"):
        G.grid_anchors((64, 64), style="mmdet")
    with pytest.raises(ValueError, match="strides has 2 levels"):
        G.grid_anchors((64, 64), strides=(4, 8))
    with pytest.raises(ValueError, match="image_size"):
        G.grid_anchors((64, 64, 3))
    with pytest.raises(ValueError, match="stride"):
        G.cell_anchors(32, style="detectron")
    with pytest.raises(ValueError, match="aspect_ratios"):
        G.cell_anchors(32, aspect_ratios=(0.0, 1.0))


@pytest.mark.torch
@pytest.mark.parametrize("image_size", IMAGE_SIZES)
def test_equal_to_torchvision_anchor_generator(image_size):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    sizes = G.fpn_feature_sizes(image_size)
    generator = AnchorGenerator(tuple((s,) for s in G.FPN_ANCHOR_SIZES), (G.FPN_ASPECT_RATIOS,) * 5)
    images = ImageList(torch.zeros(2, 3, *image_size), [image_size, image_size])
    features = [torch.zeros(2, 8, h, w) for h, w in sizes]
    ref = generator(images, features)[0].numpy()[:, XY_TO_YX]
    ours = G.grid_anchors(image_size).numpy()
    assert ours.shape == ref.shape and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, ref)
    assert sum(G.anchors_per_level(sizes)) == ref.shape[0]
