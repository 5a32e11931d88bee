r"""Host memory and input throughput of a streamed (prepared) dataset of CelebA-HQ shape.

For each dataset size it prepares a synthetic uint8 folder (256x256x3 by default) with
``gpe_jax.data.prepare``, runs the encoder stage of ``configs/celeba_hq.py:smoke`` on it in a
subprocess and records that process's peak resident memory (``ru_maxrss``), then times the
input pipeline alone (``BatchSampler`` over the streamed view, as the train loop's prefetching
threads call it) and compares its images/s with what the encoder step consumes (steps/s from
``metrics.jsonl`` times the batch size). Prints one JSON object.

    python benchmarks/stream_memory.py --sizes=5000,10000 --root=/tmp/stream_bench

Optionally ``--in_memory`` also runs the smallest size from an .npz (the in-memory float32
path) for comparison. Preparing 10,000 images of 256x256x3 writes ~2 GB.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def run_encoder(data_path: str, workdir: str, steps: int, batch: int, held_out: int,
                source: str, workers: int) -> dict:
  cmd = [sys.executable, "-m", "gpe_jax.main", "--config=configs/celeba_hq.py:smoke",
         f"--workdir={workdir}", f"--config.data.path={data_path}",
         f"--config.data.source={source}", "--config.data.max_train=0",
         "--config.data.max_test=0", f"--config.data.num_held_out={held_out}",
         f"--config.data.batch_size={batch}", f"--config.data.workers={workers}",
         "--config.stages=('encoder',)", f"--config.encoder.num_steps={steps}",
         f"--config.encoder.log_every={max(1, steps // 4)}", "--config.encoder.evals=()",
         "--config.encoder.progress_bar=False"]
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  t0 = time.perf_counter()
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  _, status, usage = os.wait4(proc.pid, 0)
  err = proc.stderr.read()
  wall = time.perf_counter() - t0
  if os.waitstatus_to_exitcode(status) != 0:
    raise SystemExit(f"encoder run failed:\n{err[-3000:]}")
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  rates = [r["steps_per_sec"] for r in rows if r.get("stage") == "encoder" and
           "steps_per_sec" in r]
  return {"peak_rss_mib": usage.ru_maxrss / 1024, "wall_s": wall,
          "steps_per_sec_last": rates[-1] if rates else None}


def input_throughput(data_path: str, batch: int, held_out: int, workers: int,
                     batches: int = 40) -> float:
  from configs import celeba_hq
  from gpe_jax.data import BatchSampler, load_dataset
  cfg = celeba_hq.get_config("smoke").data
  cfg.update(path=data_path, source="prepared", max_train=0, max_test=0,
             num_held_out=held_out, batch_size=batch)
  ds = load_dataset(cfg)
  sampler = BatchSampler({"x": ds.x_train}, batch, seed=0)
  sampler(0)
  t0 = time.perf_counter()
  if workers:
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      list(pool.map(sampler, range(1, batches + 1)))
  else:
    for s in range(1, batches + 1):
      sampler(s)
  return batches * batch / (time.perf_counter() - t0)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--sizes", default="5000,10000")
  p.add_argument("--shape", default="256,256,3")
  p.add_argument("--root", default="/tmp/stream_bench")
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--held_out", type=int, default=200)
  p.add_argument("--workers", type=int, default=2)
  p.add_argument("--in_memory", action="store_true")
  args = p.parse_args()
  from gpe_jax.data import prepare
  shape = tuple(int(v) for v in args.shape.split(","))
  out = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
         "shape": shape, "batch": args.batch, "steps": args.steps, "runs": {}}
  for n in (int(v) for v in args.sizes.split(",")):
    folder = os.path.join(args.root, f"data_{n}")
    if prepare.read_meta(folder) is None:
      t0 = time.perf_counter()
      prepare.prepare_synthetic(folder, n, shape)
      prep_s = time.perf_counter() - t0
    else:
      prep_s = None
    wd = os.path.join(args.root, f"wd_{n}_{time.time_ns()}")
    run = run_encoder(folder, wd, args.steps, args.batch, args.held_out, "prepared",
                      args.workers)
    run["prepare_s"] = prep_s
    run["disk_mib"] = os.path.getsize(os.path.join(folder, "train_images.npy")) / 2**20
    run["input_images_per_s"] = input_throughput(folder, args.batch, args.held_out,
                                                 args.workers)
    if run["steps_per_sec_last"]:
      run["step_images_per_s"] = run["steps_per_sec_last"] * args.batch
    out["runs"][str(n)] = run
    print(json.dumps({n: run}), file=sys.stderr)
  if args.in_memory:
    import numpy as np
    n = min(int(v) for v in args.sizes.split(","))
    npz = os.path.join(args.root, f"data_{n}.npz")
    if not os.path.exists(npz):
      np.savez(npz, x_train=np.load(os.path.join(args.root, f"data_{n}", "train_images.npy"),
                                    mmap_mode="r"))
    wd = os.path.join(args.root, f"wd_mem_{n}_{time.time_ns()}")
    out["in_memory"] = {str(n): run_encoder(npz, wd, args.steps, args.batch, args.held_out,
                                            "npz", args.workers)}
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  main()
