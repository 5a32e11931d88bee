r"""A probe of the GMEGAN paper's Prop. 2: is the trained critic more regular when the encoder
preserves the geometry?

Prop. 2 bounds the modulus of continuity of the optimal critic (the dual potential) by that of
the quadratic cost, through the encoder's bi-Lipschitz constant: the closer T is to an isometry,
the more regular the critic; as T's lower bi-Lipschitz constant goes to 0 the critic can become
irregular. This experiment trains GMEGAN with its GME term (the configured c_T) and without it
(c_T = 0), over the seeds ``config.experiments.seeds``, each (variant, seed) one pipeline run
``('gmegan', 'sample', 'evaluate')`` in ``VARIANT/seed<S>`` (the same runs as
``gan_ablation``'s ``gmegan`` and ``c_T0``), then restores each run's final critic psi from its
checkpoint and measures, on held-out data (``x_test``, at most ``config.gans.eval_samples``
points) and on the run's generated samples (``sample/samples.npz``):

  * the distribution of |grad psi(x)| (quantiles 0.05 / 0.5 / 0.95, mean) and its relative
    spread (q95 - q05) / q50 (scale-free);
  * a local Lipschitz estimate along data segments: for each held-out point a and its nearest
    held-out neighbour b, the maximum of |grad psi| over 16 points (1 - t) a + t b, t in [0, 1]
    (also divided by the median |grad psi| at held-out points: scale-free), and the difference
    quotient |psi(a) - psi(b)| / |a - b| (mean, median, q95 over points);
  * the encoder's geometry from the run's summary (``gme_all_pairs``, ``weak_bilip_frac_a*``).
Prop. 2 suggests: where the encoder preserves the geometry better (lower GME over all held-out
pairs, more weakly bi-Lipschitz pairs), the critic is more regular. The report compares the absolute
measures (local Lipschitz estimate, difference quotient: in the critic's own units, so they mix
its overall scale, set by the gap-vs-penalty balance, with its shape) and the scale-free ones
(relative spread, segment maximum over the median gradient) separately, says whether each group
agrees, and gives rank correlations over all runs between that GME and the measures.
Caveat: the trained critic is the minimiser of a penalised objective after finitely many
steps, not the optimal dual potential of the proposition; the gradient penalty (k/2)
E|grad psi|^p sets its scale in both variants alike.

Outputs: ``critic_grad.png`` (histograms of |grad psi| on held-out and generated points, both
variants, pooled over seeds), ``critic_grad.npz`` (the raw norms), ``report.md``,
``numbers.json``.

    python -m gpe_jax.experiments.gan_critic --config=configs/gmegan_mixture.py \
        --workdir=runs/gan_critic --config.experiments.workers=2
    python -m gpe_jax.experiments.gan_critic --config=configs/gmegan_mixture.py:smoke \
        --workdir=/tmp/gan_critic --config.experiments.seeds="(0,)"

Hardware and cost: a 2-core CPU; 2 variants x 5 seeds = 10 mixture runs of 20,000 iterations
(half of ``gan_ablation``'s: about 8 min with ``workers=2``), plus about 20 s for the
measurements of all ten critics. The runs
are ``gan_ablation``'s ``gmegan`` and ``c_T0`` runs (same subdirectories, same overrides): copy
``VARIANT/seed<S>`` from a finished ``gan_ablation`` workdir into this one and the pipeline
reuses them (only the measurements run).
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib import pyplot as plt
from scipy import stats as sps

from gpe_jax import autoencoders, costs, logs, models, plots
from gpe_jax.data import load_dataset
from gpe_jax.experiments import common, gan_ablation
from gpe_jax.stages import common as stage_common
from gpe_jax.stages import gans

# The same runs as gan_ablation's 'gmegan' and 'c_T0' (names and overrides).
VARIANTS = {v: gan_ablation.VARIANTS[v] for v in ("gmegan", "c_T0")}
LABELS = {"gmegan": "GMEGAN", "c_T0": "GMEGAN, c_T = 0"}
SEGMENT_POINTS = 16
BATCH = 2048
QUANTILES = (0.05, 0.5, 0.95)


def restore_critic(config, run_dir: str, example_shape):
  """(score fn x -> psi(x), step) of the run's final GMEGAN critic."""
  done = stage_common.read_done(os.path.join(run_dir, "gmegan"))
  step = int(done["steps"])
  ckpt = os.path.join(run_dir, "gmegan", "checkpoints")
  params, batch_stats = autoencoders.restore_variables(ckpt, step, subtree="psi")
  psi = gans.build(config, "gmegan", example_shape)[0]["psi"]

  def score(x):
    return models.apply_model(psi, params, batch_stats, x, train=False)[0]
  return score, step


def critic_probes(score):
  """Jitted (values, gradient norms) of the critic at a batch of points."""
  @jax.jit
  def values_and_norms(x):
    g = costs.input_gradients(score, x)
    return score(x), jnp.sqrt(costs.grad_sq_norms(g))
  return values_and_norms


def _batched(fn, x: np.ndarray):
  outs = [fn(jnp.asarray(x[i:i + BATCH])) for i in range(0, x.shape[0], BATCH)]
  return tuple(np.concatenate([np.asarray(o[j]) for o in outs]) for j in range(len(outs[0])))


def nearest_neighbours(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(index of each row's nearest other row, the distance)."""
  flat = x.reshape(x.shape[0], -1).astype(np.float64)
  sq = np.sum(flat ** 2, axis=1)
  d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * flat @ flat.T, 0.0)
  np.fill_diagonal(d2, np.inf)
  nn = np.argmin(d2, axis=1)
  return nn, np.sqrt(d2[np.arange(x.shape[0]), nn])


def _dist(v: np.ndarray, prefix: str) -> dict:
  v = np.asarray(v, np.float64)
  out = {f"{prefix}_q{int(round(100 * q)):02d}": float(np.quantile(v, q)) for q in QUANTILES}
  out[f"{prefix}_mean"] = float(v.mean())
  out[f"{prefix}_max"] = float(v.max())
  return out


def measure_critic(score, x_held: np.ndarray, x_gen: np.ndarray) -> tuple[dict, dict]:
  """The critic's regularity on held-out and generated points (module docstring); returns
  (numbers, raw gradient norms {'heldout', 'generated'})."""
  probe = critic_probes(score)
  psi_h, g_h = _batched(probe, x_held)
  _, g_g = _batched(probe, x_gen)
  out = dict(_dist(g_h, "grad_heldout"), **_dist(g_g, "grad_generated"))
  for name in ("heldout", "generated"):
    q = [out[f"grad_{name}_q{k}"] for k in ("05", "50", "95")]
    out[f"grad_{name}_rel_spread"] = (q[2] - q[0]) / q[1] if q[1] > 0 else None
  nn, dist = nearest_neighbours(x_held)
  keep = dist > 0
  a, b, dist = x_held[keep], x_held[nn[keep]], dist[keep]
  t = np.linspace(0.0, 1.0, SEGMENT_POINTS, dtype=np.float32).reshape(
      (1, SEGMENT_POINTS) + (1,) * (x_held.ndim - 1))
  seg = ((1 - t) * a[:, None] + t * b[:, None]).reshape((-1,) + x_held.shape[1:])
  _, g_seg = _batched(probe, seg)
  seg_max = g_seg.reshape(a.shape[0], SEGMENT_POINTS).max(axis=1)
  quot = np.abs(psi_h[keep] - psi_h[nn[keep]]) / dist
  out.update(_dist(seg_max, "seg_lip"))
  out.update(_dist(quot, "diff_quot"))
  med = out["grad_heldout_q50"]
  out["seg_lip_rel_mean"] = float(np.mean(seg_max) / med) if med > 0 else None
  out["nn_dist_median"] = float(np.median(dist))
  out["num_heldout"], out["num_generated"] = int(x_held.shape[0]), int(x_gen.shape[0])
  return out, {"heldout": g_h, "generated": g_g}


GEOMETRY = ("gme_all_pairs", "weak_bilip_frac_a1.1", "weak_bilip_frac_a1.5", "weak_bilip_frac_a2",
            "cm_identity_optimal")


def run(config, workdir: str) -> common.Report:
  seeds = gan_ablation.seeds_of(config)
  done, failed = gan_ablation.run_seeded(config, workdir, VARIANTS, seeds)
  data = load_dataset(config.data)
  n = min(int(config.gans.eval_samples), data.x_test.shape[0])
  x_held = np.asarray(data.x_test[:n], np.float32)
  per_run, raw = {}, {}
  for v, ov in VARIANTS.items():
    per_run[v], raw[v] = {}, {"heldout": [], "generated": []}
    for s in seeds:
      if s in failed[v]:
        per_run[v][s] = None
        continue
      run_dir = os.path.join(workdir, gan_ablation.run_name(v, s))
      cfg = common.variant(config, seed=int(s), **ov)
      score, step = restore_critic(cfg, run_dir, data.example_shape)
      with np.load(os.path.join(run_dir, "sample", "samples.npz")) as f:
        x_gen = np.asarray(f["x"][:n], np.float32)
      m, norms = measure_critic(score, x_held, x_gen)
      summ = done[v][s].get("gmegan", {})
      m.update({k: common.finite_or_none(summ.get(k)) for k in GEOMETRY if k in summ})
      m["step"] = step
      per_run[v][s] = m
      for k in norms:
        raw[v][k].append(norms[k])
  pooled = {v: {k: np.concatenate(r[k]) if r[k] else np.zeros(0) for k in r}
            for v, r in raw.items()}
  if logs.is_main_process():
    np.savez(os.path.join(workdir, "critic_grad.npz"),
             **{f"{v}_{k}": a for v, r in pooled.items() for k, a in r.items()})
  result = analyse(per_run, failed)
  histogram(workdir, pooled)
  return report(config, per_run, result, seeds)


KEYS = ("grad_heldout_q05", "grad_heldout_q50", "grad_heldout_q95", "grad_heldout_mean",
        "grad_heldout_rel_spread", "grad_generated_q05", "grad_generated_q50",
        "grad_generated_q95", "grad_generated_mean", "grad_generated_rel_spread",
        "seg_lip_mean", "seg_lip_q50", "seg_lip_q95", "seg_lip_rel_mean", "diff_quot_mean",
        "diff_quot_q50", "diff_quot_q95") + GEOMETRY
ABSOLUTE = ("seg_lip_mean", "diff_quot_mean")             # in the critic's own units
SCALE_FREE = ("grad_heldout_rel_spread", "seg_lip_rel_mean")   # divided by its median gradient


def analyse(per_run: dict, failed: dict) -> dict:
  """Means over seeds and the comparison that Prop. 2 suggests."""
  stats = {v: {k: common.spread(m.get(k) for m in runs.values() if m is not None)
               for k in KEYS} for v, runs in per_run.items()}

  def lower(k, higher=False):
    """True: GMEGAN's mean is below c_T = 0's (above, with ``higher``) by more than the seeds'
    noise (``gan_ablation.compare``: 2 standard errors); False: the other way round; None:
    within the noise, fewer than two seeds, or missing."""
    c = gan_ablation.compare(stats["gmegan"][k], stats["c_T0"][k], higher_better=higher)
    return {"worse": True, "better": False}.get(c["verdict"])

  geometry_better = lower("gme_all_pairs")
  bilip_better = lower("weak_bilip_frac_a1.5", higher=True)
  regular = {k: lower(k) for k in ABSOLUTE + SCALE_FREE}

  def group(keys):   # True: GMEGAN's critic smaller on all; False: on none; None: mixed/missing
    vals = [regular[k] for k in keys]
    return True if all(v is True for v in vals) else (
        False if all(v is False for v in vals) else None)
  absolute, scale_free = group(ABSOLUTE), group(SCALE_FREE)
  finished_per_variant = [sum(m is not None for m in runs.values()) for runs in per_run.values()]
  if min(finished_per_variant) < 2:
    verdict = "not judged (one seed)"
  elif geometry_better is not True:
    verdict = "not tested"   # the premise (a more geometry-preserving encoder) does not hold
  elif absolute is True and scale_free is True:
    verdict = "consistent"
  elif absolute is False and scale_free is False:
    verdict = "inconsistent"
  elif scale_free is True and absolute is False:
    verdict = "consistent in relative terms only"
  elif absolute is True and scale_free is False:
    verdict = "consistent in absolute terms only"
  else:
    verdict = "mixed"
  finished = [m for runs in per_run.values() for m in runs.values()
              if m is not None and m.get("gme_all_pairs") is not None]
  rho = {}
  for k in ("seg_lip_mean", "grad_heldout_rel_spread", "seg_lip_rel_mean"):
    pts = [(m["gme_all_pairs"], m[k]) for m in finished if m.get(k) is not None]
    r = sps.spearmanr(*zip(*pts)).statistic if len(pts) >= 3 else float("nan")
    rho[k] = float(r) if np.isfinite(r) else None
  return {"stats": stats, "geometry_better": geometry_better, "bilip_better": bilip_better,
          "critic_smaller": regular, "absolute_smaller": absolute,
          "scale_free_smaller": scale_free, "verdict": verdict, "spearman_gme_vs": rho,
          "num_runs_correlated": len(finished),
          "diverged": {v: len(f) for v, f in failed.items()}}


def histogram(workdir: str, pooled: dict) -> str:
  """``critic_grad.png``: |grad psi| on held-out and generated points, both variants."""
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for ax, where in zip(axes, ("heldout", "generated")):
    allv = np.concatenate([pooled[v][where] for v in pooled])
    if allv.size:
      hi = float(np.quantile(allv, 0.995)) or 1.0
      bins = np.linspace(0.0, hi, 50)
      for v in pooled:
        if pooled[v][where].size:
          ax.hist(np.clip(pooled[v][where], 0, hi), bins=bins, density=True, alpha=0.5,
                  label=f"{LABELS[v]} (median {np.median(pooled[v][where]):.3g})")
      ax.legend(fontsize=8)
    ax.set_xlabel("|grad psi(x)|")
    ax.set_ylabel("density")
    what = "held-out data" if where == "heldout" else "generated samples"
    ax.set_title(f"critic gradient norms at {what}", fontsize=10)
  fig.tight_layout()
  path = os.path.join(workdir, "critic_grad.png")
  return plots._save(fig, path)  # pylint: disable=protected-access


_f, _yes = common.num, common.yes_no   # report formatting


def report(config, per_run: dict, result: dict, seeds) -> common.Report:
  """The table GMEGAN vs c_T = 0 and the Prop. 2 sentence, from ``analyse``."""
  st = result["stats"]
  rows = [[k] + [None if st[v][k]["mean"] is None else
                 f"{_f(st[v][k]['mean'])} ± {_f(st[v][k]['std'], 2)}" for v in VARIANTS]
          for k in KEYS]
  rows.append(["diverged runs"] + [f"{result['diverged'][v]} of {len(seeds)}" for v in VARIANTS])
  table = common.markdown_table(["measure (mean ± std over seeds)"]
                                + [LABELS[v] for v in VARIANTS], rows)
  g, c = st["gmegan"], st["c_T0"]
  sm = result["critic_smaller"]
  verdict = {
      "consistent": "consistent with Prop. 2: the more geometry-preserving encoder comes with "
                    "the more regular critic on every measure",
      "inconsistent": "not consistent with Prop. 2: the more geometry-preserving encoder comes "
                      "with the less regular critic on every measure",
      "consistent in relative terms only": (
          "consistent with Prop. 2 only in relative terms: GMEGAN's critic varies less "
          "relative to its typical gradient (scale-free measures smaller), but its absolute "
          "gradients and local Lipschitz estimates are larger, i.e. it sits at a larger "
          "overall scale"),
      "consistent in absolute terms only": (
          "consistent with Prop. 2 only in absolute terms: GMEGAN's critic has the smaller "
          "local Lipschitz estimates, but varies more relative to its typical gradient"),
      "mixed": "mixed: the measures of the critic's regularity disagree or differ by less "
               "than the seeds' noise",
      "not judged (one seed)": "not judged: with one seed there is no spread to tell a "
                               "difference from seed noise (a smoke run)",
      "not tested": f"not a test of Prop. 2: c_T = {float(config.gmegan.c_T):g} did not give "
                    "the more geometry-preserving encoder here (lower GME over all held-out "
                    "pairs), so the premise does not hold",
  }[result["verdict"]]
  summary = (
      "Each comparison below says yes/no only where the difference of the means over seeds "
      f"exceeds {gan_ablation.Z_NOISE:g} standard errors (else n/a). "
      f"GMEGAN (c_T = {float(config.gmegan.c_T):g}) vs GMEGAN with c_T = 0 on "
      f"{config.data.name}, {len(seeds)} seed(s), {int(config.gmegan.num_steps)} iterations "
      f"each. Encoder geometry: all-pairs held-out GME {_f(g['gme_all_pairs']['mean'])} vs "
      f"{_f(c['gme_all_pairs']['mean'])} (GMEGAN lower: {_yes(result['geometry_better'])}), "
      f"weakly 1.5-bi-Lipschitz pairs {_f(g['weak_bilip_frac_a1.5']['mean'])} vs "
      f"{_f(c['weak_bilip_frac_a1.5']['mean'])} (GMEGAN higher: "
      f"{_yes(result['bilip_better'])}). Critic, absolute: local Lipschitz estimate along "
      f"nearest-neighbour segments {_f(g['seg_lip_mean']['mean'])} vs "
      f"{_f(c['seg_lip_mean']['mean'])} (GMEGAN smaller: {_yes(sm['seg_lip_mean'])}), "
      f"difference quotient {_f(g['diff_quot_mean']['mean'])} vs "
      f"{_f(c['diff_quot_mean']['mean'])} (smaller: {_yes(sm['diff_quot_mean'])}); "
      f"scale-free: relative spread of |grad psi| on held-out data "
      f"{_f(g['grad_heldout_rel_spread']['mean'])} vs "
      f"{_f(c['grad_heldout_rel_spread']['mean'])} (smaller: "
      f"{_yes(sm['grad_heldout_rel_spread'])}), segment maximum over the median gradient "
      f"{_f(g['seg_lip_rel_mean']['mean'])} vs {_f(c['seg_lip_rel_mean']['mean'])} (smaller: "
      f"{_yes(sm['seg_lip_rel_mean'])}). The measured numbers are {verdict}.")
  rho = result["spearman_gme_vs"]
  if any(r is not None for r in rho.values()):
    summary += (f" Over all {result['num_runs_correlated']} runs, the Spearman correlation of "
                "the all-pairs held-out GME with the local Lipschitz estimate is "
                f"{_f(rho['seg_lip_mean'], 2)}, with the relative spread "
                f"{_f(rho['grad_heldout_rel_spread'], 2)}, with the segment ratio "
                f"{_f(rho['seg_lip_rel_mean'], 2)} (Prop. 2 suggests positive ones).")
  notes = [
      "Measures: `grad_*` are |grad psi(x)| at held-out points (`heldout`) and at the run's "
      "samples G(z) (`generated`); `rel_spread` = (q95 - q05) / q50; `seg_lip_*` the maximum "
      f"of |grad psi| over {SEGMENT_POINTS} points of the segment from each held-out point to "
      "its nearest held-out neighbour (statistics over points) and `seg_lip_rel_mean` its mean "
      "divided by the median |grad psi| at held-out points; `diff_quot_*` |psi(a) - psi(b)| / "
      "|a - b| on the same pairs. Geometry from the GMEGAN stage's summary (GME over all "
      "held-out pairs, weak bi-Lipschitz fractions, c-cyclical monotonicity).",
      "Absolute vs scale-free: a critic is defined up to its overall scale, which the balance "
      "of the gap E psi(G z) - E psi(x) against the gradient penalty (k/2) E|grad psi|^p sets "
      "and which differs between the variants; absolute Lipschitz estimates mix that scale "
      "with the critic's shape, the scale-free measures (divided by the median gradient norm) "
      "compare the shape alone.",
      "Caveat: Prop. 2 is about the optimal critic (dual potential) of the minimax problem; the "
      "measured critic is the network after finitely many steps of a penalised objective. The "
      "comparison tests a tendency, not the bound.",
  ]
  numbers = {"seeds": list(seeds), "stats": st, "verdict": result["verdict"],
             "geometry_better": result["geometry_better"],
             "bilip_better": result["bilip_better"], "critic_smaller": sm,
             "absolute_smaller": result["absolute_smaller"],
             "scale_free_smaller": result["scale_free_smaller"],
             "spearman_gme_vs": rho, "diverged": result["diverged"],
             "runs": {v: {str(s): m for s, m in runs.items()} for v, runs in per_run.items()},
             "variants": {v: dict(ov) for v, ov in VARIANTS.items()},
             "segment_points": SEGMENT_POINTS}
  return common.Report(
      title=f"GMEGAN critic regularity vs encoder geometry (Prop. 2), {config.data.name}",
      summary=summary, tables=[table],
      figures={"critic_grad.png": "|grad psi(x)| of the final critic, pooled over seeds: at "
                                  "held-out data (left) and at generated samples (right), "
                                  "GMEGAN vs c_T = 0."},
      numbers=numbers, notes=notes)


if __name__ == "__main__":
  common.main(run, "gpe_jax.experiments.gan_critic")
