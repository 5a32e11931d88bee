"""One view of a trained autoencoder for the prior, sample and evaluate stages, whatever the method.

``config.method`` picks whose latent space the prior lives in:

  * ``'gpe'``: the GPE encoder (``workdir/encoder``) and the decoder trained on its normalised
    latents (``workdir/decoder``);
  * a baseline name (``'vae'``, ``'ae'``, ``'vae_mds'``, ``'ae_mds'``): that stage's jointly
    trained encoder (the mean for a VAE) and decoder (``workdir/<name>``).

Either way the prior sees normalised latents z = C (T(x) - m) (PAPERS §1.4; the statistics in
``<stage>/latent_stats.npz``), and ``decode`` maps a normalised z to an image: S(z) for GPE,
whose decoder was trained on normalised latents, and S(z / C + m) for the baselines, whose
decoders were trained on raw ones. Every method is therefore sampled and evaluated the same way.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable

import jax
import numpy as np

from gpe_jax import logs
from gpe_jax.parallel import ConfigError
from gpe_jax.stages import baselines, common, decoder, encoder

METHODS = ("gpe",) + baselines.NAMES


@dataclasses.dataclass
class FrozenAutoencoder:
  """Attributes:
    method: 'gpe' or a baseline name.
    embed: x [N, ...] -> normalised latents [N, d] (host arrays, batched).
    decode: jitted normalised z [B, d] -> x [B, ...].
    stats: the latent statistics (mean m, scale C).
  """
  method: str
  embed: Callable[[np.ndarray], np.ndarray]
  decode: Callable
  stats: dict


def method_of(config) -> str:
  method = config.get("method", "gpe")
  if method not in METHODS:
    raise ConfigError(f"config.method={method!r} is not a method; use one of {METHODS}.")
  return method


def source_stages(config) -> tuple[str, ...]:
  """The stages whose checkpoints the latent view reads."""
  method = method_of(config)
  return (encoder.NAME, decoder.NAME) if method == "gpe" else (method,)


def source_steps(ctx: common.Context) -> dict:
  """Steps of the source stages, from summary.json (for the fingerprints of later stages)."""
  summary = logs.read_json(os.path.join(ctx.workdir, "summary.json"), {})
  return {s: summary.get(s, {}).get("steps") for s in source_stages(ctx.config)}


def load(ctx: common.Context) -> FrozenAutoencoder:
  method = method_of(ctx.config)
  if method == "gpe":
    embed, stats = decoder.frozen_embedder(ctx)
    model, params, batch_stats = decoder.load_trained(ctx)
    decode = functools.partial(common.inference_fn(model), params, batch_stats)
    return FrozenAutoencoder(method, embed, decode, stats)
  bsz = ctx.config.data.batch_size
  enc, dec, params, batch_stats = baselines.load_trained(ctx, method)
  raw = baselines.embed_fn(enc, params, batch_stats, method in baselines.VARIATIONAL)
  path = os.path.join(ctx.workdir, method, "latent_stats.npz")
  if os.path.exists(path):
    stats = common.load_latent_stats(path)
  else:
    n = min(ctx.config.eval.latent_stats_samples, ctx.data.x_train.shape[0])
    stats = common.latent_stats(common.batched_apply(raw, ctx.data.x_train[:n], bsz))
  mean = np.asarray(stats["mean"], np.float32)
  inv_scale = np.float32(1.0 / float(stats["scale"]))
  infer = common.inference_fn(dec)

  @jax.jit
  def decode(z):
    return infer(params["decoder"], batch_stats["decoder"], z * inv_scale + mean)

  def embed(x: np.ndarray) -> np.ndarray:
    return common.normalize_latents(common.batched_apply(raw, x, bsz), stats)
  return FrozenAutoencoder(method, embed, decode, stats)
