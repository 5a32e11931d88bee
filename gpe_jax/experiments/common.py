"""What every experiment shares: the command line, variant runs of the pipeline, curves from
``metrics.jsonl``, and the report.

An experiment is a function ``run(config, workdir) -> Report``. It trains *variants* of the
configured run — each a full pipeline run (``gpe_jax.pipeline.run``) in its own subdirectory
of the experiment's workdir, so each variant resumes, skips finished stages and keeps its
checkpoints exactly like a normal run — then reads their summaries and metrics and writes
``report.md`` (tables, figures, the commands, the machine, the wall times) and
``numbers.json``.

    python -m gpe_jax.experiments.table1 --config=configs/fashion_mnist.py --workdir=DIR
    python -m gpe_jax.experiments.table1 --config=configs/default.py:smoke --workdir=DIR
"""
from __future__ import annotations

import dataclasses
import logging
import os
import platform
import sys
import time
from typing import Callable

import jax
import numpy as np

from gpe_jax import hostmem, logs, pipeline


@dataclasses.dataclass
class Report:
  """An experiment's result.

  Attributes:
    title: first heading of report.md.
    summary: one paragraph: what was run and what it shows.
    tables: markdown tables (strings), in order.
    figures: {file name in the workdir: caption}.
    numbers: everything measured (written to numbers.json).
    notes: further paragraphs (how the run differs from the paper, and why).
  """
  title: str
  summary: str = ""
  tables: list = dataclasses.field(default_factory=list)
  figures: dict = dataclasses.field(default_factory=dict)
  numbers: dict = dataclasses.field(default_factory=dict)
  notes: list = dataclasses.field(default_factory=list)


def variant(config, **overrides):
  """A copy of ``config`` with dotted-key overrides, e.g. ``variant(c, **{'encoder.lr': 1e-3})``."""
  cfg = config.copy_and_resolve_references()
  cfg.unlock()
  for key, value in overrides.items():
    node = cfg
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return cfg


def run_variant(config, workdir: str, name: str, **overrides) -> dict:
  """Run the pipeline for a variant of ``config`` in ``workdir/name``; returns its summary."""
  sub = os.path.join(workdir, name)
  cfg = variant(config, **overrides)
  t0 = time.perf_counter()
  summary = pipeline.run(cfg, sub)
  logging.info("variant %s: done in %.1f s", name, time.perf_counter() - t0)
  return summary


# Worker processes of ``run_variants``: on a CPU, single-threaded XLA in several processes gets
# more out of the cores for small networks than one multi-threaded process (measured on 2
# cores: two 6,000-step GMEGAN mixture runs side by side in 40 s, one after the other 58 s).
_SINGLE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def _worker_cache(workdir: str) -> dict:
  """The compilation cache the worker processes share, as this process has it set up: the
  user's own (``jax_compilation_cache_dir`` or ``JAX_COMPILATION_CACHE_DIR``) when set, else
  ``WORKDIR/.jax_cache`` (pruned to ``cli.CACHE_MAX_BYTES`` here), with the same size bound. A
  worker must bound the cache as this process does: where jax bounds it, entries written
  without the bound lack the access-time files that a bounded cache reads before each write
  (``cli.repair_compilation_cache``)."""
  cache = jax.config.jax_compilation_cache_dir or os.path.join(workdir, ".jax_cache")
  os.makedirs(cache, exist_ok=True)
  if not jax.config.jax_compilation_cache_dir:
    from gpe_jax import cli  # pylint: disable=import-outside-toplevel
    cli.prune_compilation_cache(cache)
  return {"dir": cache, "max_size": int(jax.config.jax_compilation_cache_max_size)}


def _init_worker(cache: dict) -> None:
  hostmem.keep_freed_memory()
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _SINGLE_THREAD).strip()
  if jax.config.jax_compilation_cache_dir != cache["dir"]:
    jax.config.update("jax_compilation_cache_dir", cache["dir"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  if int(jax.config.jax_compilation_cache_max_size) != cache["max_size"]:
    jax.config.update("jax_compilation_cache_max_size", cache["max_size"])
  logging.getLogger().setLevel(logging.WARNING)


def _run_in_worker(config, sub: str) -> dict:
  return pipeline.run(config, sub)


def run_variants(config, workdir: str, variants: dict, workers: int = 1) -> dict:
  """Run several variants of ``config`` (``{name: overrides}``), each in ``workdir/name``,
  ``workers`` at a time in separate processes (1: one after another in this process).
  Returns ``{name: summary}``. Finished variants are skipped as in ``run_variant``; a
  variant that fails raises its error here after the others finished."""
  if workers <= 1 or len(variants) <= 1:
    return {name: run_variant(config, workdir, name, **ov) for name, ov in variants.items()}
  import concurrent.futures
  import multiprocessing
  cache = _worker_cache(workdir)
  out, errors = {}, []
  t0 = time.perf_counter()
  with concurrent.futures.ProcessPoolExecutor(
      max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
      initializer=_init_worker, initargs=(cache,)) as pool:
    futures = {pool.submit(_run_in_worker, variant(config, **ov),
                           os.path.join(workdir, name)): name for name, ov in variants.items()}
    for fut in concurrent.futures.as_completed(futures):
      name = futures[fut]
      try:
        out[name] = fut.result()
        logging.info("variant %s: done (%d of %d, %.0f s)", name, len(out), len(variants),
                     time.perf_counter() - t0)
      except Exception as e:  # keep the others running; report the first failure after
        errors.append(e)
  if errors:
    raise errors[0]
  return {name: out[name] for name in variants}


def metrics_rows(run_dir: str, stage: str) -> list[dict]:
  return [r for r in logs.read_metrics(run_dir) if r.get("stage") == stage]


def curve(run_dir: str, stage: str, key: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps, values) of ``key`` in a stage's metrics rows."""
  rows = [r for r in metrics_rows(run_dir, stage) if key in r]
  return (np.array([r["step"] for r in rows], np.int64),
          np.array([r[key] for r in rows], np.float64))


def wall_clock(run_dir: str, stage: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps, seconds since the stage started) at each logged step, integrated from the logged
  ``steps_per_sec``. Held-out evaluations are included: each one's time falls into the logging
  window after it."""
  steps, rates = curve(run_dir, stage, "steps_per_sec")
  prev = np.concatenate([[0], steps[:-1]])
  return steps, np.cumsum((steps - prev) / np.maximum(rates, 1e-12))


def first_step_below(steps: np.ndarray, values: np.ndarray, threshold: float):
  """First logged step whose value is <= threshold, or None."""
  hit = np.nonzero(values <= threshold)[0]
  return int(steps[hit[0]]) if hit.size else None


def machine() -> str:
  devices = jax.devices()
  return (f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPU cores, "
          f"{len(devices)} x {devices[0].device_kind} ({jax.default_backend()}), "
          f"Python {platform.python_version()}, jax {jax.__version__}")


def num(v, digits: int = 3) -> str:
  """A number for a report table: ``digits`` significant digits, '—' for a missing value."""
  return "—" if v is None else f"{v:.{digits}g}"


def yes_no(v) -> str:
  """A verdict for a report table: 'yes' / 'no', 'n/a' when it could not be judged."""
  return "n/a" if v is None else ("yes" if v else "no")


def markdown_table(header: list, rows: list) -> str:
  def fmt(v):
    if isinstance(v, float):
      return f"{v:.4g}"
    return "—" if v is None else str(v)
  lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
  return "\n".join(lines)


def write_report(workdir: str, report: Report, command: str, seconds: float) -> str:
  """Write ``report.md`` and ``numbers.json``; returns the report's path."""
  parts = [f"# {report.title}", "", report.summary, "",
           f"Command: `{command}`  ", f"Machine: {machine()}  ",
           f"Wall time: {seconds:.0f} s (variants already finished in this workdir are reused)", ""]
  for table in report.tables:
    parts += [table, ""]
  for fname, caption in report.figures.items():
    parts += [f"![{caption}]({fname})", "", f"*{caption}*", ""]
  for note in report.notes:
    parts += [note, ""]
  path = os.path.join(workdir, "report.md")
  if logs.is_main_process():
    with open(path, "w") as f:
      f.write("\n".join(parts))
    logs.write_json(os.path.join(workdir, "numbers.json"),
                    dict(report.numbers, wall_seconds=seconds, command=command,
                         machine=machine()))
  return path


def main(run: Callable, module: str) -> None:
  """Command line of an experiment module (``gpe_jax.cli``): ``--config``
  (``configs/NAME.py[:smoke]``) and ``--workdir`` (required); runs ``run(config, workdir)``
  holding the workdir's lock, then writes report.md and numbers.json. Failures a user can fix
  print one paragraph and exit 2 (130 when interrupted), like ``gpe_jax.main``."""
  from gpe_jax import cli

  def body(cfg, workdir: str) -> None:
    workdir = os.path.abspath(workdir)
    command = " ".join(["python -m", module] + sys.argv[1:])
    with logs.workdir_lock(workdir, what=f"python -m {module}"):
      os.makedirs(workdir, exist_ok=True)  # on every process (the lock is process 0's)
      t0 = time.perf_counter()
      report = run(cfg, workdir)
      path = write_report(workdir, report, command, time.perf_counter() - t0)
    print(f"report: {path}")

  cli.run(body, module, require_workdir=True)


def run_variants_tolerant(config, workdir: str, variants: dict, workers: int = 1,
                          tolerate: tuple = ()) -> tuple[dict, dict]:
  """``run_variants`` for experiments in which a run may fail as a result (a GAN whose loss
  diverges): returns ``({name: summary}, {name: message})``, the second for the variants that
  raised one of ``tolerate`` (default: ``errors.NonFiniteError``). Any other error is raised
  after the others finished, as in ``run_variants``."""
  from gpe_jax import errors
  tolerate = tuple(tolerate) or (errors.NonFiniteError,)
  out, failed, others = {}, {}, []

  def record(name, fn):
    try:
      out[name] = fn()
    except tolerate as e:
      logging.warning("variant %s failed: %s", name, str(e).splitlines()[0][:300])
      failed[name] = f"{type(e).__name__}: {e}"
    except Exception as e:  # keep the others running; report the first failure after
      others.append(e)

  if workers <= 1 or len(variants) <= 1:
    for name, ov in variants.items():
      record(name, lambda name=name, ov=ov: run_variant(config, workdir, name, **ov))
  else:
    import concurrent.futures
    import multiprocessing
    cache = _worker_cache(workdir)
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker, initargs=(cache,)) as pool:
      futures = {pool.submit(_run_in_worker, variant(config, **ov),
                             os.path.join(workdir, name)): name
                 for name, ov in variants.items()}
      for fut in concurrent.futures.as_completed(futures):
        record(futures[fut], fut.result)
  if others:
    raise others[0]
  return ({name: out[name] for name in variants if name in out},
          {name: failed[name] for name in variants if name in failed})


def spread(values) -> dict:
  """{'mean', 'std' (ddof 1; 0 for one value), 'min', 'max', 'n'} of the finite ``values``
  (all None when there are none)."""
  v = np.asarray([float(x) for x in values if x is not None], np.float64)
  v = v[np.isfinite(v)]
  if v.size == 0:
    return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
  return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
          "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}


def finite_or_none(v):
  """``v`` as a float when it is a finite number (summaries write NaN as 'nan'), else None."""
  try:
    f = float(v)
  except (TypeError, ValueError):
    return None
  return f if np.isfinite(f) else None
