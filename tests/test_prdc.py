"""Tests for gpe_jax.evals.prdc: improved precision/recall with k-NN manifolds."""
from __future__ import annotations

import numpy as np
import pytest

from gpe_jax.evals import prdc


def _brute_radii(x, k):
  d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
  np.fill_diagonal(d, np.inf)
  return np.sort(d, axis=1)[:, k - 1]


def _brute_pr(real, fake, k):
  r_real, r_fake = _brute_radii(real, k), _brute_radii(fake, k)
  d = np.sqrt(((fake[:, None, :] - real[None, :, :]) ** 2).sum(-1))  # [M, N]
  precision = np.mean(np.any(d <= r_real[None, :], axis=1))
  recall = np.mean(np.any(d.T <= r_fake[None, :], axis=1))
  return precision, recall


@pytest.mark.parametrize("k", [1, 3])
def test_knn_radii_vs_brute_force(k):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((200, 5))
  got = prdc.knn_radii(x.astype(np.float32), k=k, block=64)  # 200 = 3 * 64 + 8: padded block
  assert got.shape == (200,)
  np.testing.assert_allclose(got, _brute_radii(x, k), rtol=1e-4, atol=1e-5)


def test_identical_sets():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((100, 8)).astype(np.float32)
  out = prdc.precision_recall(x, x, k=3, block=32)
  assert out == {"precision": 1.0, "recall": 1.0}
  assert all(isinstance(v, float) for v in out.values())


def test_far_apart_clusters():
  rng = np.random.default_rng(2)
  real = rng.standard_normal((80, 4)).astype(np.float32)
  fake = (rng.standard_normal((60, 4)) + 100.0).astype(np.float32)
  out = prdc.precision_recall(real, fake, k=3, block=32)
  assert out == {"precision": 0.0, "recall": 0.0}


def test_vs_brute_force_blocked():
  rng = np.random.default_rng(3)
  real = rng.standard_normal((200, 5))
  fake = rng.standard_normal((150, 5)) * 1.3 + 0.4  # partial overlap: 0 < p, r < 1
  want_p, want_r = _brute_pr(real, fake, k=3)
  assert 0.0 < want_p < 1.0 and 0.0 < want_r < 1.0
  out = prdc.precision_recall(real.astype(np.float32), fake.astype(np.float32), k=3, block=64)
  assert out["precision"] == pytest.approx(want_p, abs=1e-12)
  assert out["recall"] == pytest.approx(want_r, abs=1e-12)
  # Block size must not matter.
  assert prdc.precision_recall(real, fake, k=3, block=1024) == out


def test_hand_checkable():
  # 1-D points: real = {0, 1, 2, 3}, k = 1 -> every real radius is 1, so the real manifold is
  # [-1, 4]. fake = {3.5, 10, 11, 12}: only 3.5 is inside -> precision = 1/4. Fake radii
  # (k = 1): 3.5 -> 6.5, 10 -> 1, 11 -> 1, 12 -> 1; the ball around 3.5 covers [-3, 10], so
  # every real point is covered -> recall = 1.
  real = np.array([[0.0], [1.0], [2.0], [3.0]], np.float32)
  fake = np.array([[3.5], [10.0], [11.0], [12.0]], np.float32)
  np.testing.assert_allclose(prdc.knn_radii(real, k=1, block=3), [1.0, 1.0, 1.0, 1.0])
  out = prdc.precision_recall(real, fake, k=1, block=3)
  assert out == {"precision": 0.25, "recall": 1.0}


def test_bad_k():
  x = np.zeros((3, 2), np.float32)
  with pytest.raises(ValueError):
    prdc.knn_radii(x, k=3)
