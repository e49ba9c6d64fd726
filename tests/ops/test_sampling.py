import numpy as np
import pytest
import tensorflow as tf

from ssd_tf.ops.sampling import hard_negative_mining


def test_counts_and_highest_loss_negatives():
    rng = np.random.default_rng(0)
    loss = rng.uniform(0, 1, (3, 50)).astype(np.float32)
    pos = np.zeros((3, 50), bool)
    pos[0, [1, 5]] = True  # 2 positives -> 6 negatives
    pos[1, :20] = True  # 20 positives -> capped at 30 negatives
    loss[0, 1] = 100.0  # a high-loss positive must not be picked
    neg = hard_negative_mining(loss, pos).numpy()
    assert neg.sum(axis=1).tolist() == [6, 30, 0]
    assert not (neg & pos).any()
    masked = np.where(pos[0], -np.inf, loss[0])
    assert set(np.flatnonzero(neg[0])) == set(np.argsort(-masked)[:6])


def test_exactly_k_on_ties_and_ratio():
    loss = np.zeros((2, 40), np.float32)
    pos = np.zeros((2, 40), bool)
    pos[:, 0] = True
    pos[1, 1] = True
    neg = hard_negative_mining(loss, pos, neg_pos_ratio=3).numpy()
    assert neg.sum(axis=1).tolist() == [3, 6]
    assert np.flatnonzero(neg[0]).tolist() == [1, 2, 3]  # ties resolved in anchor order
    neg = hard_negative_mining(loss, pos, neg_pos_ratio=5).numpy()
    assert neg.sum(axis=1).tolist() == [5, 10]


def test_ties_at_the_kth_value():
    loss = np.array([[9.0, 1.0, 2.0, 5.0, 2.0, 2.0, 0.5]], np.float32)
    pos = np.array([[True] + [False] * 6])
    neg = hard_negative_mining(loss, pos).numpy()  # k = 3: the 5, then the first two of the three 2s
    assert np.flatnonzero(neg[0]).tolist() == [2, 3, 4]


def test_xla_matches_eager():
    rng = np.random.default_rng(2)
    loss = tf.constant(rng.uniform(0, 3, (2, 8732)).astype(np.float32))
    pos = tf.constant(rng.uniform(0, 1, (2, 8732)) < 0.003)
    eager = hard_negative_mining(loss, pos).numpy()
    xla = tf.function(hard_negative_mining, jit_compile=True)(loss, pos).numpy()
    np.testing.assert_array_equal(eager, xla)
    assert eager.sum() == 3 * pos.numpy().sum()


def test_shape_mismatch():
    with pytest.raises(ValueError, match="shapes differ"):
        hard_negative_mining(tf.zeros([2, 5]), tf.zeros([2, 6], tf.bool))
