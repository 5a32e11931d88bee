"""Workdir bookkeeping, written by process 0 only: metrics.jsonl, TensorBoard, summary.json.

Workdir layout (each arrow of the pipeline is a file here):
  config.json                 the full config of the latest invocation
  metrics.jsonl               one JSON object per logged/evaluated step: stage, step, loss, ...
  summary.json                per stage: steps, seconds, stopped_by, final held-out metrics
  tensorboard/                TensorBoard event files
  <stage>/checkpoints/        orbax checkpoints of the stage's full train state
  <stage>/done.json           written when a stage has finished (it is then not redone)
  <stage>/*.png               the stage's plots
  encoder/latent_stats.npz    latent normalisation (mean [d], scale C) -- PAPERS §1.4
"""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

import jax
import numpy as np


class QuietLibraries(logging.Filter):
  """Drop INFO chatter of orbax/tensorstore (they log every checkpoint step at INFO)."""

  def filter(self, record):
    noisy = "/orbax/" in record.pathname or "/tensorstore/" in record.pathname
    return record.levelno >= logging.WARNING or not noisy


def setup_logging() -> None:
  """INFO logging for command-line runs, without the checkpoint libraries' chatter."""
  logging.getLogger().setLevel(logging.INFO)
  for handler in logging.getLogger().handlers:
    handler.addFilter(QuietLibraries())


def is_main_process() -> bool:
  return jax.process_index() == 0


def to_jsonable(obj: Any) -> Any:
  """Convert numpy/jax scalars and arrays (and nested containers) to plain JSON values."""
  if isinstance(obj, dict):
    return {str(k): to_jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_jsonable(v) for v in obj]
  if isinstance(obj, (np.ndarray, jax.Array)):
    arr = np.asarray(obj)
    return arr.item() if arr.ndim == 0 else arr.tolist()
  if isinstance(obj, (np.floating, float)):
    f = float(obj)
    return f if math.isfinite(f) else str(f)
  if isinstance(obj, np.integer):
    return int(obj)
  return obj


def write_json(path: str, obj: Any) -> None:
  """Atomic JSON write (temp file + rename), process 0 only."""
  if not is_main_process():
    return
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(to_jsonable(obj), f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def read_json(path: str, default: Any = None) -> Any:
  if not os.path.exists(path):
    return default
  with open(path) as f:
    return json.load(f)


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def update_summary(workdir: str, stage: str, values: dict) -> dict:
  """Merge ``values`` into summary.json[stage] and return the whole summary."""
  path = os.path.join(workdir, "summary.json")
  summary = read_json(path, {})
  summary[stage] = to_jsonable(values)
  write_json(path, summary)
  return summary


class MetricsWriter:
  """Appends JSON lines to metrics.jsonl and scalars to TensorBoard (process 0 only)."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    self.enabled = is_main_process()

  def _tensorboard(self):
    if self._tb is None and self.enabled:
      from tensorboardX import SummaryWriter  # light, no TensorFlow needed
      self._tb = SummaryWriter(os.path.join(self.workdir, "tensorboard"), flush_secs=10)
    return self._tb

  def truncate(self, stage: str, after_step: int) -> None:
    """Drop rows of ``stage`` logged after ``after_step`` (a resumed run re-logs them)."""
    if not self.enabled or not os.path.exists(self.path):
      return
    rows = read_metrics(self.workdir)
    keep = [r for r in rows if not (r.get("stage") == stage and r.get("step", 0) > after_step)]
    if len(keep) != len(rows):
      tmp = self.path + ".tmp"
      with open(tmp, "w") as f:
        for r in keep:
          f.write(json.dumps(r) + "\n")
      os.replace(tmp, self.path)

  def write(self, stage: str, step: int, values: dict) -> None:
    if not self.enabled:
      return
    row = {"stage": stage, "step": int(step)}
    row.update(to_jsonable(values))
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    tb = self._tensorboard()
    for k, v in row.items():
      if isinstance(v, (int, float)) and k != "step":
        tb.add_scalar(f"{stage}/{k}", v, int(step))

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None
