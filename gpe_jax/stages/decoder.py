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

from gpe_jax import costs, models, plots, train_loop
from gpe_jax.evals import plugins
from gpe_jax.stages import common, encoder

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
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_stats,
                              opt_state=opt_state)
    return new_state, {"loss": loss, "recon_mse": mse, "grad_norm": optax.tree.norm(grads)}
  return step


def load_trained(ctx: common.Context):
  """(model, params, batch_stats) of the trained decoder in ``workdir/decoder``."""
  cfg = ctx.config
  model = models.build_decoder(cfg.model, ctx.data.example_shape)
  tx = train_loop.make_optimizer(cfg.decoder)
  abstract = jax.eval_shape(make_init_fn(model, tx, cfg.model.latent_dim), jax.random.key(0))
  state = train_loop.restore_checkpoint(
      train_loop.checkpoint_dir(ctx.workdir, NAME), abstract, ctx.mesh,
      what=" (the trained decoder; list 'decoder' in config.stages first)")
  return model, state.params, state.batch_stats


def encoder_method(ctx: common.Context) -> str:
  """Whose frozen encoder the decoder trains on: 'gpe' or a baseline's (Table 1 trains a
  decoder on the VAE's frozen encoder)."""
  return ctx.config.decoder.get("encoder_method", "gpe")


def encoder_checkpoint_dir(ctx: common.Context) -> str:
  path = ctx.config.decoder.encoder_checkpoint
  stage = encoder.NAME if encoder_method(ctx) == "gpe" else encoder_method(ctx)
  return os.path.abspath(path) if path else train_loop.checkpoint_dir(ctx.workdir, stage)


def frozen_embedder(ctx: common.Context):
  """(embed, stats): ``embed(x [N, ...]) -> [N, d]`` normalised latents C (T(x) - m) of the
  frozen encoder (batched, jitted), and the latent statistics (m, C) it uses."""
  cfg, data = ctx.config, ctx.data
  method = encoder_method(ctx)
  if method == "gpe":
    enc_model, params, stats_bn = encoder.load_frozen(cfg, data.example_shape,
                                                      encoder_checkpoint_dir(ctx), ctx.mesh)
    raw = functools.partial(common.inference_fn(enc_model), params, stats_bn)
    stats_path = os.path.join(ctx.workdir, encoder.NAME, "latent_stats.npz")
  else:
    from gpe_jax.stages import baselines
    if method not in baselines.NAMES:
      from gpe_jax.parallel import ConfigError
      raise ConfigError(f"config.decoder.encoder_method={method!r}; use 'gpe' or one of "
                        f"{baselines.NAMES}.")
    enc_model, _, params, stats_bn = baselines.load_trained(ctx, method,
                                                            encoder_checkpoint_dir(ctx))
    raw = baselines.embed_fn(enc_model, params, stats_bn, method in baselines.VARIATIONAL)
    stats_path = os.path.join(ctx.workdir, method, "latent_stats.npz")
  bsz = cfg.data.batch_size
  if not cfg.decoder.encoder_checkpoint and os.path.exists(stats_path):
    stats = common.load_latent_stats(stats_path)
  else:  # an encoder from elsewhere: compute its statistics the same way the stage does
    n = min(cfg.eval.latent_stats_samples, data.x_train.shape[0])
    stats = common.latent_stats(common.batched_apply(raw, data.x_train[:n], bsz))

  def embed(x: np.ndarray) -> np.ndarray:
    return common.normalize_latents(common.batched_apply(raw, x, bsz), stats)
  return embed, stats


def embed_dataset(ctx: common.Context):
  """Normalised embeddings (z_train, z_test) of the frozen encoder, and its latent stats."""
  embed, stats = frozen_embedder(ctx)
  return embed(ctx.data.x_train), embed(ctx.data.x_test), stats


def run(ctx: common.Context) -> dict:
  cfg, data = ctx.config, ctx.data
  if common.done_record(ctx, NAME) is not None:
    logging.info("decoder: already finished, skipping")
    return common.previous_summary(ctx, NAME)
  z_train, z_test, _ = embed_dataset(ctx)
  model = models.build_decoder(cfg.model, data.example_shape)
  tx = train_loop.make_optimizer(cfg.decoder)
  bsz = cfg.data.batch_size
  decode_fn = common.inference_fn(model)
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
  summary = common.mark_done(ctx, NAME, result, {"val_mean_image_mse": baseline})
  logging.info("decoder: done after %d steps (%s), val_recon_mse=%.4g (mean image: %.4g)",
               result.steps, result.stopped_by, summary.get("val_recon_mse", float("nan")),
               baseline)
  return summary
