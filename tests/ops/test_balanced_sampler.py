import numpy as np
import pytest
import tensorflow as tf

from ssd_tf.ops.sampling import balanced_sample

SEED = tf.constant([7, 11], tf.int32)


def _matched(rng, batch, num, p_pos, p_neg):
    """Random matcher output: gt index >= 0 with p_pos, -1 with p_neg, else -2."""
    u = rng.uniform(size=(batch, num))
    out = np.full((batch, num), -2, np.int32)
    out[u < p_pos] = rng.integers(0, 5, (batch, num))[u < p_pos]
    out[(u >= p_pos) & (u < p_pos + p_neg)] = -1
    return out


def _check(matched, sample, size, fraction):
    pos_cap = int(size * fraction)
    n_pos = np.minimum((matched >= 0).sum(1), pos_cap)
    n_neg = np.minimum((matched == -1).sum(1), size - n_pos)
    pm, nm = sample.positive_mask.numpy(), sample.negative_mask.numpy()
    idx, is_pos, valid = sample.indices.numpy(), sample.is_positive.numpy(), sample.valid.numpy()
    assert idx.shape == (matched.shape[0], size)
    np.testing.assert_array_equal(pm.sum(1), n_pos)
    np.testing.assert_array_equal(nm.sum(1), n_neg)
    assert (matched[pm] >= 0).all() and (matched[nm] == -1).all()  # never an ignored (-2) entry
    for b in range(matched.shape[0]):
        # Slots: positives first, then negatives, then padding (index 0, not valid); no repeats.
        assert valid[b].tolist() == [True] * int(n_pos[b] + n_neg[b]) + [False] * int(size - n_pos[b] - n_neg[b])
        assert is_pos[b].tolist() == [True] * int(n_pos[b]) + [False] * int(size - n_pos[b])
        assert sorted(idx[b][is_pos[b]]) == sorted(np.flatnonzero(pm[b]))
        assert sorted(idx[b][valid[b] & ~is_pos[b]]) == sorted(np.flatnonzero(nm[b]))
        assert (idx[b][~valid[b]] == 0).all()


@pytest.mark.parametrize("size,fraction", [(256, 0.5), (512, 0.25), (10, 1.0), (8, 0.0)])
def test_counts_and_never_ignored(size, fraction):
    rng = np.random.default_rng(0)
    matched = np.concatenate([
        _matched(rng, 2, 3000, 0.01, 0.6),  # few positives
        _matched(rng, 1, 3000, 0.5, 0.4),  # many of both
        _matched(rng, 1, 3000, 0.5, 0.001),  # few negatives
        np.full((1, 3000), -2, np.int32),  # all ignored
    ])
    _check(matched, balanced_sample(matched, size, fraction, SEED), size, fraction)


def test_fewer_candidates_than_samples():
    matched = np.array([[0, -1, -2, 3, -1], [-2, -2, -1, -2, -2]], np.int32)
    sample = balanced_sample(matched, 16, 0.5, SEED)
    _check(matched, sample, 16, 0.5)
    assert sample.positive_mask.numpy().tolist()[0] == [True, False, False, True, False]


def test_stateless_seed():
    rng = np.random.default_rng(1)
    matched = _matched(rng, 2, 5000, 0.1, 0.6)
    a = balanced_sample(matched, 256, 0.5, SEED)
    b = balanced_sample(matched, 256, 0.5, tf.constant([7, 11], tf.int64))
    c = balanced_sample(matched, 256, 0.5, tf.constant([7, 12], tf.int32))
    np.testing.assert_array_equal(a.indices.numpy(), b.indices.numpy())
    assert (a.positive_mask.numpy() != c.positive_mask.numpy()).any()
    assert (a.negative_mask.numpy() != c.negative_mask.numpy()).any()
    # Images of one batch are sampled independently.
    same = np.repeat(matched[:1], 2, axis=0)
    s = balanced_sample(same, 256, 0.5, SEED)
    assert (s.negative_mask.numpy()[0] != s.negative_mask.numpy()[1]).any()


def test_uniform():
    # 20 positives, cap 5: every positive is picked 1/4 of the time; 100 negatives, 15 picked.
    matched = np.full((1, 200), -2, np.int32)
    matched[0, :20] = 0
    matched[0, 50:150] = -1
    f = tf.function(lambda seed: balanced_sample(matched, 20, 0.25, seed))
    pos = np.zeros(200)
    neg = np.zeros(200)
    trials = 2000
    for i in range(trials):
        s = f(tf.constant([i, 3]))
        pos += s.positive_mask.numpy()[0]
        neg += s.negative_mask.numpy()[0]
    np.testing.assert_allclose(pos[:20] / trials, 0.25, atol=0.05)  # ~5 sigma at p=0.25, n=2000
    np.testing.assert_allclose(neg[50:150] / trials, 0.15, atol=0.04)
    assert pos[20:].sum() == 0 and neg[:50].sum() == 0 and neg[150:].sum() == 0


def test_xla():
    rng = np.random.default_rng(2)
    matched = _matched(rng, 2, 4000, 0.05, 0.5)
    f = tf.function(lambda m, seed: balanced_sample(m, 256, 0.5, seed), jit_compile=True)
    sample = f(matched, SEED)
    _check(matched, sample, 256, 0.5)
    np.testing.assert_array_equal(f(matched, SEED).indices.numpy(), sample.indices.numpy())


def test_argument_errors():
    m = np.zeros((2, 10), np.int32)
    with pytest.raises(ValueError, match="matched must be \\[B, A\\]"):
        balanced_sample(m[0], 4, 0.5, SEED)
    with pytest.raises(ValueError, match="int tensor"):
        balanced_sample(m.astype(np.float32), 4, 0.5, SEED)
    with pytest.raises(ValueError, match="batch_size_per_image"):
        balanced_sample(m, 0, 0.5, SEED)
    with pytest.raises(ValueError, match="positive_fraction"):
        balanced_sample(m, 4, 1.5, SEED)
    with pytest.raises(ValueError, match="seed must be"):
        balanced_sample(m, 4, 0.5, tf.constant([1, 2, 3]))


@pytest.mark.torch
def test_counts_equal_torchvision_sampler():
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from torchvision.models.detection._utils import BalancedPositiveNegativeSampler

    rng = np.random.default_rng(3)
    matched = np.concatenate([_matched(rng, 3, 2000, p, q) for p, q in [(0.01, 0.5), (0.3, 0.02), (0.2, 0.5)]])
    for size, fraction in [(256, 0.5), (512, 0.25)]:
        tv = BalancedPositiveNegativeSampler(size, fraction)
        # torchvision's labels: 1 foreground, 0 background, -1 ignored.
        labels = [torch.from_numpy(np.where(m >= 0, 1, np.where(m == -1, 0, -1))) for m in matched]
        pos, neg = tv(labels)
        ours = balanced_sample(matched, size, fraction, SEED)
        np.testing.assert_array_equal(ours.positive_mask.numpy().sum(1), [int(p.sum()) for p in pos])
        np.testing.assert_array_equal(ours.negative_mask.numpy().sum(1), [int(n.sum()) for n in neg])


def test_per_image_seeds_make_an_images_sample_independent_of_its_batch():
    rng = np.random.default_rng(7)
    matched = rng.choice([-2, -1, -1, -1, 0, 1], size=(3, 400)).astype(np.int32)
    seeds = np.array([[1, 11], [2, 22], [3, 33]], np.int64)
    together = balanced_sample(matched, 64, 0.25, seeds)
    for b in range(3):
        alone = balanced_sample(matched[b:b + 1], 64, 0.25, seeds[b:b + 1])
        np.testing.assert_array_equal(alone.indices.numpy()[0], together.indices.numpy()[b])
        np.testing.assert_array_equal(alone.valid.numpy()[0], together.valid.numpy()[b])
    other = balanced_sample(matched, 64, 0.25, seeds + 1)
    assert not np.array_equal(other.indices.numpy(), together.indices.numpy())
