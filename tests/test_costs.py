"""GME and the other costs against float64 NumPy references, and their invariances."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpe_jax import costs


def np_gme(x, z):
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  z = np.asarray(z, np.float64)
  dx = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
  dz = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
  return np.mean((np.log1p(dx) - np.log1p(dz)) ** 2)


def random_xz(n, D, d, seed=0, scale_z=1.0):
  rng = np.random.default_rng(seed)
  x = rng.uniform(-1, 1, size=(n, D)).astype(np.float32)
  z = (scale_z * rng.normal(size=(n, d))).astype(np.float32)
  return x, z


def test_gme_matches_float64_reference():
  x, z = random_xz(256, 784, 16, scale_z=5.0)
  got = float(jax.jit(costs.gme_cost)(x, z))
  want = np_gme(x, z)
  assert abs(got - want) / want <= 1e-5, (got, want)


def test_log_distortion_and_its_derivatives_match_float64():
  """The one-logarithm form log((1 + x) / (1 + z)) and its written-out derivatives against
  log1p(x) - log1p(z) in float64, over tiny, equal, close and far squared distances: within
  3 float32 ulps of 1 plus the rounding of the result (the two-logarithm form errs by up to
  9e-7 here)."""
  rng = np.random.default_rng(3)
  a = np.concatenate([10.0 ** rng.uniform(-9, 4, 2000), [0.0, 0.0, 1e-8, 5.0]])
  b = np.concatenate([10.0 ** rng.uniform(-9, 4, 2000), [0.0, 1e-7, 1e-8, 5.0 * (1 + 1e-6)]])
  b[:500] = a[:500] * (1 + rng.uniform(-1e-3, 1e-3, 500))   # close pairs
  af, bf = a.astype(np.float32), b.astype(np.float32)
  want = np.log1p(af.astype(np.float64)) - np.log1p(bf.astype(np.float64))
  got = np.asarray(jax.jit(costs.log_distortion)(af, bf), np.float64)
  np.testing.assert_allclose(got, want, rtol=1.2e-7, atol=3.6e-7)   # + the rounding of the result
  ga, gb = jax.jit(jax.grad(lambda u, v: jnp.sum(costs.log_distortion(u, v)), argnums=(0, 1)))(af, bf)
  np.testing.assert_allclose(ga, 1 / (1 + af.astype(np.float64)), rtol=1e-6)
  np.testing.assert_allclose(gb, -1 / (1 + bf.astype(np.float64)), rtol=1e-6)
  # second derivatives (the Hessian probes differentiate the GME twice)
  f = lambda u, v: costs.log_distortion(u, v)   # noqa: E731
  d2a = jax.vmap(jax.grad(jax.grad(f, 0), 0))(af, bf)
  d2b = jax.vmap(jax.grad(jax.grad(f, 1), 1))(af, bf)
  dab = jax.vmap(jax.grad(jax.grad(f, 0), 1))(af, bf)
  np.testing.assert_allclose(d2a, -1 / (1 + af.astype(np.float64)) ** 2, rtol=1e-5)
  np.testing.assert_allclose(d2b, 1 / (1 + bf.astype(np.float64)) ** 2, rtol=1e-5)
  np.testing.assert_array_equal(dab, 0.0)


def test_gme_accepts_image_shaped_x():
  x, z = random_xz(32, 64, 4)
  np.testing.assert_allclose(costs.gme_cost(x.reshape(32, 8, 8, 1), z),
                             costs.gme_cost(x, z), rtol=1e-6)


@pytest.mark.parametrize("n,block", [(100, 32), (257, 64), (64, 64), (50, 1000)])
def test_blockwise_equals_dense(n, block):
  x, z = random_xz(n, 300, 7, seed=n, scale_z=3.0)
  dense = float(costs.gme_cost(x, z))
  blk = float(jax.jit(costs.gme_cost_blockwise, static_argnames="block")(x, z, block=block))
  np.testing.assert_allclose(blk, dense, rtol=2e-5)
  g_dense = jax.grad(costs.gme_cost, argnums=1)(x, z)
  g_blk = jax.grad(lambda a, b: costs.gme_cost_blockwise(a, b, block=block), argnums=1)(x, z)
  np.testing.assert_allclose(g_blk, g_dense, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("n", [7, 257, 520, 2000])
@pytest.mark.parametrize("blocks,halvings", [(1, 0), (3, 0), (4, 0), (2, 2), (4, 1), (2, 3)])
def test_triangle_tiles_count_every_ordered_pair_once(n, blocks, halvings):
  """Own diagonal blocks count their ordered pairs once, the other tiles each pair and its
  mirror: every ordered pair exactly once, and the tiles hold (k + 1) / (2k) of the matrix."""
  count = np.zeros((n, n), int)
  area = 0
  tiles = costs.triangle_tiles(n, blocks, halvings)
  for r0, r1, c0, c1, own in tiles:
    assert own == 0 and c0 >= r1 or own == r1 - r0 and c0 == r0, (r0, r1, c0, c1, own)
    count[r0:r1, c0:c0 + own] += 1
    count[r0:r1, c0 + own:c1] += 1
    count[c0 + own:c1, r0:r1] += 1
    area += (r1 - r0) * (c1 - c0)
  assert (count == 1).all()
  k = sum(1 for t in tiles if t[4])
  assert k == min(n, blocks * 2**halvings)
  if n % k == 0:
    assert area == n * n * (k + 1) // (2 * k)


@pytest.mark.parametrize("n,blocks,halvings", [
    (257, 3, 0), (520, 4, 0), (520, costs.TRIANGLE_BLOCKS, costs.TRIANGLE_HALVINGS)])
def test_triangle_equals_dense_value_gradient_and_hessian(n, blocks, halvings):
  """The upper-triangle GME (what ``gme_cost`` runs from TRIANGLE_MIN_ROWS rows on) against the
  dense pair matrix: value and gradient to 1e-6 relative, and a Hessian-vector product."""
  x, z = random_xz(n, 40, 7, seed=n, scale_z=3.0)
  tri = lambda a, b: costs.gme_cost_triangle(a, b, blocks, halvings)
  v0, g0 = jax.jit(jax.value_and_grad(costs.gme_cost_dense, argnums=1))(x, z)
  v, g = jax.jit(jax.value_and_grad(tri, argnums=1))(x, z)
  assert abs(float(v) - float(v0)) <= 1e-6 * float(v0)
  assert float(jnp.linalg.norm(g - g0)) <= 1e-6 * float(jnp.linalg.norm(g0))
  gx0 = jax.jit(jax.grad(costs.gme_cost_dense, argnums=0))(x, z)
  gx = jax.jit(jax.grad(tri, argnums=0))(x, z)
  assert float(jnp.linalg.norm(gx - gx0)) <= 1e-6 * float(jnp.linalg.norm(gx0))
  u = jnp.asarray(np.random.default_rng(1).normal(size=z.shape), jnp.float32)
  hvp = lambda f: jax.jit(
      lambda: jax.jvp(jax.grad(f, argnums=1), (x, z), (jnp.zeros_like(x), u))[1])()
  h0, h = hvp(costs.gme_cost_dense), hvp(tri)
  assert float(jnp.linalg.norm(h - h0)) <= 1e-5 * float(jnp.linalg.norm(h0))


def test_gme_cost_takes_the_triangle_from_triangle_min_rows():
  small, large = costs.TRIANGLE_MIN_ROWS - 1, costs.TRIANGLE_MIN_ROWS
  for n, want in [(small, False), (large, True)]:
    x, z = random_xz(n, 8, 2)
    jaxpr = str(jax.make_jaxpr(costs.gme_cost)(x, z))
    assert ("optimization_barrier" in jaxpr) == want, n
    np.testing.assert_allclose(jax.jit(costs.gme_cost)(x, z), jax.jit(costs.gme_cost_dense)(x, z),
                               rtol=1e-6)


def test_per_example_mean_is_gme():
  x, z = random_xz(40, 50, 3)
  np.testing.assert_allclose(jnp.mean(costs.gme_per_example(x, z)), costs.gme_cost(x, z),
                             rtol=1e-6)


def test_gradient_matches_finite_differences():
  x, z = random_xz(12, 20, 3, seed=3)
  x64, z64 = np.asarray(x, np.float64), np.asarray(z, np.float64)
  with jax.enable_x64(True):
    g = np.asarray(jax.grad(costs.gme_cost, argnums=1)(jnp.asarray(x64), jnp.asarray(z64)))
  eps = 1e-6
  rng = np.random.default_rng(0)
  for _ in range(5):
    i, k = rng.integers(12), rng.integers(3)
    zp, zm = z64.copy(), z64.copy()
    zp[i, k] += eps
    zm[i, k] -= eps
    fd = (np_gme(x64, zp) - np_gme(x64, zm)) / (2 * eps)
    np.testing.assert_allclose(g[i, k], fd, rtol=1e-5, atol=1e-9)
  # and float32 jax.grad agrees with the float64 one
  g32 = np.asarray(jax.grad(costs.gme_cost, argnums=1)(x, z))
  np.testing.assert_allclose(g32, g, rtol=1e-3, atol=1e-6)


def test_gme_invariant_under_latent_rotation_and_translation():
  x, z = random_xz(64, 100, 5, seed=4, scale_z=4.0)
  q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(5, 5)))
  z2 = (z @ q + np.array([3.0, -2.0, 10.0, 0.5, -7.0])).astype(np.float32)
  np.testing.assert_allclose(costs.gme_cost(x, z2), costs.gme_cost(x, z), rtol=1e-4)


def test_gme_zero_for_isometry():
  rng = np.random.default_rng(5)
  # data on a 6-D subspace of R^40, embedded by the isometry onto its coordinates
  basis, _ = np.linalg.qr(rng.normal(size=(40, 6)))
  coords = rng.normal(size=(80, 6))
  x = (coords @ basis.T).astype(np.float32)
  z = (coords @ np.linalg.qr(rng.normal(size=(6, 6)))[0]).astype(np.float32)
  assert float(costs.gme_cost(x, z)) < 1e-10
  # and a non-isometric map has clearly positive cost
  assert float(costs.gme_cost(x, 2.0 * z)) > 1e-2


def test_gme_never_builds_pairwise_difference_tensor():
  x, z = random_xz(64, 512, 8)
  jaxpr = jax.make_jaxpr(jax.grad(costs.gme_cost, argnums=1))(x, z)
  for eqn in jaxpr.jaxpr.eqns:
    for v in eqn.outvars:
      assert v.aval.ndim < 3, f"{eqn.primitive} made a rank-{v.aval.ndim} tensor {v.aval.shape}"


def test_mds_stress_kl_and_recon_against_numpy():
  x, z = random_xz(30, 20, 4, seed=6)
  dx = np.sqrt(((x[:, None].astype(np.float64) - x[None]) ** 2).sum(-1))
  dz = np.sqrt(((z[:, None].astype(np.float64) - z[None]) ** 2).sum(-1))
  np.testing.assert_allclose(costs.mds_stress(x, z), np.mean((dz - dx) ** 2), rtol=1e-4)
  assert np.all(np.isfinite(jax.grad(costs.mds_stress, argnums=1)(x, z)))
  mean, logvar = z, 0.3 * z[:, ::-1]
  kl = 0.5 * np.sum(np.exp(logvar) + mean ** 2 - 1 - logvar, axis=1)
  np.testing.assert_allclose(costs.gaussian_kl_per_example(mean, logvar), kl, rtol=1e-5)
  np.testing.assert_allclose(costs.recon_mse(x, z @ np.ones((4, 20), np.float32)),
                             np.mean((x - z @ np.ones((4, 20))) ** 2), rtol=1e-5)


def test_minibatch_vmap_matches_loop():
  x, z = random_xz(60, 40, 5, seed=7)
  xs, zs = x.reshape(3, 20, 40), z.reshape(3, 20, 5)
  got = costs.gme_cost_minibatches(xs, zs)
  want = [float(costs.gme_cost(xs[i], zs[i])) for i in range(3)]
  np.testing.assert_allclose(got, want, rtol=1e-6)
