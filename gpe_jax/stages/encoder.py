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

from gpe_jax import autoencoders, costs, models, parallel, train_loop
from gpe_jax.data import iterate_eval_batches
from gpe_jax.errors import ConfigError
from gpe_jax.evals import plugins
from gpe_jax.stages import common

NAME = "encoder"
# How the GME of a training batch is laid out over the devices (``config.encoder.gme_impl``).
GME_IMPLS = ("dense", "row_block")


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


def check_gme_impl(gme_impl: str) -> None:
  """Raises ConfigError unless ``gme_impl`` is one of ``GME_IMPLS``."""
  if gme_impl not in GME_IMPLS:
    raise ConfigError(
        f"config.encoder.gme_impl={gme_impl!r} is not a GME layout; use one of {GME_IMPLS}: "
        "'dense' (the whole pair matrix of the global batch under jit, the default) or "
        "'row_block' (each device sums its rows' block against the all-gathered batch, for "
        "large batches over many devices), e.g. --config.encoder.gme_impl=row_block.")


def make_train_step(model, tx, gme_impl: str = "dense", mesh=None):
  """step(state, batch{'x': [B, ...]}) -> (state, {'loss', 'grad_norm'}); loss = GME(x, T(x)).

  Args:
    model, tx: the encoder and its optimiser.
    gme_impl: 'dense': ``costs.gme_cost`` on the global batch (XLA lays out the [B, B] pair
      matrix); 'row_block': ``costs.gme_cost_row_blocks`` over ``mesh``'s "data" axis (each of
      the k devices its rows' [B/k, B] block), the same value with O(B^2/k) memory per device.
    mesh: the run's mesh (``ctx.mesh``); needed by 'row_block' only.
  """
  check_gme_impl(gme_impl)
  if gme_impl == "row_block":
    if mesh is None:
      raise ValueError("make_train_step: gme_impl='row_block' needs the mesh the batch is "
                       "sharded over (pass mesh=ctx.mesh).")
    gme = functools.partial(costs.gme_cost_row_blocks, mesh=mesh, axis="data")
  else:
    gme = costs.gme_cost

  def loss_fn(params, batch_stats, x):
    z, new_stats = models.apply_model(model, params, batch_stats, x, train=True)
    return gme(x, z), new_stats

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
    and the scheduled probes of ``config.encoder.evals``. The embeddings are computed over
    the mesh, each process on its share, and gathered exactly (``common.sharded_apply``);
    every process then holds the same z and computes the same GME."""
    embed = functools.partial(embed_fn, state.params, state.batch_stats)
    z = common.sharded_apply(embed, x_eval.reshape((-1,) + shape), bsz, ctx.mesh)
    out = {"val_gme": float(jnp.mean(gme_batches(x_eval, z.reshape(x_eval.shape[:2] + (-1,)))))}
    for evaluator in scheduled:
      out.update(evaluator(state))
    return out

  stage = train_loop.Stage(name=NAME, cfg=cfg.encoder, init_fn=make_init_fn(model, tx, shape),
                           step_fn=make_train_step(model, tx, cfg.encoder.gme_impl, ctx.mesh),
                           batch_fn=sampler,
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
  """(step_fn, init_fn, batch) of one encoder step on ``batch['x']`` (Table 2 times it, on the
  mesh of ``config.num_devices``)."""
  shape = tuple(batch["x"].shape[1:])
  model, tx = build(config, shape)
  impl = config.encoder.gme_impl
  mesh = parallel.make_mesh(config.num_devices) if impl == "row_block" else None
  return make_train_step(model, tx, impl, mesh), make_init_fn(model, tx, shape), {"x": batch["x"]}


def validate(config, data) -> None:
  """``config.encoder.gme_impl`` and the encoder's config (``config.model.dtype``, sizes),
  before any training."""
  check_gme_impl(config.encoder.gme_impl)
  models.build_encoder(config.model, data.example_shape)


def inputs(config) -> dict:
  """What the encoder's result depends on: ``common.training_inputs`` without ``gme_impl``,
  which lays the same cost out differently over the devices (as ``config.num_devices`` does),
  so switching it keeps a workdir's records."""
  own = common.training_inputs(NAME)(config)
  own.pop("gme_impl", None)
  return own


SPEC = common.StageSpec(
    name=NAME, run=run, trains=True, method="gpe", complete=False, timed_step=timed_step,
    inputs=inputs, validate=validate, evaluators=plugins.ENCODER_EVALUATORS,
    write_manifest=lambda ctx, step: write_manifest(ctx, step, common.load_latent_stats(
        os.path.join(ctx.workdir, NAME, "latent_stats.npz"))),
    headline=("steps", "seconds", "val_gme", "weak_bilip_frac_a1.5"))
