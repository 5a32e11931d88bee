"""Tests of gpe_jax.evals.hessian: dense Hessians, HVPs, Lanczos and the curvature predictions.

One embedded batch is shared by most tests: n = 120 digits (scaled to [-1, 1]) embedded in
d = 5 dimensions, i.e. n d = 600 coordinates, small enough for a dense Hessian and large enough
for Lanczos with fewer iterations than the dimension to be a genuine approximation.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpe_jax import costs
from gpe_jax.evals import hessian

N, DIM = 120, 5      # the embedded batch: N * DIM = 600 coordinates
NUM_ITERS = 120      # Lanczos iterations, well below N * DIM


def _max_abs(a) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64))))


def _eigvalsh(h) -> np.ndarray:
  return np.linalg.eigvalsh(np.asarray(h, np.float64))


def _spectral_radius(evals) -> float:
  """max(|lambda_min|, |lambda_max|) of an ascending spectrum: the scale of tolerances."""
  return max(abs(evals[0]), abs(evals[-1]))


# Jitted once per cost function: one compilation instead of op-by-op dispatch.
_dense_hessian = jax.jit(hessian.dense_hessian, static_argnums=0)


def _dense(fn, primal) -> np.ndarray:
  """``hessian.dense_hessian(fn, primal)`` as float64."""
  return np.asarray(_dense_hessian(fn, primal), np.float64)


def _random_embedding(x: np.ndarray, seed: int) -> jax.Array:
  """Gaussian Z [N, DIM] rescaled so that its mean pairwise squared distance is the data's."""
  z = np.random.default_rng(seed).normal(size=(x.shape[0], DIM))
  data_sq = np.asarray(costs.pairwise_sq_dists(jnp.asarray(x)), np.float64)
  # E|z_i - z_j|^2 = 2 DIM for unit Gaussian rows.
  z *= np.sqrt(data_sq.sum() / (x.shape[0] * (x.shape[0] - 1)) / (2 * DIM))
  return jnp.asarray(z, jnp.float32)


def _mlp(params, z):
  """A tiny two-layer decoder, latents [n, d] -> outputs [n, D]."""
  return jnp.tanh(z @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def x() -> np.ndarray:
  from sklearn.datasets import load_digits
  return (load_digits().data[:N] / 8.0 - 1.0).astype(np.float32)


@pytest.fixture(scope="module")
def z(x) -> jax.Array:
  return _random_embedding(x, seed=0)


@pytest.fixture(scope="module")
def cost_fns(x) -> dict:
  return {cost: hessian.make_embedding_cost(x, cost) for cost in hessian.COSTS}


@pytest.fixture(scope="module")
def dense(cost_fns, z) -> dict:
  """cost -> (dense Hessian at z as float64 [600, 600], its ascending eigenvalues)."""
  out = {}
  for cost, fn in cost_fns.items():
    h = _dense(fn, z)
    out[cost] = (h, _eigvalsh(h))
  return out


@pytest.fixture(scope="module")
def ritz(cost_fns, z) -> dict:
  """cost -> ``extreme_eigenpairs`` at z with NUM_ITERS < 600 iterations."""
  out = {}
  for cost, fn in cost_fns.items():
    hvp, dim = hessian.make_hvp(fn, z)
    out[cost] = hessian.extreme_eigenpairs(hvp, dim, NUM_ITERS)
  return out


# ----------------------------------------------------------------------------- dense vs HVP


def _assert_dense_matches_hvp(fn, primal, h=None, num_vectors=3, seed=0):
  """``dense_hessian(fn, primal) @ v == make_hvp(fn, primal)[0](v)`` for random v (``h``: the
  dense Hessian if already computed)."""
  h = _dense(fn, primal) if h is None else h
  hvp, dim = hessian.make_hvp(fn, primal)
  hvp = jax.jit(hvp)
  assert h.shape == (dim, dim)
  rng = np.random.default_rng(seed)
  for _ in range(num_vectors):
    v = rng.normal(size=dim).astype(np.float32)
    want = h @ v
    got = np.asarray(hvp(jnp.asarray(v)), np.float64)
    assert np.all(np.isfinite(got))
    assert _max_abs(want) > 0
    assert _max_abs(got - want) <= 1e-5 * _max_abs(want)


@pytest.mark.parametrize("cost", hessian.COSTS)
def test_dense_hessian_matches_hvp_embedding_cost(cost, cost_fns, z, dense):
  _assert_dense_matches_hvp(cost_fns[cost], z, h=dense[cost][0])


@pytest.mark.parametrize("cost", hessian.COSTS)
def test_dense_hessian_matches_hvp_linear_direction_cost(cost, x, z):
  fn = hessian.make_linear_direction_cost(x, z, cost)
  _assert_dense_matches_hvp(fn, jnp.zeros((DIM, x.shape[1]), jnp.float32))


def test_dense_hessian_matches_hvp_pytree_primal(x, z):
  rng = np.random.default_rng(1)
  hidden, out = 8, 16

  def init(*shape):
    return jnp.asarray(rng.normal(size=shape) / np.sqrt(shape[0]), jnp.float32)
  params = {"w1": init(DIM, hidden), "b1": init(hidden), "w2": init(hidden, out),
            "b2": init(out)}
  fn = hessian.make_recon_param_cost(_mlp, z, x[:, :out])
  _assert_dense_matches_hvp(fn, params)


@pytest.mark.parametrize("cost", hessian.COSTS)
def test_dense_hessian_is_symmetric(cost, dense):
  h, _ = dense[cost]
  assert h.shape == (N * DIM, N * DIM)
  assert _max_abs(h - h.T) <= 1e-5 * _max_abs(h)


# ----------------------------------------------------------------------------- the costs


def test_gme_embedding_cost_matches_costs_gme(x, z, cost_fns):
  fn = cost_fns["gme"]
  want = costs.gme_cost(x, z)
  np.testing.assert_allclose(float(fn(z)), float(want), rtol=1e-5)
  assert float(want) > 0.1     # a generic point, not near a minimum
  g = np.asarray(jax.grad(fn)(z))
  g_ref = np.asarray(jax.grad(lambda zz: costs.gme_cost(x, zz))(z))
  np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-5 * _max_abs(g_ref))


def test_unknown_cost_raises(x, z):
  with pytest.raises(ValueError, match="Unknown embedding cost"):
    hessian.make_embedding_cost(x, "mds")
  with pytest.raises(ValueError, match="Unknown embedding cost"):
    hessian.make_linear_direction_cost(x, z, "stress")
  with pytest.raises(ValueError, match="Unknown embedding cost"):
    hessian.embedding_cost(jnp.zeros((N, N)), z, "GME")


# ----------------------------------------------------------------------------- Lanczos


@pytest.mark.parametrize("cost", hessian.COSTS)
def test_lanczos_extremes_match_dense_spectrum(cost, dense, ritz):
  _, evals = dense[cost]
  res = ritz[cost]
  assert res["num_iters"] == NUM_ITERS < N * DIM
  # At this Z both extremes are well away from 0 (lambda_min clearly negative), so each is
  # compared relative to its own magnitude.
  scale = _spectral_radius(evals)
  assert evals[0] < -0.05 * scale and evals[-1] > 0.05 * scale
  assert abs(res["lambda_min"] - evals[0]) <= 1e-3 * abs(evals[0])
  assert abs(res["lambda_max"] - evals[-1]) <= 1e-3 * abs(evals[-1])
  # Ritz values interlace: none lies outside the spectrum (up to float32 rounding).
  assert np.all(res["ritz_values"] >= evals[0] - 1e-5 * scale)
  assert np.all(res["ritz_values"] <= evals[-1] + 1e-5 * scale)


@pytest.mark.parametrize("cost", hessian.COSTS)
def test_ritz_vectors_are_eigenvectors(cost, dense, ritz):
  h, evals = dense[cost]
  res = ritz[cost]
  scale = _spectral_radius(evals)
  for name in ("min", "max"):
    v, lam = res[f"v_{name}"], res[f"lambda_{name}"]
    np.testing.assert_allclose(np.linalg.norm(v), 1.0, rtol=1e-6)
    true_residual = np.linalg.norm(h @ v - lam * v)
    assert true_residual <= 1e-4 * scale
    # Converged: the recurrence's residual is (near) 0 and bounds the true one up to the
    # float32 rounding floor.
    assert 0.0 <= res[f"residual_{name}"] <= 1e-4 * scale
    assert true_residual <= res[f"residual_{name}"] + 1e-5 * scale


@pytest.mark.parametrize("cost", hessian.COSTS)
def test_reported_residual_matches_true_residual_before_convergence(cost, cost_fns, z, dense):
  # With only 10 iterations nothing has converged and |beta_k y_k| must equal |H v - lambda v|.
  h, evals = dense[cost]
  scale = _spectral_radius(evals)
  hvp, dim = hessian.make_hvp(cost_fns[cost], z)
  res = hessian.extreme_eigenpairs(hvp, dim, 10)
  for name in ("min", "max"):
    v, lam = res[f"v_{name}"], res[f"lambda_{name}"]
    true_residual = np.linalg.norm(h @ v - lam * v)
    assert true_residual > 1e-3 * scale     # not converged, so the check below has teeth
    np.testing.assert_allclose(res[f"residual_{name}"], true_residual, rtol=1e-3)


def test_lanczos_basis_orthonormal_and_tridiagonal(dense):
  h, evals = dense["gme"]
  h32 = jnp.asarray(h, jnp.float32)
  alpha, beta, basis = hessian.lanczos(lambda v: h32 @ v, N * DIM, NUM_ITERS,
                                       jax.random.key(3))
  assert alpha.shape == beta.shape == (NUM_ITERS,)
  assert basis.shape == (NUM_ITERS, N * DIM)
  v = np.asarray(basis, np.float64)
  assert _max_abs(v @ v.T - np.eye(NUM_ITERS)) <= 1e-5
  t = np.asarray(hessian.tridiagonal(alpha, beta), np.float64)
  assert t.shape == (NUM_ITERS, NUM_ITERS)
  np.testing.assert_array_equal(t, t.T)
  assert np.all(np.triu(t, 2) == 0)
  scale = _spectral_radius(evals)
  assert _max_abs(t - v @ h @ v.T) <= 1e-5 * scale


def test_lanczos_identity_breakdown(x):
  # The reconstruction loss's Hessian w.r.t. the outputs is (2 / x.size) I: Lanczos breaks down
  # at every step and must restart instead of dividing by 0.
  xj = jnp.asarray(x)
  hvp, dim = hessian.make_hvp(hessian.make_recon_output_cost(xj), xj)
  assert dim == x.size
  res = hessian.extreme_eigenpairs(hvp, dim, 20)
  want = 2.0 / x.size
  assert all(np.all(np.isfinite(res[k])) for k in
             ("ritz_values", "v_min", "v_max", "residual_min", "residual_max"))
  np.testing.assert_allclose(res["ritz_values"], want, rtol=1e-5)
  np.testing.assert_allclose([res["lambda_min"], res["lambda_max"]], want, rtol=1e-5)
  assert res["residual_min"] <= 1e-5 * want and res["residual_max"] <= 1e-5 * want


def test_lanczos_few_distinct_eigenvalues():
  # A 3-dimensional Krylov space in dimension 50: breakdown after 3 steps, then restarts in
  # the (also invariant) orthogonal complement; all 50 Ritz values are exact.
  levels = np.array([-1.0, 0.5, 3.0], np.float32)
  diag = jnp.asarray(np.repeat(levels, [17, 17, 16]))
  res = hessian.extreme_eigenpairs(lambda v: diag * v, 50, 50)
  assert np.all(np.isfinite(res["ritz_values"]))
  assert np.all(np.isfinite(res["v_min"])) and np.all(np.isfinite(res["v_max"]))
  np.testing.assert_allclose(res["lambda_min"], -1.0, atol=1e-5)
  np.testing.assert_allclose(res["lambda_max"], 3.0, atol=1e-5)
  dist = np.min(np.abs(res["ritz_values"][:, None] - levels[None, :]), axis=1)
  assert np.all(dist <= 1e-5)


def test_lanczos_rejects_empty_krylov_space():
  with pytest.raises(ValueError):
    hessian.lanczos(lambda v: v, 10, 0, jax.random.key(0))


def test_lanczos_at_matches_extreme_eigenpairs(x, cost_fns, z, ritz):
  fn = cost_fns["gme"]
  run = hessian.lanczos_at(fn, NUM_ITERS)
  res = hessian.ritz_extremes(*run(z))
  ref = ritz["gme"]
  scale = _spectral_radius([ref["lambda_min"], ref["lambda_max"]])
  assert res["num_iters"] == NUM_ITERS
  for name in ("min", "max"):
    assert abs(res[f"lambda_{name}"] - ref[f"lambda_{name}"]) <= 1e-5 * scale
  # A second primal of the same shape reuses the compiled function and gets its own spectrum.
  z2 = _random_embedding(x, seed=1)
  res2 = hessian.ritz_extremes(*run(z2))
  evals2 = _eigvalsh(_dense(fn, z2))
  assert abs(res2["lambda_min"] - evals2[0]) <= 1e-3 * abs(evals2[0])
  assert abs(res2["lambda_max"] - evals2[-1]) <= 1e-3 * abs(evals2[-1])
  assert abs(res2["lambda_min"] - res["lambda_min"]) > 1e-2 * scale


# ----------------------------------------------------------------------------- the theory


def test_collapsed_map_closed_form(x, cost_fns):
  # Prop. 2: at a constant map the GME gradient vanishes and the Hessian is
  # -(8 / n^2) Lap (x) I_d, Lap the graph Laplacian of W_ij = log(1 + |x_i - x_j|^2).
  fn = cost_fns["gme"]
  z0 = jnp.zeros((N, DIM), jnp.float32)
  assert _max_abs(jax.grad(fn)(z0)) == 0.0
  x64 = x.astype(np.float64)
  w = np.log1p(np.sum((x64[:, None, :] - x64[None, :, :]) ** 2, axis=-1))
  lap = np.diag(w.sum(axis=1)) - w
  want = -(8.0 / N**2) * np.kron(lap, np.eye(DIM))
  h = _dense(fn, z0)
  assert _max_abs(h - want) <= 1e-5 * _max_abs(want)
  evals = _eigvalsh(h)
  # Translations (d of them) are flat; every other direction curves down.
  assert abs(evals[-1]) <= 1e-5 * abs(evals[0])
  assert evals[0] < 0 and evals[-DIM - 1] < -1e-3 * abs(evals[0])


def test_curvature_growth_with_scale(cost_fns, z, dense):
  # lambda_max of the Hessian at 8 Z vs at Z, whose distances are comparable to the data's.
  # With s = |u|^2, u = z_i - z_j, a pair's term (t - phi(s))^2 has Hessian
  #   2 [phi'(s)^2 grad s grad s^T - (t - phi(s)) (phi''(s) grad s grad s^T + phi'(s) hess s)],
  # grad s ~ u, hess s constant. Squared cost (phi = id): the first term is ~|u|^2 and the
  # residual t - s is ~ -beta^2 |u|^2 at large beta, so the curvature grows like beta^2 (the
  # ratio is ~77 here: 64, plus the residual term, which is small at beta = 1). Log cost
  # (phi = log1p): phi' grad s = 2 u / (1 + |u|^2), phi'' grad s grad s^T and phi' hess s
  # are all bounded and the residual grows like log(beta) (Thm 3), so lambda_max cannot grow
  # like beta^2 (here it even shrinks, ratio ~0.04).
  ratios = {}
  for cost, fn in cost_fns.items():
    top = _eigvalsh(_dense(fn, 8.0 * z))[-1]
    ratios[cost] = top / dense[cost][1][-1]
  assert 30.0 < ratios["sqdist"] < 100.0
  assert ratios["gme"] < 2.0


def test_feature_hessian_spectrum_matches_dense(x, z):
  p, d_out = 12, 3
  phi = hessian.random_features(z, p, jax.random.key(5))
  targets = jnp.asarray(x[:, 20:20 + d_out])
  c0 = jnp.zeros((p, d_out), jnp.float32)
  h = _dense(lambda c: costs.recon_mse(targets, phi @ c), c0)
  got = hessian.feature_hessian_spectrum(phi, d_out)
  assert got.shape == (p,)
  want = _eigvalsh(h)
  np.testing.assert_allclose(np.repeat(got, d_out), want, rtol=0,
                             atol=1e-5 * _max_abs(want))


def test_random_features_shape_determinism_and_bound(z):
  p = 12
  phi = np.asarray(hessian.random_features(z, p, jax.random.key(5)))
  assert phi.shape == (N, p)
  again = np.asarray(hessian.random_features(z, p, jax.random.key(5)))
  np.testing.assert_array_equal(phi, again)
  other = np.asarray(hessian.random_features(z, p, jax.random.key(6)))
  assert _max_abs(phi - other) > 1e-2
  assert _max_abs(phi) <= np.sqrt(2.0 / p) * (1 + 1e-6)
