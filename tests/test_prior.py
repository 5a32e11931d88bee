"""The flow-matching prior: time-aware velocity nets, the CFM path and loss, OT coupling,
1 device == 8 for its train step, and prior + sampler recovering a known distribution."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from gpe_jax import costs, models, sampling, train_loop
from gpe_jax.stages import prior
from test_models_and_sharding import assert_one_device_equals_eight


def prior_cfg(net="mlp"):
  return ConfigDict(dict(net=net, hidden=(32, 32), width=32, depth=2, time_embed_dim=16,
                         time_scale=30.0,
                         lr=1e-3, b1=0.5, b2=0.999, grad_clip=1.0, warmup_steps=0,
                         lr_schedule="constant", num_steps=100))


@pytest.mark.parametrize("net", ["mlp", "resmlp"])
def test_velocity_output_depends_on_t(net):
  model = models.build_velocity(prior_cfg(net))
  z = jax.random.normal(jax.random.key(1), (5, 3))
  params = model.init(jax.random.key(0), z, jnp.zeros((5,)))["params"]
  outs = [np.asarray(model.apply({"params": params}, z, jnp.full((5,), t)))
          for t in (0.0, 0.3, 1.0)]
  assert outs[0].shape == (5, 3)
  for a, b in itertools.combinations(outs, 2):
    assert np.max(np.abs(a - b)) > 1e-3 * np.max(np.abs(a))
  # a scalar t broadcasts over the batch and equals the per-example form
  scalar = model.apply({"params": params}, z, jnp.float32(0.3))
  np.testing.assert_allclose(np.asarray(scalar), outs[1], rtol=1e-6)
  # and the gradient wrt t is non-zero (t reaches the output through the network)
  g = jax.grad(lambda t: jnp.sum(model.apply({"params": params}, z, t)))(jnp.float32(0.5))
  assert abs(float(g)) > 0


def test_unknown_velocity_net_is_a_config_error():
  from gpe_jax.parallel import ConfigError
  with pytest.raises(ConfigError, match="resmlp"):
    models.build_velocity(prior_cfg("unet9"))


def test_timestep_embedding_separates_times():
  e = np.asarray(models.timestep_embedding(jnp.linspace(0, 1, 11), 32))
  assert e.shape == (11, 32)
  d = np.linalg.norm(e[:, None] - e[None], axis=-1)
  assert np.all(d[~np.eye(11, dtype=bool)] > 0.1)


def test_cfm_path_and_loss():
  rng = np.random.default_rng(0)
  z0, z1 = rng.normal(size=(2, 4, 3)).astype(np.float32)
  zt, u = costs.cfm_interpolant(z0, z1, jnp.zeros(4))
  np.testing.assert_allclose(zt, z0, atol=1e-7)
  zt, u = costs.cfm_interpolant(z0, z1, jnp.ones(4))
  np.testing.assert_allclose(zt, z1, atol=1e-6)
  np.testing.assert_allclose(u, z1 - z0, atol=1e-7)
  # the path's time derivative is the target velocity
  t = jnp.full((4,), 0.37)
  dzt = jax.jvp(lambda s: costs.cfm_interpolant(z0, z1, s)[0], (t,), (jnp.ones(4),))[1]
  np.testing.assert_allclose(dzt, u, rtol=1e-5, atol=1e-6)
  assert float(costs.flow_matching_loss(u, u)) == 0.0
  v = u + 1.0
  np.testing.assert_allclose(float(costs.flow_matching_loss(v, u)), 1.0, rtol=1e-6)


def test_ot_coupling_is_the_optimal_permutation():
  rng = np.random.default_rng(3)
  for _ in range(5):
    z0 = rng.normal(size=(6, 2)).astype(np.float32)
    z1 = rng.normal(size=(6, 2)).astype(np.float32) + 1.0
    paired = prior.ot_coupling(z0, z1)
    # a permutation of the noise rows
    assert sorted(map(tuple, paired.tolist())) == sorted(map(tuple, z0.tolist()))
    cost = np.sum(np.square(paired - z1))
    best = min(np.sum(np.square(z0[list(p)] - z1)) for p in itertools.permutations(range(6)))
    np.testing.assert_allclose(cost, best, rtol=1e-5)
    assert cost <= np.sum(np.square(z0 - z1)) + 1e-6


def test_prior_batches_are_a_function_of_the_step():
  from gpe_jax.data import BatchSampler
  z = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
  make = lambda ot: prior.PriorBatches(BatchSampler({"z1": z}, 16, 0, 0, 1), 3, 0, ot)
  a, b = make(False)(5), make(False)(5)
  np.testing.assert_array_equal(a["z0"], b["z0"])
  assert not np.array_equal(a["z0"], make(False)(6)["z0"])
  c = make(True)(5)  # same noise, re-paired
  np.testing.assert_array_equal(c["z1"], a["z1"])
  assert sorted(map(tuple, c["z0"].tolist())) == sorted(map(tuple, a["z0"].tolist()))


def test_prior_train_step_one_device_equals_eight():
  cfg = prior_cfg("resmlp")
  model = models.build_velocity(cfg)
  tx = train_loop.make_optimizer(cfg)
  make = (prior.make_init_fn(model, tx, 3, ema=True), prior.make_train_step(model, tx, 0.99))
  rng = np.random.default_rng(0)
  batches = [{"z0": rng.normal(size=(16, 3)).astype(np.float32),
              "z1": rng.normal(size=(16, 3)).astype(np.float32)} for _ in range(2)]
  s1 = assert_one_device_equals_eight(make, batches)
  # the EMA moved towards the params but is not equal to them
  p, e = jax.tree.leaves(s1.params), jax.tree.leaves(s1.ema_params)
  assert any(not np.array_equal(a, b) for a, b in zip(p, e))


def test_prior_learns_and_samples_a_known_gaussian():
  """Train the CFM prior on N(mu, diag(s^2)) 'latents' and check the sampled moments."""
  mu = np.array([2.0, -1.0], np.float32)
  s = np.array([0.5, 1.5], np.float32)
  cfg = prior_cfg("mlp")
  cfg.hidden = (64, 64)
  cfg.lr = 3e-3
  model = models.build_velocity(cfg)
  tx = train_loop.make_optimizer(cfg)
  state = prior.make_init_fn(model, tx, 2, ema=False)(jax.random.key(0))
  step = jax.jit(prior.make_train_step(model, tx, 0.0))
  rng = np.random.default_rng(0)
  for _ in range(600):
    z1 = (mu + s * rng.normal(size=(256, 2))).astype(np.float32)
    state, _ = step(state, {"z0": rng.normal(size=(256, 2)).astype(np.float32), "z1": z1})
  sampler = sampling.make_latent_sampler(model, method="rk4", num_steps=20)
  z0 = np.random.default_rng(1).normal(size=(4000, 2)).astype(np.float32)
  z, info = sampler(state.params, z0)
  z = np.asarray(z)
  assert int(info["nfe"]) == 80
  np.testing.assert_allclose(z.mean(0), mu, atol=0.1)
  np.testing.assert_allclose(z.std(0), s, rtol=0.12)
