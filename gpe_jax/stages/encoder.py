"""GPE stage 1 (Algorithm 1): train the encoder alone on the GME cost.

Outputs in ``workdir/encoder/``: checkpoints, ``manifest.json`` (the encoder half of method
'gpe', see ``gpe_jax.autoencoders``), ``latent_stats.npz`` (PAPERS §1.4),
``latent_scatter.png``, ``distortion.png``; its summary holds the held-out GME and the geometry
metrics (PAPERS §1.2).
"""
from __future__ import annotations

import functools
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gpe_jax import autoencoders, costs, models, train_loop
from gpe_jax.data import iterate_eval_batches
from gpe_jax.evals import plugins
from gpe_jax.stages import common

NAME = "encoder"


def build(config, example_shape):
  """(model, optimizer) of the encoder stage."""
  model = models.build_encoder(config.model, example_shape)
  return model, train_loop.make_optimizer(config.encoder)


def make_init_fn(model, tx, example_shape):
  def init_fn(key):
    pkey, skey = jax.random.split(key)
    params, batch_stats = models.init_variables(model, pkey, example_shape)
    return train_loop.new_state(skey, params, batch_stats, tx)
  return init_fn


def make_train_step(model, tx):
  """step(state, batch{'x': [B, ...]}) -> (state, {'loss', 'grad_norm'}); loss = GME(x, T(x))."""
  def loss_fn(params, batch_stats, x):
    z, new_stats = models.apply_model(model, params, batch_stats, x, train=True)
    return costs.gme_cost(x, z), new_stats

  def step(state, batch):
    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.batch_stats, batch["x"])
    new_state = state.apply_gradients(tx, grads, batch_stats=new_stats)
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}
  return step


def run(ctx: common.Context) -> dict:
  cfg, data = ctx.config, ctx.data
  shape = data.example_shape
  model, tx = build(cfg, shape)
  sampler = ctx.sampler({"x": data.x_train})
  bsz = cfg.data.batch_size

  embed_fn = models.inference_fn(model)
  x_eval = np.stack(list(iterate_eval_batches(data.x_test, bsz, cfg.eval.num_examples)))
  gme_batches = jax.jit(costs.gme_cost_minibatches)
  scheduled = plugins.build_encoder_evaluators(ctx, embed_fn, tuple(cfg.encoder.evals))

  def eval_fn(state):
    """Held-out GME: mean over minibatches of the training batch size (the paper's scale),
    and the scheduled probes of ``config.encoder.evals``."""
    embed = functools.partial(embed_fn, state.params, state.batch_stats)
    z = common.batched_apply(embed, x_eval.reshape((-1,) + shape), bsz)
    out = {"val_gme": float(jnp.mean(gme_batches(x_eval, z.reshape(x_eval.shape[:2] + (-1,)))))}
    for evaluator in scheduled:
      out.update(evaluator(state))
    return out

  stage = train_loop.Stage(name=NAME, cfg=cfg.encoder, init_fn=make_init_fn(model, tx, shape),
                           step_fn=make_train_step(model, tx), batch_fn=sampler,
                           eval_fn=eval_fn, target_key="val_gme")
  result = train_loop.run(stage, ctx.workdir, ctx.mesh, ctx.writer, cfg.seed)

  embed = functools.partial(embed_fn, result.state.params, result.state.batch_stats)
  metrics, stats, _, _ = common.describe_encoder(ctx, NAME, embed, "GPE encoder")
  write_manifest(ctx, result.steps, stats)
  summary = common.mark_done(ctx, NAME, result, metrics)
  logging.info("encoder: done after %d steps (%s), val_gme=%.4g", result.steps,
               result.stopped_by, summary.get("val_gme", float("nan")))
  return summary


def write_manifest(ctx: common.Context, step: int, stats: dict) -> None:
  """The encoder half of method 'gpe' (the decoder stage completes it)."""
  enc = autoencoders.part(ctx.workdir, train_loop.checkpoint_dir(ctx.workdir, NAME), step,
                          head="identity")
  autoencoders.write_manifest(ctx.stage_dir(NAME), autoencoders.autoencoder_manifest(
      "gpe", NAME, ctx.config, ctx.data.example_shape, enc, None, stats,
      ctx.data.y_train is not None))


def timed_step(config, batch: dict):
  """(step_fn, init_fn, batch) of one encoder step on ``batch['x']`` (Table 2 times it)."""
  shape = tuple(batch["x"].shape[1:])
  model, tx = build(config, shape)
  return make_train_step(model, tx), make_init_fn(model, tx, shape), {"x": batch["x"]}


SPEC = common.StageSpec(
    name=NAME, run=run, trains=True, method="gpe", complete=False, timed_step=timed_step,
    inputs=common.training_inputs(NAME), evaluators=plugins.ENCODER_EVALUATORS,
    write_manifest=lambda ctx, step: write_manifest(ctx, step, common.load_latent_stats(
        os.path.join(ctx.workdir, NAME, "latent_stats.npz"))),
    headline=("steps", "seconds", "val_gme", "weak_bilip_frac_a1.5"))
