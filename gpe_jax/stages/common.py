"""What every stage shares: the run context, batched inference, and 'is this stage done'."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import numpy as np

from gpe_jax import logs, models
from gpe_jax.data import BatchSampler, Dataset


@dataclasses.dataclass
class Context:
  """Everything a stage needs; stages hand results to later ones only through ``workdir``."""
  config: Any
  workdir: str
  mesh: Any
  data: Dataset
  writer: logs.MetricsWriter

  def stage_dir(self, name: str) -> str:
    path = os.path.join(self.workdir, name)
    os.makedirs(path, exist_ok=True)
    return path

  def sampler(self, arrays: dict) -> BatchSampler:
    return BatchSampler(arrays, self.config.data.batch_size, self.config.seed,
                        jax.process_index(), jax.process_count())


def done_record(ctx: Context, name: str) -> dict | None:
  """The stage's done.json if the stage has finished under the current config, else None.

  Finished means: it ran to ``num_steps`` and ``num_steps`` was not raised since, or it
  stopped at a ``target_loss`` that is not stricter than the current one. Raising
  ``num_steps`` (or tightening ``target_loss``) and rerunning continues training.
  """
  rec = logs.read_json(os.path.join(ctx.workdir, name, "done.json"))
  if rec is None:
    return None
  cfg = ctx.config[name]
  target = float(cfg.get("target_loss", 0.0) or 0.0)
  if rec["stopped_by"] == "num_steps" and rec["steps"] >= cfg.num_steps:
    return rec
  if rec["stopped_by"] == "target_loss" and target > 0 and rec["target_loss"] <= target:
    return rec
  return None


def mark_done(ctx: Context, name: str, result, summary: dict) -> dict:
  """Record completion and write the stage's summary into summary.json."""
  cfg = ctx.config[name]
  logs.write_json(os.path.join(ctx.stage_dir(name), "done.json"), {
      "steps": result.steps, "stopped_by": result.stopped_by,
      "target_loss": float(cfg.get("target_loss", 0.0) or 0.0)})
  full = {"steps": result.steps, "seconds": result.seconds, "stopped_by": result.stopped_by}
  full.update(result.eval_metrics)
  full.update(summary)
  logs.update_summary(ctx.workdir, name, full)
  return full


def previous_summary(ctx: Context, name: str) -> dict:
  return logs.read_json(os.path.join(ctx.workdir, "summary.json"), {}).get(name, {})


def batched_apply(fn: Callable[[jax.Array], jax.Array], x: np.ndarray,
                  batch_size: int) -> np.ndarray:
  """Apply a jitted per-batch ``fn`` to all rows of ``x`` (the last batch is padded, so one
  compiled shape serves all), returning a host array [N, ...]."""
  n = x.shape[0]
  outs = []
  for i in range(0, n, batch_size):
    xb = x[i:i + batch_size]
    m = xb.shape[0]
    if m < batch_size:
      xb = np.concatenate([xb, np.repeat(xb[-1:], batch_size - m, axis=0)], axis=0)
    outs.append(np.asarray(fn(xb))[:m])
  return np.concatenate(outs, axis=0)


def inference_fn(model, **kwargs) -> Callable:
  """A jitted (params, batch_stats, x) -> model(x) in inference mode (running BatchNorm
  statistics). Make it once per model and bind variables with ``functools.partial``: the
  parameters stay arguments, so evaluations do not recompile."""
  @jax.jit
  def fn(params, batch_stats, x):
    out, _ = models.apply_model(model, params, batch_stats, x, train=False, **kwargs)
    return out
  return fn


def latent_stats(z: np.ndarray) -> dict:
  """PAPERS §1.4: mean m and scale C = sqrt(d / E|z - m|^2), accumulated in float64."""
  z = np.asarray(z, np.float64)
  mean = z.mean(axis=0)
  spread = np.mean(np.sum(np.square(z - mean), axis=1))
  scale = np.sqrt(z.shape[1] / max(spread, 1e-30))
  return {"mean": mean, "scale": np.float64(scale), "num_samples": np.int64(z.shape[0])}


def normalize_latents(z: np.ndarray, stats: dict) -> np.ndarray:
  """z -> C (z - m), float32."""
  return ((np.asarray(z, np.float64) - stats["mean"]) * stats["scale"]).astype(np.float32)


def save_latent_stats(path: str, stats: dict) -> None:
  if logs.is_main_process():
    np.savez(path, **stats)


def load_latent_stats(path: str) -> dict:
  with np.load(path) as f:
    return {k: f[k] for k in f.files}
