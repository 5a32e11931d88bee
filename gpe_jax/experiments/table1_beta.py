"""Table 1 against the VAE's KL weight: decoders trained alone on frozen VAE encoders of a sweep
of beta, next to a decoder on the GPE encoder.

The paper's Table 1 finds a decoder on a frozen VAE encoder orders of magnitude slower to a
tight reconstruction MSE than one on a GPE encoder (MNIST: 280,899 vs 308 iterations). The
VAE's KL weight decides how much of its encoder's geometry survives: a small beta leaves an
autoencoder, a large one squeezes the codes towards N(0, I). This experiment trains the VAE
baseline at every beta of ``config.experiments.vae_betas`` (same architecture and schedule:
``config.vae``; beta weighs the KL against the summed squared error, so the authors' 0.1 D / d
is beta = 3.4 at D = 1024, d = 30), then one decoder per frozen encoder with the same decoder
config, and reports per encoder: the VAE's own held-out reconstruction MSE, the encoder's
held-out GME (``val_gme``), its weak 1.5-bi-Lipschitz fraction and distance-ratio quantiles
(held-out pairs; ``evals.geometry``), and the decoder's iterations to two MSE thresholds.

Variants in the workdir: ``gpe_encoder`` (the GPE encoder, to the end of its schedule),
``decoder_gpe_step<N>`` (its decoder), ``vae_beta<b>`` (the VAE at beta b), ``decoder_vae_beta<b>``
(a decoder on its frozen mean encoder). A workdir of ``table1`` cannot be shared (its ``vae``
variant is beta = 1 under another name), but a rerun here reuses every finished variant.

Thresholds are relative to the GPE decoder, whose final held-out MSE is the paper's kind of
target: tight = 1.1 x GPE's final MSE; loose = the geometric mean of the mean-image MSE and the
tight threshold. A VAE decoder that does not get there within its schedule is "not reached" (the
paper's 280,899 iterations are its version of that).

    python -m gpe_jax.experiments.table1_beta --config=configs/default.py --workdir=runs/t1b
    python -m gpe_jax.experiments.table1_beta --config=configs/fashion_mnist.py \\
        --workdir=runs/table1_fashion_mnist_beta_sweep --config.experiments.workers=2

The VAEs, and then the decoders, run ``config.experiments.workers`` at a time, each in its own
single-threaded process (``common.run_variants``). On a 2-core AVX2 CPU two workers trained
Fashion-MNIST VAEs at 1.2-1.5 it/s each against 2.0 it/s for one process on both cores. Cost
there: a VAE step takes 0.5 s, so the six VAEs alone are about 2.5 h of the full sweep. On a
2-core AVX-512 CPU each worker ran 3.1-3.8 it/s (VAEs and decoders alike) and the whole sweep
took 8,338 s (docs/results/experiments/table1_fashion_mnist_beta_sweep).
"""
from __future__ import annotations

import math
import os

import numpy as np

from gpe_jax import plots
from gpe_jax.errors import ConfigError
from gpe_jax.experiments import common, encoders, table1

TIGHT_FACTOR = 1.1
RATIO_QUANTILES = ("ratio_q05", "ratio_q50", "ratio_q95")
BILIP = "weak_bilip_frac_a1.5"
LATENT_POINTS = 1000   # held-out points in the latent pictures


def beta_name(beta: float) -> str:
  return f"{float(beta):g}".replace(".", "p")


def betas_of(config) -> tuple:
  betas = tuple(float(b) for b in config.experiments.vae_betas)
  if not betas or any(not math.isfinite(b) or b <= 0 for b in betas):
    raise ConfigError(f"config.experiments.vae_betas={tuple(config.experiments.vae_betas)!r}: "
                      "give one or more positive KL weights, e.g. "
                      "--config.experiments.vae_betas='(0.1, 1.0, 10.0)'.")
  if len(set(beta_name(b) for b in betas)) != len(betas):
    raise ConfigError(f"config.experiments.vae_betas={betas!r} repeats a value.")
  return betas


def thresholds_from_gpe(gpe_final: float, mean_image_mse: float) -> dict:
  """{'loose', 'tight'}: tight = 1.1 x the GPE decoder's final held-out MSE, loose = the
  geometric mean of the mean-image MSE and tight."""
  tight = TIGHT_FACTOR * float(gpe_final)
  loose = math.sqrt(max(float(mean_image_mse), tight) * tight)
  return {"loose": loose, "tight": tight}


def run(config, workdir: str) -> common.Report:
  betas = betas_of(config)
  ctx = encoders.load_context(config)
  enc, stops = encoders.frozen_gpe_encoders(config, workdir, ctx, (1.0,))
  stop = stops[-1]
  rows = [{"name": f"GPE (step {stop['step']})", "method": "gpe", "beta": None,
           "variant": stop["variant"], "ckpt": stop["ckpt_dir"], "gme": stop["gme"],
           "encoder": enc["summary"], "own_mse": None}]
  workers = int(config.experiments.get("workers", 1))
  names = {beta: f"vae_beta{beta_name(beta)}" for beta in betas}
  vaes = common.run_variants(config, workdir, {names[b]: {"stages": ("vae",), "vae.beta": b}
                                               for b in betas}, workers)
  for beta in betas:
    name = names[beta]
    summary = vaes[name]["vae"]
    ckpt = os.path.join(workdir, name, "vae", "checkpoints")
    rows.append({"name": f"VAE, beta {beta:g}", "method": "vae", "beta": beta,
                 "variant": f"decoder_{name}", "ckpt": ckpt, "gme": encoders.val_gme(ctx, ckpt),
                 "encoder": summary, "own_mse": common.finite_or_none(
                     summary.get("val_recon_mse"))})

  encoders.train_decoders(config, workdir, rows, workers)

  mean_image = float(rows[0]["summary"].get("val_mean_image_mse", float("nan")))
  thresholds = thresholds_from_gpe(rows[0]["final"], mean_image)
  encoders.mark_thresholds(rows, thresholds)

  dataset = ctx.data.name
  table1._plot(rows, thresholds, mean_image, os.path.join(workdir, "table1_beta.png"),
               f"{dataset}: decoder on a frozen encoder, VAE beta sweep")
  _plot_geometry(rows, os.path.join(workdir, "geometry_vs_beta.png"), dataset)
  _plot_latents(ctx, rows, os.path.join(workdir, "latents.png"))

  def reach(v):
    return "not reached" if v is None else v

  def enc_value(row, key):
    return common.finite_or_none(row["encoder"].get(key))
  table = common.markdown_table(
      ["encoder (frozen)", "VAE's own held-out MSE", "held-out GME (val_gme)",
       "weak 1.5-bi-Lipschitz fraction", "distance ratio q05 / q50 / q95",
       f"decoder iterations to MSE <= {thresholds['loose']:.4g}",
       f"decoder iterations to MSE <= {thresholds['tight']:.4g}", "decoder final MSE"],
      [[r["name"], "-" if r["own_mse"] is None else r["own_mse"], r["gme"],
        enc_value(r, BILIP),
        " / ".join(common.num(enc_value(r, q)) for q in RATIO_QUANTILES),
        reach(r["reach"]["loose"]), reach(r["reach"]["tight"]), r["final"]] for r in rows])
  paper = common.markdown_table(
      ["Paper, MNIST (for reference only; not this run)"] +
      [f"iterations to MSE <= {t}" for t in table1.PAPER_MNIST["thresholds"]],
      [[name] + vals for name, vals in table1.PAPER_MNIST["rows"].items()])

  gpe, vaes = rows[0], rows[1:]
  gpe_tight = gpe["reach"]["tight"]
  slower = [r for r in vaes if r["reach"]["tight"] is None or
            (gpe_tight is not None and r["reach"]["tight"] > gpe_tight)]
  numbers = {
      "dataset": dataset, "betas": list(betas), "thresholds": thresholds,
      "threshold_rule": (f"tight = {TIGHT_FACTOR} x the GPE decoder's final held-out MSE; "
                         "loose = sqrt(mean-image MSE x tight)"),
      "mean_image_mse": mean_image,
      "decoder_num_steps": int(config.decoder.num_steps),
      "decoder_eval_every": encoders.every(config.decoder.num_steps, encoders.DECODER_EVALS),
      "vae_num_steps": int(config.vae.num_steps), "vae_lr": float(config.vae.lr),
      "encoder_curve": encoders.encoder_curve_numbers(config, enc),
      "encoders": {r["variant"]: {
          "name": r["name"], "method": r["method"], "beta": r["beta"], "gme": r["gme"],
          "vae_own_val_recon_mse": r["own_mse"],
          "weak_bilip_frac_a1.5": enc_value(r, BILIP),
          **{q: enc_value(r, q) for q in RATIO_QUANTILES},
          "gme_all_pairs": enc_value(r, "gme_all_pairs"),
          "decoder_final_val_recon_mse": r["final"],
          "decoder_steps_to_threshold": r["reach"], "decoder_seconds": common.finite_or_none(r["summary"].get("seconds")),
          "val_curve": {"steps": r["curves"]["val_steps"].tolist(),
                        "val_recon_mse": r["curves"]["val"].tolist()},
      } for r in rows},
      "vae_slower_than_gpe_to_tight": [r["beta"] for r in slower],
      "paper_mnist": table1.PAPER_MNIST,
  }
  order_note = (
      f"The paper's ordering (the VAE's decoder slower to the tight threshold than GPE's) holds "
      f"for beta in {{{', '.join(format(r['beta'], 'g') for r in slower)}}}"
      if slower else "No beta gives the paper's ordering (every VAE decoder reaches the tight "
                     "threshold no later than GPE's)")
  summary = (
      f"Decoder-only training on {dataset}, one decoder per frozen encoder (same decoder "
      f"config, {int(config.decoder.num_steps)} steps): the GPE encoder (held-out GME "
      f"{gpe['gme']:.4g}; its decoder reaches the tight threshold {thresholds['tight']:.4g} at "
      f"step {reach(gpe_tight)}) and the VAE's encoder at beta "
      f"{', '.join(format(b, 'g') for b in betas)} (held-out GME "
      f"{', '.join(format(r['gme'], '.3g') for r in vaes)}; decoder steps to the tight "
      f"threshold {', '.join(str(reach(r['reach']['tight'])) for r in vaes)}). {order_note}.")
  notes = [
      "Thresholds: tight = 1.1 x the final held-out MSE of the decoder on the GPE encoder "
      f"({thresholds['tight']:.4g}); loose = the geometric mean of the mean-image MSE "
      f"({mean_image:.4g}) and the tight threshold ({thresholds['loose']:.4g}). Iterations are "
      "the first held-out evaluation at or below a threshold (resolution "
      f"{numbers['decoder_eval_every']} steps).",
      "Every VAE trains with `config.vae` (architecture, optimiser, "
      f"{int(config.vae.num_steps)} steps, lr {float(config.vae.lr):g}) and only beta changed; "
      "beta weighs the KL against the summed squared error (`stages/baselines.py`). The VAE's "
      "own held-out MSE is that of its jointly trained decoder on the mean code.",
      "Geometry columns are the VAE stage's own measurements on held-out points (raw means, "
      "no normalisation): GME over all pairs in `numbers.json`, the weak 1.5-bi-Lipschitz "
      "fraction (pairs with |log(1+|x-y|^2) - log(1+|Tx-Ty|^2)| <= log 1.5) and quantiles of "
      "|Tx - Ty| / |x - y|; the held-out GME column is `val_gme` (mean over minibatches of the "
      "training batch size), re-measured on the restored frozen encoder.",
  ]
  return common.Report(
      title=f"Table 1 against the VAE's KL weight ({dataset})",
      summary=summary, tables=[table, paper],
      figures={"table1_beta.png": "Held-out MSE of each decoder on a frozen encoder (legend: "
                                  "the encoder and its held-out GME); dashed: the thresholds.",
               "geometry_vs_beta.png": "The VAE encoders against beta: held-out GME, weak "
                                       "1.5-bi-Lipschitz fraction and decoder iterations to "
                                       "the tight threshold (GPE: horizontal lines).",
               "latents.png": "Held-out embeddings of each encoder, first two principal "
                              "components, coloured by class where the data has labels."},
      numbers=numbers, notes=notes)


def _plot_geometry(rows, path, dataset):
  gpe, vaes = rows[0], rows[1:]
  betas = [r["beta"] for r in vaes]
  fig, axes = plots.plt.subplots(1, 3, figsize=(13, 3.8))
  panels = [("held-out GME (val_gme)", lambda r: r["gme"], True),
            ("weak 1.5-bi-Lipschitz fraction", lambda r: r["encoder"].get(BILIP), False),
            ("decoder iterations to the tight threshold",
             lambda r: r["reach"]["tight"], True)]
  for ax, (label, get, log) in zip(axes, panels):
    vals = [common.finite_or_none(get(r)) for r in vaes]
    ax.plot(betas, [np.nan if v is None else v for v in vals], "-o", label="VAE")
    g = common.finite_or_none(get(gpe))
    if g is not None:
      ax.axhline(g, color="C1", ls="--", label="GPE")
    missing = [b for b, v in zip(betas, vals) if v is None]
    if missing:
      ax.set_title(f"not reached at beta {', '.join(format(b, 'g') for b in missing)}",
                   fontsize=8)
    ax.set_xscale("log")
    if log:
      ax.set_yscale("log")
    ax.set_xlabel("VAE beta (KL weight)")
    ax.set_ylabel(label)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(f"{dataset}: what the KL weight does to the encoder and its decoder", fontsize=10)
  fig.tight_layout()
  return plots._save(fig, path)  # pylint: disable=protected-access


def _plot_latents(ctx, rows, path):
  from gpe_jax.stages import common as stage_common
  data = ctx.data
  n = min(LATENT_POINTS, data.x_test.shape[0])
  x = data.x_test[:n]
  labels = None if data.y_test is None else np.asarray(data.y_test[:n])
  cols = min(4, len(rows))
  nrows = -(-len(rows) // cols)
  fig, axes = plots.plt.subplots(nrows, cols, figsize=(3.2 * cols, 3.0 * nrows), squeeze=False)
  for ax, row in zip(axes.flat, rows):
    z = np.asarray(stage_common.batched_apply(encoders.frozen_embed(ctx, row["ckpt"]), x,
                                              ctx.config.data.batch_size), np.float64)
    z = z - z.mean(axis=0)
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    p = z @ vt[:2].T if vt.shape[0] >= 2 else np.concatenate([z, np.zeros_like(z)], axis=1)
    ax.scatter(p[:, 0], p[:, 1], s=3, c=labels if labels is not None else "C0",
               cmap="tab10" if labels is not None else None)
    ax.set_title(f"{row['name']}, GME {row['gme']:.3g}", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
  for ax in list(axes.flat)[len(rows):]:
    ax.axis("off")
  fig.tight_layout()
  return plots._save(fig, path)  # pylint: disable=protected-access


if __name__ == "__main__":
  common.main(run, "gpe_jax.experiments.table1_beta")
