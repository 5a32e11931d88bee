"""Paper Fig. 9: generation quality against prior iterations, on GPE latents vs VAE latents.

Two variants of the configured run train the same flow-matching prior (same config, same number
of steps) on different latent spaces: the GPE encoder's (stages encoder, decoder, prior) and the
VAE's (stages vae, prior). During prior training the classifier Fréchet distance of
``prior.eval_samples`` generated, decoded samples to the held-out images is evaluated about
eight times (``prior.evals=("fm_loss", "fd_classifier")``); the curves are the
``fd_classifier`` rows of stage ``prior`` in each variant's ``metrics.jsonl``.

    python -m gpe_jax.experiments.fig9 --config=configs/default.py --workdir=runs/fig9
    python -m gpe_jax.experiments.fig9 --config=configs/default.py:smoke --workdir=/tmp/fig9

The features are the penultimate activations of ``gpe_jax.evals.classifier`` (a small
classifier trained once per dataset on its own labels and cached), so both methods are measured
in the same feature space.
"""
from __future__ import annotations

import os

import numpy as np

from gpe_jax import plots
from gpe_jax.experiments import common

METHODS = ("gpe", "vae")
LABELS = {"gpe": "prior on GPE latents", "vae": "prior on VAE latents"}
EVALS = 8   # scheduled Fréchet evaluations over the prior's training (about)


def prior_eval_every(num_steps: int) -> int:
  return max(1, int(round(int(num_steps) / EVALS)))


def classifier_info(config) -> tuple[dict, int, dict]:
  """(the feature classifier's info, number of held-out reference images of each FD, the data
  floor: FD of ``prior.eval_samples`` training images to the same reference, i.e. what real
  data scores at these sample counts)."""
  from gpe_jax.data import load_dataset
  from gpe_jax.evals import features, frechet
  data = load_dataset(config.data)
  ext = features.get_extractor("classifier", data, config.evaluate)   # cached: loads
  num = int(config.prior.eval_samples)
  num_ref = min(num, int(config.evaluate.num_reference), int(data.x_test.shape[0]))
  ref = frechet.gaussian_stats_np(ext.fn(data.x_test[:num_ref]))
  train = frechet.gaussian_stats_np(ext.fn(data.x_train[:num]))
  floor = {"fd_classifier": float(frechet.frechet_distance_np(*ref, *train)),
           "num_train_images": int(min(num, data.x_train.shape[0]))}
  info = {k: ext.info.get(k) for k in ("test_accuracy", "cache_path", "train_steps")}
  return info, num_ref, floor


def run(config, workdir: str) -> common.Report:
  eval_every = prior_eval_every(config.prior.num_steps)
  shared = {"prior.evals": ("fm_loss", "fd_classifier"), "prior.eval_every": eval_every}
  summaries = {
      "gpe": common.run_variant(config, workdir, "gpe", stages=("encoder", "decoder", "prior"),
                                method="gpe", **{"decoder.encoder_method": "gpe",
                                                  "decoder.encoder_checkpoint": ""}, **shared),
      "vae": common.run_variant(config, workdir, "vae", stages=("vae", "prior"), method="vae",
                                **shared),
  }
  curves, finals = {}, {}
  for m in METHODS:
    run_dir = os.path.join(workdir, m)
    steps, fd = common.curve(run_dir, "prior", "fd_classifier")
    fm_steps, fm = common.curve(run_dir, "prior", "val_fm_loss")
    curves[m] = {"steps": steps.tolist(), "fd_classifier": fd.tolist(),
                 "val_fm_loss": fm.tolist(), "fm_steps": fm_steps.tolist()}
    s = summaries[m]["prior"]
    finals[m] = {"fd_classifier": float(fd[-1]), "step": int(steps[-1]),
                 "best_fd_classifier": float(fd.min()),
                 "best_step": int(steps[int(np.argmin(fd))]),
                 "val_fm_loss": float(s["val_fm_loss"]), "prior_seconds": float(s["seconds"]),
                 "prior_steps": int(s["steps"])}
  info, num_ref, floor = classifier_info(config)

  _plot(curves, floor, os.path.join(workdir, "fig9.png"), config)

  all_steps = sorted(set(curves["gpe"]["steps"]) | set(curves["vae"]["steps"]))
  lookup = {m: dict(zip(curves[m]["steps"], curves[m]["fd_classifier"])) for m in METHODS}
  rows = [[st] + [lookup[m].get(st) for m in METHODS] for st in all_steps]
  rows.append(["final"] + [finals[m]["fd_classifier"] for m in METHODS])
  rows.append(["best (step)"] + [f"{finals[m]['best_fd_classifier']:.4g} "
                                 f"({finals[m]['best_step']})" for m in METHODS])
  rows.append([f"data floor ({floor['num_train_images']} training images)",
               floor["fd_classifier"], floor["fd_classifier"]])
  table = common.markdown_table(["prior iteration", "FD (GPE latents)", "FD (VAE latents)"],
                                rows)
  side = common.markdown_table(
      ["latents", "upstream stages", "upstream steps", "prior steps", "prior s",
       "final held-out FM loss"],
      [["GPE", "encoder + decoder",
        f"{summaries['gpe']['encoder']['steps']} + {summaries['gpe']['decoder']['steps']}",
        finals["gpe"]["prior_steps"], finals["gpe"]["prior_seconds"],
        finals["gpe"]["val_fm_loss"]],
       ["VAE", "vae", str(summaries["vae"]["vae"]["steps"]), finals["vae"]["prior_steps"],
        finals["vae"]["prior_seconds"], finals["vae"]["val_fm_loss"]]])

  g, v = finals["gpe"]["fd_classifier"], finals["vae"]["fd_classifier"]
  better = "GPE" if g < v else "VAE"
  summary_text = (
      f"The same flow-matching prior ({config.prior.num_steps} steps, lr {config.prior.lr}, "
      f"{config.prior.net} velocity net) trained on the GPE encoder's latents and on the VAE's "
      f"latents of `{config.data.name}`; classifier Fréchet distance of "
      f"{int(config.prior.eval_samples)} generated samples to {num_ref} held-out examples, "
      f"evaluated every {eval_every} prior iterations. Final FD: GPE {g:.4g}, VAE {v:.4g} "
      f"({better} lower, ratio {max(g, v) / max(min(g, v), 1e-30):.2f}x); real training "
      f"examples score {floor['fd_classifier']:.4g} at these sample counts.")
  acc = info.get("test_accuracy")
  notes = [
      "Features: the penultimate activations of `gpe_jax.evals.classifier`, a small classifier "
      "trained once per dataset on its own labels and cached (held-out accuracy "
      f"{'n/a' if acc is None else f'{acc:.4f}'}; cache `{info.get('cache_path')}`). Each FD "
      f"compares `prior.eval_samples` = {int(config.prior.eval_samples)} samples (drawn with "
      f"the prior's EMA weights, {config.prior.eval_method} with {config.prior.eval_ode_steps} "
      f"steps, decoded by each method's own decoder) with the first {num_ref} held-out "
      "images (at most `evaluate.num_reference` and the held-out split); with few samples the "
      "FD is biased upwards, so compare the two curves with each other, not with FDs from "
      "other sample counts. The 'data floor' row is the FD of that many *training* images "
      "(no model) to the same reference: roughly what a perfect generator would score here.",
      "Same budget: both priors use the same config section (`config.prior`) and step count; "
      "the latent spaces come from the configured encoder/decoder and VAE stages, which "
      "differ in their own step counts (table above). The held-out FM losses are in each "
      "method's own normalised latent space and are not comparable across methods.",
      "The paper's Fig. 9 makes this comparison (generation quality vs prior iterations, "
      "GPE latents vs VAE latents); the project's notes on the paper record no numbers for it, "
      "so none are quoted.",
  ]
  numbers = {
      "dataset": config.data.name,
      "prior_eval_every": eval_every,
      "eval_samples": int(config.prior.eval_samples),
      "num_reference": num_ref,
      "reference": f"the first {num_ref} images of the held-out split",
      "feature_extractor": "gpe_jax.evals.classifier (penultimate activations)",
      "classifier": info,
      "curves": curves,
      "finals": finals,
      "data_floor": floor,
  }
  return common.Report(
      title=f"Fig. 9 — generation quality vs prior iterations, GPE vs VAE latents "
            f"({config.data.name})",
      summary=summary_text, tables=[table, side],
      figures={"fig9.png": "Classifier Fréchet distance of generated samples to held-out "
                           "images against flow-matching prior iterations, prior on GPE "
                           "latents vs on VAE latents (same prior config and steps)."},
      numbers=numbers, notes=notes)


def _plot(curves: dict, floor: dict, path: str, config) -> str:
  plt = plots.plt
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  values = []
  for i, m in enumerate(METHODS):
    c = curves[m]
    ax.plot(c["steps"], c["fd_classifier"], "-o", ms=4, color=f"C{i}", label=LABELS[m])
    values += c["fd_classifier"]
  ax.axhline(floor["fd_classifier"], color="k", ls="--", lw=0.8,
             label=f"data floor ({floor['num_train_images']} training images)")
  values.append(floor["fd_classifier"])
  pos = [x for x in values if x > 0]
  if pos and max(pos) / min(pos) > 5 and len(pos) == len(values):
    ax.set_yscale("log")
  ax.set_xlabel("prior (flow-matching) iterations")
  ax.set_ylabel(f"classifier FD ({int(config.prior.eval_samples)} samples)")
  ax.set_title(f"{config.data.name}: generation quality vs prior iterations")
  ax.grid(alpha=0.3, which="both")
  ax.legend()
  return plots._save(fig, path)  # pylint: disable=protected-access


if __name__ == "__main__":
  common.main(run, "gpe_jax.experiments.fig9")
