"""Pure math on arrays: pairwise distances, the GME cost, reconstruction, KL, MDS stress.

Nothing here knows about Flax, configs or devices: every function takes arrays and returns
arrays, so each can be jitted, vmapped, differentiated twice (the Hessian probes do) and
tested against a NumPy reference. The one exception, ``gme_cost_row_blocks``, is also given the
mesh whose devices share the rows of the pair matrix.

Conventions: a batch of data points is ``x [n, ...]`` (flattened internally to ``[n, D]``),
a batch of embeddings is ``z [n, d]``. Pairwise squared distances are computed in the Gram
form ``|a|^2 + |b|^2 - 2 a.b`` (clamped at 0): no ``[n, n, D]`` difference tensor is ever
built, which keeps memory at O(n^2) and gradients/HVPs ~30x faster than the naive form.
Data-space distances are computed in float32 or wider even if the network runs in bf16, and
every dot product that feeds a pairwise distance (the Gram matrices, the squared norms) runs at
``jax.lax.Precision.HIGHEST`` whatever the backend's default: a GPU's default float32 matmul may
be TF32 and a TPU's a single bf16 pass, and the Gram form cancels badly at either (two nearby
points' distance is the small difference of large terms). On CPU float32 dots are exact anyway,
so the values there are unchanged.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

# The precision of every dot product that feeds a pairwise distance (see the module docstring).
DIST_PRECISION = jax.lax.Precision.HIGHEST


def _flat(a: jax.Array) -> jax.Array:
  """[n, ...] -> [n, D]."""
  return a.reshape(a.shape[0], -1)


def _at_least_f32(a: jax.Array) -> jax.Array:
  return a if jnp.finfo(a.dtype).bits >= 32 else a.astype(jnp.float32)


def float_rows(a) -> jax.Array:
  """[n, ...] (array-like) -> [n, D] JAX array of at least float32 (integers become float32;
  distances between data points are never taken in bf16)."""
  a = jnp.asarray(a)
  a = a.reshape(a.shape[0], -1)
  if not jnp.issubdtype(a.dtype, jnp.floating):
    return a.astype(jnp.float32)
  return _at_least_f32(a)


def sq_norms(a: jax.Array) -> jax.Array:
  """Squared Euclidean norm of each row: [n, ...] -> [n] (HIGHEST-precision dots)."""
  a = _flat(a)
  return jax.vmap(lambda v: jnp.vdot(v, v, precision=DIST_PRECISION))(a)


def gram(a: jax.Array, b: jax.Array) -> jax.Array:
  """Inner products of rows, [n, D] x [m, D] -> [n, m], at ``DIST_PRECISION`` (HIGHEST)."""
  return jnp.matmul(a, b.T, precision=DIST_PRECISION)


def pairwise_sq_dists(a: jax.Array, b: jax.Array | None = None) -> jax.Array:
  """Squared Euclidean distances between rows, Gram form.

  Args:
    a: [n, ...] points.
    b: [m, ...] points (defaults to ``a``).

  Returns:
    [n, m] matrix of |a_i - b_j|^2, clamped at 0 (the Gram form can go slightly negative
    from cancellation). On the diagonal of ``pairwise_sq_dists(a)`` it is exactly 0.
  """
  a = _flat(a)
  same = b is None
  b = a if same else _flat(b)
  ab = gram(a, b)
  if same:
    # Reuse the Gram diagonal so d(a_i, a_i) = 0 exactly (not just up to rounding).
    na = jnp.diagonal(ab)
    nb = na
  else:
    na, nb = sq_norms(a), sq_norms(b)
  d2 = na[:, None] + nb[None, :] - 2.0 * ab
  d2 = jnp.maximum(d2, 0.0)
  if same:
    d2 = d2 * (1.0 - jnp.eye(a.shape[0], dtype=d2.dtype))
  return d2


def cross_sq_dists(na: jax.Array, nb: jax.Array, ab: jax.Array) -> jax.Array:
  """|a_i - b_j|^2 = |a_i|^2 + |b_j|^2 - 2 a_i.b_j from the squared norms [n], [m] and the
  Gram block ``ab`` [n, m], clamped at 0 (the block forms of the GME share it)."""
  return jnp.maximum(na[:, None] + nb[None, :] - 2.0 * ab, 0.0)


@jax.custom_jvp
def log_distortion(x_sq: jax.Array, z_sq: jax.Array) -> jax.Array:
  """log(1 + |x-y|^2) - log(1 + |Tx-Ty|^2), elementwise on squared distances.

  Computed as log((1 + x_sq) / (1 + z_sq)): one logarithm instead of two (the pair terms are
  most of the GME's elementwise work), within a few float32 ulps of 1 plus the result's own
  rounding whatever the distances (the difference of two logarithms errs by an ulp of each,
  up to 9e-7 at distances of 1e4; tests/test_costs.py). The derivative is written out
  (1 / (1 + x_sq), -1 / (1 + z_sq)) so that the backward pass is as lean as the forward.
  """
  return jnp.log((1.0 + x_sq) / (1.0 + z_sq))


@log_distortion.defjvp
def _log_distortion_jvp(primals, tangents):
  x_sq, z_sq = primals
  tx, tz = tangents
  return log_distortion(x_sq, z_sq), tx / (1.0 + x_sq) - tz / (1.0 + z_sq)


def gme_matrix(x: jax.Array, z: jax.Array) -> jax.Array:
  """[n, n] matrix of squared log-distortions of all ordered pairs (diagonal 0)."""
  x_sq = pairwise_sq_dists(_at_least_f32(x))
  z_sq = pairwise_sq_dists(z).astype(x_sq.dtype)
  return jnp.square(log_distortion(x_sq, z_sq))


# From this many rows on, ``gme_cost`` computes only the upper triangle of the pair matrix
# (``gme_cost_triangle``); below it the dense form is as fast (benchmarks/README.md).
TRIANGLE_MIN_ROWS = 512
# Tiling of the triangle form (``triangle_tiles``): halved once (the off-diagonal 1/4 of the
# pair matrix is one product), then each half cut into 4 row blocks: 8 diagonal blocks, 9/16 of
# the dense form's work. On a 2-core AVX-512 CPU this was the fastest of five tilings at n = 1000
# and 2000 (2-8% under 4 row blocks without the halving; 8 row blocks, with their smaller
# products, were slower at n = 2000; benchmarks/README.md).
TRIANGLE_BLOCKS = 4
TRIANGLE_HALVINGS = 1


def gme_cost(x: jax.Array, z: jax.Array) -> jax.Array:
  """Minibatch Gromov-Monge embedding cost (GPE paper, eq. 14).

  GME = mean over all n*n ordered pairs (i, j) of
        (log(1 + |x_i - x_j|^2) - log(1 + |z_i - z_j|^2))^2,
  diagonal included (it contributes 0) -- the normalisation the paper's thresholds use.

  For n >= ``TRIANGLE_MIN_ROWS`` the pair matrix's symmetry is used (``gme_cost_triangle``:
  the same value and gradient, about 9/16 of the Gram and elementwise work); smaller batches
  take the dense form (``gme_cost_dense``).

  Args:
    x: [n, ...] data batch (flattened to [n, D]).
    z: [n, d] embeddings T(x).

  Returns:
    Scalar cost.
  """
  if x.shape[0] >= TRIANGLE_MIN_ROWS:
    return gme_cost_triangle(x, z)
  return gme_cost_dense(x, z)


def gme_cost_dense(x: jax.Array, z: jax.Array) -> jax.Array:
  """``gme_cost`` from the full [n, n] pair matrix (the reference form)."""
  return jnp.mean(gme_matrix(x, z))


def triangle_tiles(n: int, blocks: int = TRIANGLE_BLOCKS,
                   halvings: int = TRIANGLE_HALVINGS) -> list[tuple[int, int, int, int, int]]:
  """The tiles that cover the upper triangle of an [n, n] pair matrix, diagonal included.

  Each tile ``(r0, r1, c0, c1, own)`` is one Gram product, rows [r0, r1) against columns
  [c0, c1); its first ``own`` columns are the rows' own diagonal block (``c0 == r0``, counted once
  with the diagonal masked), the rest lie strictly above the diagonal (counted twice). The
  triangle is halved ``halvings`` times (the off-diagonal rectangle of each half is one large
  product), and each remaining diagonal triangle is cut into ``blocks`` row blocks, each against
  every column from its own diagonal on. With k = blocks * 2^halvings diagonal blocks in all, the
  tiles hold (k + 1) / (2k) of the dense pair matrix.
  """
  def flat(s, e, k):
    edges = [s + round(i * (e - s) / k) for i in range(k + 1)]
    return [(a, b, a, e, b - a) for a, b in zip(edges[:-1], edges[1:]) if b > a]

  def split(s, e, h):
    if h <= 0 or e - s < 2:
      return flat(s, e, max(1, min(int(blocks), e - s)))
    m = s + (e - s) // 2
    return [(s, m, m, e, 0)] + split(s, m, h - 1) + split(m, e, h - 1)

  return split(0, int(n), int(halvings))


def gme_cost_triangle(x: jax.Array, z: jax.Array, blocks: int = TRIANGLE_BLOCKS,
                      halvings: int = TRIANGLE_HALVINGS) -> jax.Array:
  """``gme_cost`` from the upper triangle of the pair matrix: the same value and gradient.

  The pair terms are symmetric in (i, j) and 0 on the diagonal, so the mean over all ordered
  pairs is twice the sum over i < j, divided by n^2. The triangle is covered by the tiles of
  ``triangle_tiles`` (one Gram product per tile and per side); a tile's own diagonal block is
  counted once with the diagonal masked, the rest twice. With k diagonal blocks that is
  (k + 1) / (2k) of the dense Gram and elementwise work; for the data side, whose Gram costs
  n^2 D, this is most of the step. No block size has to divide n. The data Gram sits behind an
  ``optimization_barrier``: on XLA:CPU, fusing the reduction into the matrix product made the
  product about 1.7x slower (measured).

  Args:
    x: [n, ...] data batch.
    z: [n, d] embeddings.
    blocks: row blocks per diagonal triangle (>= 1; with ``halvings=0``, 1 is the dense form).
    halvings: times the triangle is halved before it is cut into row blocks.

  Returns:
    Scalar cost, equal to ``gme_cost_dense(x, z)`` up to float rounding (summation order).
  """
  x = _at_least_f32(_flat(x))
  z = _flat(z)
  n = x.shape[0]
  xn, zn = sq_norms(x), sq_norms(z)
  total = jnp.zeros((), x.dtype)
  for r0, r1, c0, c1, own in triangle_tiles(n, blocks, halvings):
    dx = cross_sq_dists(xn[r0:r1], xn[c0:c1],
                        jax.lax.optimization_barrier(gram(x[r0:r1], x[c0:c1])))
    dz = cross_sq_dists(zn[r0:r1], zn[c0:c1], gram(z[r0:r1], z[c0:c1]))
    sq = jnp.square(log_distortion(dx, dz.astype(dx.dtype)))
    if own:
      mine = sq[:, :own] * (1.0 - jnp.eye(own, dtype=sq.dtype))  # diagonal pairs are 0
      total = total + jnp.sum(mine) + 2.0 * jnp.sum(sq[:, own:])
    else:
      total = total + 2.0 * jnp.sum(sq)
  return total / (n * n)


def gme_cost_minibatches(xs: jax.Array, zs: jax.Array) -> jax.Array:
  """GME of each minibatch in a stack, ``vmap`` of ``gme_cost`` over the leading axis.

  The paper's held-out GME is the mean over minibatches of size n (its thresholds assume that
  normalisation), so evaluation stacks k batches and calls this once.

  Args:
    xs: [k, n, ...] k minibatches of data.
    zs: [k, n, d] their embeddings.

  Returns:
    [k] GME per minibatch.
  """
  return jax.vmap(gme_cost)(xs, zs)


def gme_per_example(x: jax.Array, z: jax.Array) -> jax.Array:
  """Per-example GME: row means of the pair matrix, [n]. ``mean(...) == gme_cost``."""
  return jnp.mean(gme_matrix(x, z), axis=1)


def gme_cost_blockwise(x: jax.Array, z: jax.Array, block: int = 256) -> jax.Array:
  """GME with O(n * block) memory: same value as ``gme_cost`` for any batch size.

  Rows are processed ``block`` at a time with ``lax.map`` (each block against all n
  points), so the full [n, n] matrix never exists. The last block is padded and masked.

  Args:
    x: [n, ...] data batch.
    z: [n, d] embeddings.
    block: rows per block.

  Returns:
    Scalar cost, equal to ``gme_cost(x, z)`` up to float rounding.
  """
  x = _at_least_f32(_flat(x))
  z = _flat(z)
  n = x.shape[0]
  block = max(1, min(block, n))
  nblocks = -(-n // block)
  pad = nblocks * block - n
  xn, zn = sq_norms(x), sq_norms(z)
  idx = jnp.arange(nblocks * block).reshape(nblocks, block)
  xp = jnp.pad(x, ((0, pad), (0, 0)))
  zp = jnp.pad(z, ((0, pad), (0, 0)))
  xnp = jnp.pad(xn, (0, pad))
  znp = jnp.pad(zn, (0, pad))

  def one_block(rows):
    xb, zb = xp[rows], zp[rows]
    dx = cross_sq_dists(xnp[rows], xn, gram(xb, x))
    dz = cross_sq_dists(znp[rows], zn, gram(zb, z))
    off_diag = rows[:, None] != jnp.arange(n)[None, :]
    valid = (rows < n)[:, None] & off_diag
    sq = jnp.square(log_distortion(dx, dz.astype(dx.dtype)))
    return jnp.sum(jnp.where(valid, sq, 0.0))

  total = jnp.sum(jax.lax.map(one_block, idx))
  return total / (n * n)


def gme_cost_row_blocks(x: jax.Array, z: jax.Array, mesh, axis: str = "data") -> jax.Array:
  """GME of a batch split by rows over a mesh axis: same value as ``gme_cost``.

  Each of the k devices on ``axis`` holds n/k rows of the global batch; it all-gathers x, z
  and their squared norms, computes its [n/k, n] block of the pair matrix against all n points
  and sums the block (its diagonal pairs masked: they are exactly 0 in ``gme_cost``); a
  ``psum`` adds the k partial sums, and the total is divided by n * n as ``gme_cost`` does.
  Memory per device is O(n/k * n), never [n, n], and the pair work is split k ways. Under
  ``jax.grad`` the all-gathers transpose to reduce-scatters, so each device gets the summed
  gradient of its own rows; the cost is differentiable in x and in z.

  Args:
    x: [n, ...] data batch (a global array; flattened to [n, D]), n divisible by k.
    z: [n, d] embeddings.
    mesh: a ``jax.sharding.Mesh`` with axis ``axis`` (``gpe_jax.parallel.make_mesh``).
    axis: the mesh axis the batch rows are split over.

  Returns:
    Scalar cost (replicated), equal to ``gme_cost(x, z)`` up to float rounding.
  """
  x = _at_least_f32(_flat(x))
  z = _flat(z)
  n, k = x.shape[0], mesh.shape[axis]
  if n % k:
    raise ValueError(f"gme_cost_row_blocks: the batch of {n} rows does not split over the "
                     f"{k} devices of mesh axis {axis!r}; use a batch size divisible by {k}.")
  local_rows = n // k

  def block_sum(xl, zl):
    """This device's rows -> the sum over all k devices of their blocks' pair terms."""
    xn, zn = sq_norms(xl), sq_norms(zl)
    xa, za = jax.lax.all_gather(xl, axis, tiled=True), jax.lax.all_gather(zl, axis, tiled=True)
    xna = jax.lax.all_gather(xn, axis, tiled=True)
    zna = jax.lax.all_gather(zn, axis, tiled=True)
    dx = cross_sq_dists(xn, xna, gram(xl, xa))
    dz = cross_sq_dists(zn, zna, gram(zl, za))
    rows = jax.lax.axis_index(axis) * local_rows + jnp.arange(local_rows)
    off_diag = rows[:, None] != jnp.arange(n)[None, :]
    sq = jnp.square(log_distortion(dx, dz.astype(dx.dtype)))
    return jax.lax.psum(jnp.sum(jnp.where(off_diag, sq, 0.0)), axis)

  total = jax.shard_map(block_sum, mesh=mesh, in_specs=(P(axis), P(axis)), out_specs=P())(x, z)
  return total / (n * n)


def mds_stress(x: jax.Array, z: jax.Array) -> jax.Array:
  """Metric MDS stress: mean over ordered pairs of (|z_i - z_j| - |x_i - x_j|)^2.

  Square roots are taken of the clamped squared distances with a safe gradient at 0.
  """
  x_sq = pairwise_sq_dists(_at_least_f32(x))
  z_sq = pairwise_sq_dists(z).astype(x_sq.dtype)
  return jnp.mean(jnp.square(_safe_sqrt(z_sq) - _safe_sqrt(x_sq)))


def _safe_sqrt(a: jax.Array) -> jax.Array:
  """sqrt with gradient 0 (not inf/nan) at a == 0."""
  pos = a > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, a, 1.0)), 0.0)


def recon_mse_per_example(x: jax.Array, x_hat: jax.Array) -> jax.Array:
  """Per-example mean squared error over pixels, [n]."""
  diff = _flat(x_hat).astype(jnp.float32) - _flat(x).astype(jnp.float32)
  return jnp.mean(jnp.square(diff), axis=1)


def recon_mse(x: jax.Array, x_hat: jax.Array) -> jax.Array:
  """Reconstruction loss E_x mean_pixels (x - S(T(x)))^2 (PAPERS §1.3), scalar."""
  return jnp.mean(recon_mse_per_example(x, x_hat))


def recon_l1(x: jax.Array, x_hat: jax.Array) -> jax.Array:
  """Mean absolute reconstruction error (optional extra term), scalar."""
  return jnp.mean(jnp.abs(_flat(x_hat).astype(jnp.float32) - _flat(x).astype(jnp.float32)))


def gaussian_kl_per_example(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mean, diag(exp(logvar))) || N(0, I)) per example, summed over latent dims, [n]."""
  return 0.5 * jnp.sum(jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar, axis=-1)



def cfm_interpolant(z0: jax.Array, z1: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The conditional flow-matching path (PAPERS §1.5): straight lines from noise to data.

  Args:
    z0: [B, d] noise samples (N(0, I)).
    z1: [B, d] normalised data latents.
    t: [B] times in [0, 1].

  Returns:
    (z_t [B, d] = (1 - t) z0 + t z1, target velocity u [B, d] = z1 - z0).
  """
  tb = t.reshape((-1,) + (1,) * (z0.ndim - 1)).astype(z0.dtype)
  return (1.0 - tb) * z0 + tb * z1, z1 - z0


def flow_matching_per_example(v: jax.Array, u: jax.Array) -> jax.Array:
  """Per-example squared velocity error |v - u|^2 / d (mean over latent dims), [B]."""
  return jnp.mean(jnp.square(_flat(v).astype(jnp.float32) - _flat(u).astype(jnp.float32)),
                  axis=1)


def flow_matching_loss(v: jax.Array, u: jax.Array) -> jax.Array:
  """CFM loss E |v_theta(z_t, t) - (z1 - z0)|^2, per latent dimension (so values are
  comparable across latent sizes; the gradient direction is the paper's), scalar."""
  return jnp.mean(flow_matching_per_example(v, u))


# ----------------------------------------------------------------------------------------------
# Adversarial losses and gradient penalties (PAPERS §2). ``f`` below is a per-example scalar
# function [n, ...] -> [n] that treats examples independently (a critic without BatchNorm), so
# the gradient of its sum is the batch of per-example input gradients.

def input_gradients(f, x: jax.Array) -> jax.Array:
  """Per-example input gradients d f(x)_i / d x_i, [n, ...] (same shape as x).

  Differentiable again (double backprop): a penalty built on these can be minimised with
  respect to f's parameters by ``jax.grad``.
  """
  return jax.grad(lambda a: jnp.sum(f(a)))(x)


def grad_sq_norms(g: jax.Array) -> jax.Array:
  """|g_i|^2 per row, [n] (float32 or wider)."""
  return jnp.sum(jnp.square(_at_least_f32(_flat(g))), axis=1)


def wdiv_penalty(grad_real: jax.Array, grad_fake: jax.Array, k: float, p: float) -> jax.Array:
  """Wasserstein-divergence penalty (k/2) E[|grad psi(x)|^p + |grad psi(G z)|^p] (Wu et al.
  2018; GMEGAN's critic term), from per-example gradients at real and fake points, scalar.

  |g|^p is computed as (|g|^2)^(p/2), which is smooth at g = 0 for p >= 2.
  """
  half = 0.5 * p
  return 0.5 * k * (jnp.mean(grad_sq_norms(grad_real) ** half)
                    + jnp.mean(grad_sq_norms(grad_fake) ** half))


def wgan_gp_penalty(grad_interp: jax.Array) -> jax.Array:
  """WGAN-GP penalty E[(|grad psi(x_hat)| - 1)^2] at interpolates x_hat (Gulrajani et al.
  2017; multiply by lambda), scalar."""
  return jnp.mean(jnp.square(_safe_sqrt(grad_sq_norms(grad_interp)) - 1.0))


def bce_logits(logits: jax.Array, label: float) -> jax.Array:
  """Binary cross-entropy of logits against a constant label (1: real, 0: fake), mean."""
  logits = _at_least_f32(logits)
  return jnp.mean(jax.nn.softplus(-logits) if label else jax.nn.softplus(logits))


def latent_sq_error(z: jax.Array, z_hat: jax.Array) -> jax.Array:
  """Mean over the batch and the latent dimensions of (z - z_hat)^2 (GMEGAN's and VEEGAN's
  reconstruction of the noise), scalar."""
  return recon_mse(z, z_hat)
