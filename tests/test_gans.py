"""GAN methods in-process: the penalties against finite differences, sharding (1 device = 8),
the NaN guard naming the network, and bad hyperparameters stopped before training."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from gpe_jax import costs, pipeline, train_loop
from gpe_jax.errors import ConfigError, NonFiniteError
from gpe_jax.stages import gans
from test_models_and_sharding import assert_one_device_equals_eight

sys.path.insert(0, REPO)
from configs import base, gmegan_mixture  # noqa: E402


def _critic():
  """A small smooth critic psi_w: R^5 -> R (tanh, so the double backprop is non-trivial)."""
  rng = np.random.default_rng(0)
  w1 = rng.normal(size=(5, 7)) * 0.7
  w2 = rng.normal(size=(7,))
  params = {"w1": jnp.asarray(w1), "w2": jnp.asarray(w2)}

  def psi(p, x):
    return jnp.tanh(x @ p["w1"]) @ p["w2"]
  return psi, params


def _fd_input_grads(f, x, eps=1e-6):
  g = np.zeros_like(x)
  for i in range(x.shape[0]):
    for j in range(x.shape[1]):
      xp, xm = x.copy(), x.copy()
      xp[i, j] += eps
      xm[i, j] -= eps
      g[i, j] = (f(xp)[i] - f(xm)[i]) / (2 * eps)
  return g


def test_gradient_penalties_match_finite_differences():
  with jax.enable_x64(True):
    psi, params = _critic()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 5))
    xf = rng.normal(size=(4, 5)) + 1.0
    f = lambda a: np.asarray(psi(params, jnp.asarray(a)))  # noqa: E731
    g_real, g_fake = _fd_input_grads(f, x), _fd_input_grads(f, xf)
    got = np.asarray(costs.input_gradients(lambda a: psi(params, a), jnp.asarray(x)))
    np.testing.assert_allclose(got, g_real, rtol=1e-6, atol=1e-8)
    # the penalty values, from the finite-difference gradients
    k, p = 2.0, 6.0
    want_div = 0.5 * k * (np.mean(np.sum(g_real ** 2, 1) ** (p / 2))
                          + np.mean(np.sum(g_fake ** 2, 1) ** (p / 2)))
    div = lambda prm: costs.wdiv_penalty(  # noqa: E731
        costs.input_gradients(lambda a: psi(prm, a), jnp.asarray(x)),
        costs.input_gradients(lambda a: psi(prm, a), jnp.asarray(xf)), k, p)
    np.testing.assert_allclose(float(div(params)), want_div, rtol=1e-6)
    e = rng.uniform(size=(4, 1))
    xh = e * x + (1 - e) * xf
    want_gp = np.mean((np.sqrt(np.sum(_fd_input_grads(f, xh) ** 2, 1)) - 1) ** 2)
    gp = lambda prm: costs.wgan_gp_penalty(  # noqa: E731
        costs.input_gradients(lambda a: psi(prm, a), jnp.asarray(xh)))
    np.testing.assert_allclose(float(gp(params)), want_gp, rtol=1e-6)
    # double backprop: the penalties' parameter gradients against central differences
    for pen in (div, gp):
      grads = jax.grad(pen)(params)
      direction = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), params)
      eps = 1e-6
      plus = jax.tree.map(lambda a, d: a + eps * d, params, direction)
      minus = jax.tree.map(lambda a, d: a - eps * d, params, direction)
      fd = (float(pen(plus)) - float(pen(minus))) / (2 * eps)
      an = sum(float(jnp.sum(g * d)) for g, d in zip(jax.tree.leaves(grads),
                                                    jax.tree.leaves(direction)))
      np.testing.assert_allclose(an, fd, rtol=1e-5)


def _small_config(kind="mlp"):
  cfg = gmegan_mixture.get_config("smoke")
  cfg.model.latent_dim = 2
  cfg.model.enc_hidden = cfg.model.dec_hidden = (16,)
  cfg.gans.critic_hidden = (16,)
  cfg.gans.inverse_hidden = (8, 8)
  cfg.gans.pair_hidden = (8,)
  if kind == "conv":
    cfg.model.kind = "conv"
    cfg.model.enc_features = (4,)
    cfg.model.dec_features = (4,)
    cfg.model.batch_norm = True
    cfg.gans.critic_features = (4,)
    cfg.gans.critic_hidden = ()
  return cfg


@pytest.mark.parametrize("name,kind", [("gmegan", "mlp"), ("gmegan", "conv"),
                                       ("veegan", "mlp"), ("wgan_gp", "mlp")])
def test_gan_step_one_device_equals_eight(name, kind):
  """Plain SGD here: a critic with piecewise-linear units has hidden biases whose gradient is
  exactly zero in exact arithmetic (every real and fake point on the same side of the kink),
  and Adam turns the float noise of such a zero into a full +-lr step of either sign, which
  would compare two float roundings rather than the sharding."""
  cfg = _small_config(kind)
  cfg[name].n_critic = 2
  for net in gans.nets_of(name, cfg[name]):
    cfg[name][net].update(optimizer="sgd", lr=0.01 if kind == "mlp" else 1e-3)
  shape = (4, 4, 1) if kind == "conv" else (6,)
  mods, txs = gans.build(cfg, name, shape)
  make = (gans.make_init_fn(name, mods, txs, shape, 2),
          gans.make_train_step(name, mods, txs, cfg[name], 2))
  rng = np.random.default_rng(0)
  batches = [{"x": rng.uniform(-1, 1, (16,) + shape).astype(np.float32)} for _ in range(2)]
  s1 = assert_one_device_equals_eight(make, batches)
  assert int(s1.step) == 2
  init = jax.device_get(make[0](jax.random.key(0)))
  for net in txs:   # every network trained
    moved = [not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
             zip(jax.tree.leaves(init.params[net]), jax.tree.leaves(s1.params[net]))]
    assert any(moved), net


def test_every_method_builds_steps_and_reports_each_network_loss():
  cfg = _small_config()
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (8, 6)).astype(np.float32)
  for name in gans.NAMES:
    mods, txs = gans.build(cfg, name, (6,))
    state = gans.make_init_fn(name, mods, txs, (6,), 2)(jax.random.key(0))
    state, m = jax.jit(gans.make_train_step(name, mods, txs, cfg[name], 2))(state, {"x": x})
    assert {f"loss_{n}" for n in txs if n != "f"} <= set(m), (name, sorted(m))
    assert all(np.isfinite(float(v)) for v in m.values()), (name, m)
    if name == "wgan":   # weights clipped after every critic update
      c = float(cfg.wgan.clip)
      assert max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(state.params["psi"])) <= c


def test_nan_guard_names_the_network():
  with pytest.raises(NonFiniteError, match=r"Stage 'gmegan': the loss of network psi is not "
                                           r"finite.*--config\.gmegan\.psi\.lr"):
    train_loop._check_finite("gmegan", 7, {"loss": float("nan"), "loss_psi": float("nan"),
                                           "loss_G": 0.3, "loss_T": 0.1}, 5)


@pytest.mark.parametrize("override,message", [
    ({"gmegan.p": 0.5}, r"p=0\.5 \(the penalty's exponent must be >= 1\)"),
    ({"gmegan.n_critic": 0}, r"n_critic=0"),
    ({"gans.critic_hidden": ()}, r"config\.gans\.critic_hidden=\(\): the critic needs"),
    ({"gans.inverse_hidden": (8,)}, r"config\.gans\.inverse_hidden.*two inner widths"),
    ({"gmegan.G.lr": -1.0}, r"G\.lr=-1\.0"),
    ({"method": "gmegan", "stages": ("gmegan", "prior", "sample")}, r"no use for a latent "
                                                                     r"prior"),
])
def test_bad_gan_hyperparameters_stop_before_training(override, message, tmp_path):
  from gpe_jax.experiments.common import variant
  cfg = variant(_small_config(), **override)
  wd = str(tmp_path / "wd")
  with pytest.raises(ConfigError, match=message):
    pipeline.run(cfg, wd)
  assert not os.path.exists(os.path.join(wd, "gmegan", "checkpoints"))


def test_missing_network_size_is_named():
  cfg = _small_config()
  del cfg.gans["pair_hidden"]
  with pytest.raises(ConfigError, match=r"config\.gans\.pair_hidden is missing"):
    gans.build(cfg, "veegan", (6,))


def test_base_config_lists_every_gan_method():
  cfg = base.get_config()
  assert set(base.GAN_METHODS) == set(gans.NAMES)
  for name in gans.NAMES:
    for net in gans.nets_of(name, cfg[name]):
      assert {"lr", "b1", "b2", "optimizer"} <= set(cfg[name][net])
