"""Micro-benchmarks of gpe_jax's hot paths, comparable key for key with the PyTorch peer.

    python benchmarks/bench.py [gme] [enc] [dec] [prior] [--variants] [--iters N]

Prints ONE JSON line: the environment (jax version, backend, device kind and count, CPU count)
and the median wall-clock seconds of each measured operation:

  gme_n{n}_D{D}_d{d}_s            forward+backward (value and grad w.r.t. z) of the jitted
                                  ``costs.gme_cost`` for x [n, D], z [n, d];
  gme_blockwise_n{n}_D{D}_d{d}_s  the same with ``costs.gme_cost_blockwise`` (large sizes);
  gme_tri_b{b}_h{h}_n{n}_D{D}_d{d}_s
                                  (--variants) ``costs.gme_cost_triangle`` with b row blocks
                                  after h halvings (``TRIANGLE_VARIANTS``), interleaved;
  enc_step_b100_s                 one jitted Adam step of the real encoder stage
                                  (``encoder.make_train_step``), MNIST-sized conv encoder;
  dec_step_b100_s                 one jitted Adam step of the real decoder stage
                                  (``decoder.make_train_step``), MNIST-sized conv decoder;
  enc_step_strided_b100_s         (--variants) the encoder step with a paper-style encoder of
                                  stride-2 5x5 convolutions, defined here;
  dec_step_convtranspose_b100_s   (--variants) the decoder step with a paper-style decoder of
                                  stride-2 4x4 ConvTranspose layers, defined here;
  prior_step_b100_s               one jitted step of the flow-matching prior stage
                                  (``prior.make_train_step``, EMA on), MLP 3x512, latent 30;
  sample_heun25_b500_s            500 latents through that prior with 25 Heun steps (50 NFE);
  frechet_F2048_s                 the jitted float32 ``frechet_distance`` at 2048-D (two eighs);
  frechet_np64_F2048_s            the float64 NumPy path at 2048-D;
  encparts_*                      (only when named) where the Fashion-MNIST config's encoder
                                  step spends its time: the whole step, the net's forward, the
                                  net's gradient under a plain sum-of-squares loss, the GME at
                                  n = 100 alone, the Adam update alone, the net's gradient
                                  without BatchNorm, and the step's XLA cost analysis (GFLOP
                                  and GFLOP/s).

With no positional argument all of gme, enc, dec and prior run. Compilation is excluded (warm-up
calls), every timed call ends with ``jax.block_until_ready`` on its outputs, and training
states are donated to the step as in ``train_loop.run``. Medians are over 10 calls (gme and
the --variants steps, one of which takes seconds on CPU) or 20 (the codebase's steps);
``--iters N`` sets them all. See benchmarks/README.md for the peer comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

# Run as a script from anywhere: make the repository root importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gpe_jax import costs, hostmem, models, train_loop  # noqa: E402

GME_SIZES = ((100, 1024, 30), (1000, 1024, 30), (2000, 3072, 100))
BLOCKWISE_SIZES = GME_SIZES[1:]
BENCHMARKS = ("gme", "enc", "dec", "prior", "hessian", "encparts")
BATCH = 100
IMAGE_SHAPE = (32, 32, 1)   # MNIST padded to 32x32, NHWC
LATENT_DIM = 30


# ---------------------------------------------------------------------------------------------
# Timing


def median_seconds(fn: Callable[[], Any], iters: int, warmup: int = 3) -> float:
  """Median wall-clock seconds of ``fn()`` over ``iters`` calls after ``warmup`` calls.

  ``fn`` returns the arrays it produced; each call is timed up to
  ``jax.block_until_ready`` of them, so asynchronous dispatch is not mistaken for speed.
  The first warm-up call compiles.
  """
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def time_train_step(step_fn, init_fn, batch: dict, iters: int) -> float:
  """Median seconds of one jitted, state-donating training step.

  Args:
    step_fn: (state, batch) -> (state, metrics), as the stage factories make it.
    init_fn: key -> TrainState.
    batch: the (fixed) batch fed to every step.
    iters: timed steps.
  """
  state = jax.jit(init_fn)(jax.random.key(0))
  step = jax.jit(step_fn, donate_argnums=(0,))
  holder = {"state": state}

  def one_step():
    new_state, metrics = step(holder["state"], batch)
    holder["state"] = new_state
    return new_state, metrics

  return median_seconds(one_step, iters)


# ---------------------------------------------------------------------------------------------
# Configs (the same fields configs/base.py defines; the MNIST conv setting)


def bench_config() -> ml_collections.ConfigDict:
  """Model and stage sections of an MNIST-sized conv run (batch 100, latent 30)."""
  config = ml_collections.ConfigDict()
  config.model = m = ml_collections.ConfigDict()
  m.kind = "conv"
  m.latent_dim = LATENT_DIM
  m.enc_features = (32, 64, 128)
  m.dec_features = (128, 64, 32)
  m.batch_norm = True
  m.extra_convs = 0
  m.enc_hidden = (512, 256)
  m.dec_hidden = (256, 512)
  m.layer_norm = False
  for name in ("encoder", "decoder"):
    s = ml_collections.ConfigDict()
    s.lr = 1e-4
    s.b1 = 0.5   # Adam betas (0.5, 0.999), as the peer and the paper
    s.b2 = 0.999
    s.grad_clip = 0.0
    s.warmup_steps = 0
    config[name] = s
  config.decoder.l1_weight = 0.0
  return config


def image_batch(key: jax.Array) -> jax.Array:
  """[BATCH, 32, 32, 1] uniform in [-1, 1] (the peer's ``rand * 2 - 1``)."""
  return jax.random.uniform(key, (BATCH,) + IMAGE_SHAPE, jnp.float32, -1.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Paper-style layers the codebase avoids on CPU (timed for the record with --variants)


class StridedEncoder(nn.Module):
  """The peer's encoder in Flax: conv 5x5 stride 2 (32-64-128), LeakyReLU(0.2), BatchNorm after
  the first and third convolution, flatten, dense to the latent. x [B, 32, 32, 1] -> [B, d]."""
  features: tuple = (32, 64, 128)
  latent_dim: int = LATENT_DIM

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = x
    for i, f in enumerate(self.features):
      h = nn.Conv(f, (5, 5), strides=(2, 2), padding=((2, 2), (2, 2)))(h)  # torch padding=2
      h = nn.leaky_relu(h, negative_slope=0.2)
      if i % 2 == 0:
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)
    h = h.reshape(h.shape[0], -1)
    return nn.Dense(self.latent_dim)(h)


class ConvTransposeDecoder(nn.Module):
  """The peer's decoder in Flax: z [B, d] -> [B, 32, 32, 1] through 4x4 ConvTranspose layers
  (1 -> 4, then stride 2 to 8, 16, 32), each followed by LeakyReLU(0.2) and a 5x5 conv with
  BatchNorm; a final 5x5 conv to 1 channel and tanh.

  Flax's ConvTranspose pads the stride-dilated input, so PyTorch's ``padding=p`` for a k-kernel
  is ``k - 1 - p`` here: 3 for the first layer (p=0), 2 for the stride-2 ones (p=1).
  """
  channels: int = 1

  @nn.compact
  def __call__(self, z, train: bool = False):
    act = lambda a: nn.leaky_relu(a, negative_slope=0.2)
    h = z.reshape(z.shape[0], 1, 1, z.shape[-1])
    h = act(nn.ConvTranspose(128, (4, 4), padding=((3, 3), (3, 3)))(h))        # 4x4
    for up, width in ((64, 128), (32, 64), (128, 32)):
      h = nn.Conv(width, (5, 5), padding="SAME")(h)
      h = act(nn.BatchNorm(use_running_average=not train, momentum=0.9)(h))
      h = act(nn.ConvTranspose(up, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)))(h))
    h = nn.Conv(self.channels, (5, 5), padding="SAME")(h)                      # 32x32
    return jnp.tanh(h)


# ---------------------------------------------------------------------------------------------
# Benchmarks


# Tilings of the upper triangle timed with --variants: (row blocks, halvings); (4, 0) is the
# layout of earlier releases.
TRIANGLE_VARIANTS = ((4, 0), (8, 0), (2, 2), (4, 1), (2, 3))


def bench_gme(iters: int, variants: bool = False) -> dict:
  """GME cost value+grad w.r.t. z, plain and blockwise; with ``variants`` also the tilings of
  ``TRIANGLE_VARIANTS`` at the sizes from ``TRIANGLE_MIN_ROWS`` rows on, interleaved (each
  round times every tiling once; the median over rounds is reported)."""
  out = {}
  if variants:
    for n, D, d in GME_SIZES:
      if n < costs.TRIANGLE_MIN_ROWS:
        continue
      kx, kz = jax.random.split(jax.random.key(n))
      x = jax.random.normal(kx, (n, D), jnp.float32)
      z = jax.random.normal(kz, (n, d), jnp.float32)
      fns = {bh: jax.jit(jax.value_and_grad(
          lambda a, b, bh=bh: costs.gme_cost_triangle(a, b, *bh), argnums=1))
             for bh in TRIANGLE_VARIANTS}
      times = {bh: [] for bh in fns}
      for _ in range(max(3, iters // 2)):
        for bh, fn in fns.items():
          times[bh].append(median_seconds(lambda: fn(x, z), 3, warmup=1))
      for (b, h), ts in times.items():
        out[f"gme_tri_b{b}_h{h}_n{n}_D{D}_d{d}_s"] = statistics.median(ts)
  plain = jax.jit(jax.value_and_grad(costs.gme_cost, argnums=1))
  blockwise = jax.jit(jax.value_and_grad(costs.gme_cost_blockwise, argnums=1))
  for n, D, d in GME_SIZES:
    kx, kz = jax.random.split(jax.random.key(n))
    x = jax.random.normal(kx, (n, D), jnp.float32)
    z = jax.random.normal(kz, (n, d), jnp.float32)
    out[f"gme_n{n}_D{D}_d{d}_s"] = median_seconds(lambda: plain(x, z), iters)
    if (n, D, d) in BLOCKWISE_SIZES:
      out[f"gme_blockwise_n{n}_D{D}_d{d}_s"] = median_seconds(lambda: blockwise(x, z), iters)
  return out


def bench_enc(iters: int, variants: bool, variant_iters: int) -> dict:
  """One Adam step of the encoder stage (GME loss), the codebase's encoder and optionally the
  strided paper-style one."""
  from gpe_jax.stages import encoder
  config = bench_config()
  batch = {"x": image_batch(jax.random.key(1))}
  model, tx = encoder.build(config, IMAGE_SHAPE)
  out = {"enc_step_b100_s": time_train_step(encoder.make_train_step(model, tx),
                                            encoder.make_init_fn(model, tx, IMAGE_SHAPE),
                                            batch, iters)}
  if variants:
    model = StridedEncoder()
    tx = train_loop.make_optimizer(config.encoder)
    out["enc_step_strided_b100_s"] = time_train_step(
        encoder.make_train_step(model, tx), encoder.make_init_fn(model, tx, IMAGE_SHAPE),
        batch, variant_iters)
  return out


def bench_dec(iters: int, variants: bool, variant_iters: int) -> dict:
  """One Adam step of the decoder stage (MSE loss on (z, x) pairs), the codebase's decoder and
  optionally the ConvTranspose paper-style one."""
  from gpe_jax.stages import decoder
  config = bench_config()
  kz, kx = jax.random.split(jax.random.key(2))
  batch = {"z": jax.random.normal(kz, (BATCH, LATENT_DIM), jnp.float32), "x": image_batch(kx)}
  tx = train_loop.make_optimizer(config.decoder)
  model = models.build_decoder(config.model, IMAGE_SHAPE)
  out = {"dec_step_b100_s": time_train_step(
      decoder.make_train_step(model, tx, config.decoder.l1_weight),
      decoder.make_init_fn(model, tx, LATENT_DIM), batch, iters)}
  if variants:
    model = ConvTransposeDecoder()
    out["dec_step_convtranspose_b100_s"] = time_train_step(
        decoder.make_train_step(model, tx), decoder.make_init_fn(model, tx, LATENT_DIM),
        batch, variant_iters)
  return out


def bench_encparts(iters: int) -> dict:
  """The Fashion-MNIST config's encoder step (batch 100) taken apart: which part limits it."""
  import optax
  from configs import fashion_mnist
  from gpe_jax.stages import encoder
  config = fashion_mnist.get_config()
  x = image_batch(jax.random.key(1))
  model, tx = encoder.build(config, IMAGE_SHAPE)
  init = encoder.make_init_fn(model, tx, IMAGE_SHAPE)
  state = jax.jit(init)(jax.random.key(0))
  out = {"encparts_step_s": time_train_step(encoder.make_train_step(model, tx), init,
                                            {"x": x}, iters)}
  params, stats = state.params, state.batch_stats

  def net(p, x):
    return models.apply_model(model, p, stats, x, train=True)[0]

  forward = jax.jit(net)
  net_grad = jax.jit(jax.grad(lambda p, x: jnp.sum(jnp.square(net(p, x)))))
  z = forward(params, x)
  gme = jax.jit(jax.value_and_grad(costs.gme_cost, argnums=1))
  grads = net_grad(params, x)
  adam = jax.jit(lambda g, s, p: optax.apply_updates(p, tx.update(g, s, p)[0]))
  out["encparts_forward_s"] = median_seconds(lambda: forward(params, x), iters)
  out["encparts_net_grad_s"] = median_seconds(lambda: net_grad(params, x), iters)
  out["encparts_gme_n100_s"] = median_seconds(lambda: gme(x, z), iters)
  out["encparts_adam_s"] = median_seconds(lambda: adam(grads, state.opt_state, params), iters)
  config.model.batch_norm = False   # the same net without its BatchNorm layers
  plain, _ = encoder.build(config, IMAGE_SHAPE)
  plain_params = jax.jit(plain.init)(jax.random.key(0), x)["params"]
  plain_grad = jax.jit(jax.grad(lambda p, x: jnp.sum(jnp.square(plain.apply({"params": p}, x)))))
  out["encparts_net_grad_no_batchnorm_s"] = median_seconds(lambda: plain_grad(plain_params, x),
                                                           iters)
  step = jax.jit(encoder.make_train_step(model, tx)).lower(state, {"x": x}).compile()
  cost = step.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", 0.0))
  out["encparts_step_gflop"] = flops / 1e9
  out["encparts_step_gflops"] = flops / 1e9 / out["encparts_step_s"]
  out["encparts_params"] = int(sum(v.size for v in jax.tree.leaves(params)))
  return out


def bench_prior(iters: int) -> dict:
  """The prior stage's train step, sampling through it, and the Frechet distance."""
  import numpy as np
  from gpe_jax import sampling
  from gpe_jax.evals import frechet
  from gpe_jax.stages import prior
  cfg = ml_collections.ConfigDict(dict(
      net="mlp", hidden=(512, 512, 512), width=512, depth=4, time_embed_dim=64,
      time_scale=30.0, lr=1e-3,
      b1=0.5, b2=0.999, grad_clip=1.0, warmup_steps=0, lr_schedule="constant", num_steps=1))
  model = models.build_velocity(cfg)
  tx = train_loop.make_optimizer(cfg)
  k0, k1 = jax.random.split(jax.random.key(3))
  batch = {"z0": jax.random.normal(k0, (BATCH, LATENT_DIM)),
           "z1": jax.random.normal(k1, (BATCH, LATENT_DIM))}
  init_fn = prior.make_init_fn(model, tx, LATENT_DIM, ema=True)
  out = {"prior_step_b100_s": time_train_step(prior.make_train_step(model, tx, 0.999), init_fn,
                                              batch, iters)}
  params = jax.jit(init_fn)(jax.random.key(0)).params
  sampler = sampling.make_latent_sampler(model, method="heun", num_steps=25)
  z0 = jax.random.normal(k0, (500, LATENT_DIM))
  out["sample_heun25_b500_s"] = median_seconds(lambda: sampler(params, z0), max(3, iters // 4))
  rng = np.random.default_rng(0)
  a = rng.normal(size=(4096, 2048)).astype(np.float32)
  b = (a[:, ::-1] * 1.1 + 0.1).copy()
  (m1, c1), (m2, c2) = frechet.gaussian_stats_np(a), frechet.gaussian_stats_np(b)
  args32 = [jnp.asarray(v, jnp.float32) for v in (m1, c1, m2, c2)]
  fd = jax.jit(frechet.frechet_distance)
  out["frechet_F2048_s"] = median_seconds(lambda: fd(*args32), 3, warmup=1)
  out["frechet_np64_F2048_s"] = median_seconds(
      lambda: frechet.frechet_distance_np(m1, c1, m2, c2), 3, warmup=1)
  return out


def bench_hessian(iters: int) -> dict:
  """Curvature tools: one Hessian-vector product of the GME cost and 100 Lanczos iterations at
  n d = 10^5 (n = 2000, d = 50), and a dense jax.hessian at n d = 2000."""
  from gpe_jax.evals import hessian
  k0, k1 = jax.random.split(jax.random.key(4))
  out = {}
  for n, d, dim_x in ((2000, 50, 784),):
    x = jax.random.uniform(k0, (n, dim_x), minval=-1.0, maxval=1.0)
    z = jax.random.normal(k1, (n, d)) * 3.0
    fn = hessian.make_embedding_cost(x, "gme")
    hvp, dim = hessian.make_hvp(fn, z)
    hvp = jax.jit(hvp)
    v = jax.random.normal(k0, (dim,))
    out[f"hvp_gme_nd{n * d}_s"] = median_seconds(lambda: hvp(v), iters)
    lanczos = hessian.lanczos_at(fn, 100)
    out[f"lanczos100_gme_nd{n * d}_s"] = median_seconds(lambda: lanczos(z), 3, warmup=1)
  x = jax.random.uniform(k0, (200, 784), minval=-1.0, maxval=1.0)
  z = jax.random.normal(k1, (200, 10))
  dense = jax.jit(lambda z_: hessian.dense_hessian(hessian.make_embedding_cost(x, "gme"), z_))
  out["dense_hessian_gme_nd2000_s"] = median_seconds(lambda: dense(z), 3, warmup=1)
  return out


def environment(host_malloc: bool) -> dict:
  devices = jax.devices()
  return {"jax": jax.__version__, "backend": jax.default_backend(),
          "device_kind": devices[0].device_kind, "device_count": len(devices),
          "cpu_count": os.cpu_count(), "keep_freed_memory": host_malloc}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("which", nargs="*", metavar="{gme,enc,dec,prior,hessian,encparts}",
                      help="benchmarks to run (default: all)")
  parser.add_argument("--variants", action="store_true",
                      help="also time the paper-style strided / ConvTranspose layers")
  parser.add_argument("--iters", type=int, default=None,
                      help="timed iterations (default: 10 for gme and the --variants steps, "
                           "20 for the codebase's steps)")
  args = parser.parse_args(argv)
  # As the commands do (cli.run), before the backend starts; GPE_JAX_MALLOC=system leaves it.
  host_malloc = hostmem.keep_freed_memory()
  which = args.which or [b for b in BENCHMARKS if b != "encparts"]
  unknown = sorted(set(which) - set(BENCHMARKS))
  if unknown:  # checked here: argparse's choices reject an empty nargs="*" list on 3.11
    parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
  out = environment(host_malloc)
  if "gme" in which:
    out.update(bench_gme(args.iters or 10, args.variants))
  if "enc" in which:
    out.update(bench_enc(args.iters or 20, args.variants, args.iters or 10))
  if "dec" in which:
    out.update(bench_dec(args.iters or 20, args.variants, args.iters or 10))
  if "prior" in which:
    out.update(bench_prior(args.iters or 20))
  if "hessian" in which:
    out.update(bench_hessian(args.iters or 10))
  if "encparts" in which:
    out.update(bench_encparts(args.iters or 20))
  print(json.dumps(out))


if __name__ == "__main__":
  main()
