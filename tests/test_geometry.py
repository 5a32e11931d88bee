"""Tests of gpe_jax.evals.geometry (against float64 NumPy references) and gpe_jax.plots."""
from __future__ import annotations

import math

import numpy as np
import pytest

from gpe_jax import costs
from gpe_jax import plots
from gpe_jax.evals import geometry

N, D = 120, 16  # one data shape for most tests: each new shape costs a compilation
ALPHAS = (1.1, 1.5, 2.0)


def _data(seed=0, n=N, dim=D):
  return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def _orthogonal(dim, seed=1):
  q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))
  return (q * np.sign(np.diag(r))).astype(np.float32)


def _expected_keys(n=N, k=10):
  keys = {"gme_all_pairs", "gme_all_pairs_distinct", "spearman_dist", "num_points",
          f"knn_preservation_k{min(k, n - 1)}"}
  keys |= {f"ratio_q{int(100 * q):02d}" for q in (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)}
  for a in ALPHAS:
    keys |= {f"weak_bilip_frac_a{a:g}", f"weak_bilip_bound_a{a:g}"}
  return keys


def _fracs(m, alphas=ALPHAS):
  return [m[f"weak_bilip_frac_a{a:g}"] for a in alphas]


# ----------------------------------------------------------------------------- metrics


def test_keys_exact_and_plain_floats():
  x = _data()
  m = geometry.geometry_metrics(x, x[:, :4])
  assert set(m) == _expected_keys()
  assert {"ratio_q01", "ratio_q50", "ratio_q99", "weak_bilip_frac_a1.5",
          "weak_bilip_bound_a2", "knn_preservation_k10"} <= set(m)
  assert all(type(v) is float for v in m.values())
  assert m["num_points"] == N


def test_isometry_is_perfect():
  x = _data()
  # A rotation plus a translation: every metric must read "perfect".
  z = x @ _orthogonal(D) + 5.0
  m = geometry.geometry_metrics(x, z)
  assert m["gme_all_pairs"] < 1e-9
  assert m["gme_all_pairs_distinct"] < 1e-9
  assert _fracs(m) == [1.0, 1.0, 1.0]
  for a in ALPHAS:
    assert m[f"weak_bilip_bound_a{a:g}"] == pytest.approx(1.0, abs=1e-6)
  for key in (k for k in m if k.startswith("ratio_q")):
    assert m[key] == pytest.approx(1.0, abs=1e-3), key
  assert m["knn_preservation_k10"] == 1.0
  assert m["spearman_dist"] == pytest.approx(1.0, abs=1e-5)


def test_collapsed_map():
  x = _data()
  m = geometry.geometry_metrics(x, np.zeros((N, 4), np.float32))
  # Data distances are ~sqrt(2 D): every pair is distorted by ~log(33) >> log(2).
  assert m["weak_bilip_frac_a1.1"] == 0.0
  assert m["weak_bilip_frac_a1.5"] == 0.0
  for a in ALPHAS:
    assert m[f"weak_bilip_frac_a{a:g}"] >= m[f"weak_bilip_bound_a{a:g}"] - 1e-6
    assert m[f"weak_bilip_bound_a{a:g}"] == 0.0
  assert m["gme_all_pairs"] > 1.0
  assert m["ratio_q50"] == 0.0
  assert m["spearman_dist"] == 0.0  # constant latent distances: defined as 0
  assert 0.0 <= m["knn_preservation_k10"] <= 1.0


def test_markov_bound_holds_on_random_maps():
  x = _data()
  rng = np.random.default_rng(3)
  alphas = (1.05, 1.1, 1.5, 2.0, 3.0, 10.0)
  informative = 0
  for trial in range(6):
    d = (16, 8, 4)[trial % 3]
    if trial < 3:  # near-isometries: the bound is far from vacuous
      w = _orthogonal(D, seed=10 + trial)[:, :d] * np.sqrt(D / d) * 0.9
      z = x @ w + 0.1 * rng.normal(size=(N, d)).astype(np.float32)
    else:  # arbitrary nonlinear maps
      w = rng.normal(size=(D, d)).astype(np.float32) * rng.uniform(0.1, 3.0)
      z = np.tanh(x @ w) * rng.uniform(0.5, 5.0)
    m = geometry.geometry_metrics(x, z, alphas=alphas)
    for a in alphas:
      frac, bound = m[f"weak_bilip_frac_a{a:g}"], m[f"weak_bilip_bound_a{a:g}"]
      assert 0.0 <= bound <= 1.0
      assert frac >= bound - 1e-6, (trial, a, frac, bound)
      assert bound == pytest.approx(
          max(0.0, 1.0 - m["gme_all_pairs_distinct"] / math.log(a) ** 2), abs=1e-12)
      informative += bound > 0.5
  assert informative > 0


def test_uniform_scaling_ratios():
  x = _data()
  m = geometry.geometry_metrics(x, 3.0 * x)
  for key in (k for k in m if k.startswith("ratio_q")):
    assert m[key] == pytest.approx(3.0, rel=1e-4), key
  assert m["knn_preservation_k10"] == 1.0
  assert m["spearman_dist"] == pytest.approx(1.0, abs=1e-5)


def test_gme_values_and_pair_normalisation():
  x = _data()
  z = np.tanh(x[:, :8])
  m = geometry.geometry_metrics(x, z)
  assert m["gme_all_pairs"] == pytest.approx(float(costs.gme_cost(x, z)), rel=1e-5)
  assert m["gme_all_pairs_distinct"] == pytest.approx(m["gme_all_pairs"] * N / (N - 1), rel=1e-5)


def _reference(x, z, alphas, k, quantiles):
  """float64 NumPy/SciPy reference of geometry_metrics."""
  stats = pytest.importorskip("scipy.stats")
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  z = np.asarray(z, np.float64).reshape(len(z), -1)
  n = len(x)
  dx = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
  dz = np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))
  ld = np.log1p(dx ** 2) - np.log1p(dz ** 2)
  iu = np.triu_indices(n, 1)
  px, pz, pl = dx[iu], dz[iu], ld[iu]
  ref = {"gme_all_pairs": np.mean(ld ** 2), "gme_all_pairs_distinct": np.mean(pl ** 2)}
  ratio = pz[px > 0] / px[px > 0]
  for q in quantiles:
    ref[f"ratio_q{int(100 * q):02d}"] = np.quantile(ratio, q)
  for a in alphas:
    ref[f"weak_bilip_frac_a{a:g}"] = np.mean(np.abs(pl) <= np.log(a))
  np.fill_diagonal(dx, np.inf)
  np.fill_diagonal(dz, np.inf)
  nx, nz = np.argsort(dx, 1)[:, :k], np.argsort(dz, 1)[:, :k]
  ref[f"knn_preservation_k{k}"] = np.mean(
      [len(set(a) & set(b)) / k for a, b in zip(nx, nz)])
  ref["spearman_dist"] = stats.spearmanr(px, pz).statistic
  return ref


@pytest.mark.parametrize("quantise", [False, True])
def test_against_float64_reference(quantise):
  rng = np.random.default_rng(7)
  x = rng.uniform(-1, 1, size=(40, 3, 4, 2)).astype(np.float32)  # image-shaped input
  z = x.reshape(40, -1)[:, :5] @ rng.normal(size=(5, 3)).astype(np.float32)
  if quantise:
    # Many tied latent distances: checks the average-rank Spearman. Integer points with zero
    # column sums keep the ties exact through the centring and the float32 Gram form (with
    # generic values, float32 rounding would split float64 ties into near-ties).
    z = np.round(z)
    z[-1] = -z[:-1].sum(axis=0)
  quantiles = (0.1, 0.5, 0.9)
  m = geometry.geometry_metrics(x, z, alphas=ALPHAS, knn_k=5, quantiles=quantiles)
  ref = _reference(x, z, ALPHAS, 5, quantiles)
  for key, val in ref.items():
    if quantise and key.startswith("knn"):
      continue  # tied latent distances make the kNN sets ambiguous
    if key.startswith("weak_bilip_frac") or key.startswith("knn"):
      assert m[key] == pytest.approx(val, abs=1.5 / (40 * 39 / 2)), key
    else:
      assert m[key] == pytest.approx(val, rel=1e-4, abs=1e-6), key


def test_average_ranks_match_scipy():
  stats = pytest.importorskip("scipy.stats")
  v = np.random.default_rng(0).integers(0, 7, size=200).astype(np.float32)
  np.testing.assert_allclose(np.asarray(geometry._average_ranks(v)),
                             stats.rankdata(v) - 1.0)


def test_knn_k_is_clipped():
  x = _data(n=6, dim=3)
  m = geometry.geometry_metrics(x, x, knn_k=10)
  assert m["knn_preservation_k5"] == 1.0
  assert "knn_preservation_k10" not in m


def test_input_validation():
  x = _data()
  with pytest.raises(ValueError):
    geometry.geometry_metrics(x, x[:10])
  with pytest.raises(ValueError):
    geometry.geometry_metrics(x, x, alphas=(1.0,))


def test_pair_distances():
  x = _data()
  z = 2.0 * x[:, :3]
  dx, dz = geometry.pair_distances(x, z, max_pairs=500, seed=0)
  assert dx.shape == dz.shape == (500,)
  dx2, dz2 = geometry.pair_distances(x, z, max_pairs=500, seed=0)
  np.testing.assert_array_equal(dx, dx2)
  np.testing.assert_array_equal(dz, dz2)
  assert np.all(dx > 0)  # distinct pairs of distinct points
  # Few points: every distinct pair, checked against a direct computation.
  xs, zs = x[:10], z[:10]
  dx, dz = geometry.pair_distances(xs, zs, max_pairs=500)
  iu = np.triu_indices(10, 1)
  ref_x = np.linalg.norm(xs[:, None].astype(np.float64) - xs[None], axis=-1)[iu]
  ref_z = np.linalg.norm(zs[:, None].astype(np.float64) - zs[None], axis=-1)[iu]
  np.testing.assert_allclose(dx, ref_x, rtol=1e-12)
  np.testing.assert_allclose(dz, ref_z, rtol=1e-12)


# ----------------------------------------------------------------------------- plots


def _is_png(path):
  with open(path, "rb") as f:
    head = f.read(8)
  return head == b"\x89PNG\r\n\x1a\n"


def test_loss_curves(tmp_path):
  records = [{"stage": "encoder", "step": s, "loss": 1.0 / (s + 1)} for s in range(0, 50, 5)]
  records += [{"stage": "encoder", "step": 45, "val_gme": 0.02, "val_frac": 0.9}]
  records += [{"stage": "decoder", "step": 1, "loss": 0.3},
              {"stage": "decoder", "step": 2, "loss": 0.2, "val_mse": 0.25}]
  records += [{"stage": "prior", "step": 1, "loss": -0.5, "note": "text is ignored"}]
  path = plots.loss_curves(records, tmp_path / "loss.png", title="losses")
  assert path == str(tmp_path / "loss.png") and _is_png(path)
  assert _is_png(plots.loss_curves([], tmp_path / "empty.png"))


@pytest.mark.parametrize("channels", [1, 3])
def test_image_grid(tmp_path, channels):
  imgs = np.random.default_rng(0).uniform(-1, 1, size=(7, 8, 8, channels))
  path = plots.image_grid(imgs, tmp_path / f"grid{channels}.png", title="x")
  assert _is_png(path)
  assert _is_png(plots.image_grid(imgs, tmp_path / "grid_nrow.png", nrow=2))


def test_image_grid_vectors_fallback(tmp_path):
  vecs = np.random.default_rng(0).normal(size=(10, 30))
  assert _is_png(plots.image_grid(vecs, tmp_path / "vecs.png"))


def test_recon_grid(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, size=(12, 8, 8, 3))
  path = plots.recon_grid(x, 0.9 * x, tmp_path / "recon.png", n=10, title="recon")
  assert _is_png(path)
  v = rng.normal(size=(12, 20))
  assert _is_png(plots.recon_grid(v, v + 0.1, tmp_path / "recon_vec.png", n=5))


@pytest.mark.parametrize("d", [2, 5])
def test_latent_scatter(tmp_path, d):
  rng = np.random.default_rng(0)
  z = rng.normal(size=(200, d))
  labels = rng.integers(0, 10, size=200)
  assert _is_png(plots.latent_scatter(z, labels, tmp_path / f"z{d}.png", title="z"))
  assert _is_png(plots.latent_scatter(z, None, tmp_path / f"z{d}_nolab.png"))
  many = rng.integers(0, 50, size=200)
  assert _is_png(plots.latent_scatter(z, many, tmp_path / f"z{d}_many.png"))


def test_distortion_plot(tmp_path):
  x = _data()
  dx, dz = geometry.pair_distances(x, np.tanh(x[:, :4]), max_pairs=1000)
  path = plots.distortion_plot(dx, dz, tmp_path / "distortion.png", title="T")
  assert _is_png(path)
