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
