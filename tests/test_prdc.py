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


def _brute_precision(real, fake, k, strict):
  r_real = _brute_radii(real, k)
  d = np.sqrt(((fake[:, None, :] - real[None, :, :]) ** 2).sum(-1))
  inside = d < r_real[None, :] if strict else d <= r_real[None, :]
  return float(np.mean(np.any(inside, axis=1)))


def test_tie_on_ball_edge_counts_as_inside():
  """A fake point exactly at a real point's k-th neighbour distance is inside (d <= r).

  Integer coordinates keep the Gram-form distances exact in float32, so the ties are exact.
  Real radii (k = 1): (0,0) -> 3, (3,0) -> 3, (0,4) -> 4. Fake (-3,0), (3,-3) and (0,8) each lie
  exactly on one real ball's edge and outside every other ball; (10,10) is far from all.
  """
  real = np.array([[0, 0], [3, 0], [0, 4]], np.float32)
  fake = np.array([[-3, 0], [3, -3], [0, 8], [10, 10]], np.float32)
  np.testing.assert_array_equal(prdc.knn_radii(real, k=1, block=2), [3.0, 3.0, 4.0])
  out = prdc.precision_recall(real, fake, k=1, block=2)
  assert out["precision"] == 0.75
  assert out["precision"] == _brute_precision(real, fake, 1, strict=False)
  assert _brute_precision(real, fake, 1, strict=True) == 0.0  # the strict rule: none inside


def test_tie_on_duplicated_features():
  """Duplicated (quantised) features: radius-0 balls still contain their copies.

  Real (k = 1): (0,0) and (1,0) twice each, so their radii are 0 (a copy is a neighbour at
  distance 0); (5,5) has radius sqrt(41). Fake (0,0) and (1,0) coincide with real points and are
  inside under d <= r; (-1,0) and (20,20) are outside every ball. Under the strict rule d < r a
  radius-0 ball contains nothing, and precision would be 0.
  """
  real = np.array([[0, 0], [0, 0], [1, 0], [1, 0], [5, 5]], np.float32)
  fake = np.array([[0, 0], [1, 0], [-1, 0], [20, 20]], np.float32)
  np.testing.assert_allclose(prdc.knn_radii(real, k=1, block=3),
                             [0.0, 0.0, 0.0, 0.0, np.sqrt(41.0)], rtol=1e-6)
  for block in (3, 1024):
    out = prdc.precision_recall(real, fake, k=1, block=block)
    assert out == {"precision": 0.5, "recall": 1.0}
  assert _brute_precision(real, fake, 1, strict=False) == 0.5
  assert _brute_precision(real, fake, 1, strict=True) == 0.0
  # Every point of a fully duplicated set is on the edge of a radius-0 ball: 1.0, not 0.0.
  dup = np.repeat(np.array([[0, 0], [2, 1], [7, 3]], np.float32), 4, axis=0)
  assert prdc.precision_recall(dup, dup, k=3, block=5) == {"precision": 1.0, "recall": 1.0}
