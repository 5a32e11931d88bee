r"""Host memory and input throughput of a streamed (prepared) dataset of CelebA-HQ shape.

For each dataset size it prepares a synthetic uint8 folder (256x256x3 by default) with
``gpe_jax.data.prepare``, runs the encoder stage of ``configs/celeba_hq.py:smoke`` on it in a
subprocess and records that process's peak resident memory (``VmHWM``, polled), then times the
input pipeline alone (``BatchSampler`` over the streamed view, as the train loop's prefetching
threads call it) and compares its images/s with what the encoder step consumes (steps/s from
``metrics.jsonl`` times the batch size). Prints one JSON object.

    python benchmarks/stream_memory.py --sizes=5000,10000 --root=/tmp/stream_bench

Optionally ``--in_memory`` also runs the smallest size from an .npz held as float32 in memory
(``--config.data.storage=memory``) for comparison, and ``--direct`` runs every size from the
direct sources streamed without preparing: the same pixels as an uncompressed ``.npz`` (read in
place) and as a folder of PNG files (decoded per batch). Preparing 10,000 images of 256x256x3
writes ~2 GB; ``--direct`` writes about as much again per source.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def run_encoder(data_path: str, workdir: str, steps: int, batch: int, held_out: int,
                source: str, workers: int, storage: str = "auto") -> dict:
  cmd = [sys.executable, "-m", "gpe_jax.main", "--config=configs/celeba_hq.py:smoke",
         f"--workdir={workdir}", f"--config.data.path={data_path}",
         f"--config.data.source={source}", f"--config.data.storage={storage}",
         "--config.data.max_train=0",
         "--config.data.max_test=0", f"--config.data.num_held_out={held_out}",
         f"--config.data.batch_size={batch}", f"--config.data.workers={workers}",
         "--config.stages=('encoder',)", f"--config.encoder.num_steps={steps}",
         f"--config.encoder.log_every={max(1, steps // 4)}", "--config.encoder.evals=()",
         "--config.encoder.progress_bar=False"]
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  # The child's own high-water mark: /proc/<pid>/status VmHWM of its post-exec address space,
  # polled while it runs. (``ru_maxrss`` from wait4 is not used: it carries over the RSS of the
  # process that forked the child, here this script, across the exec.)
  t0 = time.perf_counter()
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  hwm_kib, err_parts = 0, []
  reader = threading.Thread(target=lambda: err_parts.append(proc.stderr.read()), daemon=True)
  reader.start()
  while proc.poll() is None:
    try:
      with open(f"/proc/{proc.pid}/cmdline", "rb") as f:   # after the exec only
        if b"gpe_jax.main" not in f.read():
          continue
      with open(f"/proc/{proc.pid}/status") as f:
        for line in f:
          if line.startswith("VmHWM:"):
            hwm_kib = max(hwm_kib, int(line.split()[1]))
    except OSError:
      pass
    finally:
      time.sleep(0.05)
  reader.join()
  err = "".join(err_parts)
  wall = time.perf_counter() - t0
  if proc.returncode != 0:
    raise SystemExit(f"encoder run failed:\n{err[-3000:]}")
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  rates = [r["steps_per_sec"] for r in rows if r.get("stage") == "encoder" and
           "steps_per_sec" in r]
  return {"peak_rss_mib": hwm_kib / 1024, "wall_s": wall,
          "steps_per_sec_last": rates[-1] if rates else None}


def input_throughput(data_path: str, batch: int, held_out: int, workers: int,
                     batches: int = 40, source: str = "prepared") -> float:
  from configs import celeba_hq
  from gpe_jax.data import BatchSampler, load_dataset
  cfg = celeba_hq.get_config("smoke").data
  cfg.update(path=data_path, source=source, max_train=0, max_test=0,
             num_held_out=held_out, batch_size=batch, storage="stream")
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


def direct_copies(root: str, folder: str, n: int) -> dict:
  """The prepared pixels of ``folder`` as an uncompressed .npz and as a folder of PNGs."""
  import numpy as np
  from PIL import Image
  x = np.load(os.path.join(folder, "train_images.npy"), mmap_mode="r")
  npz = os.path.join(root, f"data_{n}.npz")
  if not os.path.exists(npz):
    np.savez(npz, x_train=x)
  pngs = os.path.join(root, f"png_{n}")
  if not os.path.exists(os.path.join(pngs, "done")):
    os.makedirs(pngs, exist_ok=True)
    for i in range(len(x)):
      Image.fromarray(np.asarray(x[i]).squeeze()).save(os.path.join(pngs, f"{i:06d}.png"),
                                                       compress_level=1)
    open(os.path.join(pngs, "done"), "w").close()
  return {"npz": npz, "image_folder": pngs}


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
  p.add_argument("--direct", action="store_true")
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
    if args.direct:
      for source, path in direct_copies(args.root, folder, n).items():
        wd = os.path.join(args.root, f"wd_{source}_{n}_{time.time_ns()}")
        run = run_encoder(path, wd, args.steps, args.batch, args.held_out, source,
                          args.workers, storage="stream")
        run["input_images_per_s"] = input_throughput(path, args.batch, args.held_out,
                                                     args.workers, source=source)
        if run["steps_per_sec_last"]:
          run["step_images_per_s"] = run["steps_per_sec_last"] * args.batch
        out.setdefault("direct", {}).setdefault(source, {})[str(n)] = run
        print(json.dumps({source: {n: run}}), file=sys.stderr)
  if args.in_memory:
    import numpy as np
    n = min(int(v) for v in args.sizes.split(","))
    npz = os.path.join(args.root, f"data_{n}.npz")
    if not os.path.exists(npz):
      np.savez(npz, x_train=np.load(os.path.join(args.root, f"data_{n}", "train_images.npy"),
                                    mmap_mode="r"))
    wd = os.path.join(args.root, f"wd_mem_{n}_{time.time_ns()}")
    out["in_memory"] = {str(n): run_encoder(npz, wd, args.steps, args.batch, args.held_out,
                                            "npz", args.workers, storage="memory")}
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  main()
