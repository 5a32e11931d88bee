"""Tests for gpe_jax.evals.frechet: the Frechet (FID) distance with a true matrix square root."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from gpe_jax.evals import frechet

RTOL = 1e-4


def _rel_err(got, want):
  return abs(float(got) - float(want)) / abs(float(want))


def _random_spd(rng, f, scale=1.0):
  """A well-conditioned random SPD [f, f] matrix (dense, so products do not commute)."""
  a = rng.standard_normal((f, 2 * f))
  return scale * (a @ a.T / (2 * f) + 0.1 * np.eye(f))


def _scipy_fid(mu1, s1, mu2, s2):
  """float64 reference through scipy.linalg.sqrtm(S1 S2) (the pytorch-fid formulation)."""
  covmean = scipy.linalg.sqrtm(s1 @ s2)
  covmean = np.real(covmean)
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def _jax_fid(mu1, s1, mu2, s2):
  return float(frechet.frechet_distance(*(jnp.asarray(a, jnp.float32) for a in (mu1, s1, mu2, s2))))


def test_diagonal_closed_form():
  rng = np.random.default_rng(0)
  f = 32
  a, b = rng.uniform(0.5, 3.0, f), rng.uniform(0.5, 3.0, f)
  mu1, mu2 = rng.standard_normal(f), rng.standard_normal(f)
  want = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + np.sum((mu1 - mu2) ** 2)
  got = _jax_fid(mu1, np.diag(a), mu2, np.diag(b))
  assert _rel_err(got, want) <= RTOL
  assert _rel_err(frechet.frechet_distance_np(mu1, np.diag(a), mu2, np.diag(b)), want) <= 1e-10


@pytest.mark.parametrize("f", [16, 64])
def test_general_spd_vs_scipy(f):
  rng = np.random.default_rng(f)
  s1, s2 = _random_spd(rng, f), _random_spd(rng, f, scale=2.0)
  assert not np.allclose(s1 @ s2, s2 @ s1)  # non-commuting
  mu1, mu2 = rng.standard_normal(f), rng.standard_normal(f)
  want = _scipy_fid(mu1, s1, mu2, s2)
  assert _rel_err(_jax_fid(mu1, s1, mu2, s2), want) <= RTOL
  assert _rel_err(frechet.frechet_distance_np(mu1, s1, mu2, s2), want) <= 1e-9
  # Zero mean difference: only the covariance term remains.
  want0 = _scipy_fid(mu1, s1, mu1, s2)
  assert _rel_err(_jax_fid(mu1, s1, mu1, s2), want0) <= RTOL


def test_identical_stats_is_zero():
  rng = np.random.default_rng(1)
  f = 64
  s = _random_spd(rng, f)
  mu = rng.standard_normal(f)
  got = _jax_fid(mu, s, mu, s)
  assert got >= 0.0
  assert got < 1e-3 * np.trace(s)
  assert frechet.frechet_distance_np(mu, s, mu, s) < 1e-9 * np.trace(s)


def test_symmetric():
  rng = np.random.default_rng(2)
  f = 24
  s1, s2 = _random_spd(rng, f), _random_spd(rng, f, scale=0.5)
  mu1, mu2 = rng.standard_normal(f), rng.standard_normal(f)
  d12, d21 = _jax_fid(mu1, s1, mu2, s2), _jax_fid(mu2, s2, mu1, s1)
  assert _rel_err(d12, d21) <= RTOL


def test_under_jit_and_dtype():
  rng = np.random.default_rng(3)
  f = 16
  s1, s2 = _random_spd(rng, f), _random_spd(rng, f, scale=3.0)
  mu1, mu2 = rng.standard_normal(f), rng.standard_normal(f)
  args = [jnp.asarray(a, jnp.float32) for a in (mu1, s1, mu2, s2)]
  out = jax.jit(lambda *a: frechet.frechet_distance(*a) * 1.0)(*args)
  assert out.shape == () and out.dtype == jnp.float32
  assert _rel_err(out, _scipy_fid(mu1, s1, mu2, s2)) <= RTOL


def test_gaussian_stats_matches_np_cov():
  rng = np.random.default_rng(4)
  x = rng.standard_normal((300, 12)) * rng.uniform(0.5, 2.0, 12) + rng.standard_normal(12)
  x[:, 1] += 0.7 * x[:, 0]
  mu, cov = frechet.gaussian_stats(jnp.asarray(x, jnp.float32))
  assert mu.dtype == jnp.float32 and cov.shape == (12, 12)
  np.testing.assert_allclose(np.asarray(mu), x.mean(0), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(cov), np.cov(x, rowvar=False), rtol=1e-4, atol=1e-5)
  mu64, cov64 = frechet.gaussian_stats_np(x)
  np.testing.assert_allclose(mu64, x.mean(0), rtol=1e-12)
  np.testing.assert_allclose(cov64, np.cov(x, rowvar=False), rtol=1e-12, atol=1e-14)


def test_elementwise_sqrt_would_fail():
  """With non-diagonal covariances an elementwise sqrt of S1 S2 gives a different number."""
  rng = np.random.default_rng(5)
  f = 16
  s1, s2 = _random_spd(rng, f), _random_spd(rng, f, scale=2.0)
  mu = np.zeros(f)
  want = _scipy_fid(mu, s1, mu, s2)
  prod = s1 @ s2
  wrong = np.trace(s1) + np.trace(s2) - 2.0 * np.trace(np.sqrt(np.abs(prod)))
  assert _rel_err(wrong, want) > 0.05
  assert _rel_err(_jax_fid(mu, s1, mu, s2), want) <= RTOL


def test_from_features_float64():
  rng = np.random.default_rng(6)
  f1 = rng.standard_normal((400, 10))
  f2 = rng.standard_normal((300, 10)) @ rng.standard_normal((10, 10)) * 0.5 + 0.3
  mu1, s1 = np.mean(f1, 0), np.cov(f1, rowvar=False)
  mu2, s2 = np.mean(f2, 0), np.cov(f2, rowvar=False)
  want = _scipy_fid(mu1, s1, mu2, s2)
  got = frechet.frechet_distance_from_features(f1, f2)
  assert isinstance(got, float)
  assert _rel_err(got, want) <= 1e-9
  assert not jax.config.jax_enable_x64  # the x64 context did not leak


def _low_rank_reference(x1, x2):
  """float64 d^2 of two feature sets through their centred data, without any F x F root.

  With A_i = (X_i - mean) / sqrt(N_i - 1), S_i = A_i^T A_i, and the non-zero eigenvalues of
  S1^{1/2} S2 S1^{1/2} (those of S1 S2) are those of (A1 A2^T)(A1 A2^T)^T, so the trace of its
  square root is the sum of the singular values of the small [N1, N2] matrix A1 A2^T.
  """
  x1, x2 = np.asarray(x1, np.float64), np.asarray(x2, np.float64)
  a1 = (x1 - x1.mean(0)) / np.sqrt(x1.shape[0] - 1)
  a2 = (x2 - x2.mean(0)) / np.sqrt(x2.shape[0] - 1)
  tr_sqrt = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum()
  diff = x1.mean(0) - x2.mean(0)
  return float(diff @ diff + np.sum(a1 * a1) + np.sum(a2 * a2) - 2.0 * tr_sqrt)


def _rank_deficient_features(rng, n1, n2, f):
  x1 = rng.standard_normal((n1, f)) * rng.uniform(0.5, 2.0, f)
  x2 = rng.standard_normal((n2, f)) @ (rng.standard_normal((f, f)) / np.sqrt(f)) + 0.05
  return x1.astype(np.float32), x2.astype(np.float32)


def test_float32_rank_deficient_2048():
  """2048-D features of 200 samples each (ranks 199): float32 gives the float64 answer.

  Measured: 1.1e-7 relative; the eigenvalue formula in float32 (the float64 path's) is off by
  6.8e-4 here, through the square roots of rounding noise in the two null spaces.
  """
  rng = np.random.default_rng(7)
  x1, x2 = _rank_deficient_features(rng, 200, 200, 2048)
  want = _low_rank_reference(x1, x2)
  # The reference agrees with the float64 eigenvalue formula on float64 covariances (to 2e-8:
  # the same square roots of null-space noise, at float64's sqrt(eps)).
  mu1, s1 = frechet.gaussian_stats_np(x1)
  mu2, s2 = frechet.gaussian_stats_np(x2)
  assert _rel_err(frechet.frechet_distance_np(mu1, s1, mu2, s2), want) <= 1e-7

  m1, c1 = frechet.gaussian_stats(jnp.asarray(x1))
  m2, c2 = frechet.gaussian_stats(jnp.asarray(x2))
  assert c1.dtype == jnp.float32
  got = frechet.frechet_distance(m1, c1, m2, c2)
  assert got.dtype == jnp.float32
  assert _rel_err(got, want) <= 1e-5

  # What the projection and the nuclear norm fix: the eigenvalue formula in float32.
  c1s, c2s = 0.5 * (c1 + c1.T), 0.5 * (c2 + c2.T)
  naive = (float(jnp.sum((m1 - m2) ** 2)) + float(jnp.trace(c1s)) + float(jnp.trace(c2s))
           - 2.0 * float(jax.jit(frechet._trace_sqrt_eigvalsh)(c1s, c2s)))
  assert _rel_err(naive, want) > 1e-4


@pytest.mark.parametrize("n1,n2", [(10, 30), (30, 10), (40, 40)])
def test_float32_rank_deficient_small(n1, n2):
  """Unequal ranks on either side, each below F = 64."""
  rng = np.random.default_rng(n1 * 100 + n2)
  x1, x2 = _rank_deficient_features(rng, n1, n2, 64)
  want = _low_rank_reference(x1, x2)
  args = [*frechet.gaussian_stats(jnp.asarray(x1)), *frechet.gaussian_stats(jnp.asarray(x2))]
  assert _rel_err(frechet.frechet_distance(*args), want) <= 1e-5
  # Identical rank-deficient statistics: 0 up to float32 rounding of the traces.
  same = frechet.frechet_distance(args[0], args[1], args[0], args[1])
  assert 0.0 <= float(same) < 1e-5 * float(jnp.trace(args[1]))


@pytest.mark.parametrize("n1,n2,f", [(20, 25, 60), (64, 64, 300), (30, 500, 40)])
def test_gram_route_equals_the_covariance_route(n1, n2, f):
  """Few samples of many features: the cross-Gram nuclear norm gives the float64 covariance
  formula's number without an [F, F] matrix (and from_features takes it when cheaper)."""
  rng = np.random.default_rng(n1 + n2 + f)
  x1 = rng.standard_normal((n1, f)) * rng.uniform(0.5, 2.0, f)
  x2 = rng.standard_normal((n2, f)) @ (rng.standard_normal((f, f)) / np.sqrt(f)) + 0.3
  mu1, s1 = np.mean(x1, 0), np.cov(x1, rowvar=False)
  mu2, s2 = np.mean(x2, 0), np.cov(x2, rowvar=False)
  # The covariance formula in float64 carries the square roots of its null spaces' rounding
  # noise (~1e-8 relative here); the centred-data reference has none.
  cov_route = frechet.frechet_distance_np(mu1, s1, mu2, s2)
  want = _low_rank_reference(x1, x2)
  got = frechet.frechet_distance_gram_np(x1, x2)
  assert _rel_err(got, want) <= 1e-12 and _rel_err(got, cov_route) <= 1e-6
  assert _rel_err(frechet.frechet_distance_from_features(x1, x2), want) <= 1e-8
  assert frechet.gram_is_cheaper(64, 64, 3072) and not frechet.gram_is_cheaper(10000, 10000, 128)
