"""Numerics of the distance computations and of the networks: HIGHEST-precision dots in every
pairwise distance, the row-block GME over a sharded batch (equal to the dense one), and mixed
precision (bf16 networks, float32 parameters and losses)."""
import functools
import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from gpe_jax import costs, models, parallel, train_loop
from gpe_jax.errors import ConfigError
from gpe_jax.stages import encoder

from test_models_and_sharding import _sharded_steps, model_cfg


def random_xz(n, x_shape, d, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.uniform(-1, 1, size=(n,) + tuple(x_shape)).astype(np.float32)
  z = (2.0 * rng.normal(size=(n, d))).astype(np.float32)
  return x, z


# ----------------------------------------------------------------------------------------------
# HIGHEST precision on every dot that feeds a pairwise distance.

def dot_ops(stablehlo: str) -> list[str]:
  """Every dot op of a StableHLO module's text (``dot_general``, and the plain ``dot``)."""
  return [line.strip() for line in stablehlo.splitlines()
          if re.search(r"stablehlo\.dot(_general)?\b", line)]


def assert_all_dots_highest(fn, *args):
  text = jax.jit(fn).lower(*args).as_text()
  dots = dot_ops(text)
  assert dots, "no dot op in the lowered program: the check would pass vacuously"
  for op in dots:
    # StableHLO prints the operands' precisions as `precision = [HIGHEST, HIGHEST]`; a dot at
    # the backend's default as `precision = [DEFAULT, DEFAULT]`.
    assert "stablehlo.dot_general" in op, op
    assert re.search(r"precision = \[HIGHEST, HIGHEST\]", op), op
  return text


@functools.cache
def mesh8():
  return parallel.make_mesh(8)


def row_blocks(x, z):
  return costs.gme_cost_row_blocks(x, z, mesh8())


@pytest.mark.parametrize("name,fn", [
    ("gme_cost", costs.gme_cost),
    ("grad_z", jax.grad(costs.gme_cost, argnums=1)),
    ("grad_xz", jax.grad(costs.gme_cost, argnums=(0, 1))),
    ("blockwise", lambda x, z: costs.gme_cost_blockwise(x, z, block=8)),
    ("grad_blockwise", jax.grad(lambda x, z: costs.gme_cost_blockwise(x, z, block=8), 1)),
    ("mds_stress", jax.grad(costs.mds_stress, argnums=1)),
    ("pairwise_cross", lambda x, z: costs.pairwise_sq_dists(x, x[::-1])),
    ("row_blocks", row_blocks),
    ("grad_row_blocks", jax.grad(row_blocks, argnums=(0, 1))),
])
def test_distance_dots_are_highest_precision(name, fn):
  """Whatever the backend's default (TF32 on GPUs, one bf16 pass on TPUs), the Gram matrices
  and squared norms of the GME (its value and its gradients) are HIGHEST-precision dots."""
  x, z = random_xz(16, (20,), 3)
  assert_all_dots_highest(fn, x, z)


def test_row_blocks_never_build_the_full_pair_matrix():
  """Each device's compiled program (value and gradient) holds its [n/8, n] block of the pair
  matrix, never [n, n]; the gradients of the all-gathers are reduce-scatters."""
  x, z = random_xz(64, (20,), 3)
  hlo = jax.jit(jax.value_and_grad(row_blocks, argnums=(0, 1))).lower(x, z).compile().as_text()
  assert "f32[8,64]" in hlo
  assert "f32[64,64]" not in hlo
  assert "all-gather" in hlo and "reduce-scatter" in hlo


# ----------------------------------------------------------------------------------------------
# The row-block GME over a sharded batch equals gme_cost, value and gradients.

DENSE_VG = jax.jit(jax.value_and_grad(costs.gme_cost, argnums=(0, 1)))


@pytest.mark.parametrize("n,x_shape,d,devices", [
    (64, (20,), 3, 8),      # the headline case
    (8, (20,), 3, 8),       # one row per device: every block holds one diagonal pair
    (24, (4, 4, 2), 5, 8),  # image-shaped x, 3 rows per device (not a power of two)
    (36, (20,), 3, 4),      # a 4-device mesh (a slice of the 8), 9 rows per device
])
def test_row_blocks_equal_gme_cost(n, x_shape, d, devices):
  x, z = random_xz(n, x_shape, d, seed=n)
  mesh = mesh8() if devices == 8 else parallel.make_mesh(devices)
  row_vg = jax.jit(jax.value_and_grad(
      lambda a, b: costs.gme_cost_row_blocks(a, b, mesh), argnums=(0, 1)))
  sharding = parallel.batch_sharding(mesh)
  (v_row, (gx_row, gz_row)) = row_vg(jax.device_put(x, sharding), jax.device_put(z, sharding))
  v, (gx, gz) = DENSE_VG(x, z)
  np.testing.assert_allclose(float(v_row), float(v), rtol=1e-6)
  assert gx_row.shape == x.shape and gz_row.shape == z.shape
  for got, want in ((gx_row, gx), (gz_row, gz)):
    want = np.asarray(want)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5,
                               atol=1e-6 * float(np.abs(want).max()))


def test_row_blocks_need_a_batch_divisible_by_the_devices():
  x, z = random_xz(12, (20,), 3)
  with pytest.raises(ValueError, match="divisible by 8"):
    row_blocks(x, z)


def mlp_cfg(dtype="float32", kind="mlp"):
  cfg = model_cfg(kind, latent_dim=3)
  cfg.enc_hidden = (16,)
  cfg.dtype = dtype
  return cfg


OPT = ConfigDict(dict(lr=1e-3, b1=0.5, b2=0.999, grad_clip=0.0, warmup_steps=0))


def test_row_block_encoder_step_equals_dense_step():
  """Two encoder steps on 8 devices with ``gme_impl='row_block'`` give the dense steps' losses
  and state."""
  shape = (20,)
  model = models.build_encoder(mlp_cfg(), shape)
  tx = train_loop.make_optimizer(OPT)
  rng = np.random.default_rng(0)
  batches = [{"x": rng.uniform(-1, 1, (32,) + shape).astype(np.float32)} for _ in range(2)]
  init_fn = encoder.make_init_fn(model, tx, shape)
  s_dense, l_dense = _sharded_steps(8, (init_fn, encoder.make_train_step(model, tx)), batches)
  s_row, l_row = _sharded_steps(
      8, (init_fn, encoder.make_train_step(model, tx, "row_block", mesh8())), batches)
  np.testing.assert_allclose(l_row, l_dense, rtol=1e-6)
  assert int(s_row.step) == 2
  for a, b in zip(jax.tree.leaves(s_dense), jax.tree.leaves(s_row)):
    np.testing.assert_allclose(np.asarray(b, np.float64), np.asarray(a, np.float64),
                               rtol=1e-4, atol=1e-6)


def test_bad_gme_impl_is_a_config_error_before_training():
  config = ConfigDict(dict(encoder=dict(gme_impl="rows"), model=mlp_cfg().to_dict()))
  data = types.SimpleNamespace(example_shape=(20,))
  with pytest.raises(ConfigError, match=r"config\.encoder\.gme_impl='rows'.*'dense', "
                                        r"'row_block'.*--config\.encoder\.gme_impl=row_block"):
    encoder.SPEC.validate(config, data)
  model = models.build_encoder(mlp_cfg(), (20,))
  with pytest.raises(ConfigError, match="gme_impl"):
    encoder.make_train_step(model, train_loop.make_optimizer(OPT), "rows")
  config.encoder.gme_impl = "row_block"
  encoder.SPEC.validate(config, data)   # a good value passes
  assert "gme_impl" not in encoder.SPEC.inputs(ConfigDict(dict(
      encoder=dict(gme_impl="row_block", lr=1e-3), eval=dict(latent_stats_samples=10))))


# ----------------------------------------------------------------------------------------------
# Mixed precision: config.model.dtype = 'bfloat16'.

def test_bad_dtype_is_a_config_error():
  for build in (lambda c: models.build_encoder(c, (20,)), lambda c: models.build_decoder(c, (20,)),
                lambda c: models.build_inverse(ConfigDict(dict(inverse_hidden=(8, 8))), c)):
    with pytest.raises(ConfigError, match=r"config\.model\.dtype='float16'.*'float32', "
                                          r"'bfloat16'"):
      build(mlp_cfg("float16"))
  config = ConfigDict(dict(encoder=dict(gme_impl="dense"), model=mlp_cfg("fp8").to_dict()))
  with pytest.raises(ConfigError, match=r"config\.model\.dtype"):
    encoder.SPEC.validate(config, types.SimpleNamespace(example_shape=(20,)))


def floating_leaves(tree):
  return [a for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.floating)]


BF16_OPERANDS = re.compile(r"\(tensor<[0-9x]*xbf16>, tensor<[0-9x]*xbf16>\)")


def matmul_and_conv_ops(fn, *args) -> list[str]:
  """The dot and convolution ops of ``fn``'s lowered StableHLO."""
  text = jax.jit(fn).lower(*args).as_text()
  return [ln for ln in text.splitlines()
          if "stablehlo.dot_general" in ln or "stablehlo.convolution" in ln]


def encoder_step(kind, dtype, shape):
  model = models.build_encoder(mlp_cfg(dtype, kind), shape)
  tx = train_loop.make_optimizer(OPT)
  state = jax.jit(encoder.make_init_fn(model, tx, shape))(jax.random.key(0))
  return model, state, jax.jit(encoder.make_train_step(model, tx))


# Measured relative difference |loss_bf16 - loss_f32| / loss_f32 of the first step (the loss at
# the same initial parameters, batches of 16, seeds 1-3): mlp 1.4e-4 to 5.4e-4, conv 4.9e-5 to
# 3.8e-4 (seed 1, the test's: mlp 1.4e-4, conv 3.8e-4). Tolerance: about 4x the largest.
BF16_LOSS_RTOL = 2e-3


@pytest.mark.parametrize("kind,shape,op", [("mlp", (20,), "dot_general"),
                                           ("conv", (8, 8, 1), "convolution")])
def test_bf16_encoder_step(kind, shape, op):
  """A bf16 encoder's train step runs; its parameters and optimiser state stay float32, its
  forward pass computes in bf16 (StableHLO ``op`` on bf16 operands; float32: none), its
  output and loss are float32,
  and the loss is within ``BF16_LOSS_RTOL`` (2e-3 relative; measured at most 5.4e-4) of the
  float32 step's loss on the same batch and initial parameters."""
  x = np.random.default_rng(1).uniform(-1, 1, (16,) + shape).astype(np.float32)
  losses = {}
  for dtype in ("float32", "bfloat16"):
    model, state, step = encoder_step(kind, dtype, shape)
    new_state, metrics = step(state, {"x": x})
    assert metrics["loss"].dtype == jnp.float32
    losses[dtype] = float(metrics["loss"])
    assert np.isfinite(losses[dtype])
    for part in (new_state.params, new_state.opt_state, new_state.batch_stats):
      assert all(a.dtype == jnp.float32 for a in floating_leaves(part))
    fwd = lambda p, s, a: models.apply_model(model, p, s, a, train=True)[0]  # noqa: E731
    ops = [ln for ln in matmul_and_conv_ops(fwd, state.params, state.batch_stats, x)
           if f"stablehlo.{op}" in ln]
    assert ops
    in_bf16 = [bool(BF16_OPERANDS.search(ln)) for ln in ops]
    assert in_bf16 == [dtype == "bfloat16"] * len(ops), ops
    assert jax.eval_shape(fwd, state.params, state.batch_stats, x).dtype == jnp.float32
  rel = abs(losses["bfloat16"] - losses["float32"]) / losses["float32"]
  assert rel < BF16_LOSS_RTOL, (losses, rel)


def test_bf16_other_networks_compute_in_bf16_with_f32_params_and_outputs():
  """Decoder, critics, GMEGAN's f and both velocity nets: bf16 dots, float32 params/outputs."""
  cfg = mlp_cfg("bfloat16")
  cfg.layer_norm = True
  gans = ConfigDict(dict(critic_hidden=(16,), critic_features=(4,), critic_layer_norm=True,
                         critic_extra_convs=0, inverse_hidden=(8, 8), pair_hidden=(8,)))
  conv = mlp_cfg("bfloat16", "conv")
  z = jnp.ones((4, 3))
  x, img = jnp.ones((4, 20)), jnp.ones((4, 8, 8, 1))
  t = jnp.full((4,), 0.5)
  cases = [(models.build_decoder(cfg, (20,)), (z,)),
           (models.build_decoder(conv, (8, 8, 1)), (z,)),
           (models.build_critic(gans, cfg, (20,)), (x,)),
           (models.build_critic(gans, conv, (8, 8, 1)), (img,)),
           (models.build_pair_critic(gans, cfg, (20,)), (x, z)),
           (models.build_inverse(gans, cfg), (z,))]
  for net in ("mlp", "resmlp"):
    prior = ConfigDict(dict(net=net, hidden=(16,), width=16, depth=1, time_embed_dim=8,
                            time_scale=30.0))
    cases.append((models.build_velocity(prior, cfg), (z, t)))
  for model, args in cases:   # shapes and lowered text only: nothing is compiled
    variables = jax.eval_shape(model.init, jax.random.key(0), *args)
    assert all(a.dtype == jnp.float32 for a in floating_leaves(variables)), model
    apply = lambda v, *a: model.apply(v, *a, mutable=["batch_stats"])[0]  # noqa: E731
    assert jax.eval_shape(apply, variables, *args).dtype == jnp.float32, model
    ops = matmul_and_conv_ops(apply, variables, *args)
    assert ops and all(BF16_OPERANDS.search(ln) for ln in ops), (model, ops)
