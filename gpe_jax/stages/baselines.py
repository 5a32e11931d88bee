"""The paper's baselines (PAPERS §1.7): encoder and decoder trained *jointly*, same families as GPE.

    ae       loss = MSE(x, S(T(x)))
    vae      loss = MSE(x, S(z)) + beta * KL(q(z|x) || N(0, I)) / D,  z = mu + sigma * eps
    ae_mds   loss = AE loss  + mds_weight * stress(x, T(x))
    vae_mds  loss = VAE loss + mds_weight * stress(x, mu(x))

MSE is the mean over the D pixels, so ``beta`` weighs the KL against the *summed* squared error,
as in beta-VAE (beta = 1: the Gaussian-likelihood ELBO up to a constant and the noise scale).
``stress`` is the metric-MDS stress (``costs.mds_stress``): mean over pairs of
(|T(x_i) - T(x_j)| - |x_i - x_j|)^2. The VAE's encoder head outputs (mean, log-variance); its
embedding is the mean.

Each baseline is one stage (``config.stages`` entry and config section of the same name) with
its own checkpoints in ``workdir/<name>/``. After training it writes, like the GPE encoder
stage, ``latent_stats.npz`` and the geometry metrics of its encoder (held-out GME included, so
methods compare on GPE's own criterion), reconstructions and a latent scatter. With
``config.method = '<name>'`` the prior, sample and evaluate stages use this baseline's encoder
and decoder (its ``manifest.json``, read by ``gpe_jax.autoencoders``), so every method is
evaluated identically.
"""
from __future__ import annotations

import functools
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gpe_jax import autoencoders, costs, models, plots, train_loop
from gpe_jax.data import iterate_eval_batches
from gpe_jax.stages import common

NAMES = ("vae", "ae", "vae_mds", "ae_mds")
VARIATIONAL = ("vae", "vae_mds")
WITH_MDS = ("vae_mds", "ae_mds")


def build(config, name: str, example_shape):
  """(encoder, decoder, optimizer) of baseline ``name``."""
  enc = models.build_encoder(config.model, example_shape,
                             out_mult=2 if name in VARIATIONAL else 1)
  dec = models.build_decoder(config.model, example_shape)
  return enc, dec, train_loop.make_optimizer(config[name])


def make_init_fn(enc, dec, tx, example_shape, latent_dim: int):
  def init_fn(key):
    ekey, dkey, skey = jax.random.split(key, 3)
    pe, be = models.init_variables(enc, ekey, example_shape)
    pd, bd = models.init_variables(dec, dkey, (latent_dim,))
    params = {"encoder": pe, "decoder": pd}
    return train_loop.new_state(skey, params, {"encoder": be, "decoder": bd}, tx)
  return init_fn


def encode_mean(h: jax.Array, variational: bool) -> jax.Array:
  """The embedding T(x): the encoder output, or the mean half of a (mean, logvar) head."""
  return models.encode_mean(h) if variational else h


def make_train_step(enc, dec, tx, variational: bool, beta: float = 1.0,
                    mds_weight: float = 0.0):
  """step(state, {'x'}) -> (state, metrics): the joint loss above; eps from fold_in(key, step)."""
  def loss_fn(params, batch_stats, x, key):
    h, bs_e = models.apply_model(enc, params["encoder"], batch_stats["encoder"], x, train=True)
    metrics = {}
    if variational:
      mean, logvar = jnp.split(h, 2, axis=-1)
      z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)
      kl = jnp.mean(costs.gaussian_kl_per_example(mean, logvar))
      metrics["kl"] = kl
    else:
      mean = z = h
    x_hat, bs_d = models.apply_model(dec, params["decoder"], batch_stats["decoder"], z,
                                     train=True)
    mse = costs.recon_mse(x, x_hat)
    loss = mse
    metrics["recon_mse"] = mse
    if variational:
      loss = loss + beta * metrics["kl"] / float(np.prod(x.shape[1:]))
    if mds_weight:
      stress = costs.mds_stress(x.reshape(x.shape[0], -1), mean)
      loss = loss + mds_weight * stress
      metrics["mds_stress"] = stress
    return loss, ({"encoder": bs_e, "decoder": bs_d}, metrics)

  def step(state, batch):
    (loss, (new_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.batch_stats, batch["x"], state.step_key())
    new_state = state.apply_gradients(tx, grads, batch_stats=new_stats)
    return new_state, dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
  return step


def make_embed(enc, variational: bool):
  """Jitted (params, batch_stats, x [B, ...]) -> T(x) [B, d] (the mean for a VAE), inference
  mode, on the joint state's variables. Variables are arguments, so repeated evaluations do not
  recompile."""
  infer = models.inference_fn(enc)

  @jax.jit
  def fn(params, batch_stats, x):
    return encode_mean(infer(params["encoder"], batch_stats["encoder"], x), variational)
  return fn


def run_stage(ctx: common.Context, name: str) -> dict:
  cfg, data = ctx.config, ctx.data
  shape = data.example_shape
  section = cfg[name]
  variational = name in VARIATIONAL
  enc, dec, tx = build(cfg, name, shape)
  bsz = cfg.data.batch_size
  x_eval = np.concatenate(list(iterate_eval_batches(data.x_test, bsz, cfg.eval.num_examples)))
  decode_infer = models.inference_fn(dec)
  embed_any = make_embed(enc, variational)

  def eval_fn(state):
    embed = functools.partial(embed_any, state.params, state.batch_stats)
    z = common.batched_apply(embed, x_eval, bsz)
    x_hat = common.batched_apply(
        functools.partial(decode_infer, state.params["decoder"], state.batch_stats["decoder"]),
        z, bsz)
    return {"val_recon_mse": float(np.mean(np.square(x_hat - x_eval)))}

  stage = train_loop.Stage(
      name=name, cfg=section, init_fn=make_init_fn(enc, dec, tx, shape, cfg.model.latent_dim),
      step_fn=make_train_step(enc, dec, tx, variational, float(section.get("beta", 1.0)),
                              float(section.get("mds_weight", 0.0))),
      batch_fn=ctx.sampler({"x": data.x_train}), eval_fn=eval_fn, target_key="val_recon_mse")
  result = train_loop.run(stage, ctx.workdir, ctx.mesh, ctx.writer, cfg.seed)

  out_dir = ctx.stage_dir(name)
  state = result.state
  embed = functools.partial(embed_any, state.params, state.batch_stats)
  metrics, stats, x_geo, z_geo = common.describe_encoder(ctx, name, embed, f"{name} encoder")
  n_show = min(32, x_geo.shape[0])
  x_hat = common.batched_apply(
      functools.partial(decode_infer, state.params["decoder"], state.batch_stats["decoder"]),
      z_geo[:n_show], bsz)
  plots.recon_grid(x_geo[:n_show], x_hat, os.path.join(out_dir, "reconstructions.png"),
                   title=f"{data.name}: held-out originals and {name} reconstructions")
  mean_image = data.x_train.mean(axis=0, keepdims=True)
  metrics["val_mean_image_mse"] = float(np.mean(np.square(x_eval - mean_image)))
  write_manifest(ctx, name, result.steps, stats)
  summary = common.mark_done(ctx, name, result, metrics)
  logging.info("%s: done after %d steps (%s), val_recon_mse=%.4g, gme_all_pairs=%.4g", name,
               result.steps, result.stopped_by, summary.get("val_recon_mse", float("nan")),
               summary.get("gme_all_pairs", float("nan")))
  return summary


def write_manifest(ctx: common.Context, name: str, step: int, stats: dict) -> None:
  """Method ``name`` complete: the encoder (mean head for a VAE) and the decoder, which takes
  raw latents, both sub-trees of the one joint checkpoint."""
  ckpt = train_loop.checkpoint_dir(ctx.workdir, name)
  enc = autoencoders.part(ctx.workdir, ckpt, step, "encoder",
                          head="mean" if name in VARIATIONAL else "identity")
  dec = autoencoders.part(ctx.workdir, ckpt, step, "decoder", input="raw")
  autoencoders.write_manifest(ctx.stage_dir(name), autoencoders.autoencoder_manifest(
      name, name, ctx.config, ctx.data.example_shape, enc, dec, stats,
      ctx.data.y_train is not None))


def _legacy_manifest(ctx: common.Context, step: int, name: str) -> None:
  write_manifest(ctx, name, step, common.load_latent_stats(
      os.path.join(ctx.workdir, name, "latent_stats.npz")))


def timed_step(config, batch: dict, name: str):
  """(step_fn, init_fn, batch) of one joint step of baseline ``name``."""
  shape = tuple(batch["x"].shape[1:])
  section = config[name]
  enc, dec, tx = build(config, name, shape)
  return (make_train_step(enc, dec, tx, name in VARIATIONAL, float(section.get("beta", 1.0)),
                          float(section.get("mds_weight", 0.0))),
          make_init_fn(enc, dec, tx, shape, int(config.model.latent_dim)), {"x": batch["x"]})


SPECS = tuple(common.StageSpec(
    name=name, run=functools.partial(run_stage, name=name), trains=True, method=name,
    complete=True, inputs=common.training_inputs(name),
    timed_step=functools.partial(timed_step, name=name),
    write_manifest=functools.partial(_legacy_manifest, name=name),
    headline=("steps", "seconds", "val_recon_mse", "gme_all_pairs")) for name in NAMES)
