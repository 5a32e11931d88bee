"""Paper Fig. 8 under the paper's own protocol: the GPE encoder stopped at a held-out GME, each
method at its own learning rate, and the comparison repeated over seeds.

The same five methods as ``fig8`` (GPE = the GME encoder, then a decoder on the frozen encoder;
the jointly trained VAE, AE, VAE+MDS, AE+MDS), trained by ``fig8.train_method`` with fig8's
evaluation and logging cadence, and compared per seed by ``fig8.compare`` (thresholds derived
from that seed's runs, seconds to them, ranks). What differs from ``fig8``:

  1. Stop rule: the GPE encoder stops at the first held-out evaluation whose GME is at or below
     ``config.experiments.gme_stop`` (``encoder.target_loss``; the paper's 0.004 on MNIST); it
     is evaluated with fig8's cadence (about 30 times over its schedule), so the stop is
     resolved to 1/30 of the schedule. If it never gets there it runs its whole schedule; the
     report says which, per run.
  2. Learning rates: each method gets its own lr from ``config.experiments.lrs``, chosen on the
     first seed of ``config.experiments.seeds``. Every method is trained once per lr (GPE: the
     one lr for both its encoder and its decoder; a baseline: its stage's lr); the chosen lr
     is the one with the smallest final held-out MSE (``val_recon_mse``); a run whose loss or
     final MSE is not finite is unstable and never chosen; ties go to the larger lr (the
     paper's "largest stable value") — ``select_lr``.
  3. Seeds: with the chosen lrs every seed is run (the config's ``seed``); the first seed's
     runs are those of the grid (nothing is trained twice). The report aggregates over seeds:
     median / min / max seconds to each threshold, GPE's rank per seed, how often each method
     was first (``aggregate``).

Variants: ``WORKDIR/seed<S>_lr<LR>/<method>`` (e.g. ``seed0_lr0.001/vae``); rerunning reuses
finished ones.

    python -m gpe_jax.experiments.fig8_protocol --config=configs/default.py --workdir=runs/fig8p
    python -m gpe_jax.experiments.fig8_protocol --config=configs/fashion_mnist.py \\
        --config.experiments.seeds="(0,1,2)" --workdir=runs/fig8p_fashion_mnist
    python -m gpe_jax.experiments.fig8_protocol --config=configs/default.py:smoke --workdir=/tmp/f8p
"""
from __future__ import annotations

import logging
import math
import os

import numpy as np

from gpe_jax import errors, logs, plots
from gpe_jax.experiments import common, fig8

METHODS = fig8.METHODS
LABELS = fig8.LABELS
THRESHOLDS = ("loose", "tight")


def lr_overrides(method: str, lr: float) -> dict:
  """The config keys that set ``method``'s learning rate (GPE: both of its stages)."""
  if method == "gpe":
    return {"encoder.lr": float(lr), "decoder.lr": float(lr)}
  return {f"{method}.lr": float(lr)}


def encoder_overrides(config) -> dict:
  """GPE's encoder stage: stopped at ``experiments.gme_stop``, evaluated with fig8's cadence
  (checkpoints at evaluation steps, as fig8 does for the reconstruction stage)."""
  eval_every, log_every = fig8.cadence(config.encoder.num_steps)
  ckpt_every = eval_every * max(1, int(round(config.encoder.checkpoint_every / eval_every)))
  return {"encoder.target_loss": float(config.experiments.gme_stop),
          "encoder.eval_every": eval_every, "encoder.log_every": log_every,
          "encoder.checkpoint_every": ckpt_every}


def run_dir_name(seed: int, lr: float) -> str:
  return f"seed{int(seed)}_lr{float(lr):g}"


def select_lr(finals: dict):
  """The chosen lr of one method from ``{lr: final held-out MSE}``: the smallest finite MSE,
  ties to the larger lr; None when every run was unstable (non-finite or None)."""
  stable = [(float(v), float(lr)) for lr, v in finals.items()
            if v is not None and math.isfinite(float(v))]
  if not stable:
    return None
  return min(stable, key=lambda t: (t[0], -t[1]))[1]


def _stats(values) -> dict:
  """``common.spread`` of the finite values plus their median (None when there are none)."""
  s = common.spread(values)
  v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
  s["median"] = float(np.median(v)) if v else None
  return s


def aggregate(comparisons: dict) -> dict:
  """Aggregate per-seed comparisons (``{seed: fig8.compare(...)}``) over the seeds.

  Returns:
    {'methods': {method: {'<threshold>_seconds': stats, '<threshold>_ranks': [rank per seed],
    '<threshold>_first': seeds in which it was first, '<threshold>_reached': seeds in which
    it reached it}}, 'gpe_rank_loose': {seed: rank}, 'seeds': [...]}; stats = median, mean,
    std, min, max, n of the seconds (logged clock) over the seeds that reached the threshold.
    A method missing from a seed's comparison (unstable there) counts as not reaching.
  """
  seeds = list(comparisons)
  out = {"seeds": seeds, "methods": {}}
  for m in METHODS:
    row = {}
    for k in THRESHOLDS:
      secs = [comparisons[s]["to_threshold"].get(m, {}).get(k, {}).get("seconds")
              for s in seeds]
      ranks = [comparisons[s]["ranks"][k].get(m) for s in seeds]
      row[f"{k}_seconds"] = _stats(secs)
      row[f"{k}_seconds_per_seed"] = secs
      row[f"{k}_ranks"] = ranks
      row[f"{k}_first"] = sum(1 for r in ranks if r == 1)
      row[f"{k}_reached"] = sum(1 for v in secs if v is not None)
    out["methods"][m] = row
  out["gpe_rank_loose"] = {s: comparisons[s]["ranks"]["loose"].get("gpe") for s in seeds}
  return out


def _check(config) -> tuple[list, list]:
  lrs = [float(v) for v in config.experiments.lrs]
  seeds = [int(v) for v in config.experiments.seeds]
  if not lrs or any(not (math.isfinite(v) and v > 0) for v in lrs) or len(set(lrs)) != len(lrs):
    raise errors.ConfigError(
        f"config.experiments.lrs = {tuple(config.experiments.lrs)}: fig8_protocol needs one or "
        "more distinct positive learning rates, e.g. --config.experiments.lrs=\"(1e-3,3e-3)\".")
  if not seeds or len(set(seeds)) != len(seeds):
    raise errors.ConfigError(
        f"config.experiments.seeds = {tuple(config.experiments.seeds)}: fig8_protocol needs one "
        "or more distinct seeds, e.g. --config.experiments.seeds=\"(0,1,2)\".")
  return sorted(lrs), seeds


def _encoder_stop(run_dir: str, gme_stop: float) -> dict:
  """Where the GPE encoder of a variant stopped: steps, held-out GME, stop reached or not."""
  enc = logs.read_json(os.path.join(run_dir, "summary.json"), {}).get("encoder", {})
  return {"steps": int(enc.get("steps", 0)), "val_gme": common.finite_or_none(enc.get("val_gme")),
          "stopped_by": enc.get("stopped_by"),
          "reached": enc.get("stopped_by") == "target_loss", "gme_stop": float(gme_stop)}


def _train(config, workdir: str, method: str, seed: int, lr: float) -> dict:
  """One (method, seed, lr) run in ``workdir/seed<S>_lr<LR>/<method>``: {'result', 'curve',
  'stable', 'error', 'encoder'}; a run whose loss turns non-finite is recorded, not raised."""
  parent = os.path.join(workdir, run_dir_name(seed, lr))
  ov = dict(lr_overrides(method, lr), seed=int(seed))
  if method == "gpe":
    ov.update(encoder_overrides(config))
  rec = {"method": method, "seed": int(seed), "lr": float(lr), "result": None, "curve": None,
         "stable": False, "error": None, "encoder": None}
  try:
    rec["result"], rec["curve"] = fig8.train_method(config, parent, method, ov)
    rec["stable"] = math.isfinite(rec["result"]["final_mse"])
  except errors.NonFiniteError as e:
    logging.warning("%s at lr %g, seed %d: unstable (%s)", method, lr, seed,
                    str(e).splitlines()[0][:200])
    rec["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
  if method == "gpe":
    rec["encoder"] = _encoder_stop(os.path.join(parent, method), config.experiments.gme_stop)
  return rec


def _final(rec: dict):
  return rec["result"]["final_mse"] if rec["stable"] else None


def run(config, workdir: str) -> common.Report:
  lrs, seeds = _check(config)
  first = seeds[0]
  dataset = config.data.name

  # 1. The lr grid on the first seed.
  grid = {m: {lr: _train(config, workdir, m, first, lr) for lr in lrs} for m in METHODS}
  chosen = {m: select_lr({lr: _final(r) for lr, r in grid[m].items()}) for m in METHODS}
  unstable_all = [m for m in METHODS if chosen[m] is None]
  if unstable_all:
    raise errors.NonFiniteError(
        f"fig8_protocol: every learning rate of {', '.join(unstable_all)} in "
        f"config.experiments.lrs = {tuple(lrs)} was unstable on seed {first}; add smaller ones.")

  # 2. Every seed at the chosen lrs (the first seed's runs are the grid's).
  runs = {first: {m: grid[m][chosen[m]] for m in METHODS}}
  for s in seeds[1:]:
    runs[s] = {m: _train(config, workdir, m, s, chosen[m]) for m in METHODS}

  # 3. Per-seed comparison as in fig8, then over the seeds.
  comparisons = {}
  for s in seeds:
    stable = {m: (r["result"], r["curve"]) for m, r in runs[s].items() if r["stable"]}
    if not stable:
      raise errors.NonFiniteError(
          f"fig8_protocol: every method was unstable on seed {s} at its chosen lr {chosen}.")
    comparisons[s] = fig8.compare(stable)
  agg = aggregate(comparisons)

  fig_path = os.path.join(workdir, "fig8_protocol.png")
  _plot(runs, comparisons[first]["thresholds"], grid, chosen, lrs, fig_path, dataset, first)

  # Tables.
  grid_rows = []
  for m in METHODS:
    for lr in lrs:
      r = grid[m][lr]
      enc = r["encoder"]
      grid_rows.append([
          LABELS[m], f"{lr:g}", _final(r), common.yes_no(r["stable"]),
          r["result"]["total_seconds"] if r["result"] else None,
          _enc_text(enc) if enc else "", "**chosen**" if chosen[m] == lr else ""])
  grid_table = common.markdown_table(
      ["method", "lr", "final held-out MSE", "stable", "total training s",
       f"GPE encoder stop (GME <= {config.experiments.gme_stop:g})", "chosen"], grid_rows)

  seed_rows = []
  for s in seeds:
    c = comparisons[s]
    for m in METHODS:
      r = runs[s][m]
      reach = c["to_threshold"].get(m, {})
      seed_rows.append([
          s, LABELS[m], f"{chosen[m]:g}", _final(r),
          (reach.get("loose") or {}).get("seconds"), c["ranks"]["loose"].get(m),
          (reach.get("loose") or {}).get("steps"),
          (reach.get("tight") or {}).get("seconds"), c["ranks"]["tight"].get(m),
          (reach.get("tight") or {}).get("steps"),
          _enc_text(r["encoder"]) if r["encoder"] else ""])
  seed_table = common.markdown_table(
      ["seed", "method", "lr", "final held-out MSE", "s to loose", "rank (loose)",
       "iterations", "s to tight", "rank (tight)", "iterations", "GPE encoder stop"], seed_rows)
  thr_table = common.markdown_table(
      ["seed", "loose threshold", "tight threshold", "first to loose", "first to tight",
       "GPE rank (loose)"],
      [[s, comparisons[s]["thresholds"]["loose"], comparisons[s]["thresholds"]["tight"],
        _first_of(comparisons[s]["order"]["loose"]), _first_of(comparisons[s]["order"]["tight"]),
        agg["gpe_rank_loose"][s]] for s in seeds])

  def med(st):
    return st["median"]
  agg_rows = []
  for m in METHODS:
    a = agg["methods"][m]
    lo, ti = a["loose_seconds"], a["tight_seconds"]
    agg_rows.append([
        LABELS[m], f"{chosen[m]:g}", med(lo), lo["min"], lo["max"], a["loose_first"],
        " / ".join("—" if r is None else str(r) for r in a["loose_ranks"]),
        med(ti), ti["min"], ti["max"], f"{a['tight_reached']} of {len(seeds)}",
        a["tight_first"]])
  agg_table = common.markdown_table(
      ["method", "lr", "median s to loose", "min", "max", "seeds first (loose)",
       "rank (loose) per seed", "median s to tight", "min", "max", "seeds reaching tight",
       "seeds first (tight)"], agg_rows)

  enc_runs = [runs[s]["gpe"]["encoder"] for s in seeds]
  n_reached = sum(1 for e in enc_runs if e["reached"])
  gpe_ranks = ", ".join(f"seed {s}: {agg['gpe_rank_loose'][s]}" for s in seeds)
  medians = "; ".join(f"{LABELS[m]} {common.num(med(agg['methods'][m]['loose_seconds']))} s"
                      for m in METHODS)
  summary = (
      f"The five methods of Fig. 8 on `{dataset}` under the paper's protocol: the GPE encoder "
      f"stopped at held-out GME <= {config.experiments.gme_stop:g} (reached in {n_reached} of "
      f"{len(seeds)} seeds; otherwise it ran its {int(config.encoder.num_steps)}-step "
      f"schedule), each method at its own learning rate chosen from "
      f"{', '.join(f'{lr:g}' for lr in lrs)} on seed {first} (GPE "
      f"{chosen['gpe']:g}, " + ", ".join(f"{LABELS[m]} {chosen[m]:g}" for m in METHODS[1:]) +
      f"), then {len(seeds)} seed(s) compared as in fig8. GPE's rank by seconds to the loose "
      f"threshold: {gpe_ranks}. Median seconds to the loose threshold: {medians}.")

  def curve_numbers(c):
    if c is None:
      return None
    return {"steps": c["steps"].tolist(), "val_recon_mse": c["mse"].tolist(),
            "seconds": c["seconds"].tolist(), "train_seconds": c["train_seconds"].tolist()}

  def run_numbers(r, with_curve=False):
    out = {"lr": r["lr"], "seed": r["seed"], "stable": r["stable"], "error": r["error"],
           "final_mse": _final(r), "result": r["result"]}
    if r["encoder"] is not None:
      out["encoder_stop"] = r["encoder"]
    if with_curve:
      out["curve"] = curve_numbers(r["curve"])
    return out

  numbers = {
      "dataset": dataset,
      "lrs": lrs,
      "seeds": seeds,
      "gme_stop": float(config.experiments.gme_stop),
      "selection_rule": ("per method, the lr of config.experiments.lrs with the smallest final "
                         "held-out MSE on the first seed; non-finite = unstable, never chosen; "
                         "ties -> the larger lr"),
      "threshold_rule": {"loose": f"{fig8.THRESHOLD_FACTOR} x max final held-out MSE, per seed",
                         "tight": f"{fig8.THRESHOLD_FACTOR} x min final held-out MSE, per seed"},
      "chosen_lrs": chosen,
      "grid": {m: {f"{lr:g}": run_numbers(grid[m][lr]) for lr in lrs} for m in METHODS},
      "per_seed": {s: {
          "thresholds": comparisons[s]["thresholds"],
          "order": comparisons[s]["order"],
          "ranks": comparisons[s]["ranks"],
          "gpe_encoder_stop": runs[s]["gpe"]["encoder"],
          "methods": {m: dict(run_numbers(runs[s][m], with_curve=True),
                              to_threshold=comparisons[s]["to_threshold"].get(m))
                      for m in METHODS}} for s in seeds},
      "aggregate": agg,
      "gpe_encoder_reached_stop": {s: runs[s]["gpe"]["encoder"]["reached"] for s in seeds},
  }

  notes = [
      f"Learning rates: each method was trained on seed {first} at every lr of "
      f"`config.experiments.lrs` ({', '.join(f'{lr:g}' for lr in lrs)}); GPE uses the one lr "
      "for its encoder and its decoder, a baseline for its stage (`vae.lr`, `ae.lr`, "
      "`vae_mds.lr`, `ae_mds.lr`). The chosen lr has the smallest final held-out MSE "
      "(`val_recon_mse`); a run whose loss or final MSE is not finite is unstable and never "
      "chosen; ties go to the larger lr (the paper's \"largest stable value\"). The other seeds "
      f"use the chosen lrs; seed {first}'s comparison uses the grid's own runs. Schedules "
      "(steps, lr schedule, batch size) are the config's, as in fig8.",
      f"Stop rule: the GPE encoder stops at the first held-out evaluation with GME <= "
      f"{config.experiments.gme_stop:g} (`encoder.target_loss`; the paper's value on MNIST). "
      "It is evaluated about 30 times over its schedule here (fig8's cadence, "
      f"every {fig8.cadence(config.encoder.num_steps)[0]} steps), so the stop is resolved to "
      "one evaluation interval; when the GME never gets there the encoder runs its schedule "
      "('not reached' above) and the decoder starts from the final encoder. The GME is the "
      "mean over held-out minibatches of the training batch size.",
      "Thresholds are per seed, exactly as in fig8: loose = 1.1 x the largest final held-out "
      "MSE of the five methods of that seed, tight = 1.1 x the smallest; seconds (logged "
      "clock: evaluations, checkpoints and compilation included; GPE's include its encoder) "
      "and iterations (GPE: decoder steps) are those of the first held-out evaluation at or "
      "below the threshold. Medians / min / max are over the seeds that reached the threshold. "
      "The figure's threshold lines are those of the first seed.",
      "Timing caveats as in fig8: the runs train one after another in one process on the same "
      "machine, which may be shared; train-only seconds are in numbers.json "
      "(`per_seed.*.methods.*.to_threshold`).",
  ]
  return common.Report(
      title=f"Fig. 8 under the paper's protocol ({dataset})",
      summary=summary, tables=[grid_table, thr_table, seed_table, agg_table],
      figures={"fig8_protocol.png": (
          "Left: held-out reconstruction MSE against wall-clock seconds, one thin line per "
          "seed, one colour per method, each at its chosen lr (GPE's curve starts after its "
          f"encoder); horizontal lines: seed {first}'s thresholds. Right: the lr grid on seed "
          f"{first}, final held-out MSE per lr (unstable runs omitted; circled: chosen).")},
      numbers=numbers, notes=notes)


def _first_of(order: list) -> str:
  return LABELS[order[0]] if order else "—"


def _enc_text(enc: dict) -> str:
  gme = common.num(enc["val_gme"], 3)
  if enc["reached"]:
    return f"reached at step {enc['steps']} (GME {gme})"
  return f"not reached; ran {enc['steps']} steps (GME {gme})"


def _plot(runs, thresholds, grid, chosen, lrs, path, dataset, first) -> str:
  plt = plots.plt
  fig, (ax, ax_lr) = plt.subplots(1, 2, figsize=(12.5, 4.6),
                                  gridspec_kw={"width_ratios": [1.6, 1]})
  colors = {m: f"C{i}" for i, m in enumerate(METHODS)}
  for m in METHODS:
    labelled = False
    for s, per in runs.items():
      c = per[m]["curve"]
      if c is None or not per[m]["stable"]:
        continue
      ax.plot(c["seconds"], c["mse"], "-", lw=0.9, alpha=0.8, color=colors[m],
              label=None if labelled else f"{LABELS[m]} (lr {chosen[m]:g})")
      labelled = True
  for k, t in thresholds.items():
    ax.axhline(t, color="k", ls="--" if k == "loose" else "-.", lw=0.8,
               label=f"{k} threshold {t:.3g} (seed {first})")
  ax.set_yscale("log")
  ax.set_xlim(left=0)
  ax.grid(alpha=0.3, which="both")
  ax.set_xlabel("wall-clock seconds (GPE: encoder + decoder)")
  ax.set_ylabel("held-out reconstruction MSE")
  ax.set_title(f"{dataset}: held-out MSE vs wall clock, {len(runs)} seed(s)")
  for m in METHODS:
    xs = [lr for lr in lrs if grid[m][lr]["stable"]]
    ys = [grid[m][lr]["result"]["final_mse"] for lr in xs]
    ax_lr.plot(xs, ys, "-o", ms=4, color=colors[m], label=LABELS[m])
    if chosen[m] is not None:
      ax_lr.plot([chosen[m]], [grid[m][chosen[m]]["result"]["final_mse"]], "o", ms=10,
                 mfc="none", color=colors[m])
  ax_lr.set_xscale("log")
  ax_lr.set_xticks(lrs, [f"{lr:g}" for lr in lrs])
  ax_lr.minorticks_off()
  ax_lr.set_yscale("log")
  ax_lr.grid(alpha=0.3, which="both")
  ax_lr.set_xlabel("learning rate")
  ax_lr.set_ylabel("final held-out MSE")
  ax_lr.set_title(f"lr grid (seed {first})")
  return fig8.save_with_legend_below(fig, ax, path)


if __name__ == "__main__":
  common.main(run, "gpe_jax.experiments.fig8_protocol")
