"""Time to quality on Fashion-MNIST: gpe_jax against the GPE paper's recipe in PyTorch.

Each run trains an encoder on the GME cost until the held-out GME (mean over 10 held-out
batches of 100, the paper's normalisation) is at most ``--enc_threshold``, then a decoder on
the frozen encoder's codes until the held-out reconstruction MSE (pixels in [-1, 1]) is at most
``--dec_threshold``. The clock runs over the training steps only; the held-out checks every
``--check_every`` steps and the encoding of the training set for the decoder are timed apart.

Both sides read the same arrays (Fashion-MNIST resized to 32x32 by gpe_jax's loader, written
once to a temporary folder) and draw the same batch indices (NumPy, seeded). The PyTorch side
(``benchmarks/peer_time_to_quality.py``, the paper's 5x5 stride-2 conv encoder and transposed
conv decoder, Adam betas (0.5, 0.999), batch 100) runs at each learning rate of ``--peer_lrs``
with cosine decay over ``--max_steps``, so it is not handicapped by one choice. The runs
alternate (ours, peer, ours, peer, ...) in one invocation, each in its own process, and the
driver prints one JSON object: per run the wall seconds to each threshold, steps, seconds per
step, final held-out values; and the machine and versions.

    pip install -e ".[peer]"     # or a separate venv: python -m venv .peer && .peer/bin/pip install torch==2.13.0 numpy
    python benchmarks/time_to_quality.py --peer_python=.peer/bin/python

The PyTorch side is never imported by the library or the tests.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))   # configs/ and gpe_jax/ of this checkout
HELD_OUT_BATCHES = 10
BATCH = 100


def batch_indices(n: int, steps: int, seed: int) -> np.ndarray:
  """[steps, BATCH] training indices: shuffled epochs, the same for both sides."""
  rng = np.random.default_rng(seed)
  per_epoch = n // BATCH
  epochs = -(-steps // per_epoch)
  idx = np.concatenate([rng.permutation(n)[:per_epoch * BATCH] for _ in range(epochs)])
  return idx.reshape(-1, BATCH)[:steps]


def write_data(folder: str) -> dict:
  """Fashion-MNIST as gpe_jax loads it (32x32x1 in [-1, 1]) -> .npy files in ``folder``."""
  from configs import fashion_mnist
  from gpe_jax.data import registry
  data = registry.load_dataset(fashion_mnist.get_config().data)
  x_train = np.asarray(data.x_train, np.float32)
  x_held = np.asarray(data.x_test[:HELD_OUT_BATCHES * BATCH], np.float32)
  np.save(os.path.join(folder, "x_train.npy"), x_train)
  np.save(os.path.join(folder, "x_held.npy"), x_held)
  return {"train": int(len(x_train)), "held_out": int(len(x_held)), "source": data.source}


# ---------------------------------------------------------------------------------------------
# gpe_jax's side (run in its own process: ``--side=ours``)


def run_ours(args) -> dict:
  from gpe_jax import hostmem
  hostmem.keep_freed_memory()   # as the commands do, before the backend starts
  import jax
  import jax.numpy as jnp
  from configs import fashion_mnist
  from gpe_jax import costs, models, train_loop
  from gpe_jax.stages import decoder, encoder

  config = fashion_mnist.get_config()
  config.model.enc_kernel = args.enc_kernel
  config.model.dec_kernel = args.dec_kernel
  config.model.extra_convs = args.extra_convs
  if args.enc_features:
    config.model.enc_features = tuple(int(v) for v in args.enc_features.split(","))
  if args.dec_features:
    config.model.dec_features = tuple(int(v) for v in args.dec_features.split(","))
  config.encoder.update(num_steps=args.max_steps, lr=args.lr)
  config.decoder.update(num_steps=args.dec_schedule or args.max_steps,
                        lr=args.dec_lr or config.decoder.lr)
  x_train = np.load(os.path.join(args.data, "x_train.npy"))
  x_held = jnp.asarray(np.load(os.path.join(args.data, "x_held.npy")))
  shape = x_train.shape[1:]
  idx = batch_indices(len(x_train), args.max_steps, args.seed)

  model, tx = encoder.build(config, shape)
  state = jax.jit(encoder.make_init_fn(model, tx, shape))(jax.random.key(args.seed))
  step = jax.jit(encoder.make_train_step(model, tx), donate_argnums=0)
  held = x_held.reshape(HELD_OUT_BATCHES, BATCH, *shape)

  @jax.jit
  def held_gme(state):
    z = models.apply_model(model, state.params, state.batch_stats, x_held, train=False)[0]
    return jnp.mean(costs.gme_cost_minibatches(held, z.reshape(HELD_OUT_BATCHES, BATCH, -1)))

  holder, run_step, sync, evaluate = _jax_loop(step, state, held_gme, x_train, idx,
                                               lambda b: {"x": b})
  enc = train_until(run_step, sync, evaluate, len(idx), args.enc_threshold, args.check_every,
                    args.to_end)
  state = holder[0]

  t0 = time.perf_counter()
  encode = jax.jit(lambda s, x: models.apply_model(model, s.params, s.batch_stats, x,
                                                   train=False)[0])
  z_train = np.concatenate([np.asarray(encode(state, x_train[i:i + 1000]))
                            for i in range(0, len(x_train), 1000)])
  z_held = encode(state, x_held)
  encode_s = time.perf_counter() - t0

  dmodel = models.build_decoder(config.model, shape)
  dtx = train_loop.make_optimizer(config.decoder)
  dstate = jax.jit(decoder.make_init_fn(dmodel, dtx, z_train.shape[1]))(jax.random.key(1))
  dstep = jax.jit(decoder.make_train_step(dmodel, dtx), donate_argnums=0)

  @jax.jit
  def held_mse(s):
    x_hat = models.apply_model(dmodel, s.params, s.batch_stats, z_held, train=False)[0]
    return costs.recon_mse(x_held, x_hat)

  paired = np.concatenate([z_train.reshape(len(z_train), -1),
                           x_train.reshape(len(x_train), -1)], axis=1)
  d = z_train.shape[1]
  _, run_step, sync, evaluate = _jax_loop(
      dstep, dstate, held_mse, paired, idx,
      lambda b: {"z": b[:, :d], "x": b[:, d:].reshape(len(b), *shape)})
  dec = train_until(run_step, sync, evaluate, min(len(idx), args.dec_max_steps),
                    args.dec_threshold, args.check_every, args.to_end)
  return {"side": "gpe_jax", "lr": args.lr, "dec_lr": config.decoder.lr,
          "dec_schedule": config.decoder.num_steps, "enc_kernel": args.enc_kernel,
          "enc_features": list(config.model.enc_features), "extra_convs": args.extra_convs,
          "dec_kernel": args.dec_kernel, "dec_features": list(config.model.dec_features),
          "jax": jax.__version__, "backend": jax.default_backend(), "encoder": enc,
          "decoder": dec, "encode_train_set_s": encode_s}


def train_until(run_step, sync, evaluate, n: int, threshold: float, check_every: int,
                to_end: bool = False) -> dict:
  """Runs ``run_step(i)`` for i < n until ``evaluate() <= threshold`` (checked every
  ``check_every`` steps; with ``to_end`` all n steps run, the first crossing is recorded and
  ``final`` is the value after step n). The clock runs over the steps only: the first step
  (compilation) and the checks are timed apart. ``sync()`` waits for the dispatched work (JAX dispatches
  asynchronously, so the next batch is gathered on the host while a step runs; nothing is
  fetched from the device between checks). Shared by both sides."""
  train_s = eval_s = 0.0
  first_s, history, reached, reached_s = None, [], None, None
  t0 = time.perf_counter()
  for i in range(n):
    run_step(i)
    if i == 0:
      sync()
      first_s = time.perf_counter() - t0
      t0 = time.perf_counter()
    if (i + 1) % check_every == 0 or i + 1 == n:
      sync()
      train_s += time.perf_counter() - t0
      te = time.perf_counter()
      value = float(evaluate())
      eval_s += time.perf_counter() - te
      history.append([i + 1, round(train_s, 3), value])
      if value <= threshold and reached is None:
        reached, reached_s = i + 1, train_s
        if not to_end:
          break
      t0 = time.perf_counter()
  steps = history[-1][0]
  return {"threshold": threshold, "reached_at_step": reached,
          "seconds_to_threshold": round(reached_s, 3) if reached else None,
          "steps": steps, "train_s": round(train_s, 3),
          "s_per_step": round(train_s / max(1, steps - 1), 5), "first_step_s": round(first_s, 3),
          "eval_s": round(eval_s, 3), "final": history[-1][2], "history": history}


def _jax_loop(step, state, evaluate, rows, idx, to_batch):
  """(run_step, sync, evaluate) for ``train_until`` over a jitted ``step(state, batch)``;
  ``holder[0]`` is the current state."""
  import jax
  holder = [state]

  def run_step(i):
    holder[0], _ = step(holder[0], to_batch(rows[idx[i]]))
  return holder, run_step, lambda: jax.block_until_ready(holder[0]), lambda: evaluate(holder[0])


# ---------------------------------------------------------------------------------------------
# The driver


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--side", choices=["driver", "ours"], default="driver")
  p.add_argument("--data", default="", help="folder of x_train.npy / x_held.npy (side=ours)")
  p.add_argument("--peer_python", default=os.path.join(os.path.dirname(HERE), ".peer", "bin",
                                                       "python"),
                 help="a Python with torch (skip the peer with --peer_python='')")
  p.add_argument("--peer_lrs", default="1e-4,3e-4,1e-3")
  p.add_argument("--lr", type=float, default=2e-3, help="gpe_jax's encoder lr (cosine decay)")
  p.add_argument("--dec_lr", type=float, default=0.0,
                 help="gpe_jax's decoder lr (default: the Fashion-MNIST config's)")
  p.add_argument("--peer_dec_lrs", default="",
                 help="decoder lrs of the peer, each after an encoder at the first of --peer_lrs "
                      "(default: each peer run's decoder at its encoder's lr)")
  p.add_argument("--enc_kernels", default="1", help="gpe_jax encoder kernels to run, e.g. 1,2")
  p.add_argument("--enc_kernel", type=int, default=1)
  p.add_argument("--dec_kernel", type=int, default=3)
  p.add_argument("--dec_features", default="", help="gpe_jax decoder widths (default: config)")
  p.add_argument("--enc_features", default="", help="gpe_jax encoder widths (default: config)")
  p.add_argument("--extra_convs", type=int, default=0, help="gpe_jax's model.extra_convs")
  p.add_argument("--enc_threshold", type=float, default=0.004)
  p.add_argument("--dec_threshold", type=float, default=0.03)
  p.add_argument("--max_steps", type=int, default=3000)
  p.add_argument("--dec_max_steps", type=int, default=0,
                 help="cap on the decoder's steps (default: --max_steps); its cosine decay still spans --max_steps")
  p.add_argument("--check_every", type=int, default=100)
  p.add_argument("--ours_max_steps", type=int, default=8000,
                 help="gpe_jax's encoder schedule (the Fashion-MNIST config's num_steps; 0: "
                      "--max_steps)")
  p.add_argument("--dec_schedule", type=int, default=0,
                 help="(side=ours) the decoder's cosine length; the driver passes --max_steps")
  p.add_argument("--to_end", action="store_true",
                 help="train every step after the threshold too, to report the final values")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  args.dec_max_steps = args.dec_max_steps or args.max_steps
  if args.side == "ours":
    print(json.dumps(run_ours(args)))
    return

  out = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                     "processor": platform.processor() or platform.machine(),
                     "python": platform.python_version()},
         "protocol": {k: getattr(args, k) for k in ("enc_threshold", "dec_threshold",
                                                    "max_steps", "ours_max_steps",
                                                    "dec_max_steps", "check_every", "seed",
                                                    "to_end")},
         "runs": []}
  with tempfile.TemporaryDirectory() as folder:
    out["data"] = write_data(folder)
    def common(max_steps):
      return [f"--data={folder}", f"--enc_threshold={args.enc_threshold}",
              f"--dec_threshold={args.dec_threshold}", f"--max_steps={max_steps}",
              f"--dec_max_steps={args.dec_max_steps}",
              f"--check_every={args.check_every}", f"--seed={args.seed}"] + (
                  ["--to_end"] if args.to_end else [])
    ours = [[sys.executable, os.path.abspath(__file__), "--side=ours", f"--lr={args.lr}",
             f"--dec_lr={args.dec_lr}", f"--dec_schedule={args.max_steps}",
             f"--enc_kernel={k}", f"--dec_kernel={args.dec_kernel}",
             f"--dec_features={args.dec_features}", f"--enc_features={args.enc_features}",
             f"--extra_convs={args.extra_convs}"] + common(args.ours_max_steps or args.max_steps)
            for k in args.enc_kernels.split(",")]
    peer_lrs = args.peer_lrs.split(",")
    pairs = ([(peer_lrs[0], d) for d in args.peer_dec_lrs.split(",")] if args.peer_dec_lrs
             else [(lr, lr) for lr in peer_lrs])
    peer = [[args.peer_python, os.path.join(HERE, "peer_time_to_quality.py"), f"--lr={lr}",
             f"--dec_lr={dec_lr}"] + common(args.max_steps)
            for lr, dec_lr in pairs] if args.peer_python else []
    order = []
    for i in range(max(len(ours), len(peer))):   # alternate the two sides
      order += ours[i:i + 1] + peer[i:i + 1]
    for cmd in order:
      print("running:", " ".join(cmd[1:3]), *cmd[3:5], file=sys.stderr, flush=True)
      res = subprocess.run(cmd, capture_output=True, text=True)
      if res.returncode:
        out["runs"].append({"cmd": cmd[1:], "error": res.stderr[-2000:]})
      else:
        out["runs"].append(json.loads(res.stdout.strip().splitlines()[-1]))
      print(json.dumps(summary(out["runs"][-1])), file=sys.stderr, flush=True)
  print(json.dumps(out))


def summary(run: dict) -> dict:
  if "error" in run:
    return run
  keys = ("seconds_to_threshold", "reached_at_step", "s_per_step", "final")
  return {"side": run["side"], "lr": run["lr"], "dec_lr": run.get("dec_lr"),
          "enc_kernel": run.get("enc_kernel"),
          "encoder": {k: run["encoder"][k] for k in keys},
          "decoder": {k: run["decoder"][k] for k in keys}}


if __name__ == "__main__":
  main()
