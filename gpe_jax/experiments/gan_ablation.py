r"""The GMEGAN paper's Fig. 8 ablation: GMEGAN with each of its three regularisers removed.

Four variants of the configured GMEGAN run (``config.experiments.variants`` picks a subset; ()
= all), each over the seeds ``config.experiments.seeds``
(networks' initialisation, noise and data order; not the data), each (variant, seed) one
pipeline run ``('gmegan', 'sample', 'evaluate')`` in ``VARIANT/seed<S>``,
``config.experiments.workers`` at a time:

  gmegan   the configured weights (c_T GME, c_R latent reconstruction |z - T(G z)|^2, k the
           critic's gradient penalty (k/2) E|grad psi|^p, c_G data reconstruction)
  c_T0     c_T = 0: no GME term, so nothing makes the encoder geometry-preserving
  k0       k = 0: no gradient penalty on the critic
  c_R0     c_R = 0: no latent reconstruction (c_G's data reconstruction stays)

What is compared depends on the data, detected from the summaries:
  * the mixture (``configs/gmegan_mixture.py``, the default; the stage's ``modes`` evaluator):
    modes covered (final; and the minimum over the scheduled evaluations in metrics.jsonl, so
    a mode dropped mid-training counts), the high-quality fraction, KL of the mode histogram
    from uniform, the smallest and largest mode share; primary: the final modes covered, high
    quality and KL to uniform (sample quality at the end) and the minimum of modes covered over
    the scheduled evaluations (stability: the paper's claim that removing the GME term hurts
    stability most);
  * images with the classifier extractor: ``fd_classifier_prior`` and ``class_rel_std_prior``
    (primary), as in the paper's Fig. 8 (FID there);
  * for every data: c-cyclical monotonicity (``cm_identity_optimal``) and the encoder's
    geometry (``gme_all_pairs``, weak bi-Lipschitz fractions).
Judgement ("does the regulariser matter?"), per removed term and primary measure: the
difference of the means over seeds from full GMEGAN, oriented so that positive is worse, is
called worse (better) when it exceeds twice its standard error (Welch, from the seeds' std;
with one seed there is no spread: "not judged"), else "within seed noise". A run
whose loss became NaN/Inf counts as diverged (a worse outcome than any finished run). A term
"matters" when removing it is worse on at least one primary measure (or diverges more often)
and better on none; "mixed" when it is worse on some and better on others; "removing it helps"
when better on some and worse on none; else "no measurable effect".

Outputs: ``ablation.png`` (one panel per primary measure: the seeds as points, the mean and
std per variant), ``report.md``, ``numbers.json``.

    python -m gpe_jax.experiments.gan_ablation --config=configs/gmegan_mixture.py \
        --workdir=runs/gan_ablation --config.experiments.workers=2
    python -m gpe_jax.experiments.gan_ablation --config=configs/gmegan_digits.py \
        --workdir=runs/gan_ablation_digits --config.experiments.workers=2
    python -m gpe_jax.experiments.gan_ablation --config=configs/gmegan_mixture.py:smoke \
        --workdir=/tmp/gan_ablation --config.experiments.seeds="(0,)"
    python -m gpe_jax.experiments.gan_ablation --config=configs/gmegan_mixture.py:smoke \
        --workdir=/tmp/gan_ablation2 --config.experiments.seeds="(0,)" \
        --config.experiments.variants="('gmegan','c_T0')"

Hardware and cost: a 2-core CPU. Mixture: 4 variants x 5 seeds = 20 runs of 20,000
iterations (MLPs), measured 999 s wall with ``workers=2`` on a 2-core CPU shared with other
jobs (each run's training stage 1-2.5 min). Digits (``configs/gmegan_digits.py``): 20 conv
GMEGAN runs of 2,000 iterations, about 2 min of CPU each (``gan_robustness``), so roughly
20-40 min.
"""
from __future__ import annotations

import math
import os

import numpy as np
from matplotlib import pyplot as plt

from gpe_jax import plots
from gpe_jax.errors import ConfigError
from gpe_jax.experiments import common

STAGE = "gmegan"
VARIANTS = {"gmegan": {}, "c_T0": {"gmegan.c_T": 0.0}, "k0": {"gmegan.k": 0.0},
            "c_R0": {"gmegan.c_R": 0.0}}
LABELS = {"gmegan": "GMEGAN", "c_T0": "c_T = 0 (no GME)", "k0": "k = 0 (no gradient penalty)",
          "c_R0": "c_R = 0 (no latent reconstruction)"}
# (key, True when higher is better)
MIXTURE_PRIMARY = (("modes_covered", True), ("high_quality", True), ("kl_uniform", False),
                   ("modes_covered_min_scheduled", True))
MIXTURE_OTHER = (("min_share", True),
                 ("max_share", False), ("within_1sigma_2d", True), ("inner_share", None))
IMAGE_PRIMARY = (("fd_classifier_prior", False), ("class_rel_std_prior", False))
IMAGE_OTHER = (("fd_pixels_prior", False), ("precision_classifier_prior", True),
               ("recall_classifier_prior", True))
COMMON = (("cm_identity_optimal", True), ("gme_all_pairs", False),
          ("weak_bilip_frac_a1.1", True), ("weak_bilip_frac_a1.5", True),
          ("weak_bilip_frac_a2", True), ("fd_pixels_prior", False))
Z_NOISE = 2.0   # a difference counts beyond this many standard errors
NOT_JUDGED = "not judged (one seed)"


def seeds_of(config) -> tuple:
  return tuple(int(s) for s in config.experiments.get("seeds", (0,))) or (int(config.seed),)


def run_name(variant: str, seed: int) -> str:
  return f"{variant}/seed{seed}"


def run_seeded(config, workdir: str, variants: dict, seeds) -> tuple[dict, dict]:
  """Every (variant, seed) GMEGAN run: ``({variant: {seed: summary}}, {variant: {seed:
  message}})``, the second for the runs whose loss became NaN/Inf."""
  jobs = {run_name(v, s): dict(ov, seed=int(s), method=STAGE,
                               stages=(STAGE, "sample", "evaluate"))
          for v, ov in variants.items() for s in seeds}
  summaries, failed = common.run_variants_tolerant(
      config, workdir, jobs, int(config.experiments.get("workers", 1)))
  done = {v: {s: summaries[run_name(v, s)] for s in seeds if run_name(v, s) in summaries}
          for v in variants}
  bad = {v: {s: failed[run_name(v, s)] for s in seeds if run_name(v, s) in failed}
         for v in variants}
  return done, bad


def flat_metrics(summary: dict) -> dict:
  """The run's numbers: the GMEGAN stage's summary, then the evaluate stage's."""
  out = {}
  for stage in ("evaluate", STAGE):
    for k, v in (summary.get(stage) or {}).items():
      if common.finite_or_none(v) is not None or v is None:
        out[k] = common.finite_or_none(v)
  return out


def min_scheduled(run_dir: str, key: str = "modes_covered"):
  """Minimum of ``key`` over the GMEGAN stage's scheduled evaluations (metrics.jsonl)."""
  _, values = common.curve(run_dir, STAGE, key)
  return float(values.min()) if values.size else None


def kind_of(per_run: list) -> str:
  """'mixture' (mode metrics), 'image' (classifier FD) or 'other', from the runs' keys."""
  if per_run and all("modes_covered" in m for m in per_run):
    return "mixture"
  if per_run and all("fd_classifier_prior" in m for m in per_run):
    return "image"
  return "other"


def measures(kind: str) -> tuple[tuple, tuple]:
  """(primary, other) measures of the data kind: (key, higher is better)."""
  if kind == "mixture":
    return MIXTURE_PRIMARY, MIXTURE_OTHER + COMMON
  if kind == "image":
    return IMAGE_PRIMARY, IMAGE_OTHER + tuple(c for c in COMMON if c[0] != "fd_pixels_prior")
  return (("fd_pixels_prior", False),), tuple(c for c in COMMON if c[0] != "fd_pixels_prior")


def collect(workdir: str, done: dict, failed: dict, seeds) -> dict:
  """Per variant and seed the run's numbers (None for a diverged run)."""
  out = {}
  for v in done:
    out[v] = {}
    for s in seeds:
      if s in failed[v]:
        out[v][s] = None
        continue
      m = flat_metrics(done[v][s])
      if "modes_covered" in m:
        m["modes_covered_min_scheduled"] = min_scheduled(os.path.join(workdir,
                                                                      run_name(v, s)))
      out[v][s] = m
  return out


def compare(full: dict, other: dict, higher_better: bool | None) -> dict:
  """Difference of ``other`` from ``full`` (spreads over seeds), positive = worse."""
  if full["mean"] is None or other["mean"] is None or higher_better is None:
    return {"worse_by": None, "se": None, "verdict": "n/a"}
  sign = -1.0 if higher_better else 1.0
  diff = sign * (other["mean"] - full["mean"]) + 0.0   # + 0.0: no -0
  se = math.sqrt(full["std"] ** 2 / max(full["n"], 1) + other["std"] ** 2 / max(other["n"], 1))
  if abs(diff) <= 1e-12:
    verdict = "no difference"
  elif min(full["n"], other["n"]) < 2:
    verdict = NOT_JUDGED
  elif diff > Z_NOISE * se:
    verdict = "worse"
  elif -diff > Z_NOISE * se:
    verdict = "better"
  else:
    verdict = "within seed noise"
  return {"worse_by": diff, "se": se, "verdict": verdict}


def analyse(per_run: dict, seeds) -> dict:
  """Spreads per variant and measure, and the judgement of each removed term."""
  finished = [m for v in per_run.values() for m in v.values() if m is not None]
  kind = kind_of(finished)
  primary, other = measures(kind)
  keys = [k for k, _ in primary + other if any(k in m for m in finished)]
  keys = list(dict.fromkeys(keys))
  stats = {v: {k: common.spread(m.get(k) for m in runs.values() if m is not None)
               for k in keys} for v, runs in per_run.items()}
  diverged = {v: sum(m is None for m in runs.values()) for v, runs in per_run.items()}
  better_high = dict(primary + other)
  judgement = {}
  if "gmegan" in per_run:
    for v in per_run:
      if v == "gmegan":
        continue
      per_key = {k: compare(stats["gmegan"][k], stats[v][k], better_high.get(k))
                 for k in keys}
      prim = [k for k, _ in primary if k in keys]
      worse = [k for k in prim if per_key[k]["verdict"] == "worse"]
      better = [k for k in prim if per_key[k]["verdict"] == "better"]
      more_div = diverged[v] > diverged["gmegan"]
      if (worse or more_div) and not better:
        verdict = "matters"
      elif any(per_key[k]["verdict"] == NOT_JUDGED for k in prim):
        verdict = NOT_JUDGED
      elif better and not (worse or more_div):
        verdict = "removing it helps"
      elif better:
        verdict = "mixed"
      else:
        verdict = "no measurable effect"
      judgement[v] = {"verdict": verdict, "worse_on": worse, "better_on": better,
                      "more_diverged": more_div, "measures": per_key}
  return {"kind": kind, "primary": [k for k, _ in primary if k in keys], "keys": keys,
          "stats": stats, "diverged": diverged, "judgement": judgement,
          "num_seeds": len(seeds)}


def selection(config) -> dict:
  """The variants of ``config.experiments.variants`` (() = all of ``VARIANTS``)."""
  names = tuple(config.experiments.get("variants", ())) or tuple(VARIANTS)
  bad = [v for v in names if v not in VARIANTS]
  if bad:
    raise ConfigError(f"config.experiments.variants: unknown {bad}; gan_ablation's variants "
                      f"are {tuple(VARIANTS)}, e.g. --config.experiments.variants="
                      "\"('gmegan','c_T0')\" (() = all).")
  return {v: VARIANTS[v] for v in names}


def run(config, workdir: str) -> common.Report:
  seeds = seeds_of(config)
  chosen = selection(config)
  done, failed = run_seeded(config, workdir, chosen, seeds)
  per_run = collect(workdir, done, failed, seeds)
  result = analyse(per_run, seeds)
  figure(workdir, per_run, result)
  return report(config, per_run, failed, result, seeds)


def figure(workdir: str, per_run: dict, result: dict) -> str:
  """``ablation.png``: per primary measure, the seeds as points, mean +- std per variant."""
  keys = result["primary"] or result["keys"][:1]
  variants = list(per_run)
  fig, axes = plt.subplots(1, max(len(keys), 1), figsize=(4.5 * max(len(keys), 1), 4))
  for ax, k in zip(np.atleast_1d(axes), keys):
    for i, v in enumerate(variants):
      vals = [m[k] for m in per_run[v].values() if m is not None and m.get(k) is not None]
      st = result["stats"][v][k]
      if vals:
        ax.plot(i + np.linspace(-0.12, 0.12, len(vals)) if len(vals) > 1 else [i], vals, "o",
                color="tab:blue", alpha=0.6, ms=4)
      if st["mean"] is not None:
        ax.errorbar([i + 0.25], [st["mean"]], yerr=[st["std"]], fmt="s", color="black",
                    capsize=3, ms=5)
      if result["diverged"][v]:
        ax.annotate(f"{result['diverged'][v]} diverged", (i, 0.98),
                    xycoords=("data", "axes fraction"), ha="center", va="top", fontsize=7,
                    color="tab:red")
    ax.set_xticks(range(len(variants)))
    ax.set_xticklabels(variants, fontsize=8)
    ax.set_xlim(-0.6, len(variants) - 0.4)
    ax.set_title(k, fontsize=10)
  fig.suptitle(f"GMEGAN ablation over {result['num_seeds']} seed(s): points = seeds, "
               "square = mean +- std", fontsize=10)
  fig.tight_layout()
  return plots._save(fig, os.path.join(workdir, "ablation.png"))  # pylint: disable=protected-access


_f = common.num


def _detail(j: dict) -> str:
  parts = ([f"worse on {', '.join(j['worse_on'])}"] if j["worse_on"] else []) + (
      [f"better on {', '.join(j['better_on'])}"] if j["better_on"] else []) + (
      ["diverged more often"] if j["more_diverged"] else [])
  return f" ({'; '.join(parts)})" if parts else ""


def report(config, per_run: dict, failed: dict, result: dict, seeds) -> common.Report:
  """The report: the table of means (std) per variant, the judgement, the figure."""
  variants = list(per_run)
  keys, stats = result["keys"], result["stats"]
  rows = []
  for k in keys:
    rows.append([k] + [None if stats[v][k]["mean"] is None else
                       f"{_f(stats[v][k]['mean'])} ± {_f(stats[v][k]['std'], 2)}"
                       for v in variants])
  rows.append(["diverged runs"] + [f"{result['diverged'][v]} of {len(seeds)}" for v in variants])
  table = common.markdown_table(
      ["measure (mean ± std over seeds)"] + [LABELS[v] for v in variants], rows)
  jrows = []
  for v, j in result["judgement"].items():
    for k in result["primary"]:
      c = j["measures"][k]
      jrows.append([LABELS[v], k, c["worse_by"], c["se"], c["verdict"]])
    jrows.append([LABELS[v], "diverged runs", result["diverged"][v] - result["diverged"]["gmegan"],
                  None, "more" if j["more_diverged"] else "not more"])
  jtable = common.markdown_table(
      ["removed term", "measure", "worse by (vs GMEGAN)", "std. error", "verdict"], jrows)
  verdicts = {v: j["verdict"] for v, j in result["judgement"].items()}
  every = (None if not verdicts or NOT_JUDGED in verdicts.values()
           else all(x == "matters" for x in verdicts.values()))
  data = {"mixture": "the mixture's mode metrics", "image": "the classifier FD and class "
          "relative std", "other": "the pixel FD"}[result["kind"]]
  summary = (
      f"GMEGAN and three ablations on {config.data.name} over {len(seeds)} seed(s) "
      f"({int(config.gmegan.num_steps)} iterations each; configured weights c_T = "
      f"{float(config.gmegan.c_T):g}, c_R = {float(config.gmegan.c_R):g}, k = "
      f"{float(config.gmegan.k):g}, c_G = {float(config.gmegan.c_G):g}). The paper (Fig. 8, "
      "CIFAR-10) finds that removing any of c_T, k, c_R worsens FID, k the least, and that "
      "removing the GME term hurts stability most. Judged here from "
      f"{data} ({', '.join(result['primary'])}): "
      + "; ".join(f"{LABELS[v]}: {verdicts[v]}{_detail(result['judgement'][v])}"
                  for v in verdicts)
      + ". Each regulariser matters: "
      + ("not judged (one seed: no spread to judge a difference against; only a divergence "
         "counts)." if every is None else f"{'yes' if every else 'no'}."))
  shared = [k for k in result["primary"]
            if result["judgement"] and all(k in j["worse_on"]
                                           for j in result["judgement"].values())]
  if shared:
    summary += f" Removing any one of the three is worse on: {', '.join(shared)}."
  numbers = {"kind": result["kind"], "seeds": list(seeds), "primary": result["primary"],
             "stats": stats, "diverged": result["diverged"],
             "judgement": result["judgement"], "each_regulariser_matters": every,
             "runs": {v: {str(s): m for s, m in runs.items()} for v, runs in per_run.items()},
             "failed": {v: {str(s): msg.splitlines()[0][:400] for s, msg in f.items()}
                        for v, f in failed.items()},
             "variants": {v: dict(VARIANTS[v]) for v in per_run}}
  if "modes_covered_min_scheduled" in keys:
    numbers["modes_covered_min_over_seeds_and_schedule"] = {
        v: stats[v]["modes_covered_min_scheduled"]["min"] for v in variants}
    numbers["modes_covered_min_over_seeds"] = {v: stats[v]["modes_covered"]["min"]
                                               for v in variants}
  notes = [
      f"Rule: a difference of the means counts when it exceeds {Z_NOISE:g} standard errors "
      "(Welch, std over seeds with ddof 1); a diverged run (NaN/Inf loss) is left out of the "
      "means and counted separately, as worse than any finished run.",
      "How this differs from the paper: the paper's c_R weighs one reconstruction term; here "
      "GMEGAN has two (c_R on the latent reconstruction |z - T(G z)|^2, c_G on the data "
      "reconstruction |x - G(f(T x))|^2), and c_R = 0 removes only the first. Scores are the "
      "final ones, not the best of late epochs.",
  ]
  if result["kind"] == "mixture":
    notes.append("Mode metrics (gpe_jax/evals/modes.py, at the end of training on "
                 "config.gans.eval_samples samples): `modes_covered_min_scheduled` is the "
                 "smallest number of modes covered at any scheduled evaluation of a run (the "
                 "table: its mean over seeds; numbers.json also has the minimum over seeds: "
                 + ", ".join(f"{v} {_f(numbers['modes_covered_min_over_seeds_and_schedule'][v])}"
                             for v in variants) + ").")
  return common.Report(
      title=f"GMEGAN ablation (paper Fig. 8), {config.data.name}", summary=summary,
      tables=[table, jtable],
      figures={"ablation.png": "Each primary measure per variant: the seeds (points) and "
                               "their mean ± std (squares)."},
      numbers=numbers, notes=notes)


if __name__ == "__main__":
  common.main(run, "gpe_jax.experiments.gan_ablation")
