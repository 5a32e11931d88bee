"""Speed regression guard: core steps timed against a plain matmul in the same process.

Absolute times on a shared 2-core machine drift by 2x from one minute to the next, so the
guard compares ratios: each core step's median time divided by the median time of a reference
(a jitted 512x512 float32 matmul), the two timed alternately in one process so that both see
the same machine. ``tests/test_speed_guard.py`` fails when a ratio exceeds
``TOLERANCE`` times the ratio recorded in ``speed_guard.json`` (CPU only; other backends skip).

    python benchmarks/speed_guard.py            # print the ratios
    python benchmarks/speed_guard.py --record   # write them to benchmarks/speed_guard.json

Record on the CI machine's kind (2-core x86 CPU), after a change that is meant to be slower
(or faster: a faster step recorded keeps the guard tight). The programs are compiled with the
optimising compiler whatever XLA_FLAGS say, and with 8 host devices as in the tests.
"""
from __future__ import annotations

import json
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
  sys.path.insert(0, os.path.dirname(HERE))
  from configs import fashion_mnist
  from gpe_jax import costs, models, train_loop
  from gpe_jax.stages import decoder, encoder

  key = jax.random.key(0)
  a = jax.random.normal(key, (512, 512))
  mm = _compile(lambda m: m @ m, a)
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

  return {"reference_matmul512": lambda: jax.block_until_ready(mm(a)),
          "gme_n1000_D1024_d30": lambda: jax.block_until_ready(gme(x, z)),
          "enc_step_b100": run_enc, "dec_step_b100": run_dec}


def measure(rounds: int = ROUNDS) -> dict:
  """Median over rounds of (step time / reference time), reference and step alternating."""
  steps = _steps()
  ref = steps.pop("reference_matmul512")
  for fn in [ref, *steps.values()]:   # compile and warm up
    for _ in range(3):
      fn()
  ratios = {name: [] for name in steps}
  for _ in range(rounds):
    for name, fn in steps.items():
      t0 = time.perf_counter()
      for _ in range(4):
        ref()
      t_ref = (time.perf_counter() - t0) / 4
      t0 = time.perf_counter()
      fn()
      ratios[name].append((time.perf_counter() - t0) / t_ref)
  return {name: round(statistics.median(v), 3) for name, v in ratios.items()}


def recorded() -> dict:
  with open(RECORD) as f:
    return json.load(f)["ratios"]


def main() -> None:
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" not in flags:   # as tests/conftest.py
    os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()
  import jax
  ratios = measure()
  print(json.dumps({"backend": jax.default_backend(), "ratios": ratios}))
  if "--record" in sys.argv[1:]:
    with open(RECORD, "w") as f:
      json.dump({"what": "median step time / 512x512 f32 matmul time, same process "
                         "(benchmarks/speed_guard.py)", "cpu_count": os.cpu_count(),
                 "ratios": ratios}, f, indent=1)
      f.write("\n")


if __name__ == "__main__":
  main()
