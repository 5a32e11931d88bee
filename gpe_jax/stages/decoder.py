"""GPE stage 2 (Algorithm 2): train the decoder alone, on a frozen encoder, by reconstruction.

The encoder is restored from ``workdir/encoder/checkpoints`` (or
``config.decoder.encoder_checkpoint``) and is frozen, so every training and held-out example
is embedded once, up front, and the decoder trains on (z, x) pairs: a decoder step costs a
decoder forward/backward only. The decoder's input is the *normalised* latent
z = C (T(x) - m) (PAPERS §1.4), the space the prior later samples in; generation is then
simply x = S(z).

Outputs in ``workdir/decoder/``: checkpoints, ``reconstructions.png``; ``summary["decoder"]``
holds ``val_recon_mse`` and, for scale, ``val_mean_image_mse`` (the MSE of predicting the mean
training image).
"""
from __future__ import annotations

import functools
import logging
import os

import jax
import numpy as np
import optax

from gpe_jax import autoencoders, costs, models, plots, train_loop
from gpe_jax.errors import ConfigError
from gpe_jax.evals import plugins
from gpe_jax.stages import common

NAME = "decoder"


def make_init_fn(model, tx, latent_dim):
  def init_fn(key):
    pkey, skey = jax.random.split(key)
    params, batch_stats = models.init_variables(model, pkey, (latent_dim,))
    return train_loop.new_state(skey, params, batch_stats, tx)
  return init_fn


def make_train_step(model, tx, l1_weight: float = 0.0):
  """step(state, {'z': [B, d], 'x': [B, ...]}) -> (state, metrics); loss = MSE(x, S(z))."""
  def loss_fn(params, batch_stats, z, x):
    x_hat, new_stats = models.apply_model(model, params, batch_stats, z, train=True)
    mse = costs.recon_mse(x, x_hat)
    loss = mse + l1_weight * costs.recon_l1(x, x_hat) if l1_weight else mse
    return loss, (new_stats, mse)

  def step(state, batch):
    (loss, (new_stats, mse)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.batch_stats, batch["z"], batch["x"])
    new_state = state.apply_gradients(tx, grads, batch_stats=new_stats)
    return new_state, {"loss": loss, "recon_mse": mse, "grad_norm": optax.tree.norm(grads)}
  return step


def encoder_source(ctx: common.Context) -> str:
  """The stage folder whose manifest holds the frozen encoder: the one of
  ``config.decoder.encoder_checkpoint`` (its parent folder), else the stage of
  ``config.decoder.encoder_method`` in this workdir ('gpe': ``encoder``; a baseline's name:
  that baseline's folder). Table 1 trains a decoder on the VAE's frozen encoder."""
  path = ctx.config.decoder.encoder_checkpoint
  if path:
    return os.path.dirname(os.path.abspath(path).rstrip(os.sep))
  method = ctx.config.decoder.encoder_method
  found = autoencoders.find(ctx.workdir, method, complete=False, exclude_stage=NAME)
  if found is None:
    stage = "encoder" if method == "gpe" else method
    return os.path.join(ctx.workdir, stage)
  return found[0]


def upstream(ctx: common.Context) -> dict:
  return {"encoder": encoder_source(ctx)}


def frozen_encoder(ctx: common.Context) -> autoencoders.Autoencoder:
  """The frozen encoder (and its latent statistics) the decoder trains on, from its stage's
  manifest."""
  source = encoder_source(ctx)
  manifest = autoencoders.read_manifest(source)
  if manifest is None or manifest.get("encoder") is None:
    raise ConfigError(
        f"The decoder stage trains on a frozen encoder, but {source} holds no trained encoder "
        f"(no {autoencoders.MANIFEST}). Train it first (list its stage before 'decoder' in "
        "config.stages), or point --config.decoder.encoder_checkpoint at the checkpoints of "
        "a finished encoder stage (rerun an older workdir's command once to give it a "
        "manifest).")
  return autoencoders.Autoencoder(source, dict(manifest, decoder=None),
                                  os.path.dirname(source), ctx.config.data.batch_size)


def run(ctx: common.Context) -> dict:
  cfg, data = ctx.config, ctx.data
  frozen = frozen_encoder(ctx)
  z_train, z_test = frozen.encode(data.x_train), frozen.encode(data.x_test)
  model = models.build_decoder(cfg.model, data.example_shape)
  tx = train_loop.make_optimizer(cfg.decoder)
  bsz = cfg.data.batch_size
  decode_fn = models.inference_fn(model)
  mse_fn = jax.jit(lambda p, s, z, x: costs.recon_mse(x, decode_fn(p, s, z)))
  n_eval = z_test.shape[0] if not cfg.eval.num_examples else min(cfg.eval.num_examples,
                                                                  z_test.shape[0])
  n_eval = max(bsz, n_eval // bsz * bsz)

  scheduled = plugins.build_decoder_evaluators(ctx, decode_fn, z_test,
                                               tuple(cfg.decoder.get("evals", ())))

  def eval_fn(state):
    vals = [float(mse_fn(state.params, state.batch_stats, z_test[i:i + bsz],
                         data.x_test[i:i + bsz])) for i in range(0, n_eval, bsz)]
    out = {"val_recon_mse": float(np.mean(vals))}
    for evaluator in scheduled:
      out.update(evaluator(state))
    return out

  stage = train_loop.Stage(
      name=NAME, cfg=cfg.decoder, init_fn=make_init_fn(model, tx, cfg.model.latent_dim),
      step_fn=make_train_step(model, tx, cfg.decoder.l1_weight),
      batch_fn=ctx.sampler({"z": z_train, "x": data.x_train}), eval_fn=eval_fn,
      target_key="val_recon_mse")
  result = train_loop.run(stage, ctx.workdir, ctx.mesh, ctx.writer, cfg.seed)

  mean_image = data.x_train.mean(axis=0, keepdims=True)
  baseline = float(np.mean(np.square(data.x_test[:n_eval] - mean_image)))
  decode = functools.partial(decode_fn, result.state.params, result.state.batch_stats)
  n_show = min(32, bsz, z_test.shape[0])
  x_hat = np.asarray(decode(z_test[:bsz]))[:n_show]
  plots.recon_grid(data.x_test[:n_show], x_hat,
                   os.path.join(ctx.stage_dir(NAME), "reconstructions.png"),
                   title=f"{data.name}: held-out originals (odd rows) and GPE reconstructions")
  write_manifest(ctx, frozen, result.steps)
  summary = common.mark_done(ctx, NAME, result, {"val_mean_image_mse": baseline})
  logging.info("decoder: done after %d steps (%s), val_recon_mse=%.4g (mean image: %.4g)",
               result.steps, result.stopped_by, summary.get("val_recon_mse", float("nan")),
               baseline)
  return summary


def write_manifest(ctx: common.Context, frozen: autoencoders.Autoencoder, step: int) -> None:
  """Method 'gpe' complete: the frozen encoder (as its own manifest names it) and this decoder,
  which takes normalised latents. On another method's encoder the pair is 'decoder_on_<it>'."""
  enc = dict(frozen.manifest["encoder"])
  enc.update(autoencoders.part(ctx.workdir, autoencoders.resolve(frozen.workdir,
                                                                 enc["checkpoint"]),
                               enc["step"], enc.get("subtree")))
  dec = autoencoders.part(ctx.workdir, train_loop.checkpoint_dir(ctx.workdir, NAME), step,
                          input="normalised")
  method = "gpe" if frozen.method == "gpe" else f"decoder_on_{frozen.method}"
  autoencoders.write_manifest(ctx.stage_dir(NAME), autoencoders.autoencoder_manifest(
      method, NAME, ctx.config, ctx.data.example_shape, enc, dec, frozen.latent_stats,
      ctx.data.y_train is not None))


def inputs(config) -> dict:
  """The decoder section without the loop settings and the encoder's location (the
  encoder it consumed is in the record's upstream, with its fingerprint and step)."""
  own = common.section_inputs(config.decoder)
  for key in ("encoder_checkpoint", "encoder_method"):
    own.pop(key, None)
  return own


def timed_step(config, batch: dict):
  """(step_fn, init_fn, batch) of one decoder step on (z, x) pairs (the frozen encoder embeds
  the data once, before training, so it is not part of the step)."""
  model = models.build_decoder(config.model, tuple(batch["x"].shape[1:]))
  tx = train_loop.make_optimizer(config.decoder)
  return (make_train_step(model, tx, float(config.decoder.l1_weight)),
          make_init_fn(model, tx, int(config.model.latent_dim)),
          {"z": batch["z"], "x": batch["x"]})


SPEC = common.StageSpec(
    name=NAME, run=run, trains=True, method="gpe", complete=True, inputs=inputs,
    timed_step=timed_step,
    upstream=upstream, write_manifest=lambda ctx, step: write_manifest(
        ctx, frozen_encoder(ctx), step),
    encoder_of=lambda config: "" if config.decoder.encoder_checkpoint
    else config.decoder.encoder_method, evaluators=plugins.DECODER_EVALUATORS,
    headline=("steps", "seconds", "val_recon_mse", "val_mean_image_mse"))
