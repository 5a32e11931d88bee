"""Fig. 4 of the paper: decoders trained on GPE encoders stopped at three GME values — the
smaller the encoder's GME, the faster the decoder's reconstruction loss falls.

Variants in the workdir:
  * ``gpe_encoder``: the GPE encoder, held-out GME evaluated every ``encoder.num_steps / 200``
    steps (``encoders.train_gpe_encoder``);
  * ``gpe_encoder_stop<N>``: the same encoder rerun and stopped (``target_loss``) at step N,
    for the two earlier of three stops chosen on the held-out GME curve
    (``encoders.pick_stops``): the first evaluation, the first one at or below the geometric
    mean of the first and final GME, and the final encoder (see ``encoders``);
  * ``decoder_gpe_step<N>``: a decoder on the encoder frozen at step N.
Every decoder trains with the same config (``config.decoder``; held-out MSE every
``num_steps / 300`` steps, training MSE logged at least as often).

    python -m gpe_jax.experiments.fig4 --config=configs/default.py --workdir=runs/fig4
"""
from __future__ import annotations

import os

import numpy as np

from gpe_jax import plots
from gpe_jax.experiments import common, encoders

# Stopping points: fractions of the way, in log GME, from the first held-out evaluation (0) to
# the final encoder (1).
STOP_FRACTIONS = (0.0, 0.5, 1.0)
# Where the decoders' curves are compared: fractions of the decoder's training.
AT_FRACTIONS = (0.1, 0.5, 1.0)


def run(config, workdir: str) -> common.Report:
  ctx = encoders.load_context(config)
  enc, stops = encoders.frozen_gpe_encoders(config, workdir, ctx, STOP_FRACTIONS)
  rows = []
  for stop in stops:   # increasing step, decreasing GME
    summary = encoders.train_decoder(config, workdir, stop["variant"], "gpe", stop["ckpt_dir"])
    curves = encoders.decoder_curves(os.path.join(workdir, stop["variant"]))
    rows.append(dict(stop, summary=summary, curves=curves, final=float(curves["val"][-1])))

  dataset = ctx.data.name
  interval = encoders.every(config.decoder.num_steps, encoders.DECODER_EVALS)
  mean_image = float(rows[0]["summary"].get("val_mean_image_mse", float("nan")))
  for row in rows:
    c = row["curves"]
    row["val_at"] = {f"{f:g}": encoders.value_at_fraction(c["val_steps"], c["val"], f)
                     for f in AT_FRACTIONS}
    row["train_at"] = {f"{f:g}": encoders.value_at_fraction(c["train_steps"], c["train"], f)
                       for f in AT_FRACTIONS}
  _plot(rows, mean_image, os.path.join(workdir, "fig4.png"),
        f"{dataset}: decoder on GPE encoders stopped at different GME")

  # Does a smaller GME give a lower held-out MSE at each point of training (the paper's claim)?
  by_gme = sorted(rows, key=lambda r: r["gme"])
  ordered = {k: bool(all(a["val_at"][k] <= b["val_at"][k] for a, b in zip(by_gme, by_gme[1:])))
             for k in rows[0]["val_at"]}

  header = ["Encoder stopped at", "held-out GME"] + [
      f"held-out MSE at {f:.0%} of training" for f in AT_FRACTIONS]
  table = common.markdown_table(header, [
      [f"step {r['step']}", r["gme"]] + [r["val_at"][f"{f:g}"] for f in AT_FRACTIONS]
      for r in rows])
  numbers = {
      "dataset": dataset,
      "stop_fractions_log_gme": list(STOP_FRACTIONS),
      "decoder_num_steps": int(config.decoder.num_steps),
      "decoder_eval_every": interval,
      "mean_image_mse": mean_image,
      "encoder_curve": encoders.encoder_curve_numbers(config, enc),
      "gme": [r["gme"] for r in rows],
      "final_val_recon_mse": [r["final"] for r in rows],
      "smaller_gme_lower_val_mse_at": ordered,
      "encoders": {r["variant"]: {
          "encoder_run": r["run"], "encoder_step": r["step"], "gme": r["gme"],
          "gme_in_run": r["curve_gme"],
          "gme_level": r["level"], "final_val_recon_mse": r["final"],
          "val_recon_mse_at_fraction": r["val_at"],
          "train_recon_mse_at_fraction": r["train_at"],
          "decoder_seconds": r["summary"].get("seconds"),
          "val_curve": {"steps": r["curves"]["val_steps"].tolist(),
                        "val_recon_mse": r["curves"]["val"].tolist()},
      } for r in rows},
  }
  claim = ", ".join(f"{float(k):.0%}: {'yes' if v else 'no'}" for k, v in ordered.items())
  summary = (
      f"Decoders trained alone on {dataset}, on one GPE encoder frozen at {len(rows)} points of "
      f"its training (held-out GME {', '.join(format(r['gme'], '.4g') for r in rows)}), all "
      f"with the same config ({int(config.decoder.num_steps)} steps). Final held-out MSE: "
      f"{', '.join(format(r['final'], '.4g') for r in rows)} (mean image: {mean_image:.4g}). "
      f"Smaller GME gives a lower held-out MSE at each fraction of the decoder's training — "
      f"{claim}.")
  notes = [
      "Stopping points are chosen on the encoder's own held-out GME curve (evaluated every "
      f"{encoders.every(config.encoder.num_steps, encoders.ENCODER_EVALS)} steps): levels "
      f"spread evenly in log GME between the first evaluation (step {int(enc['steps'][0])}) "
      f"and the final encoder (step {int(enc['steps'][-1])}); each stop is the first "
      "evaluation at or below its level. An earlier stop is the same encoder run again and "
      "stopped there by `encoder.target_loss` (training is a pure function of seed and step, "
      "so the rerun follows the same trajectory); every frozen encoder is restored and its "
      "held-out GME re-measured before its decoder trains, and that GME is the one reported.",
      "GME is the held-out GME as measured by the encoder stage (`val_gme`: mean over "
      "held-out minibatches of the training batch size). The paper shows the decoder's "
      "training loss; the figure shows both the training MSE (thin, dashed; per logged "
      "minibatch) and the held-out MSE (solid).",
  ]
  if len(rows) < len(STOP_FRACTIONS):
    notes.append(f"Only {len(rows)} distinct stopping point(s): the levels fell on the same "
                 "checkpoint (a very short run).")
  return common.Report(
      title=f"Fig. 4: decoder training on GPE encoders stopped at different GME ({dataset})",
      summary=summary, tables=[table],
      figures={"fig4.png": "Decoder reconstruction MSE vs iteration, one colour per frozen "
                           "encoder (held-out GME in the legend): training (dashed) and "
                           "held-out (solid); dotted: the mean-image MSE."},
      numbers=numbers, notes=notes)


def _plot(rows, mean_image, path, title):
  fig, ax = plots.plt.subplots(figsize=(6.4, 4.2))
  colors = plots.plt.cm.viridis(np.linspace(0.0, 0.85, max(len(rows), 1)))
  for row, color in zip(sorted(rows, key=lambda r: r["gme"]), colors):
    c = row["curves"]
    label = f"GME {row['gme']:.3g} (encoder step {row['step']})"
    ax.plot(c["train_steps"], c["train"], "--", color=color, lw=0.9, alpha=0.7)
    ax.plot(c["val_steps"], c["val"], "-o", color=color, ms=3, lw=1.5, label=label)
  if np.isfinite(mean_image):
    ax.axhline(mean_image, color="gray", ls=":", lw=0.8, label="mean-image MSE")
  ax.plot([], [], "k--", lw=0.9, label="training (dashed)")
  ax.set_yscale("log")
  ax.set_xlabel("decoder iteration")
  ax.set_ylabel("reconstruction MSE")
  ax.set_title(title)
  ax.legend(fontsize=8)
  ax.grid(True, which="both", alpha=0.3)
  return plots._save(fig, path)


if __name__ == "__main__":
  common.main(run, "gpe_jax.experiments.fig4")
