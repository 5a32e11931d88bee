"""Sampling stage: N(0, I) -> flow-matching prior (ODE) -> decoder -> images; for a method
whose decoder is a noise generator (a GAN, ``stages/gans.py``): N(0, I) -> G -> images, with
no prior (the latents are the noise, NFE 0, no integrators to compare).

Reads the prior (``prior/manifest.json``: its checkpoint, EMA weights) and ``config.method``'s
decoder and, for the interpolation grid, encoder (that method's manifest). Writes to
``workdir/sample/``:
  * ``samples.npz``: ``z`` [N, d] generated latents, ``x`` [N, ...] decoded samples, ``z0``
    the noise they came from, and the integrator, its steps and NFE;
  * ``samples.png``: a grid of the first ``grid_size`` samples;
  * ``interpolation_latent.png``: straight lines between the latents of held-out pairs,
    decoded (rows = pairs; the GPE latent space is geometry-preserving, so these move evenly);
  * ``interpolation_prior.png``: spherical interpolation between noise vectors, carried
    through the flow and decoded;
  * ``summary["sample"]``: integrator, NFE per sample, seconds, and (``compare_solvers``) each
    integrator's NFE and RMS latent error against a tight dopri5 solution of the same noise.

The stage is cheap, so it is redone (the old outputs moved aside) whenever its config or the
prior/decoder it reads changed.
"""
from __future__ import annotations

import logging
import os
import time

import jax
import numpy as np

from gpe_jax import logs, plots, rng, sampling
from gpe_jax.stages import common

NAME = "sample"


def load_generator(ctx: common.Context, method=None, num_steps=None):
  """(generate, latent_sampler, velocity, params, autoencoder) for the workdir's trained prior
  and ``config.method``'s decoder (both read back from their manifests).

  ``generate(num, seed) -> (z0, z, x, nfe)`` draws ``num`` samples with ``config.sample``'s
  integrator (or ``method`` / ``num_steps`` where given).
  """
  return common.load_generator(ctx, method, num_steps)


def compare_solvers(ctx: common.Context, velocity, params, num: int = 256) -> dict:
  """NFE, seconds and RMS latent error of each integrator against a tight dopri5 solution."""
  cfg = ctx.config.sample
  z0 = rng.stream(ctx.config.seed, "sample.solvers").standard_normal(
      (num, ctx.config.model.latent_dim)).astype(np.float32)
  ref_fn = sampling.make_latent_sampler(velocity, method="dopri5", t0=cfg.t0, t1=cfg.t1,
                                        rtol=1e-6, atol=1e-6, max_steps=4000)
  z_ref, ref_info = ref_fn(params, z0)
  z_ref = np.asarray(z_ref)
  out = {"reference": {"method": "dopri5", "rtol": 1e-6, "atol": 1e-6,
                       "nfe": int(ref_info["nfe"])}, "num_samples": num}
  for method in ("euler", "heun", "rk4", "dopri5"):
    fn = sampling.make_latent_sampler(velocity, method=method, num_steps=cfg.num_steps,
                                      t0=cfg.t0, t1=cfg.t1, rtol=cfg.rtol, atol=cfg.atol)
    jax.block_until_ready(fn(params, z0))  # compile
    t = time.perf_counter()
    z, info = fn(params, z0)
    z = np.asarray(z)
    secs = time.perf_counter() - t
    rms = float(np.sqrt(np.mean(np.square(z - z_ref))))
    out[method] = {"nfe": int(info["nfe"]), "rms_error": rms, "seconds": secs}
    if method == "dopri5":
      out[method].update(rtol=float(cfg.rtol), atol=float(cfg.atol))
    else:
      out[method]["num_steps"] = int(cfg.num_steps)
  return out


def run(ctx: common.Context) -> dict:
  cfg = ctx.config.sample
  out_dir = ctx.stage_dir(NAME)
  name = ctx.data.name
  generate, latent_sampler, velocity, params, autoencoder = load_generator(ctx)
  direct = velocity is None   # a GAN's G(z): no flow
  decode = autoencoder.decode_fn
  t = time.perf_counter()
  z0, z, x, nfe = generate(int(cfg.num_samples), ctx.config.seed)
  seconds = time.perf_counter() - t
  if logs.is_main_process():
    np.savez(os.path.join(out_dir, "samples.npz"), z0=z0, z=z, x=x, method=cfg.method,
             num_steps=cfg.num_steps, nfe=nfe)
  solver = f"{cfg.method}, {cfg.num_steps} steps" if cfg.method != "dopri5" else \
      f"dopri5, rtol {cfg.rtol:g}"
  if direct:
    solver = "G(z), no prior"
  how = solver if direct else f"flow prior, {solver}"
  if ctx.data.is_image:
    plots.image_grid(x[:cfg.grid_size], os.path.join(out_dir, "samples.png"),
                     title=f"{name}: {autoencoder.method} samples ({how})")
  else:
    plots.sample_scatter(x, ctx.data.x_test, os.path.join(out_dir, "samples.png"),
                         title=f"{name}: {autoencoder.method} samples ({how}), first two "
                               "coordinates")

  # Interpolations: between held-out latents (straight lines), and between noise vectors
  # (spherical) carried through the flow.
  pairs, steps = int(cfg.interp_pairs), int(cfg.interp_steps)
  embed = autoencoder.encode
  n_pairs = min(pairs, ctx.data.x_test.shape[0] // 2)
  if n_pairs and autoencoder.embed_fn is not None:   # GAN/WGAN have no encoder
    za = embed(ctx.data.x_test[:2 * n_pairs:2])
    zb = embed(ctx.data.x_test[1:2 * n_pairs:2])
    lines = sampling.linear_interpolation(za, zb, steps).reshape(-1, za.shape[1])
    x_lines = common.batched_apply(decode, lines, cfg.batch_size)
    plots.image_grid(x_lines, os.path.join(out_dir, "interpolation_latent.png"), nrow=steps,
                     title=f"{name}: decoded straight lines between held-out latents")
  gen = rng.stream(ctx.config.seed, "sample.interpolation")
  na = gen.standard_normal((pairs, z.shape[1])).astype(np.float32)
  nb = gen.standard_normal((pairs, z.shape[1])).astype(np.float32)
  arcs = sampling.slerp(na, nb, steps).reshape(-1, z.shape[1])
  z_arcs = arcs if direct else common.batched_apply(lambda b: latent_sampler(params, b)[0],
                                                    arcs, cfg.batch_size)
  x_arcs = common.batched_apply(decode, z_arcs, cfg.batch_size)
  plots.image_grid(x_arcs, os.path.join(out_dir, "interpolation_prior.png"), nrow=steps,
                   title=f"{name}: noise interpolated on the sphere"
                         + ("" if direct else ", through the flow"))

  summary = {"num_samples": int(cfg.num_samples),
             "method": "direct" if direct else cfg.method,
             "num_steps": 0 if direct else int(cfg.num_steps), "nfe_per_sample": float(nfe),
             "seconds": seconds, "samples_per_sec": float(cfg.num_samples) / seconds}
  if cfg.compare_solvers and not direct:
    summary["solvers"] = compare_solvers(ctx, velocity, params,
                                         num=min(256, int(cfg.num_samples)))
  common.mark_done(ctx, NAME, summary=summary)
  logging.info("sample: %d samples with %s (NFE %.0f) in %.1f s -> %s", cfg.num_samples,
               solver, nfe, seconds, out_dir)
  return summary


SPEC = common.StageSpec(
    name=NAME, run=run, consumes_method=True, needs=("prior",),
    inputs=common.sample_inputs, upstream=common.generator_upstream,
    outputs=("samples.npz", "samples.png"), headline=("seconds", "nfe_per_sample"))
