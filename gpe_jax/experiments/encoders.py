"""Shared by Table 1 and Fig. 4: GPE encoders stopped at chosen held-out GME values, and
decoders trained alone on frozen encoders.

How an encoder is "stopped at a GME value":
  1. One GPE encoder is trained to the end (variant ``gpe_encoder``) with its held-out GME
     (``val_gme``) evaluated every ``encoder.num_steps / ENCODER_EVALS`` steps. Evaluations are
     cheap and do not touch the training state; checkpoints keep the config's schedule.
  2. Stopping points are chosen on that curve (``pick_stops``): GME levels spread in log space
     between the first evaluation and the final encoder; each stop is the first evaluation at
     or below its level.
  3. An earlier stop is *reproduced*: the same encoder variant is trained again with
     ``encoder.target_loss`` set to the GME of that evaluation (variant ``gpe_encoder_stop<N>``).
     Training is a pure function of (seed, step) and the schedule depends on ``num_steps``
     only, so the rerun follows the same trajectory and stops — and checkpoints — at step N,
     exactly as the paper stops its encoders at a GME. (GME falls fastest in the first few
     percent of training, where a fixed checkpoint interval would be too coarse; one
     checkpoint per evaluation would cost hundreds of MB.)
  4. Each frozen encoder is restored and its held-out GME re-measured with the encoder stage's
     own evaluation (``val_gme``) before a decoder trains on it; the step and GME reported
     are those of the restored encoder.

Decoders train with the config's decoder section, with a finer held-out evaluation
(``num_steps / DECODER_EVALS``), ``target_loss`` off (every decoder runs its full schedule) and
the latent statistics of each frozen encoder computed from its own embeddings.
"""
from __future__ import annotations

import logging
import math
import os

import jax.numpy as jnp
import numpy as np

from gpe_jax import autoencoders, costs, parallel, train_loop
from gpe_jax.data import iterate_eval_batches, load_dataset
from gpe_jax.experiments import common
from gpe_jax.errors import ConfigError
from gpe_jax.stages import common as stage_common

ENCODER_VARIANT = "gpe_encoder"
ENCODER_EVALS = 200  # held-out GME evaluations over the encoder's training
DECODER_EVALS = 300  # held-out MSE evaluations over each decoder's training


def every(num_steps: int, parts: int) -> int:
  """Interval giving about ``parts`` evaluations over ``num_steps`` steps (at least 1)."""
  return max(1, int(num_steps) // parts)


def _encoder_overrides(config, target_loss: float = 0.0) -> dict:
  return {"stages": ("encoder",), "encoder.target_loss": float(target_loss),
          "encoder.eval_every": every(config.encoder.num_steps, ENCODER_EVALS)}


def train_gpe_encoder(config, workdir: str) -> dict:
  """Train (or reuse) the GPE encoder variant with a resolved held-out GME curve.

  Returns:
    ``{"run_dir", "ckpt_dir", "steps", "val_gme", "summary"}``: the variant's folder, its
    checkpoint folder (latest = the final encoder), and the held-out GME curve.
  """
  summary = common.run_variant(config, workdir, ENCODER_VARIANT,
                               **_encoder_overrides(config))
  run_dir = os.path.join(workdir, ENCODER_VARIANT)
  steps, gme = common.curve(run_dir, "encoder", "val_gme")
  if not len(steps):
    raise RuntimeError(f"{run_dir}/metrics.jsonl holds no held-out GME of the encoder.")
  return {"run_dir": run_dir, "ckpt_dir": train_loop.checkpoint_dir(run_dir, "encoder"),
          "steps": steps, "val_gme": gme, "summary": summary.get("encoder", {})}


def pick_stops(steps: np.ndarray, gme: np.ndarray, fractions) -> list[dict]:
  """Stopping points on a held-out GME curve, at levels spread in log space.

  Level ``f`` is ``g0 * (gF / g0) ** f`` between the first evaluation's GME ``g0`` (f = 0) and
  the final one ``gF`` (f = 1); its stop is the first evaluation whose GME is at or below the
  level, and ``f >= 1`` is always the final encoder. Levels that land on the same step are
  merged (short runs), so fewer stops than fractions may come back.

  Returns:
    ``[{"step", "gme", "level", "fraction"}]`` in the order of ``fractions``, unique steps.
  """
  g = np.maximum(np.asarray(gme, np.float64), 1e-30)
  g0, g_final = float(g[0]), float(g[-1])
  stops, seen = [], set()
  for f in fractions:
    level = math.exp(math.log(g0) + float(f) * (math.log(g_final) - math.log(g0)))
    if f >= 1:
      i = len(g) - 1
    else:
      hit = np.nonzero(g <= level * (1 + 1e-9))[0]
      i = int(hit[0]) if hit.size else len(g) - 1
    step = int(steps[i])
    if step in seen:
      continue
    seen.add(step)
    stops.append({"step": step, "gme": float(gme[i]), "level": level, "fraction": float(f)})
  return stops


def stopped_encoder(config, workdir: str, enc: dict, stop: dict) -> dict:
  """The GPE encoder stopped at ``stop`` (from ``pick_stops``): the final encoder itself, or a
  rerun of the encoder variant stopped by ``target_loss`` at that evaluation's GME.

  Returns:
    ``{"ckpt_dir", "step", "curve_gme", "run"}``: the checkpoint folder whose latest step is
    the stopped encoder, the step it stopped at, the GME there in its own run, and the variant.
  """
  if stop["step"] == int(enc["steps"][-1]):
    return {"ckpt_dir": enc["ckpt_dir"], "step": stop["step"], "curve_gme": stop["gme"],
            "run": ENCODER_VARIANT}
  # The stop's GME is <= level (1 + 1e-9) and every earlier evaluation was above that
  # (pick_stops), so this target is first reached at the stop (exp(log g) may round below g).
  target = max(stop["gme"], min(stop["level"] * (1 + 1e-9), stop["gme"] * (1 + 1e-6)))
  name = f"{ENCODER_VARIANT}_stop{stop['step']}"
  summary = common.run_variant(config, workdir, name,
                               **_encoder_overrides(config, target))["encoder"]
  run_dir = os.path.join(workdir, name)
  step = int(summary["steps"])
  if step != stop["step"]:
    logging.warning("%s: the rerun stopped at step %d, not %d (GME %.6g); using it", name, step,
                    stop["step"], summary.get("val_gme", float("nan")))
  return {"ckpt_dir": train_loop.checkpoint_dir(run_dir, "encoder"), "step": step,
          "curve_gme": float(summary.get("val_gme", stop["gme"])), "run": name}


def gpe_decoder_variant(step: int) -> str:
  return f"decoder_gpe_step{step}"


def decoder_overrides(config, method: str, ckpt_dir: str) -> dict:
  """The overrides of a decoder-only variant on the frozen encoder in ``ckpt_dir``."""
  interval = every(config.decoder.num_steps, DECODER_EVALS)
  return {
      "stages": ("decoder",),
      "decoder.encoder_method": method,
      "decoder.encoder_checkpoint": os.path.abspath(ckpt_dir),
      "decoder.target_loss": 0.0,
      "decoder.eval_every": interval,
      "decoder.log_every": min(int(config.decoder.log_every), interval),
  }


def train_decoder(config, workdir: str, name: str, method: str, ckpt_dir: str) -> dict:
  """Train (or reuse) a decoder-only variant on the frozen encoder in ``ckpt_dir``.

  Returns:
    The variant's decoder summary (``val_recon_mse``, ``val_mean_image_mse``, ``steps``, ...).
  """
  summary = common.run_variant(config, workdir, name,
                               **decoder_overrides(config, method, ckpt_dir))
  return summary.get("decoder", {})


def train_decoders(config, workdir: str, rows: list, workers: int = 1) -> None:
  """A decoder on each row's frozen encoder (``row['variant']``, ``['method']``, ``['ckpt']``),
  ``workers`` at a time in separate processes (``common.run_variants``): adds the decoder's
  ``summary``, its ``curves`` and the ``final`` held-out MSE to each row."""
  summaries = common.run_variants(
      config, workdir, {row["variant"]: decoder_overrides(config, row["method"], row["ckpt"])
                        for row in rows}, workers)
  for row in rows:
    curves = decoder_curves(os.path.join(workdir, row["variant"]))
    row.update(summary=summaries[row["variant"]].get("decoder", {}), curves=curves,
               final=float(curves["val"][-1]))


def mark_thresholds(rows: list, thresholds: dict) -> None:
  """``row['reach']``: the first decoder step at or under each threshold (None: never)."""
  for row in rows:
    c = row["curves"]
    row["reach"] = {k: common.first_step_below(c["val_steps"], c["val"], t)
                    for k, t in thresholds.items()}


def decoder_curves(run_dir: str) -> dict:
  """The decoder's training (``recon_mse``) and held-out (``val_recon_mse``) curves."""
  train_steps, train = common.curve(run_dir, "decoder", "recon_mse")
  val_steps, val = common.curve(run_dir, "decoder", "val_recon_mse")
  return {"train_steps": train_steps, "train": train, "val_steps": val_steps, "val": val}


def value_at_fraction(steps: np.ndarray, values: np.ndarray, fraction: float) -> float:
  """The value at the first logged step >= ``fraction`` of the last logged step."""
  if not len(steps):
    return float("nan")
  i = int(np.searchsorted(steps, fraction * steps[-1] - 1e-9))
  return float(values[min(i, len(values) - 1)])


def load_context(config) -> stage_common.Context:
  """Data and mesh for measuring frozen encoders in this process (no writer, no workdir)."""
  return stage_common.Context(config=config, workdir="", mesh=parallel.make_mesh(
      config.num_devices), data=load_dataset(config.data), writer=None)


def frozen_embed(ctx: stage_common.Context, ckpt_dir: str):
  """``x [B, ...] -> T(x) [B, d]`` (raw, unnormalised; a VAE's mean) of the frozen encoder
  whose stage wrote ``ckpt_dir`` (read back from that stage's manifest, at its exact step).

  Raises:
    ConfigError / CheckpointError: no manifest there, or its checkpoint cannot be read.
  """
  stage_dir = os.path.dirname(os.path.abspath(ckpt_dir).rstrip(os.sep))
  manifest = autoencoders.read_manifest(stage_dir)
  if manifest is None or manifest.get("encoder") is None:
    raise ConfigError(f"{stage_dir} holds no trained encoder (no {autoencoders.MANIFEST}); "
                      "give the checkpoints of a finished encoder stage (rerun an older "
                      "workdir's command once to write its manifest).")
  return autoencoders.Autoencoder(stage_dir, dict(manifest, decoder=None),
                                  os.path.dirname(stage_dir),
                                  ctx.config.data.batch_size).embed_fn


def val_gme(ctx: stage_common.Context, ckpt_dir: str) -> float:
  """Held-out GME of the frozen encoder in ``ckpt_dir`` (its manifest's step), measured
  exactly as the encoder stage's ``val_gme``: mean over held-out minibatches of the training
  batch size. A checkpoint that cannot be restored raises before any decoder trains on it."""
  cfg, data = ctx.config, ctx.data
  bsz = cfg.data.batch_size
  embed = frozen_embed(ctx, ckpt_dir)
  x_eval = np.stack(list(iterate_eval_batches(data.x_test, bsz, cfg.eval.num_examples)))
  z = stage_common.batched_apply(embed, x_eval.reshape((-1,) + data.example_shape), bsz)
  z = z.reshape(x_eval.shape[:2] + (-1,))
  return float(jnp.mean(costs.gme_cost_minibatches(x_eval, z)))


def frozen_gpe_encoders(config, workdir: str, ctx, fractions) -> tuple[dict, list[dict]]:
  """Train the GPE encoder, stop it at the GME levels of ``fractions`` (``pick_stops``) and
  check each stopped encoder by restoring it.

  Returns:
    ``(enc, stops)``: ``train_gpe_encoder``'s dict, and per stop (in increasing step order)
    ``{"step", "gme", "level", "fraction", "ckpt_dir", "run", "curve_gme", "variant"}``, where
    ``gme`` is the restored encoder's held-out GME and ``variant`` names its decoder variant.
  """
  enc = train_gpe_encoder(config, workdir)
  out = []
  for stop in sorted(pick_stops(enc["steps"], enc["val_gme"], fractions),
                     key=lambda s: s["step"]):
    frozen = stopped_encoder(config, workdir, enc, stop)
    if any(o["step"] == frozen["step"] for o in out):
      continue  # a rerun that did not stop where asked landed on another stop
    measured = val_gme(ctx, frozen["ckpt_dir"])
    if not math.isclose(measured, frozen["curve_gme"], rel_tol=1e-2, abs_tol=1e-7):
      logging.warning("GPE encoder of step %d: restored held-out GME %.6g, its run measured "
                      "%.6g", frozen["step"], measured, frozen["curve_gme"])
    out.append(dict(stop, step=frozen["step"], gme=measured, curve_gme=frozen["curve_gme"],
                    ckpt_dir=frozen["ckpt_dir"], run=frozen["run"],
                    variant=gpe_decoder_variant(frozen["step"])))
  return enc, out


def encoder_curve_numbers(config, enc: dict) -> dict:
  """The encoder's held-out GME curve, for numbers.json."""
  return {"steps": enc["steps"].tolist(), "val_gme": enc["val_gme"].tolist(),
          "eval_every": every(config.encoder.num_steps, ENCODER_EVALS)}
