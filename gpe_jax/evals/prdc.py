"""Improved precision and recall with k-NN manifolds (Kynkaanniemi et al., 2019).

Each set is approximated by the union of balls around its points, the ball of point i having
radius r_i = distance to its k-th nearest OTHER point of the same set (k = 3 by default).

- precision = fraction of fake points inside at least one real ball
  (exists i: |fake - real_i| <= r_i^real);
- recall = fraction of real points inside at least one fake ball.

Everything is blockwise: the query set is cut into blocks of ``block`` rows, the last one padded
to the same size (so a single compile serves all blocks), and each block is compared with the
whole reference set by one jitted function, so at most a [block, N] distance matrix exists at a
time. Distances use the Gram form |a|^2 + |b|^2 - 2 a.b, clipped at 0, in at least float32 with
``Precision.HIGHEST`` matmuls. Balls are tested on squared distances (d^2 <= r^2).

Ties: a point exactly on a ball's edge (distance == radius) is INSIDE. This is the rule of
Kynkaanniemi, Karras, Laine, Lehtinen and Aila, "Improved Precision and Recall Metric for
Assessing Generative Models" (NeurIPS 2019), whose reference implementation tests distance <=
radius; the ``prdc`` package of Naeem, Oh, Uh, Choi and Yoo, "Reliable Fidelity and Diversity
Metrics for Generative Models" (ICML 2020), tests distance < radius instead. The two differ only
on exact ties, which real-valued features almost never produce but duplicated or quantised
features do: a point with k or more exact copies in its set has radius 0, and its ball still
contains it and its copies, whereas under the strict rule a radius-0 ball contains nothing.
Copies are ordinary neighbours: a point's own row is the only one excluded from its k-NN
radius.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from gpe_jax import costs

_HI = jax.lax.Precision.HIGHEST


def _sq_dists(a: jax.Array, b: jax.Array) -> jax.Array:
  """[B, F], [N, F] -> [B, N] squared Euclidean distances (Gram form, clipped at 0)."""
  na = jnp.sum(a * a, axis=1)
  nb = jnp.sum(b * b, axis=1)
  gram = jnp.matmul(a, b.T, precision=_HI)
  return jnp.maximum(na[:, None] + nb[None, :] - 2.0 * gram, 0.0)


@functools.partial(jax.jit, static_argnames=("k",))
def _knn_sq_radii_block(q: jax.Array, ref: jax.Array, start: jax.Array, k: int) -> jax.Array:
  """Squared distance of each query row to its k-th nearest other row of ``ref``.

  Args:
    q: [B, F] rows ``start .. start + B - 1`` of ``ref`` (padding rows past the end allowed).
    ref: [N, F] the full set.
    start: [] int32 index in ``ref`` of the first row of ``q``.
    k: neighbour rank (1 = nearest other point).

  Returns:
    [B] squared k-NN radii (garbage for padding rows, which the caller drops).
  """
  d2 = _sq_dists(q, ref)
  rows = start + jnp.arange(q.shape[0])
  self_mask = rows[:, None] == jnp.arange(ref.shape[0])[None, :]
  d2 = jnp.where(self_mask, jnp.inf, d2)  # exclude each point itself
  neg_topk, _ = jax.lax.top_k(-d2, k)  # [B, k], nearest first
  return -neg_topk[:, k - 1]


@jax.jit
def _inside_any_ball_block(q: jax.Array, ref: jax.Array, ref_sq_radii: jax.Array) -> jax.Array:
  """[B, F], [N, F], [N] -> [B] bool: is each query row inside some ball of ``ref``.

  Inside includes the edge (d^2 <= r^2, the rule of Kynkaanniemi et al. 2019; see the module
  docstring).
  """
  d2 = _sq_dists(q, ref)
  return jnp.any(d2 <= ref_sq_radii[None, :], axis=1)


def _blocks(x: jax.Array, block: int):
  """Yield ``(start, padded_block [B, F], n_valid)`` over the rows of ``x`` [N, F]."""
  n = x.shape[0]
  b = max(1, min(block, n))
  for start in range(0, n, b):
    blk = x[start:start + b]
    n_valid = blk.shape[0]
    if n_valid < b:
      blk = jnp.pad(blk, ((0, b - n_valid), (0, 0)))
    yield start, blk, n_valid


def _knn_sq_radii(x: jax.Array, k: int, block: int) -> np.ndarray:
  """[N, F] -> [N] squared k-NN radii (host array)."""
  n = x.shape[0]
  if not 1 <= k < n:
    raise ValueError(f"need 1 <= k < N (k other points per point), got k={k}, N={n}")
  out = []
  for start, blk, n_valid in _blocks(x, block):
    r2 = _knn_sq_radii_block(blk, x, jnp.asarray(start, jnp.int32), k)
    out.append(np.asarray(r2)[:n_valid])
  return np.concatenate(out)


def knn_radii(features, k: int = 3, block: int = 1024) -> np.ndarray:
  """Distance of each point to its k-th nearest OTHER point of the same set.

  Args:
    features: [N, F] features (extra trailing axes are flattened into F).
    k: neighbour rank, 1 <= k < N.
    block: rows per block; at most a [block, N] distance matrix is formed.

  Returns:
    [N] NumPy array of k-NN radii (Euclidean, not squared). Copies of a point count as its
    neighbours (at distance 0), so a point with k or more duplicates has radius 0.
  """
  x = costs.float_rows(features)
  return np.sqrt(_knn_sq_radii(x, k, block))


def _coverage(query: jax.Array, ref: jax.Array, ref_sq_radii: np.ndarray, block: int) -> float:
  """Fraction of ``query`` rows inside at least one ball of ``ref`` (edge included)."""
  r2 = jnp.asarray(ref_sq_radii, ref.dtype)
  hits = 0
  for _, blk, n_valid in _blocks(query, block):
    inside = _inside_any_ball_block(blk, ref, r2)
    hits += int(np.asarray(inside)[:n_valid].sum())
  return hits / query.shape[0]


def precision_recall(real, fake, k: int = 3, block: int = 1024) -> dict[str, float]:
  """Improved precision and recall of ``fake`` against ``real``.

  Args:
    real: [N, F] real features.
    fake: [M, F] generated features (same F).
    k: neighbour rank for the k-NN balls (1 <= k < min(N, M)).
    block: rows per block; at most a [block, max(N, M)] distance matrix is formed.

  Returns:
    ``{"precision": p, "recall": r}`` as Python floats in [0, 1]: p is the fraction of fake
    points inside at least one real k-NN ball, r the fraction of real points inside at least
    one fake k-NN ball. A point on a ball's edge (distance == radius) is inside, as in the
    reference implementation of Kynkaanniemi et al., "Improved Precision and Recall Metric for
    Assessing Generative Models" (NeurIPS 2019); the ``prdc`` package of Naeem et al. (ICML
    2020) counts it outside (distance < radius). The rules differ only on exact ties, e.g. on
    duplicated or quantised features (see the module docstring).
  """
  x_real, x_fake = costs.float_rows(real), costs.float_rows(fake)
  if x_real.shape[1] != x_fake.shape[1]:
    raise ValueError(f"feature dims differ: {x_real.shape[1]} vs {x_fake.shape[1]}")
  dtype = jnp.result_type(x_real.dtype, x_fake.dtype)
  x_real, x_fake = x_real.astype(dtype), x_fake.astype(dtype)
  r2_real = _knn_sq_radii(x_real, k, block)
  r2_fake = _knn_sq_radii(x_fake, k, block)
  precision = _coverage(x_fake, x_real, r2_real, block)
  recall = _coverage(x_real, x_fake, r2_fake, block)
  return {"precision": float(precision), "recall": float(recall)}
