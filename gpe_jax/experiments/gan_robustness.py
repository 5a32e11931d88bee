r"""The GMEGAN paper's Figs. 6-7: how much each GAN method's sample quality and mode coverage
depend on the network architecture.

Every GAN method (``gans.NAMES``: GMEGAN and the baselines GAN, WGAN, WGAN-GP, WGAN-div,
VAEGAN, VEEGAN) is trained with each of several architecture variants of the configured
networks (generator G, encoder T where the method has one, critic psi), each (variant, method)
one full pipeline run ``(METHOD, 'sample', 'evaluate')`` in its own subdirectory
``VARIANT/METHOD``, ``config.experiments.workers`` at a time. The variants (``VARIANTS``; the
paper used 11 architectures varying batch normalisation, fully connected layers, the number of
convolutional layers and their widths):

  conv_bn     the configured conv families, BatchNorm in G and T (critics never have any)
  conv_nobn   the same without BatchNorm
  conv_deep   one extra 3x3 conv per level in T and in psi (``model.extra_convs``,
              ``gans.critic_extra_convs``; G's levels already have two convs)
  conv_wide   every conv level twice as wide (G, T and psi)
  conv_fc     the critic with a fully connected hidden layer after its convs (2x the width of
              its last conv level), instead of none
  mlp         fully connected networks only (``model.kind='mlp'``: G, T at
              ``model.dec_hidden`` / ``enc_hidden``; psi at ``model.enc_hidden``)
  mlp_deep    the same with one more hidden layer in G, T and psi
  mlp_wide    the same twice as wide
  mlp_ln      the same with LayerNorm after every hidden layer (the per-example
              normalisation; BatchNorm is what the conv variants vary)

Measured per run by the evaluate stage, against the held-out split: the Fréchet distance in the
feature space of a classifier trained on the data (``fd_classifier_prior``; the paper uses FID,
i.e. Inception features, which do not suit 8x8 digits) and the relative standard deviation of
the classifier's class counts over the samples (``class_rel_std_prior``; the paper's
mode-collapse measure, 0 = balanced). Per method: mean, std (ddof 1), min and max over the
variants; the paper's claim is that GMEGAN has the lowest mean and the lowest variance of
both. The real-data floor (``fd_classifier_floor``, ``class_rel_std_floor``: real training
images against the held-out split) is what a perfect generator would score. A run whose loss
becomes NaN/Inf is reported as diverged and left out of the statistics (counted beside them).

Outputs: ``robustness.png`` (box plots over the variants, one box per method, two panels),
``samples_<variant>.png`` (the first 32 samples of each method for the first variant),
``report.md``, ``numbers.json``.

    python -m gpe_jax.experiments.gan_robustness --config=configs/gmegan_digits.py \
        --workdir=runs/gan_robustness --config.experiments.workers=2
    python -m gpe_jax.experiments.gan_robustness --config=configs/gmegan_digits.py:smoke \
        --workdir=/tmp/gan_robustness   # GMEGAN and GAN on conv_bn and mlp (the smoke's narrowing)

Hardware and cost: a 2-core CPU (``--config.experiments.workers=2``: two runs side by side,
each single-threaded). Measured on one shared with other jobs (load 7-9): the ``conv_bn`` runs
of GMEGAN and WGAN-GP at full size (2,000 iterations, batch 64), side by side, finished
(train, sample, evaluate) in 4 min 46 s wall, their training stages' clocks 152 s and 181 s,
about 2 min of CPU per run; each report's last note has the measured per-method seconds.
Estimated for the full grid (7 methods x 9 variants = 63 runs; ``conv_wide`` costs about 2.5x
and each ``mlp*`` variant about 0.2-0.4x a ``conv_bn`` run, from per-step timings): about 50 min
on an idle 2-core CPU, 1.5-2 h on a shared one; ``--config=configs/gmegan_digits.py:1000``
(1,000 iterations) halves it. On XLA:CPU the conv families are what costs. On a GPU: minutes.
"""
from __future__ import annotations

import os

import numpy as np
from matplotlib import pyplot as plt

from gpe_jax import plots
from gpe_jax.errors import ConfigError
from gpe_jax.experiments import common
from gpe_jax.stages import gans

METRICS = ("fd_classifier_prior", "class_rel_std_prior")
FLOORS = {"fd_classifier_prior": "fd_classifier_floor",
          "class_rel_std_prior": "class_rel_std_floor"}
LABELS = {"fd_classifier_prior": "classifier Fréchet distance",
          "class_rel_std_prior": "class relative std"}
EXTRA = ("fd_pixels_prior", "precision_classifier_prior", "recall_classifier_prior",
         "fd_classifier_recon")
GRID_SAMPLES = 32


def variants(config) -> dict:
  """{name: overrides} of every architecture variant of ``config`` (module docstring)."""
  m, g = config.model, config.gans
  wide = lambda t: tuple(2 * int(f) for f in t)  # noqa: E731
  deep = lambda t: tuple(t) + (int(tuple(t)[-1]),)  # noqa: E731  (one more layer)
  return {
      "conv_bn": {"model.kind": "conv", "model.batch_norm": True},
      "conv_nobn": {"model.kind": "conv", "model.batch_norm": False},
      "conv_deep": {"model.kind": "conv", "model.extra_convs": int(m.extra_convs) + 1,
                    "gans.critic_extra_convs": int(g.critic_extra_convs) + 1},
      "conv_wide": {"model.kind": "conv", "model.enc_features": wide(m.enc_features),
                    "model.dec_features": wide(m.dec_features),
                    "gans.critic_features": wide(g.critic_features)},
      "conv_fc": {"model.kind": "conv",
                  "gans.critic_hidden": (2 * int(tuple(g.critic_features)[-1]),)},
      "mlp": {"model.kind": "mlp", "gans.critic_hidden": tuple(m.enc_hidden)},
      "mlp_deep": {"model.kind": "mlp", "model.enc_hidden": deep(m.enc_hidden),
                   "model.dec_hidden": deep(m.dec_hidden),
                   "gans.critic_hidden": deep(m.enc_hidden)},
      "mlp_wide": {"model.kind": "mlp", "model.enc_hidden": wide(m.enc_hidden),
                   "model.dec_hidden": wide(m.dec_hidden),
                   "gans.critic_hidden": wide(m.enc_hidden)},
      "mlp_ln": {"model.kind": "mlp", "model.layer_norm": True,
                 "gans.critic_layer_norm": True, "gans.critic_hidden": tuple(m.enc_hidden)},
  }


def selection(config) -> tuple[tuple, dict]:
  """(methods, {variant: overrides}) chosen by ``config.experiments.methods`` / ``variants``
  (() = all)."""
  exp = config.experiments
  methods = tuple(exp.get("methods", ())) or gans.NAMES
  every = variants(config)
  names = tuple(exp.get("variants", ())) or tuple(every)
  bad_m = [m for m in methods if m not in gans.NAMES]
  bad_v = [v for v in names if v not in every]
  if bad_m or bad_v:
    raise ConfigError(
        f"config.experiments: unknown {'methods ' + str(bad_m) if bad_m else ''}"
        f"{' and ' if bad_m and bad_v else ''}{'variants ' + str(bad_v) if bad_v else ''}. "
        f"Methods: {gans.NAMES}; variants: {tuple(every)}; e.g. "
        "--config.experiments.methods=\"('gmegan','gan')\" "
        "--config.experiments.variants=\"('conv_bn','mlp')\" (() = all).")
  return methods, {v: every[v] for v in names}


def run_name(variant: str, method: str) -> str:
  return f"{variant}/{method}"


def run(config, workdir: str) -> common.Report:
  methods, chosen = selection(config)
  jobs = {run_name(v, m): dict(ov, method=m, stages=(m, "sample", "evaluate"))
          for v, ov in chosen.items() for m in methods}
  summaries, failed = common.run_variants_tolerant(
      config, workdir, jobs, int(config.experiments.get("workers", 1)))
  results = measure(summaries, failed, methods, tuple(chosen))
  grid_variant = next(iter(chosen))
  grid = sample_grid(workdir, grid_variant, methods, failed)
  box_plots(workdir, results, methods)
  return report(config, results, methods, chosen, grid_variant if grid else None)


def measure(summaries: dict, failed: dict, methods, names) -> dict:
  """Per (method, variant) the metrics of the run's summary; per method their spread over
  the variants; the real-data floor."""
  runs, floors = {}, {k: [] for k in FLOORS.values()}
  for m in methods:
    runs[m] = {}
    for v in names:
      key = run_name(v, m)
      if key in failed:
        runs[m][v] = {"diverged": True, "error": failed[key].splitlines()[0][:400]}
        continue
      s = summaries[key]
      ev, st = s.get("evaluate", {}), s.get(m, {})
      row = {k: common.finite_or_none(ev.get(k)) for k in METRICS + EXTRA if k in ev}
      row.update(diverged=False, steps=st.get("steps"),
                 seconds=common.finite_or_none(st.get("seconds")))
      for k in ("gme_all_pairs", "cm_identity_optimal"):
        if k in st:
          row[k] = common.finite_or_none(st[k])
      runs[m][v] = row
      for f in FLOORS.values():
        if common.finite_or_none(ev.get(f)) is not None:
          floors[f].append(common.finite_or_none(ev[f]))
  stats = {k: {m: dict(common.spread(runs[m][v].get(k) for v in names),
                       diverged=sum(runs[m][v]["diverged"] for v in names))
               for m in methods} for k in METRICS}
  floor = {k: common.spread(vals) for k, vals in floors.items()}
  return {"runs": runs, "stats": stats, "floor": floor, "claims": claims(stats, methods)}


def claims(stats: dict, methods) -> dict:
  """Per metric: which method has the lowest mean and the lowest std over the variants, and
  whether that is GMEGAN (None when GMEGAN is not compared or no std is defined)."""
  out = {}
  for k in METRICS:
    st = stats[k]
    have = [m for m in methods if st[m]["mean"] is not None]
    lowest_mean = min(have, key=lambda m: st[m]["mean"]) if have else None
    with_std = [m for m in have if st[m]["n"] > 1]
    lowest_std = min(with_std, key=lambda m: st[m]["std"]) if with_std else None
    rank = sorted(have, key=lambda m: st[m]["mean"])
    out[k] = {
        "lowest_mean": lowest_mean, "lowest_std": lowest_std, "rank_by_mean": rank,
        "gmegan_lowest_mean": (lowest_mean == "gmegan") if "gmegan" in have else None,
        "gmegan_lowest_std": ((lowest_std == "gmegan") if "gmegan" in with_std else None),
        "gmegan_rank_mean": rank.index("gmegan") + 1 if "gmegan" in rank else None,
        "gmegan_rank_std": (sorted(with_std, key=lambda m: st[m]["std"]).index("gmegan") + 1
                            if "gmegan" in with_std else None)}
  return out


def sample_grid(workdir: str, variant: str, methods, failed: dict) -> str | None:
  """``samples_<variant>.png``: the first 32 samples of each method, two rows of 16 per
  method, in the order of ``methods``."""
  blocks, shown = [], []
  for m in methods:
    path = os.path.join(workdir, run_name(variant, m), "sample", "samples.npz")
    if run_name(variant, m) in failed or not os.path.exists(path):
      continue
    with np.load(path) as f:
      x = np.asarray(f["x"][:GRID_SAMPLES], np.float32)
    if x.shape[0] < GRID_SAMPLES:
      x = np.concatenate([x, np.ones((GRID_SAMPLES - x.shape[0],) + x.shape[1:], x.dtype)])
    blocks.append(x)
    shown.append(m)
  if not blocks:
    return None
  return plots.image_grid(np.concatenate(blocks), os.path.join(workdir,
                                                                f"samples_{variant}.png"),
                          nrow=GRID_SAMPLES // 2,
                          title=f"{variant}: two rows per method, top to bottom: "
                                + ", ".join(shown))


def box_plots(workdir: str, results: dict, methods) -> str:
  """``robustness.png``: per metric a box per method over the variants, the floor dashed."""
  fig, axes = plt.subplots(1, len(METRICS), figsize=(6 * len(METRICS), 4.5))
  for ax, k in zip(np.atleast_1d(axes), METRICS):
    data = [[r[k] for r in results["runs"][m].values() if r.get(k) is not None]
            for m in methods]
    pos = [i for i, d in enumerate(data) if d]
    if pos:
      ax.boxplot([data[i] for i in pos], positions=pos, widths=0.6, showmeans=True)
      for i in pos:   # the individual variants, jittered
        xs = i + np.linspace(-0.15, 0.15, len(data[i])) if len(data[i]) > 1 else [i]
        ax.plot(xs, data[i], ".", color="tab:blue", alpha=0.6)
    floor = results["floor"][FLOORS[k]]["mean"]
    if floor is not None:
      ax.axhline(floor, ls="--", color="grey", lw=1, label=f"real data (floor) {floor:.3g}")
      ax.legend(fontsize=8)
    for i, m in enumerate(methods):
      n_div = results["stats"][k][m]["diverged"]
      if n_div:
        ax.annotate(f"{n_div} diverged", (i, 0.98), xycoords=("data", "axes fraction"),
                    ha="center", va="top", fontsize=7, color="tab:red")
    ax.set_xticks(range(len(methods)))
    ax.set_xticklabels(methods, rotation=30, fontsize=8)
    ax.set_xlim(-0.6, len(methods) - 0.4)
    ax.set_title(f"{LABELS[k]} over architectures (lower is better)", fontsize=10)
    ax.set_ylabel(k)
  fig.tight_layout()
  path = os.path.join(workdir, "robustness.png")
  return plots._save(fig, path)  # pylint: disable=protected-access


_f, _yes = common.num, common.yes_no   # report formatting


def report_tables(results: dict, methods, names) -> list:
  tables = []
  for k in METRICS:
    st = results["stats"][k]
    header = ["method"] + list(names) + ["mean", "std", "min", "max", "diverged"]
    rows = []
    for m in methods:
      cells = [("diverged" if results["runs"][m][v]["diverged"] else results["runs"][m][v].get(k))
               for v in names]
      rows.append([m] + cells + [st[m]["mean"], st[m]["std"], st[m]["min"], st[m]["max"],
                                 st[m]["diverged"]])
    fl = results["floor"][FLOORS[k]]
    rows.append([f"real data ({FLOORS[k]})"] + [None] * len(names)
                + [fl["mean"], fl["std"], fl["min"], fl["max"], None])
    tables.append(f"**{k}** ({LABELS[k]}; lower is better)\n\n"
                  + common.markdown_table(header, rows))
  return tables


def report(config, results: dict, methods, chosen: dict,
           grid_variant: str | None) -> common.Report:
  """The report: the claim, whether the numbers support it, the tables and figures."""
  names = tuple(chosen)
  c = results["claims"]
  fd, cs = c["fd_classifier_prior"], c["class_rel_std_prior"]
  n_runs = len(methods) * len(names)
  n_div = sum(r["diverged"] for m in methods for r in results["runs"][m].values())
  steps = sorted({int(config[m].num_steps) for m in methods})
  summary = (
      f"{len(methods)} GAN methods x {len(names)} architecture variants = {n_runs} runs on "
      f"{config.data.name} ({'/'.join(map(str, steps))} iterations each, batch "
      f"{config.data.batch_size}, latent dimension {config.model.latent_dim}); {n_div} "
      f"diverged. The paper (Figs. 6-7, CIFAR-10 and Tiny ImageNet, 11 architectures) claims "
      f"that GMEGAN has the lowest mean and the lowest variance across architectures of both "
      f"the FID and the class relative std. Measured here: GMEGAN has the lowest mean "
      f"classifier FD: {_yes(fd['gmegan_lowest_mean'])} (lowest: {fd['lowest_mean']}); the "
      f"lowest std of the FD: {_yes(fd['gmegan_lowest_std'])} (lowest: {fd['lowest_std']}); "
      f"the lowest mean class relative std: {_yes(cs['gmegan_lowest_mean'])} (lowest: "
      f"{cs['lowest_mean']}); the lowest std of it: {_yes(cs['gmegan_lowest_std'])} (lowest: "
      f"{cs['lowest_std']}).")
  support = [fd["gmegan_lowest_mean"], fd["gmegan_lowest_std"], cs["gmegan_lowest_mean"],
             cs["gmegan_lowest_std"]]
  if all(s is None for s in support):
    verdict = "GMEGAN is not among the compared methods, so the claim is not tested."
  elif all(s for s in support):
    verdict = "The measured numbers support the paper's claim on all four counts."
  else:
    held = sum(bool(s) for s in support)
    verdict = (f"The measured numbers support {held} of the claim's four parts (lowest mean "
               f"and lowest std of each measure). GMEGAN's rank among {len(methods)} methods: "
               f"FD mean {fd['gmegan_rank_mean']}, FD std {fd['gmegan_rank_std']}, class "
               f"relative std mean {cs['gmegan_rank_mean']}, its std {cs['gmegan_rank_std']}.")
  summary += " " + verdict
  seconds = [r["seconds"] for m in methods for r in results["runs"][m].values()
             if r.get("seconds") is not None]
  per_method = {m: common.spread(r.get("seconds") for r in results["runs"][m].values())["mean"]
                for m in methods}
  notes = [
      "Variants (overrides of the configured networks): " + "; ".join(
          f"`{v}`: " + ", ".join(f"{k}={ov[k]!r}" for k in ov) for v, ov in chosen.items())
      + ". Std is over the variants (ddof 1); diverged runs (NaN/Inf loss) are left out of "
        "mean/std/min/max and counted in the last column.",
      "How this differs from the paper: the classifier Fréchet distance stands in for FID "
      "(Inception features need >= 75x75 images and the weights file), the data are the 8x8 "
      "digits by default (1,500 training images), each run is a few thousand iterations on a "
      "CPU instead of 300 epochs on a GPU, the score is the final one (not the best 5 of "
      f"epochs 250-300), and there are {len(names)} architecture variants, not 11. Every method "
      "uses its configured optimiser settings (configs/base.py and the data config), which "
      "were not tuned per architecture — as in the paper's comparison.",
      f"Cost: training seconds per run (the stage's own clock) mean "
      f"{_f(common.spread(seconds)['mean'])}, per method: "
      + ", ".join(f"{m} {_f(s)}" for m, s in per_method.items()) + ".",
  ]
  numbers = dict(results, methods=list(methods), variants={v: {k: list(x) if isinstance(
      x, tuple) else x for k, x in ov.items()} for v, ov in chosen.items()},
      grid_variant=grid_variant, num_steps=steps, dataset=config.data.name)
  figures = {"robustness.png": "Box plots over the architecture variants, one box per method "
                               "(triangle: mean; dots: the variants; dashed: the real-data "
                               "floor). Left: classifier Fréchet distance; right: class "
                               "relative std."}
  if grid_variant is not None:
    figures[f"samples_{grid_variant}.png"] = (
        f"The first {GRID_SAMPLES} samples G(z) of each method, variant {grid_variant} (two "
        "rows per method, in the order of the tables).")
  return common.Report(
      title=f"GAN robustness to the architecture (GMEGAN paper Figs. 6-7), {config.data.name}",
      summary=summary, tables=report_tables(results, methods, names), figures=figures,
      numbers=numbers, notes=notes)


if __name__ == "__main__":
  common.main(run, "gpe_jax.experiments.gan_robustness")
