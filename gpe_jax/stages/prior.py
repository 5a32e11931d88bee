"""GPE stage 3: a flow-matching prior in the normalised latent space (PAPERS §1.5).

The encoder is frozen (stage 1, or a baseline's: ``config.method``; read from that method's
``manifest.json`` by ``gpe_jax.autoencoders``),
so the training set is embedded once, normalised with that stage's ``latent_stats.npz``
(z = C (T(x) - m), the space GPE's decoder was trained in),
and the prior learns a velocity field v(z, t) that carries N(0, I) to the latent data
distribution along straight conditional paths:

    z0 ~ N(0, I), z1 = latent of a data point, t ~ U(0, 1),
    z_t = (1 - t) z0 + t z1,   loss = |v(z_t, t) - (z1 - z0)|^2.

Options (``config.prior``): the velocity network (``net``: 'mlp' or 'resmlp', sizes), an EMA
of the weights (``ema_decay``, on by default; sampling uses the EMA), gradient clipping, and
minibatch optimal-transport coupling (``ot_coupling``: within each batch, noise and data are
re-paired by an exact assignment that minimises the total squared distance, OT-CFM), which
straightens the learned flow.

Randomness: the noise z0 of step s is drawn on the host from ``default_rng([seed, s, process])``
(so the OT assignment can run on the host, per process's slice), t from ``fold_in(key, s)``
inside the step; a resumed run therefore reproduces an uninterrupted one exactly.

Outputs in ``workdir/prior/``: checkpoints (the EMA weights are part of the state);
``summary["prior"]`` holds the held-out flow-matching loss ``val_fm_loss`` and whatever the
scheduled evaluators (``config.prior.evals``) report at the end.
"""
from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gpe_jax import autoencoders, costs, models, rng, sampling, train_loop
from gpe_jax.evals import plugins
from gpe_jax.stages import common

NAME = "prior"


def ot_coupling(z0: np.ndarray, z1: np.ndarray) -> np.ndarray:
  """Re-order noise ``z0`` [B, d] so that z0[i] is paired with z1[i] by the exact minibatch
  optimal-transport plan for the squared Euclidean cost (a permutation, since both sides have
  equal uniform mass). Returns the permuted z0 [B, d]."""
  cost = (np.sum(z0 * z0, 1)[:, None] + np.sum(z1 * z1, 1)[None, :]
          - 2.0 * z0.astype(np.float64) @ z1.T.astype(np.float64))
  from scipy.optimize import linear_sum_assignment  # pylint: disable=import-outside-toplevel
  rows, cols = linear_sum_assignment(cost)   # (imported here: 0.5 s, only with OT pairing)
  out = np.empty_like(z0)
  out[cols] = z0[rows]
  return out


class PriorBatches:
  """step -> {'z1': this process's data latents [b, d], 'z0': its noise [b, d]}."""

  def __init__(self, sampler, latent_dim: int, seed: int, ot: bool):
    self.sampler = sampler
    self.latent_dim = latent_dim
    self.seed = seed
    self.ot = ot

  def __call__(self, step: int) -> dict:
    batch = self.sampler(step)
    z1 = batch["z1"]
    gen = rng.prior_noise(self.seed, step, jax.process_index())
    z0 = gen.standard_normal(z1.shape).astype(np.float32)
    if self.ot:
      z0 = ot_coupling(z0, z1)
    return {"z1": z1, "z0": z0}


def make_init_fn(model, tx, latent_dim: int, ema: bool):
  def init_fn(key):
    pkey, skey = jax.random.split(key)
    params = model.init({"params": pkey}, jnp.zeros((2, latent_dim), jnp.float32),
                        jnp.zeros((2,), jnp.float32))["params"]
    return train_loop.new_state(skey, params, {}, tx, ema=ema)
  return init_fn


def make_train_step(model, tx, ema_decay: float):
  """step(state, {'z0', 'z1'}) -> (state, metrics); CFM loss, EMA update if ``ema_decay``.

  The EMA uses the warm-up ``min(ema_decay, (1 + s) / (10 + s))`` so early averages are not
  dominated by the random initialisation.
  """
  def loss_fn(params, zt, t, u):
    v = model.apply({"params": params}, zt, t)
    return costs.flow_matching_loss(v, u)

  def step(state, batch):
    z0, z1 = batch["z0"], batch["z1"]
    t = jax.random.uniform(state.step_key(), (z1.shape[0],), jnp.float32)
    zt, u = costs.cfm_interpolant(z0, z1, t)
    loss, grads = jax.value_and_grad(loss_fn)(state.params, zt, t, u)
    new_state = state.apply_gradients(tx, grads, ema_decay=ema_decay)
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}
  return step


def build(config):
  """(velocity model, optimizer, init_fn) of the prior stage."""
  model = models.build_velocity(config.prior, config.model)
  tx = train_loop.make_optimizer(config.prior)
  init_fn = make_init_fn(model, tx, config.model.latent_dim, bool(config.prior.ema_decay))
  return model, tx, init_fn


def make_fm_eval(model, z_test: np.ndarray, batch_size: int, seed: int):
  """Held-out CFM loss with fixed noise and times (comparable across evaluations)."""
  gen = rng.stream(seed, "prior.heldout")
  n = max(batch_size, z_test.shape[0] // batch_size * batch_size)
  n = min(n, z_test.shape[0])
  z1 = z_test[:n]
  z0 = gen.standard_normal(z1.shape).astype(np.float32)
  t = gen.uniform(size=(n,)).astype(np.float32)

  @jax.jit
  def batch_loss(params, z0b, z1b, tb):
    zt, u = costs.cfm_interpolant(z0b, z1b, tb)
    return costs.flow_matching_loss(model.apply({"params": params}, zt, tb), u)

  def eval_fn(state) -> dict:
    params = state.sampling_params()
    vals = [float(batch_loss(params, z0[i:i + batch_size], z1[i:i + batch_size],
                             t[i:i + batch_size])) for i in range(0, n - batch_size + 1,
                                                                   batch_size)]
    if not vals:  # fewer held-out latents than one batch
      vals = [float(batch_loss(params, z0, z1, t))]
    return {"val_fm_loss": float(np.mean(vals))}
  return eval_fn


def make_generate(ctx: common.Context, velocity_model, decode_fn):
  """Hook for the scheduled Frechet evaluators: ``generate(state, num) -> x`` decodes
  ``num`` samples of the current (EMA) weights with the ``eval_method`` integrator."""
  cfg = ctx.config
  sampler = sampling.make_latent_sampler(velocity_model, method=cfg.prior.eval_method,
                                         num_steps=int(cfg.prior.eval_ode_steps),
                                         t0=cfg.sample.t0, t1=cfg.sample.t1,
                                         rtol=cfg.sample.rtol, atol=cfg.sample.atol)

  def generate(state, num: int) -> np.ndarray:
    _, _, x, _ = sampling.generate(sampler, state.sampling_params(), decode_fn, num,
                                   cfg.model.latent_dim, cfg.seed, cfg.sample.batch_size)
    return x
  return generate


def run(ctx: common.Context) -> dict:
  cfg = ctx.config
  autoencoder = common.load_autoencoder(ctx)
  z_train, z_test = autoencoder.encode(ctx.data.x_train), autoencoder.encode(ctx.data.x_test)
  model, tx, init_fn = build(cfg)
  batches = PriorBatches(ctx.sampler({"z1": z_train}), cfg.model.latent_dim, cfg.seed,
                         bool(cfg.prior.ot_coupling))
  fm_eval = make_fm_eval(model, z_test, cfg.data.batch_size, cfg.seed)
  scheduled = plugins.build_prior_evaluators(
      ctx, tuple(cfg.prior.evals), make_generate(ctx, model, autoencoder.decode_fn))

  def eval_fn(state):
    out = fm_eval(state)
    for evaluator in scheduled:
      out.update(evaluator(state))
    return out

  stage = train_loop.Stage(
      name=NAME, cfg=cfg.prior, init_fn=init_fn,
      step_fn=make_train_step(model, tx, float(cfg.prior.ema_decay)), batch_fn=batches,
      eval_fn=eval_fn, target_key="val_fm_loss")
  result = train_loop.run(stage, ctx.workdir, ctx.mesh, ctx.writer, cfg.seed)
  autoencoders.write_manifest(ctx.stage_dir(NAME), autoencoders.prior_manifest(
      cfg, autoencoder.method, ctx.workdir, result.steps,
      train_loop.checkpoint_dir(ctx.workdir, NAME)))
  summary = common.mark_done(ctx, NAME, result, {
      "method": autoencoder.method, "ema": bool(cfg.prior.ema_decay),
      "ot_coupling": bool(cfg.prior.ot_coupling),
      "num_params": int(sum(p.size for p in jax.tree.leaves(result.state.params)))})
  logging.info("prior: done after %d steps (%s), val_fm_loss=%.4g", result.steps,
               result.stopped_by, summary.get("val_fm_loss", float("nan")))
  return summary


def inputs(config) -> dict:
  """The prior section without the loop settings; whose latents it learns (the method's
  stage, fingerprint and step) is its upstream, so another method retrains it (moving the old
  one aside) instead of stopping the run."""
  return common.section_inputs(config.prior)


def timed_step(config, batch: dict):
  """(step_fn, init_fn, batch) of one flow-matching step (EMA included)."""
  model, tx, init_fn = build(config)
  return (make_train_step(model, tx, float(config.prior.ema_decay)), init_fn,
          {"z0": batch["z0"], "z1": batch["z"]})


def validate(config, data) -> None:
  """The Frechet evaluators' feature spaces (labels, images, weights) before training."""
  from gpe_jax.evals import features
  fds = tuple(n[len("fd_"):] for n in config.prior.evals if n.startswith("fd_"))
  features.validate_extractors(fds, data, config.evaluate, "config.prior.evals")


SPEC = common.StageSpec(
    latent_sampler=True,
    name=NAME, run=run, trains=True, consumes_method=True, inputs=inputs,
    timed_step=timed_step,
    upstream=lambda ctx: {"autoencoder": common.method_dir(ctx)},
    validate=validate, evaluators=plugins.PRIOR_EVALUATORS,
    headline=("steps", "seconds", "val_fm_loss"))
