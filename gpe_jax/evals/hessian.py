"""Curvature of the GPE objectives: dense Hessians, Hessian-vector products and Lanczos.

The GPE paper's Section 5 (PAPERS §1.6) makes predictions about second derivatives:

  * Thm 3: the Hessian of the GME cost is bounded above by O(log beta) on beta-Lipschitz maps,
    where a squared (MDS-type) cost's bound grows like beta^2; its lower bound tends to 0 as the
    GME value decreases (the cost becomes "more convex" as training succeeds);
  * Thm 4: the reconstruction loss's Hessian, as a function of the decoder on the latent space,
    is better conditioned the closer the encoder is to an isometry;
  * Prop. 2: a collapsed (constant) map has negative curvature in every non-constant direction.

For a batch, the embedding costs are functions of the embedded points Z [n, d]; their Hessian
is (n d) x (n d). This module gives, as pure functions and factories of jittable closures:

  * the costs themselves, written in the Gram form (|a|^2 + |b|^2 - 2 a.b: never an (n, n, d)
    tensor), with the data-space targets computed once: ``make_embedding_cost`` (w.r.t. Z) and
    ``make_linear_direction_cost`` (w.r.t. a linear map A added to the encoder, Z0 + X A^T: the
    Lipschitz-normalised directions of Thm 3);
  * ``dense_hessian`` (``jax.hessian``, for n d up to a few thousand) and ``make_hvp``
    (forward-over-reverse Hessian-vector products on any pytree of parameters);
  * ``lanczos`` with full reorthogonalisation, and ``extreme_eigenpairs`` on top of it, for the
    extreme eigenvalues (and Ritz vectors) when n d is large (10^5 in seconds on a CPU);
  * reconstruction-loss Hessians: w.r.t. the decoder's outputs (``make_recon_output_cost``),
    its parameters (``make_recon_param_cost``), and the function-space form of Thm 4 on a
    fixed random-feature decoder (``random_features``, ``feature_hessian_spectrum``).

Precision: everything runs in the dtype of its inputs; pass float64 arrays under
``jax.enable_x64`` for reference computations.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from gpe_jax import costs

COSTS = ("gme", "sqdist")


# ----------------------------------------------------------------------------------------------
# Embedding costs as functions of the embedded points.

def sq_dists(z: jax.Array) -> jax.Array:
  """[n, n] squared distances of the rows of ``z`` [n, d], Gram form, diagonal exactly 0.

  Unlike ``costs.pairwise_sq_dists`` there is no clamp at 0: a clamp has a kink exactly where a
  collapsed map sits (all distances 0) and would halve its curvature there (Prop. 2). The
  diagonal is masked, so its derivatives are exactly 0.
  """
  gram = z @ z.T
  norms = jnp.diagonal(gram)
  d2 = norms[:, None] + norms[None, :] - 2.0 * gram
  return d2 * (1.0 - jnp.eye(z.shape[0], dtype=d2.dtype))


def pair_targets(x: jax.Array, cost: str = "gme") -> jax.Array:
  """The data side of an embedding cost, [n, n]: log(1 + |x_i - x_j|^2) for ``gme``, or
  |x_i - x_j|^2 for ``sqdist``; ``x`` [n, ...] is flattened."""
  _check_cost(cost)
  d2 = costs.pairwise_sq_dists(costs.float_rows(x))
  return jnp.log1p(d2) if cost == "gme" else d2


def embedding_cost(target: jax.Array, z: jax.Array, cost: str = "gme") -> jax.Array:
  """mean over the n^2 ordered pairs of (target_ij - phi(|z_i - z_j|^2))^2, phi = log1p for
  ``gme`` (PAPERS §1.1, the paper's normalisation) or the identity for ``sqdist`` (the
  MDS-type squared-distance cost (|x - y|^2 - |Tx - Ty|^2)^2 of Section 5.1)."""
  _check_cost(cost)
  d2 = sq_dists(z)
  phi = jnp.log1p(d2) if cost == "gme" else d2
  return jnp.mean(jnp.square(target.astype(phi.dtype) - phi))


def make_embedding_cost(x: jax.Array, cost: str = "gme") -> Callable[[jax.Array], jax.Array]:
  """``f(z [n, d]) -> scalar``: the embedding cost of the batch ``x`` as a function of its
  embedded points (targets computed once, here)."""
  target = pair_targets(x, cost)
  return lambda z: embedding_cost(target, z, cost)


def make_linear_direction_cost(x: jax.Array, z0: jax.Array, cost: str = "gme"):
  """``f(a [d, D]) -> scalar``: the cost of the map T + A, i.e. at Z0 + X A^T.

  Thm 3 measures curvature along perturbations phi with |phi|_Lip <= 1. A linear phi(x) = A x
  has |phi|_Lip = |A|_2 <= |A|_F, so the Hessian of this function at A = 0 (Euclidean in A) is
  the curvature of the cost along maps of Lipschitz constant at most 1 — unlike the Hessian in
  Z, whose unit directions move every point by a fixed amount regardless of how far apart the
  data points are.
  """
  xf = costs.float_rows(x)
  target = pair_targets(xf, cost)
  z0 = jnp.asarray(z0)
  return lambda a: embedding_cost(target, z0 + xf.astype(z0.dtype) @ a.T, cost)


def _check_cost(cost: str) -> None:
  if cost not in COSTS:
    raise ValueError(f"Unknown embedding cost {cost!r}; choose from {COSTS}.")


# ----------------------------------------------------------------------------------------------
# Dense Hessians and Hessian-vector products.

def dense_hessian(fn: Callable, primal) -> jax.Array:
  """The Hessian of scalar ``fn`` at ``primal`` (an array or pytree) as an [m, m] matrix,
  m = number of entries, ordered like ``jax.flatten_util.ravel_pytree`` (row-major for an
  array). ``jax.hessian`` (forward-over-reverse); for m up to a few thousand."""
  flat, unravel = ravel_pytree(primal)
  # Compiled as one program: run eagerly, jax.hessian dispatches (and on a first run compiles)
  # each of its vmapped operations separately.
  return jax.jit(jax.hessian(lambda v: fn(unravel(v))))(flat)


def make_hvp(fn: Callable, primal) -> tuple[Callable[[jax.Array], jax.Array], int]:
  """(hvp, m): ``hvp(v [m]) -> H v [m]`` at ``primal`` (jvp of grad; H is never formed), and
  the dimension m. Vectors are flattened like ``ravel_pytree(primal)``; ``hvp`` is jittable."""
  flat, unravel = ravel_pytree(primal)
  grad = jax.grad(lambda v: fn(unravel(v)))

  def hvp(v):
    return jax.jvp(grad, (flat,), (v.astype(flat.dtype),))[1]
  return hvp, int(flat.size)


# ----------------------------------------------------------------------------------------------
# Lanczos.

def lanczos(matvec: Callable[[jax.Array], jax.Array], dim: int, num_iters: int, key: jax.Array,
            dtype=jnp.float32) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Symmetric Lanczos with full reorthogonalisation (classical Gram-Schmidt, twice).

  Args:
    matvec: v [dim] -> A v [dim], A symmetric (jittable).
    dim: the dimension.
    num_iters: k, the Krylov dimension (at most ``dim``).
    key: PRNG key of the random start vector (and of restarts after a breakdown).
    dtype: working precision.

  Returns:
    (alpha [k], beta [k], basis [k, dim]): T = V A V^T is tridiagonal with diagonal alpha and
    off-diagonal beta[:-1] (``tridiagonal``); V is orthonormal; beta[-1] is the coefficient the
    next step would produce, so |beta[-1] y_k| is the residual |A x - theta x| of the Ritz
    pair (theta, x = V^T y) of T's eigenpair (theta, y). After a breakdown (an invariant
    subspace, e.g. A = c I) the next vector is a new random one orthogonal to the basis and
    its beta is 0, so T stays exact (block diagonal).
  """
  k = int(min(num_iters, dim))
  if k < 1:
    raise ValueError(f"lanczos needs num_iters >= 1 and dim >= 1 (got {num_iters}, {dim}).")

  def orthogonalize(w, basis):
    for _ in range(2):   # twice is enough (Kahan-Parlett)
      w = w - basis.T @ (basis @ w)
    return w

  def fresh(key_i, basis):
    w = orthogonalize(jax.random.normal(key_i, (dim,), dtype), basis)
    return w / jnp.linalg.norm(w)

  def body(i, carry):
    basis, alpha, beta = carry
    v = basis[i]
    w = matvec(v).astype(dtype)
    a = jnp.vdot(v, w)
    w = orthogonalize(w, basis)          # rows > i are still 0
    b = jnp.linalg.norm(w)
    scale = jnp.maximum(jnp.abs(a), jnp.max(jnp.abs(alpha)))
    broke = b <= 1e2 * jnp.finfo(dtype).eps * jnp.maximum(scale, jnp.finfo(dtype).tiny)
    nxt = jax.lax.cond(broke, lambda: fresh(jax.random.fold_in(key, i + 1), basis),
                       lambda: w / jnp.where(broke, 1.0, b))
    basis = jax.lax.cond(i + 1 < k, lambda bs: bs.at[i + 1].set(nxt), lambda bs: bs, basis)
    return basis, alpha.at[i].set(a), beta.at[i].set(jnp.where(broke, 0.0, b))

  v0 = jax.random.normal(key, (dim,), dtype)
  basis = jnp.zeros((k, dim), dtype).at[0].set(v0 / jnp.linalg.norm(v0))
  basis, alpha, beta = jax.lax.fori_loop(
      0, k, body, (basis, jnp.zeros((k,), dtype), jnp.zeros((k,), dtype)))
  return alpha, beta, basis


def tridiagonal(alpha: jax.Array, beta: jax.Array) -> jax.Array:
  """The [k, k] symmetric tridiagonal matrix with diagonal alpha [k] and off-diagonal
  beta[:k - 1] (``lanczos``'s beta has one more entry, the residual coefficient)."""
  k = alpha.shape[0]
  off = beta[:k - 1]
  return jnp.diag(alpha) + jnp.diag(off, 1) + jnp.diag(off, -1)


def lanczos_at(fn: Callable, num_iters: int = 100, key: jax.Array | None = None,
               dtype=jnp.float32) -> Callable:
  """A jitted ``primal -> (alpha, beta, basis)``: ``lanczos`` on the Hessian of
  scalar ``fn`` at ``primal`` through Hessian-vector products. Compiled once per primal shape,
  so a scheduled evaluation can call it at every evaluation of a training run."""
  key = jax.random.key(0) if key is None else key

  @jax.jit
  def run(primal):
    hvp, dim = make_hvp(fn, primal)
    return lanczos(hvp, dim, num_iters, key, dtype)
  return run


def ritz_extremes(alpha, beta, basis) -> dict:
  """Smallest and largest Ritz pairs from ``lanczos``'s output.

  Returns:
    dict of ``lambda_min``, ``lambda_max`` (floats), ``v_min``, ``v_max`` (unit Ritz vectors
    [dim], numpy float64), ``residual_min``, ``residual_max`` (|A v - lambda v|, from the
    Lanczos recurrence), ``ritz_values`` (all k, ascending) and ``num_iters``.
  """
  alpha, beta = np.asarray(alpha, np.float64), np.asarray(beta, np.float64)
  k = alpha.shape[0]
  evals, evecs = np.linalg.eigh(np.asarray(tridiagonal(alpha, beta), np.float64))
  basis = np.asarray(basis, np.float64)
  out = {"ritz_values": evals, "num_iters": int(k)}
  for name, idx in (("min", 0), ("max", k - 1)):
    vec = basis.T @ evecs[:, idx]
    out[f"lambda_{name}"] = float(evals[idx])
    out[f"v_{name}"] = vec / np.linalg.norm(vec)
    out[f"residual_{name}"] = float(abs(beta[k - 1] * evecs[k - 1, idx]))
  return out


def extreme_eigenpairs(matvec: Callable[[jax.Array], jax.Array], dim: int,
                       num_iters: int = 100, key: jax.Array | None = None,
                       dtype=jnp.float32) -> dict:
  """Smallest and largest eigenvalues (and Ritz vectors) of a symmetric operator by Lanczos.

  Args:
    matvec: v [dim] -> A v, jittable (e.g. from ``make_hvp``).
    dim: the dimension.
    num_iters: Lanczos iterations (capped at dim; with dim <= num_iters the result is exact
      up to rounding).
    key: PRNG key (default ``jax.random.key(0)``).
    dtype: working precision.

  Returns:
    ``ritz_extremes``'s dict.
  """
  key = jax.random.key(0) if key is None else key
  run = jax.jit(lambda k_: lanczos(matvec, dim, num_iters, k_, dtype))
  return ritz_extremes(*run(key))


# ----------------------------------------------------------------------------------------------
# The reconstruction loss.

def make_recon_output_cost(x: jax.Array) -> Callable[[jax.Array], jax.Array]:
  """``f(x_hat) -> MSE(x, x_hat)``: the reconstruction loss (PAPERS §1.3) as a function of the
  decoder's outputs. Its Hessian is 2 / x.size times the identity: the loss itself is perfectly
  conditioned, so every conditioning effect of the encoder enters through the decoder's
  parametrisation and the distribution of its inputs (``feature_hessian_spectrum``)."""
  return lambda x_hat: costs.recon_mse(x, x_hat)


def make_recon_param_cost(apply_fn: Callable, z: jax.Array, x: jax.Array):
  """``f(params) -> MSE(x, apply_fn(params, z))``: the reconstruction loss as a function of a
  decoder's parameters (for ``make_hvp`` on small nets)."""
  return lambda params: costs.recon_mse(x, apply_fn(params, z))


def random_features(z: jax.Array, num_features: int, key: jax.Array,
                    length_scale: float = 1.0) -> jax.Array:
  """Random Fourier features of the latents, [n, p]: sqrt(2 / p) cos(z W / l + b), W ~ N(0, I),
  b ~ U(0, 2 pi). A decoder S(z) = phi(z) C (C [p, D] trained, phi fixed) is a discretisation of
  "the decoder as a function on the latent space" of Thm 4; with normalised latents
  (E|z|^2 = d) a unit length scale is the latents' own scale."""
  kw, kb = jax.random.split(key)
  z = jnp.asarray(z)
  w = jax.random.normal(kw, (z.shape[1], num_features), z.dtype)
  b = jax.random.uniform(kb, (num_features,), z.dtype, 0.0, 2.0 * math.pi)
  return math.sqrt(2.0 / num_features) * jnp.cos(z @ w / length_scale + b)


def feature_hessian_spectrum(phi: jax.Array, num_outputs: int = 1) -> np.ndarray:
  """Eigenvalues (ascending, float64) of the Hessian of MSE(x, phi C) w.r.t. C [p, D].

  The loss is quadratic in C with Hessian (2 / (n D)) phi^T phi (x) I_D, so its spectrum is that
  of (2 / (n D)) phi^T phi, each eigenvalue D times over. It does not depend on the targets x:
  only on how the encoder spreads the data over the latent space (Thm 4). Gradient descent with
  step 1 / lambda_max contracts the error by (1 - lambda_min / lambda_max) per step.
  """
  phi = np.asarray(phi, np.float64)
  n = phi.shape[0]
  return np.linalg.eigvalsh((2.0 / (n * num_outputs)) * (phi.T @ phi))
