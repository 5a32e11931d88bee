"""GPE stage 1 (Algorithm 1): train the encoder alone on the GME cost.

Outputs in ``workdir/encoder/``: checkpoints, ``latent_stats.npz`` (PAPERS §1.4),
``latent_scatter.png``, ``distortion.png``; ``summary["encoder"]`` holds the held-out GME and
the geometry metrics (PAPERS §1.2).
"""
from __future__ import annotations

import functools
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gpe_jax import costs, models, plots, train_loop
from gpe_jax.data import iterate_eval_batches
from gpe_jax.evals import geometry, plugins
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
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_stats,
                              opt_state=opt_state)
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}
  return step


def abstract_state(config, example_shape, seed_key=None):
  """Shape/dtype tree of the encoder stage's TrainState (to restore it elsewhere)."""
  model, tx = build(config, example_shape)
  key = jax.random.key(0) if seed_key is None else seed_key
  return jax.eval_shape(make_init_fn(model, tx, example_shape), key)


def load_frozen(config, example_shape, ckpt_dir, mesh):
  """(model, params, batch_stats) of a trained encoder, from its stage checkpoints."""
  model, _ = build(config, example_shape)
  state = train_loop.restore_checkpoint(
      ckpt_dir, abstract_state(config, example_shape), mesh,
      what=" (the frozen encoder the decoder stage needs)")
  return model, state.params, state.batch_stats


def describe_encoder(ctx: common.Context, stage: str, embed, label: str):
  """What every trained encoder (GPE's or a baseline's) leaves in ``workdir/<stage>/``:
  ``latent_stats.npz`` (PAPERS §1.4), the geometry metrics of its held-out embeddings (PAPERS
  §1.2), ``latent_scatter.png`` and ``distortion.png``.

  Args:
    ctx: the run context.
    stage: the stage's name (its folder).
    embed: x [B, ...] -> T(x) [B, d], batched by ``config.data.batch_size``.
    label: how plots name the encoder.

  Returns:
    (metrics dict with ``latent_scale``, held-out examples x_geo, their embeddings z_geo).
  """
  cfg, data = ctx.config, ctx.data
  bsz = cfg.data.batch_size
  out_dir = ctx.stage_dir(stage)
  n_stats = min(cfg.eval.latent_stats_samples, data.x_train.shape[0])
  stats = common.latent_stats(common.batched_apply(embed, data.x_train[:n_stats], bsz))
  common.save_latent_stats(os.path.join(out_dir, "latent_stats.npz"), stats)
  n_geo = min(cfg.eval.geometry_points, data.x_test.shape[0])
  x_geo = data.x_test[:n_geo]
  z_geo = common.batched_apply(embed, x_geo, bsz)
  metrics = geometry.geometry_metrics(x_geo, z_geo, alphas=tuple(cfg.eval.alphas),
                                      knn_k=cfg.eval.knn_k)
  metrics["latent_scale"] = float(stats["scale"])
  labels = None if data.y_test is None else data.y_test[:n_geo]
  plots.latent_scatter(z_geo, labels, os.path.join(out_dir, "latent_scatter.png"),
                       title=f"{data.name}: {label}, held-out embeddings")
  dx, dz = geometry.pair_distances(x_geo, z_geo)
  plots.distortion_plot(dx, dz, os.path.join(out_dir, "distortion.png"),
                        title=f"{data.name}: {label}, held-out pair distances, data vs latent")
  return metrics, x_geo, z_geo


def run(ctx: common.Context) -> dict:
  cfg, data = ctx.config, ctx.data
  if common.done_record(ctx, NAME) is not None:
    logging.info("encoder: already finished, skipping")
    return common.previous_summary(ctx, NAME)
  shape = data.example_shape
  model, tx = build(cfg, shape)
  sampler = ctx.sampler({"x": data.x_train})
  bsz = cfg.data.batch_size

  embed_fn = common.inference_fn(model)
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
  metrics, _, _ = describe_encoder(ctx, NAME, embed, "GPE encoder")
  summary = common.mark_done(ctx, NAME, result, metrics)
  logging.info("encoder: done after %d steps (%s), val_gme=%.4g", result.steps,
               result.stopped_by, summary.get("val_gme", float("nan")))
  return summary
