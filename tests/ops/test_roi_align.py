"""RoIAlign against torchvision.ops.roi_align / MultiScaleRoIAlign (aligned=False, sampling_ratio=2)."""
import numpy as np
import pytest
import tensorflow as tf

from ssd_tf.ops import roi_align as RA

XY_TO_YX = [1, 0, 3, 2]
ATOL = 1e-5  # issue 14's bound for float32


def _rois(rng, batch, num, image_size, min_side=0.3, max_side=900.0, margin=60.0):
    """Log-uniform sizes (sub-pixel to larger than the image), centres up to ``margin`` outside the image."""
    side = np.exp(rng.uniform(np.log(min_side), np.log(max_side), (batch, num)))
    ratio = np.exp(rng.uniform(-1.5, 1.5, (batch, num)))
    h, w = side * np.sqrt(ratio), side / np.sqrt(ratio)
    cy = rng.uniform(-margin, image_size[0] + margin, (batch, num))
    cx = rng.uniform(-margin, image_size[1] + margin, (batch, num))
    rois = np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], -1)
    rois[:, :3] = [[-5.0, -5.0, -4.5, -4.5], [10.0, 10.0, 10.0, 10.0], [20.0, 30.0, 20.4, 30.2]]  # outside, empty, tiny
    return rois.astype(np.float32)


def _fpn_features(rng, batch, image_size, channels, dtype=np.float32):
    sizes = [(-(-image_size[0] // 2 ** l), -(-image_size[1] // 2 ** l)) for l in RA.FPN_ROI_LEVELS]
    return [rng.normal(size=(batch, h, w, channels)).astype(dtype) for h, w in sizes]


def _torch():
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    return torch


def _tv_roi_align(torch, feature, rois, scale, output_size=7, sampling_ratio=2, aligned=False):
    from torchvision.ops import roi_align
    batch, num = rois.shape[:2]
    out = roi_align(torch.from_numpy(np.ascontiguousarray(feature.transpose(0, 3, 1, 2))),
                    [torch.from_numpy(np.ascontiguousarray(r[:, XY_TO_YX])) for r in rois],
                    output_size, scale, sampling_ratio, aligned)
    return out.numpy().reshape(batch, num, -1, output_size, output_size).transpose(0, 1, 3, 4, 2)


def _tv_multiscale(torch, features, rois, image_size, requires_grad=False):
    from collections import OrderedDict

    from torchvision.ops import MultiScaleRoIAlign
    x = OrderedDict((str(i), torch.from_numpy(np.ascontiguousarray(f.transpose(0, 3, 1, 2))).requires_grad_(
        requires_grad)) for i, f in enumerate(features))
    pool = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    out = pool(x, [torch.from_numpy(np.ascontiguousarray(r[:, XY_TO_YX])) for r in rois],
               [tuple(image_size)] * len(rois))
    return x, out


def _nhwc(out, batch, num):
    return out.detach().numpy().reshape(batch, num, -1, 7, 7).transpose(0, 1, 3, 4, 2)


# ---------------------------------------------------------------------------------------------------------------
# Level mapping
# ---------------------------------------------------------------------------------------------------------------

def test_levels_at_the_boundaries():
    sides = np.array([1.0, 111.99, 112.0, 223.99, 224.0, 447.9, 448.0, 2000.0], np.float32)
    rois = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], -1)
    np.testing.assert_array_equal(RA.roi_levels(rois).numpy(), [2, 2, 3, 3, 4, 4, 5, 5])
    # maskrcnn-benchmark: (w + 1) * (h + 1) and eps inside the log: a 111-px box (112 with +1) is level 3.
    np.testing.assert_array_equal(RA.roi_levels(rois - [0, 0, 1, 1], plus_one=True).numpy(),
                                  [2, 2, 3, 3, 4, 4, 5, 5])
    assert RA.roi_levels([[0.0, 0.0, 111.0, 111.0]]).numpy().tolist() == [2]
    assert RA.roi_levels([[0.0, 0.0, 111.0, 111.0]], plus_one=True).numpy().tolist() == [3]
    # eps placement: s / 224 + 1e-6 >= 0.5 holds from s = 112 - 2.24e-4; 2^(-1 - 1e-6) * 224 = 112 - 7.8e-5.
    side = np.float32(112.0 - 1.5e-4)
    box = [[0.0, 0.0, side, side]]
    assert RA.roi_levels(box).numpy().tolist() == [2]
    assert RA.roi_levels(box, eps_in_log=True).numpy().tolist() == [3]


@pytest.mark.torch
def test_levels_equal_torchvision_level_mapper():
    torch = _torch()
    from torchvision.ops.poolers import initLevelMapper
    rng = np.random.default_rng(0)
    rois = _rois(rng, 1, 5000, (800, 1216))[0]
    ref = initLevelMapper(2, 5)([torch.from_numpy(rois[:, XY_TO_YX])]).numpy() + 2
    np.testing.assert_array_equal(RA.roi_levels(rois).numpy(), ref)


# ---------------------------------------------------------------------------------------------------------------
# Values against torchvision
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.torch
@pytest.mark.parametrize("method", RA.METHODS)
@pytest.mark.parametrize("output_size,sampling_ratio,aligned", [(7, 2, False), (3, 1, False), (2, 3, False),
                                                                (7, 2, True), (1, 1, False)])
def test_single_level_equals_torchvision(method, output_size, sampling_ratio, aligned):
    torch = _torch()
    rng = np.random.default_rng(1)
    feature = rng.normal(size=(2, 25, 38, 6)).astype(np.float32)  # P3 of a 200 x 304 input
    rois = _rois(rng, 2, 80, (200, 304), max_side=400.0)
    ref = _tv_roi_align(torch, feature, rois, 1 / 8, output_size, sampling_ratio, aligned)
    ours = RA.roi_align(feature, rois, 1 / 8, output_size, sampling_ratio, aligned, method=method).numpy()
    assert ours.shape == ref.shape == (2, 80, output_size, output_size, 6)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=ATOL)


@pytest.mark.torch
@pytest.mark.parametrize("method", RA.METHODS)
@pytest.mark.parametrize("image_size,channels", [((320, 480), 16), ((800, 1216), 4)])
def test_multilevel_equals_torchvision(method, image_size, channels):
    torch = _torch()
    rng = np.random.default_rng(2)
    features = _fpn_features(rng, 2, image_size, channels)
    rois = _rois(rng, 2, 400, image_size)
    _, ref = _tv_multiscale(torch, features, rois, image_size)
    ref = _nhwc(ref, 2, 400)
    ours = RA.multilevel_roi_align(features, rois, method=method).numpy()
    diff = np.abs(ours - ref).max()
    print(f"\nmultilevel_roi_align[{method}] {image_size} vs MultiScaleRoIAlign: max|diff| = {diff:.3g}")
    assert diff <= ATOL
    levels = RA.roi_levels(rois).numpy()
    assert set(np.unique(levels)) == {2, 3, 4, 5}  # every level exercised


@pytest.mark.torch
def test_gather_float64_equals_torchvision_float64():
    torch = _torch()
    rng = np.random.default_rng(3)
    features = _fpn_features(rng, 2, (320, 480), 3, np.float64)
    rois = _rois(rng, 2, 200, (320, 480)).astype(np.float64)
    _, ref = _tv_multiscale(torch, features, rois, (320, 480))
    ours = RA.multilevel_roi_align(features, rois, method="gather").numpy()
    assert ours.dtype == np.float64
    np.testing.assert_allclose(ours, _nhwc(ref, 2, 200), rtol=0, atol=1e-12)


@pytest.mark.torch
def test_gather_under_xla_equals_torchvision():
    torch = _torch()
    rng = np.random.default_rng(4)
    features = _fpn_features(rng, 2, (320, 480), 8)
    rois = _rois(rng, 2, 300, (320, 480))
    _, ref = _tv_multiscale(torch, features, rois, (320, 480))
    f = tf.function(lambda feats, r: RA.multilevel_roi_align(feats, r, method="gather"), jit_compile=True)
    diff = np.abs(f(features, rois).numpy() - _nhwc(ref, 2, 300)).max()
    print(f"\nmultilevel_roi_align[gather, XLA] vs MultiScaleRoIAlign: max|diff| = {diff:.3g}")
    assert diff <= ATOL


# ---------------------------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------------------------

def test_gather_gradient_matches_finite_differences_float64():
    rng = np.random.default_rng(5)
    feature = tf.constant(rng.normal(size=(1, 6, 7, 2)))
    rois = np.array([[[-1.0, 2.0, 9.0, 30.0], [3.0, 3.0, 3.4, 3.2], [0.0, 0.0, 27.0, 27.0]]])  # scale 1/4
    op = tf.function(lambda f: RA.roi_align(f, rois, 0.25, 2, 2, method="gather"))
    theoretical, numerical = tf.test.compute_gradient(op, [feature])
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-9)


@pytest.mark.parametrize("method", RA.METHODS)
def test_gradient_is_the_adjoint(method, op_determinism):
    # The op is linear in the features: <grad of <g, op(F)>, F> == <g, op(F)> for any upstream g.
    rng = np.random.default_rng(6)
    features = [tf.constant(f) for f in _fpn_features(rng, 2, (256, 320), 5)]
    rois = _rois(rng, 2, 64, (256, 320))
    upstream = rng.normal(size=(2, 64, 7, 7, 5)).astype(np.float32)
    with tf.GradientTape() as tape:
        tape.watch(features)
        inner = tf.reduce_sum(RA.multilevel_roi_align(features, rois, method=method) * upstream)
    grads = tape.gradient(inner, features)
    adjoint = sum(float(tf.reduce_sum(tf.convert_to_tensor(g) * f)) for g, f in zip(grads, features))
    assert adjoint == pytest.approx(float(inner), rel=1e-4)


@pytest.mark.torch
@pytest.mark.parametrize("method", RA.METHODS)
def test_gradient_equals_torchvision_autograd(method, op_determinism):
    torch = _torch()
    rng = np.random.default_rng(7)
    image_size = (320, 480)
    features = _fpn_features(rng, 2, image_size, 4)
    rois = _rois(rng, 2, 150, image_size)
    upstream = rng.normal(size=(2, 150, 7, 7, 4)).astype(np.float32)
    x, out = _tv_multiscale(torch, features, rois, image_size, requires_grad=True)
    out.backward(torch.from_numpy(np.ascontiguousarray(upstream.reshape(300, 7, 7, 4).transpose(0, 3, 1, 2))))
    feats = [tf.constant(f) for f in features]
    with tf.GradientTape() as tape:
        tape.watch(feats)
        inner = tf.reduce_sum(RA.multilevel_roi_align(feats, rois, method=method) * upstream)
    grads = tape.gradient(inner, feats)
    worst = 0.0
    for g, (_, t) in zip(grads, x.items()):
        worst = max(worst, float(np.abs(tf.convert_to_tensor(g).numpy() - t.grad.numpy().transpose(0, 2, 3, 1)).max()))
    print(f"\nmultilevel_roi_align[{method}] gradient vs torchvision autograd: max|diff| = {worst:.3g}")
    assert worst <= ATOL


# ---------------------------------------------------------------------------------------------------------------
# Shapes and arguments
# ---------------------------------------------------------------------------------------------------------------

def test_padded_rois_and_empty_levels():
    # All-zero padding rows go to P2 (levels 3..5 get no RoI); they pool P2's top-left 1 x 1 feature pixel.
    rng = np.random.default_rng(8)
    features = _fpn_features(rng, 2, (128, 160), 3)
    rois = np.zeros((2, 5, 4), np.float32)
    single = RA.roi_align(features[0], rois, 0.25, method="gather").numpy()
    for method in RA.METHODS:
        out = RA.multilevel_roi_align(features, rois, method=method).numpy()
        assert out.shape == (2, 5, 7, 7, 3)
        np.testing.assert_allclose(out, single, atol=1e-6)
        # Bin (0, 0): samples at 1/28 and 3/28 on both axes, mean offset a = 1/14 (a 2 x 2 grid is separable).
        a = 1 / 14
        f = features[0][:, None]
        expected = (f[..., 0, 0, :] * (1 - a) ** 2 + (f[..., 0, 1, :] + f[..., 1, 0, :]) * a * (1 - a)
                    + f[..., 1, 1, :] * a * a)
        np.testing.assert_allclose(out[:, :, 0, 0], np.broadcast_to(expected, (2, 5, 3)), atol=1e-5)


@pytest.mark.parametrize("method", RA.METHODS)
def test_dynamic_feature_sizes(method):
    rng = np.random.default_rng(9)
    features = _fpn_features(rng, 2, (192, 256), 3)  # P2 48 x 64: exact powers of two on the width
    rois = _rois(rng, 2, 50, (192, 256))
    spec = [tf.TensorSpec([None, None, None, 3], tf.float32)] * 4
    op = tf.function(lambda f, r: RA.multilevel_roi_align(f, r, method=method),
                     input_signature=[spec, tf.TensorSpec([None, None, 4], tf.float32)])
    np.testing.assert_allclose(op(features, rois).numpy(),
                               RA.multilevel_roi_align(features, rois, method=method).numpy(), rtol=0, atol=1e-6)


def test_argument_errors():
    f = np.zeros((1, 8, 8, 2), np.float32)
    rois = np.zeros((1, 3, 4), np.float32)
    with pytest.raises(ValueError, match="rois must be"):
        RA.roi_align(f, rois[0], 0.25)
    with pytest.raises(ValueError, match="feature maps must be"):
        RA.roi_align(f[0], rois, 0.25)
    with pytest.raises(ValueError, match="sampling_ratio"):
        RA.roi_align(f, rois, 0.25, sampling_ratio=0)
    with pytest.raises(ValueError, match="output_size"):
        RA.roi_align(f, rois, 0.25, output_size=0)
    with pytest.raises(ValueError, match="method"):
        RA.roi_align(f, rois, 0.25, method="bilinear")
    with pytest.raises(ValueError, match="spatial_scale"):
        RA.roi_align(f, rois, 0.0)
    with pytest.raises(ValueError, match="batch 2 differs"):
        RA.roi_align(np.zeros((2, 8, 8, 2), np.float32), rois, 0.25)
    with pytest.raises(ValueError, match="non-empty list"):
        RA.multilevel_roi_align({"0": f}, rois)
    with pytest.raises(ValueError, match="channel counts"):
        RA.multilevel_roi_align([f, np.zeros((1, 4, 4, 3), np.float32)], rois)
