"""Held-out geometry metrics of an encoder: how well T preserves pairwise distances.

The GPE encoder is trained to make the GME cost small (PAPERS §1.1). A small GME buys a
probabilistic weak bi-Lipschitz guarantee (PAPERS §1.2): by Markov's inequality, the fraction
of pairs whose log-distortion exceeds log(alpha) is at most GME / (log alpha)^2. This module
measures both sides of that statement on held-out pairs, plus a few rank/ratio diagnostics:

- ``gme_all_pairs`` / ``gme_all_pairs_distinct``: the GME cost over all pairs of the geometry
  set (``eval.geometry_points`` held-out points), with the paper's n^2 normalisation and over
  distinct pairs only. Not the paper's held-out GME, which is ``val_gme``: the mean over
  held-out minibatches of the training batch size;
- ``ratio_qXX``: quantiles of |Tx - Ty| / |x - y| (an empirical Lipschitz profile);
- ``weak_bilip_frac_a{alpha}`` / ``weak_bilip_bound_a{alpha}``: the measured fraction of
  weakly alpha-bi-Lipschitz pairs, next to the Markov lower bound implied by the GME value;
- ``knn_preservation_k{k}``: overlap of the k-nearest-neighbour sets in data and latent space;
- ``spearman_dist``: rank correlation of data vs latent pairwise distances.

Everything works on the full [n, n] distance matrices (n up to a few thousand), computed in the
Gram form by ``costs.pairwise_sq_dists`` inside one jitted function; only the final scalars are
copied to the host.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gpe_jax import costs


@functools.lru_cache(maxsize=8)
def _upper_pair_index(n: int) -> np.ndarray:
  """Flat indices i * n + j of the distinct pairs i < j of an [n, n] matrix, [n (n-1) / 2]."""
  rows, cols = np.triu_indices(n, k=1)
  return (rows * n + cols).astype(np.int32)


def _average_ranks(v: jax.Array) -> jax.Array:
  """0-based ranks of v [m], ties sharing the mean of their ranks (as in Spearman's rho)."""
  s = jnp.sort(v)
  left = jnp.searchsorted(s, v, side="left")
  right = jnp.searchsorted(s, v, side="right")
  return 0.5 * (left + right - 1).astype(v.dtype)


def _pearson(a: jax.Array, b: jax.Array) -> jax.Array:
  """Pearson correlation of two [m] vectors; 0 where either is constant (undefined).

  Constancy is tested on the inputs, not on the centred sums, which rounding makes tiny but
  nonzero for a constant vector.
  """
  const = (jnp.max(a) == jnp.min(a)) | (jnp.max(b) == jnp.min(b))
  a = a - jnp.mean(a)
  b = b - jnp.mean(b)
  denom = jnp.sqrt(jnp.sum(a * a) * jnp.sum(b * b))
  ok = ~const & (denom > 0)
  return jnp.where(ok, jnp.sum(a * b) / jnp.where(ok, denom, 1.0), 0.0)


@functools.partial(jax.jit, static_argnames=("knn_k",))
def _geometry_core(x, z, pair_idx, log_alphas, quantiles, *, knn_k):
  """All heavy work of ``geometry_metrics`` on device.

  Args:
    x: [n, D] flattened data, float32 or wider.
    z: [n, d] embeddings, float32 or wider.
    pair_idx: [m] flat indices of the pairs i < j, m = n (n - 1) / 2.
    log_alphas: [a] values log(alpha).
    quantiles: [q] quantile levels in [0, 1].
    knn_k: neighbours per point, 1 <= knn_k <= n - 1.

  Returns:
    Dict of device scalars / small vectors: ``gme``, ``gme_pairs``, ``ratio_q`` [q],
    ``frac_count`` [a] (pairs within each alpha), ``knn_count`` (sum over points of the kNN
    overlaps) and ``spearman`` (see ``geometry_metrics``).
  """
  n = x.shape[0]
  # Distances are translation invariant; centring first shrinks the norms entering the Gram
  # form and so its cancellation error, which matters for close pairs of far-from-0 points.
  x = x - jnp.mean(x, axis=0)
  z = z - jnp.mean(z, axis=0)
  gme = costs.gme_cost(x, z)
  dx2 = costs.pairwise_sq_dists(x)
  dz2 = costs.pairwise_sq_dists(z).astype(dx2.dtype)

  # Distinct pairs i < j.
  px = dx2.reshape(-1)[pair_idx]
  pz = dz2.reshape(-1)[pair_idx]
  m = pair_idx.shape[0]
  log_dist = costs.log_distortion(px, pz)
  gme_pairs = jnp.sum(jnp.square(log_dist)) / m

  # Lipschitz ratios over pairs of distinct points (dx > 0); the rest are NaN and ignored.
  valid = px > 0
  ratio = jnp.where(valid, jnp.sqrt(pz) / jnp.sqrt(jnp.where(valid, px, 1.0)), jnp.nan)
  ratio_q = jnp.nanquantile(ratio, quantiles)

  # Weak alpha-bi-Lipschitz fractions, one per alpha.
  abs_ld = jnp.abs(log_dist)
  # Integer counts, divided on the host: exact fractions (no float32 mean over ~10^6 terms).
  frac_count = jnp.sum(abs_ld[None, :] <= log_alphas[:, None], axis=1, dtype=jnp.int32)

  # kNN sets (the point itself excluded by an infinite self-distance).
  inf_diag = jnp.where(jnp.eye(n, dtype=bool), jnp.inf, 0.0).astype(dx2.dtype)
  _, nn_x = jax.lax.top_k(-(dx2 + inf_diag), knn_k)
  _, nn_z = jax.lax.top_k(-(dz2 + inf_diag), knn_k)
  common = jnp.sum(nn_x[:, :, None] == nn_z[:, None, :], axis=(1, 2))
  knn_count = jnp.sum(common, dtype=jnp.int32)

  # Spearman: ranks of squared distances equal ranks of distances (monotone map).
  spearman = _pearson(_average_ranks(px) / m, _average_ranks(pz) / m)

  return {
      "gme": gme,
      "gme_pairs": gme_pairs,
      "ratio_q": ratio_q,
      "frac_count": frac_count,
      "knn_count": knn_count,
      "spearman": spearman,
  }


def geometry_metrics(
    x,
    z,
    *,
    alphas: Sequence[float] = (1.1, 1.5, 2.0),
    knn_k: int = 10,
    quantiles: Sequence[float] = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99),
) -> dict[str, float]:
  """Distance-preservation metrics of an embedding on held-out points.

  All pairwise statistics are over the distinct pairs i < j (each unordered pair once),
  except ``gme_all_pairs``, which keeps the paper's normalisation (mean over all n^2 ordered
  pairs, the zero diagonal included) so it is comparable with the stopping thresholds.

  Args:
    x: [n, ...] held-out data points (flattened to [n, D]; distances in float32 or wider).
    z: [n, d] their embeddings T(x).
    alphas: alpha > 1 values of the weak alpha-bi-Lipschitz check (PAPERS §1.2).
    knn_k: neighbourhood size of the kNN-preservation score (clipped to n - 1).
    quantiles: levels in [0, 1] of the |Tx - Ty| / |x - y| quantiles.

  Returns:
    Dict of plain Python floats:
      ``gme_all_pairs``: ``costs.gme_cost(x, z)``;
      ``gme_all_pairs_distinct``: mean squared log-distortion over distinct pairs
        (= gme_all_pairs * n / (n - 1));
      ``ratio_q{int(100 q):02d}``: quantiles of |Tx - Ty| / |x - y| over pairs with
        |x - y| > 0 (NaN if there is none);
      ``weak_bilip_frac_a{alpha:g}``: fraction of pairs with
        |log(1 + |x-y|^2) - log(1 + |Tx-Ty|^2)| <= log(alpha);
      ``weak_bilip_bound_a{alpha:g}``: its Markov lower bound
        max(0, 1 - gme_all_pairs_distinct / (log alpha)^2);
      ``knn_preservation_k{k}``: mean over points of |kNN_x(i) ∩ kNN_z(i)| / k;
      ``spearman_dist``: Spearman correlation of data vs latent distances (ties get average
        ranks; 0.0 when either side is constant, e.g. a collapsed encoder);
      ``num_points``: n.

  Raises:
    ValueError: if x and z disagree on n, n < 2, or some alpha <= 1.
  """
  x = costs.float_rows(x)
  z = costs.float_rows(z)
  n = x.shape[0]
  if z.shape[0] != n:
    raise ValueError(f"x has {n} points but z has {z.shape[0]}.")
  if n < 2:
    raise ValueError(f"Need at least 2 points for pairwise metrics, got {n}.")
  alphas = tuple(float(a) for a in alphas)
  if any(a <= 1.0 for a in alphas):
    raise ValueError(f"Every alpha must be > 1, got {alphas}.")
  quantiles = tuple(float(q) for q in quantiles)
  k = int(min(max(1, knn_k), n - 1))
  dtype = jnp.promote_types(x.dtype, z.dtype)

  out = _geometry_core(
      x.astype(dtype),
      z.astype(dtype),
      jnp.asarray(_upper_pair_index(n)),
      jnp.asarray([math.log(a) for a in alphas], dtype),
      jnp.asarray(quantiles, dtype),
      knn_k=k,
  )
  out = jax.device_get(out)

  gme_pairs = float(out["gme_pairs"])
  metrics = {
      "gme_all_pairs": float(out["gme"]),
      "gme_all_pairs_distinct": gme_pairs,
  }
  for q, v in zip(quantiles, out["ratio_q"]):
    metrics[f"ratio_q{int(round(100 * q)):02d}"] = float(v)
  m = n * (n - 1) // 2
  for a, count in zip(alphas, out["frac_count"]):
    metrics[f"weak_bilip_frac_a{a:g}"] = int(count) / m
    metrics[f"weak_bilip_bound_a{a:g}"] = max(0.0, 1.0 - gme_pairs / math.log(a) ** 2)
  metrics[f"knn_preservation_k{k}"] = int(out["knn_count"]) / (n * k)
  metrics["spearman_dist"] = float(out["spearman"])
  metrics["num_points"] = float(n)
  return metrics


def pair_distances(
    x, z, max_pairs: int = 20000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """Data and latent distances of a deterministic random subset of distinct pairs.

  For the distortion plot: scattering all n^2 / 2 pairs of a few thousand points is slow and
  unreadable, a fixed random subset is enough. Distances are taken directly from differences
  in float64 (no Gram-form cancellation), in chunks to bound memory.

  Args:
    x: [n, ...] data points.
    z: [n, d] embeddings.
    max_pairs: at most this many pairs; all n (n - 1) / 2 pairs if there are fewer.
    seed: seed of the subset (same seed and n -> same pairs).

  Returns:
    (dx [m], dz [m]) float64 NumPy arrays, |x_i - x_j| and |z_i - z_j| for the chosen i < j.
  """
  x = np.asarray(x, dtype=np.float64).reshape(np.shape(x)[0], -1)
  z = np.asarray(z, dtype=np.float64).reshape(np.shape(z)[0], -1)
  n = x.shape[0]
  if z.shape[0] != n:
    raise ValueError(f"x has {n} points but z has {z.shape[0]}.")
  total = n * (n - 1) // 2
  if total == 0:
    return np.zeros((0,)), np.zeros((0,))
  rows, cols = np.triu_indices(n, k=1)
  if total > max_pairs:
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(total, size=max_pairs, replace=False))
    rows, cols = rows[pick], cols[pick]

  def dists(a, chunk):
    out = np.empty(rows.shape[0])
    for s in range(0, rows.shape[0], chunk):
      diff = a[rows[s:s + chunk]] - a[cols[s:s + chunk]]
      out[s:s + chunk] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return out

  # ~32 MB of float64 differences per chunk.
  chunk = lambda a: max(1, (1 << 22) // max(1, a.shape[1]))
  return dists(x, chunk(x)), dists(z, chunk(z))
