"""Speed regression guard: core steps timed against fixed reference kernels in the same process.

Absolute times on a shared 2-core machine drift by 2x from one minute to the next, so the
guard compares ratios: each core step's median time divided by the time of a reference, the
two timed alternately in one process so that both see the same machine.
``tests/test_speed_guard.py`` fails when a ratio exceeds ``TOLERANCE`` times the ratio recorded
in ``speed_guard.json`` (CPU only; other backends skip).

The reference is the geometric mean of three fixed jitted kernels, one of each kind of work
the steps do: a 512x512 float32 matmul, a 3x3 convolution's forward and backward pass, and an
elementwise log/exp over 2^18 floats. One matmul alone was not enough: from one CPU model to
the next the matmul's speed moved by 1.5x against the conv nets' (all three ratios 1.45-1.56x
the recorded ones on an AVX-512 Xeon), and the guard failed without any change to the code.

    python benchmarks/speed_guard.py            # print the ratios
    python benchmarks/speed_guard.py --record   # the largest of 3 runs to benchmarks/speed_guard.json

Record on the CI machine's kind (2-core x86 CPU), after a change that is meant to be slower
(or faster: a faster step recorded keeps the guard tight). The programs are compiled with the
optimising compiler whatever XLA_FLAGS say, and with 8 host devices as in the tests.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RECORD = os.path.join(HERE, "speed_guard.json")
TOLERANCE = 1.5
ROUNDS = 15


# The optimising compiler whatever XLA_FLAGS say: the test suite compiles at -O0 (tests/conftest.py),
# which would time other programs than a user runs.
FULL_XLA = {"xla_backend_optimization_level": 3, "xla_llvm_disable_expensive_passes": False}


def _compile(fn, *args, donate=()):
  import jax
  return jax.jit(fn, donate_argnums=donate).lower(*args).compile(compiler_options=FULL_XLA)


def _steps():
  """name -> (function of no arguments that runs one step and blocks)."""
  import jax
  import jax.numpy as jnp
  sys.path.insert(0, os.path.dirname(HERE))
  from configs import fashion_mnist
  from gpe_jax import costs, models, train_loop
  from gpe_jax.stages import decoder, encoder

  key = jax.random.key(0)
  a = jax.random.normal(key, (512, 512))
  mm = _compile(lambda m: m @ m, a)
  imgs = jax.random.normal(key, (64, 16, 16, 32))
  kern = jax.random.normal(key, (3, 3, 32, 32)) * 0.1

  def conv_loss(k, v):
    y = jax.lax.conv_general_dilated(v, k, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return (y * y).mean()
  conv = _compile(jax.grad(conv_loss, argnums=(0, 1)), kern, imgs)
  flat = jax.random.uniform(key, (1 << 18,), minval=0.5, maxval=2.0)
  ew = _compile(lambda v: jnp.exp(-v) * jnp.log1p(v), flat)
  x = jax.random.normal(key, (1000, 1024))
  z = jax.random.normal(key, (1000, 30))
  gme = _compile(jax.value_and_grad(costs.gme_cost, argnums=1), x, z)

  config = fashion_mnist.get_config()   # the Fashion-MNIST nets and optimiser
  model_cfg = config.model
  shape = (32, 32, 1)
  images = jax.random.uniform(key, (100,) + shape, minval=-1.0, maxval=1.0)
  enc = models.build_encoder(model_cfg, shape)
  tx = train_loop.make_optimizer(config.encoder)
  enc_state = [jax.jit(encoder.make_init_fn(enc, tx, shape))(key)]
  enc_step = _compile(encoder.make_train_step(enc, tx), enc_state[0], {"x": images}, donate=0)
  dec = models.build_decoder(model_cfg, shape)
  dec_state = [jax.jit(decoder.make_init_fn(dec, tx, model_cfg.latent_dim))(key)]
  codes = z[:100]
  dec_step = _compile(decoder.make_train_step(dec, tx), dec_state[0], {"z": codes, "x": images},
                      donate=0)

  def run_enc():
    enc_state[0], m = enc_step(enc_state[0], {"x": images})
    jax.block_until_ready(m)

  def run_dec():
    dec_state[0], m = dec_step(dec_state[0], {"z": codes, "x": images})
    jax.block_until_ready(m)

  references = [lambda: jax.block_until_ready(mm(a)),
                lambda: jax.block_until_ready(conv(kern, imgs)),
                lambda: jax.block_until_ready(ew(flat))]
  return references, {"gme_n1000_D1024_d30": lambda: jax.block_until_ready(gme(x, z)),
          "enc_step_b100": run_enc, "dec_step_b100": run_dec}


def _seconds(fn, repeat: int) -> float:
  t0 = time.perf_counter()
  for _ in range(repeat):
    fn()
  return (time.perf_counter() - t0) / repeat


def measure(rounds: int = ROUNDS) -> dict:
  """Median over rounds of (step time / reference time), reference and step alternating; the
  reference time is the geometric mean of the reference kernels' times in that round."""
  references, steps = _steps()
  for fn in [*references, *steps.values()]:   # compile and warm up
    for _ in range(3):
      fn()
  ratios = {name: [] for name in steps}
  for _ in range(rounds):
    for name, fn in steps.items():
      t_ref = math.exp(statistics.fmean(math.log(_seconds(r, 3)) for r in references))
      ratios[name].append(_seconds(fn, 1) / t_ref)
  return {name: round(statistics.median(v), 3) for name, v in ratios.items()}


def recorded() -> dict:
  with open(RECORD) as f:
    return json.load(f)["ratios"]


def main() -> None:
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" not in flags:   # as tests/conftest.py
    os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()
  sys.path.insert(0, os.path.dirname(HERE))
  from gpe_jax import hostmem
  hostmem.keep_freed_memory()   # as tests/conftest.py, before the backend starts
  import jax
  record = "--record" in sys.argv[1:]
  runs = [measure() for _ in range(3 if record else 1)]
  # Recorded: the largest of three measurements, so that the guard's 1.5x is headroom over the
  # spread of quiet runs, not over their best one.
  ratios = {k: max(r[k] for r in runs) for k in runs[0]}
  print(json.dumps({"backend": jax.default_backend(), "ratios": ratios}))
  if record:
    with open(RECORD, "w") as f:
      json.dump({"what": "median step time / reference time (geometric mean of a 512x512 "
                         "f32 matmul, a 3x3 conv forward+backward and an elementwise log/exp), "
                         "same process (benchmarks/speed_guard.py)", "cpu_count": os.cpu_count(),
                 "ratios": ratios}, f, indent=1)
      f.write("\n")


if __name__ == "__main__":
  main()
