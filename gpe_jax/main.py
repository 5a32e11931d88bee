r"""Command line: ``python -m gpe_jax.main --config=configs/default.py --workdir=runs/default``.

Any config field can be overridden, e.g. ``--config.encoder.lr=3e-4`` or
``--config.stages="('encoder',)"``; ``--config=configs/mnist.py:smoke`` selects a config's
seconds-long CPU variant, and ``--config_help`` lists every field with its value and meaning.
Rerunning a command with the same workdir resumes it (Ctrl-C or SIGTERM stop it resumably).
Without ``--workdir`` the run goes to ``runs/<data.name>``. For multi-host runs pass
``--coordinator_address`` (``auto`` on TPU pods / SLURM). The flags and the one-paragraph
error messages are those of ``gpe_jax.cli``.

At the end it prints one line per finished stage, in pipeline order, each followed by what
its numbers mean (``METRICS``, the first time a number appears), and where the plots and
records are.
"""
from __future__ import annotations

import glob
import os

from gpe_jax import cli, logs

# What each headline number means (the stage specs' ``headline`` keys); one line each. A key
# not here is printed without a meaning.
METRICS = {
    "steps": "training steps done",
    "seconds": "wall-clock seconds the stage took (over all its resumed runs)",
    "val_gme": "mean GME over held-out minibatches (lower = geometry better kept)",
    "weak_bilip_frac_a1.5": "fraction of held-out pairs whose latent distance is within a "
                            "factor 1.5 of their data distance (higher = better)",
    "val_recon_mse": "held-out reconstruction error, mean squared error per pixel (lower = "
                     "better)",
    "val_mean_image_mse": "MSE of predicting the mean image, for scale (val_recon_mse "
                          "should be well below it)",
    "gme_all_pairs": "GME over all pairs of eval.geometry_points held-out points (lower = "
                     "geometry better kept)",
    "val_fm_loss": "held-out flow-matching loss of the prior (lower = better)",
    "nfe_per_sample": "velocity-network evaluations per generated sample",
    "modes_covered": "mixture modes holding at least gans.mode_min_fraction of the samples "
                     "within 3 sigma (higher = better)",
    "high_quality": "fraction of samples within 3 sigma of a mode (higher = better)",
    "cm_identity_optimal": "fraction of point sets on which G is c-cyclically monotone "
                           "(higher = better)",
    "fd_classifier_prior": "Frechet distance to held-out data, classifier features: "
                           "generated samples (lower = better)",
    "fd_classifier_noprior": "the same for the decoder on N(0, I), without the prior",
    "fd_classifier_recon": "the same for reconstructions of training data",
    "fd_classifier_floor": "the same for real training data: the floor any model can reach",
    "fd_pixels_prior": "Frechet distance in pixel space: generated samples (lower = better)",
    "fd_pixels_noprior": "the same for the decoder on N(0, I), without the prior",
    "fd_thumbnail_prior": "Frechet distance of 16x16 thumbnails: generated samples (lower = "
                          "better)",
    "fd_thumbnail_noprior": "the same for the decoder on N(0, I), without the prior",
    "fd_inception_prior": "FID (Inception-v3 features): generated samples (lower = better)",
    "fd_inception_noprior": "the same for the decoder on N(0, I), without the prior",
}


def _headline_keys(stage: str, values: dict) -> list[str]:
  """The stage spec's ``headline`` keys that its summary has."""
  from gpe_jax.stages import registry
  names = registry.get(stage).headline if stage in registry.names() else ()
  return [k for k in names if k in values]


def headline(stage: str, values: dict) -> str:
  """One line per stage: ``stage: steps=4, seconds=1.23, val_gme=...`` (the stage spec's
  ``headline`` keys that its summary has)."""
  return f"{stage}: " + ", ".join(f"{k}={values[k]:.4g}" if isinstance(values[k], float)
                                  else f"{k}={values[k]}"
                                  for k in _headline_keys(stage, values))


def summary_lines(summary: dict, workdir: str) -> list[str]:
  """The end-of-run report: each stage's headline in pipeline order, each number's meaning
  indented under the first line that shows it, then the plots and records of ``workdir``."""
  from gpe_jax.stages import registry
  order = list(registry.names())
  lines, explained = [], set()
  for stage in sorted(summary, key=lambda s: order.index(s) if s in order else len(order)):
    lines.append(headline(stage, summary[stage]))
    for key in _headline_keys(stage, summary[stage]):
      if key in METRICS and key not in explained:
        lines.append(f"    {key}: {METRICS[key]}")
        explained.add(key)
  lines.append(f"outputs in {workdir}:")
  found = plot_files(workdir)
  lines.append("  plots: " + (", ".join(found) if found else "none"))
  records = [f for f in ("summary.json", "metrics.jsonl", "config.json", "evaluate/metrics.json")
             if os.path.exists(os.path.join(workdir, f))]
  lines.append("  records: " + ", ".join(records) + " (summary.json holds every number above "
               "and more; metrics.jsonl one row per logged step)")
  return lines


def plot_files(workdir: str) -> list[str]:
  """The PNG files of ``workdir`` (relative paths, its own before its stages'; the stages
  moved aside to stale/ left out)."""
  found = glob.glob(os.path.join(workdir, "**", "*.png"), recursive=True)
  rel = sorted((os.path.relpath(p, workdir) for p in found),
               key=lambda p: (p.count(os.sep), p))   # the workdir's own first
  return [p for p in rel if not p.startswith("stale" + os.sep)]


def default_workdir(config) -> str:
  return f"runs/{config.data.name}"


def run(config, workdir: str) -> None:
  """Run the pipeline in ``workdir`` (it holds the workdir's lock) and print the summary."""
  from gpe_jax import pipeline
  summary = pipeline.run(config, workdir)
  if not logs.is_main_process():   # one summary per run, from process 0
    return
  print("\n".join(summary_lines(summary, os.path.abspath(workdir))))


def main() -> None:
  cli.run(run, "gpe_jax.main", require_workdir=False, default_workdir=default_workdir)


if __name__ == "__main__":
  main()
