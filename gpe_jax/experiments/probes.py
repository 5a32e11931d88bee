"""Hessian probes of the GPE paper's curvature statements (PAPERS §1.2, §1.6), one command.

    python -m gpe_jax.experiments.probes --config=configs/default.py --workdir=runs/probes
    python -m gpe_jax.experiments.probes --config=configs/default.py:smoke --workdir=/tmp/probes
    python -m gpe_jax.experiments.probes --config=configs/fashion_mnist.py --workdir=runs/probes_fmnist \
        --config.probes.which=ae \
        --config.probes.encoder_checkpoint=runs/fashion_mnist/encoder/checkpoints

Each probe adds a table, a figure (``probe_<letter>_<name>.png``) and its numbers (key = the
letter in ``numbers.json``) to the report in ``--workdir``:

  (a) ``scaling``: the largest |eigenvalue| of the GME Hessian and of the squared-distance
      (MDS-type) cost's Hessian at embeddings beta * Z0, Z0 from a random and a trained
      encoder scaled to a median distance ratio of 1, for the betas of
      ``config.probes.betas``; in two spaces of directions: the embedded points Z themselves
      and linear maps A added to the encoder (Z0 + X A^T, the Lipschitz-normalised directions
      of Thm 3). Theory: the GME bound grows like log beta, the squared cost's like beta^2.
  (b) ``training``: the extreme eigenvalues of the GME Hessian (in Z) on held-out points during
      the encoder's training, against the GME value (Thm 3: the lower end tends to 0 as the GME
      falls). Recorded by the encoder-stage evaluator ``hessian`` (``gpe_jax.evals.plugins``).
  (c) ``decoder``: GPE encoders stopped at several held-out GME values
      (``config.probes.stop_fractions``) and the VAE's encoder: the spectrum of the
      reconstruction Hessian of a random-feature decoder on each encoder's normalised latents
      (the decoder as a function on the latent space, Thm 4) and gradient descent on it, the
      extreme eigenvalues of a real decoder's parameter Hessian during its training (decoder
      evaluator ``hessian``), and that decoder's held-out MSE curve.
  (d) ``bilip``: for each encoder of (c) and a random one, the fraction of held-out pairs that
      are *not* weakly alpha-bi-Lipschitz against the Markov bound GME / (log alpha)^2 of Thm 2.
  (e) ``collapse``: at a collapsed (constant) map the GME gradient is 0 and its Hessian is
      -(8 / n^2) L (x) I_d with L the graph Laplacian of the weights log(1 + |x_i - x_j|^2):
      negative in every direction but the translations (Prop. 2); a step along the bottom
      eigenvector lowers the GME.

Encoders are trained as variants in subfolders of the workdir (``gpe_jax.experiments``
machinery: resumable, reused by later runs); (a) and (e) train nothing when
``config.probes.encoder_checkpoint`` names a trained GPE encoder (only (a) needs one).
"""
from __future__ import annotations

import functools
import logging
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib import pyplot as plt

from gpe_jax import costs, models, train_loop
from gpe_jax.evals import hessian
from gpe_jax.experiments import common, encoders
from gpe_jax.parallel import ConfigError
from gpe_jax.stages import common as stage_common

PROBES = {"a": "scaling", "b": "training", "c": "decoder", "d": "bilip", "e": "collapse"}
VAE_VARIANT = "vae"
# Scheduled Hessian evaluations per training run: encoders of (b), decoders of (c).
ENCODER_HESSIANS = 200
DECODER_HESSIANS = 10


def figure_name(letter: str) -> str:
  return f"probe_{letter}_{PROBES[letter]}.png"


def selected(config) -> str:
  """The probe letters of ``config.probes.which``, in order, checked."""
  which = str(config.probes.which).replace(",", "").strip().lower()
  bad = sorted(set(which) - set(PROBES))
  if bad or not which:
    raise ConfigError(f"config.probes.which={config.probes.which!r} names unknown probe(s) "
                      f"{bad}; use letters of 'abcde': " +
                      ", ".join(f"{k} = {v}" for k, v in PROBES.items()) + ".")
  return "".join(sorted(set(which)))


def validate(config) -> str:
  """Every probe setting, checked before anything trains; returns the selected letters."""
  which = selected(config)
  p = config.probes
  problems = []
  for key, least in (("points", 2), ("lanczos_iters", 2), ("dense_max", 0), ("num_features", 1),
                     ("decoder_points", 2), ("gd_steps", 1)):
    if int(p[key]) < least:
      problems.append(f"probes.{key}={p[key]} (need >= {least})")
  if not p.betas or any(float(b) <= 0 for b in p.betas):
    problems.append(f"probes.betas={tuple(p.betas)} (need positive scales)")
  if not p.stop_fractions or any(not 0 <= float(f) <= 1 for f in p.stop_fractions):
    problems.append(f"probes.stop_fractions={tuple(p.stop_fractions)} (need values in [0, 1])")
  if not p.alphas or any(float(a) <= 1 for a in p.alphas):
    problems.append(f"probes.alphas={tuple(p.alphas)} (need values > 1)")
  if problems:
    raise ConfigError("Invalid Hessian probe settings: " + "; ".join(problems) + ". Fix them "
                      "with --config.probes.<name>=...")
  path = str(p.encoder_checkpoint)
  if path and not os.path.isdir(path):
    raise ConfigError(f"config.probes.encoder_checkpoint={path!r} is not a directory; give the "
                      "checkpoints folder of a finished GPE encoder stage "
                      "(e.g. runs/NAME/encoder/checkpoints), or '' to train one.")
  return which


# ----------------------------------------------------------------------------------------------
# Shared: batches, encoders, Lanczos at a scale.

def _points(ctx, n: int) -> np.ndarray:
  """The first ``n`` held-out examples, flattened float32 [n, D]."""
  x = ctx.data.x_test[:min(int(n), ctx.data.x_test.shape[0])]
  return np.asarray(x, np.float32).reshape(x.shape[0], -1)


def random_encoder(ctx):
  """``x -> T(x)`` of the configured GPE encoder at its initialisation (seed = config.seed)."""
  model = models.build_encoder(ctx.config.model, ctx.data.example_shape)
  params, batch_stats = models.init_variables(model, jax.random.key(ctx.config.seed),
                                              ctx.data.example_shape)
  return functools.partial(stage_common.inference_fn(model), params, batch_stats)


def _embed(embed, ctx, x_flat: np.ndarray) -> np.ndarray:
  x = x_flat.reshape((-1,) + tuple(ctx.data.example_shape))
  z = stage_common.batched_apply(embed, x, ctx.config.data.batch_size)
  return np.asarray(z, np.float64).reshape(x.shape[0], -1)


def _upper(m: np.ndarray) -> np.ndarray:
  return m[np.triu_indices(m.shape[0], k=1)]


def _pair_dists(a: np.ndarray) -> np.ndarray:
  return np.sqrt(_upper(np.asarray(costs.pairwise_sq_dists(jnp.asarray(a, jnp.float32)),
                                   np.float64)))


def _with_plugins(config, evals_encoder=(), evals_decoder=()):
  """``config`` with the scheduled curvature evaluators: the encoder's about
  ``ENCODER_HESSIANS`` times per run, the decoder's (larger problems) ``DECODER_HESSIANS``."""
  def interval(section, evals_per_run, parts):
    base = encoders.every(section.num_steps, parts)   # the experiments' evaluation interval
    return max(base, int(section.num_steps) // evals_per_run // base * base)
  return common.variant(config, **{
      "encoder.evals": tuple(evals_encoder), "decoder.evals": tuple(evals_decoder),
      "encoder.evals_every": interval(config.encoder, ENCODER_HESSIANS, encoders.ENCODER_EVALS),
      "decoder.evals_every": interval(config.decoder, DECODER_HESSIANS, encoders.DECODER_EVALS)})


class Encoders:
  """The trained encoders the probes share, trained on first use (as workdir variants)."""

  def __init__(self, config, workdir: str, ctx):
    self.config, self.workdir, self.ctx = config, workdir, ctx
    self.train_config = _with_plugins(config, ("hessian", "hessian_mds", "bilip"),
                                      ("hessian",))
    self._gpe = None

  def gpe(self):
    """(encoder curve dict, stops) of ``encoders.frozen_gpe_encoders``."""
    if self._gpe is None:
      fractions = tuple(float(f) for f in self.config.probes.stop_fractions)
      self._gpe = encoders.frozen_gpe_encoders(self.train_config, self.workdir, self.ctx,
                                               fractions)
    return self._gpe

  def trained_gpe(self):
    """(embed, label) of the final GPE encoder: ``config.probes.encoder_checkpoint`` or the
    encoder of (b)/(c)."""
    path = str(self.config.probes.encoder_checkpoint)
    if path:
      return encoders.frozen_embed(self.ctx, os.path.abspath(path)), "trained GPE"
    enc, _ = self.gpe()
    return encoders.frozen_embed(self.ctx, enc["ckpt_dir"]), "trained GPE"

  def vae(self) -> dict:
    summary = common.run_variant(self.train_config, self.workdir, VAE_VARIANT,
                                 stages=("vae",))["vae"]
    ckpt = train_loop.checkpoint_dir(os.path.join(self.workdir, VAE_VARIANT), "vae")
    return {"name": f"VAE (beta {float(self.config.vae.beta):g}), step {summary['steps']}",
            "method": "vae", "ckpt_dir": ckpt, "gme": encoders.val_gme(self.ctx, ckpt),
            "variant": "decoder_vae", "step": int(summary["steps"])}

  def all_trained(self) -> list[dict]:
    """The stopped GPE encoders (increasing step) and the VAE's, each a dict with ``name``,
    ``method``, ``ckpt_dir``, ``gme`` (held-out, the encoder stage's measure), ``variant``."""
    _, stops = self.gpe()
    rows = [dict(s, name=f"GPE step {s['step']}", method="gpe") for s in stops]
    return rows + [self.vae()]


def _scaled_lanczos(x: np.ndarray, cost: str, space: str, iters: int, key):
  """Jitted ``z [n, d] -> lanczos(...)`` of the cost's Hessian at ``z``, in the space of
  directions ``'points'`` (Z) or ``'linear'`` (A in Z + X A^T)."""
  target = hessian.pair_targets(x, cost)
  xj = jnp.asarray(x)

  @jax.jit
  def run(z):
    if space == "points":
      hvp, dim = hessian.make_hvp(lambda v: hessian.embedding_cost(target, v, cost), z)
    else:
      hvp, dim = hessian.make_hvp(
          lambda a: hessian.embedding_cost(target, z + xj @ a.T, cost),
          jnp.zeros((z.shape[1], xj.shape[1]), z.dtype))
    return hessian.lanczos(hvp, dim, iters, key)
  return run


def _loglog_slope(x, y) -> float:
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  ok = (x > 0) & (y > 0)
  return float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0]) if ok.sum() >= 2 else math.nan


# ----------------------------------------------------------------------------------------------
# (a) Curvature against the Lipschitz scale.

def probe_scaling(config, workdir: str, ctx, encs: Encoders) -> dict:
  probes = config.probes
  x = _points(ctx, probes.points)
  betas = np.array(sorted(float(b) for b in probes.betas))
  trained, trained_label = encs.trained_gpe()
  embedders = {"random encoder": random_encoder(ctx), trained_label: trained}
  key = jax.random.key(config.seed)
  iters = int(probes.lanczos_iters)
  runs = {(c, s): _scaled_lanczos(x, c, s, iters, key) for c in hessian.COSTS
          for s in ("points", "linear")}
  dx = _pair_dists(x)
  results = {}
  for enc_name, embed in embedders.items():
    z = _embed(embed, ctx, x)
    z -= z.mean(axis=0)
    dz = _pair_dists(z)
    ok = (dx > 0) & (dz > 0)
    z0 = z * float(np.median(dx[ok] / dz[ok]))   # median distance ratio 1
    lip0 = float(np.max(_pair_dists(z0)[dx > 0] / dx[dx > 0]))
    entry = {"lipschitz_at_beta1": lip0, "betas": betas.tolist()}
    for (cost, space), run in runs.items():
      lmax, lmin = [], []
      for beta in betas:
        ritz = hessian.ritz_extremes(*run(jnp.asarray(beta * z0, jnp.float32)))
        lmax.append(ritz["lambda_max"])
        lmin.append(ritz["lambda_min"])
      radius = np.maximum(np.abs(lmin), np.abs(lmax))   # what bounds a stable step size
      big = betas >= 1
      entry[f"{cost}_{space}"] = {"lambda_max": lmax, "lambda_min": lmin,
                                  "radius": radius.tolist(),
                                  "slope_beta_ge_1": _loglog_slope(betas[big], radius[big])}
    results[enc_name] = entry

  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  styles = {"random encoder": "--", trained_label: "-"}
  for ax, space, title in zip(axes, ("points", "linear"), (
      "directions: the embedded points Z (unit |V|)",
      "directions: linear maps A, Z0 + X A^T (|A|_F = 1)")):
    for enc_name, entry in results.items():
      for cost, color in (("gme", "C0"), ("sqdist", "C1")):
        r = entry[f"{cost}_{space}"]
        label = f"{'GME' if cost == 'gme' else 'squared distances'}, {enc_name}"
        ax.loglog(betas, r["radius"], styles[enc_name], color=color,
                  marker="o", ms=3, label=label)
    ax.set_xlabel("beta (embedding scale; median distance ratio = beta)")
    ax.set_ylabel("largest |eigenvalue| of the Hessian")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
  axes[0].legend(fontsize=7)
  fig.suptitle(f"{ctx.data.name}: curvature of the GME vs the squared-distance cost at scale "
               f"beta ({x.shape[0]} held-out points)", fontsize=10)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, figure_name("a")), dpi=110)
  plt.close(fig)

  show = [b for b in (betas[0], 1.0, betas[len(betas) // 2], betas[-1]) if b in betas]
  show = sorted(set(show))
  rows = []
  for enc_name, entry in results.items():
    for cost in hessian.COSTS:
      for space in ("points", "linear"):
        r = entry[f"{cost}_{space}"]
        rows.append([enc_name, "GME" if cost == "gme" else "squared distances", space] +
                    [r["radius"][int(np.searchsorted(betas, b))] for b in show] +
                    [r["slope_beta_ge_1"]])
  table = common.markdown_table(
      ["encoder", "cost", "directions"] + [f"max abs eigenvalue at beta {b:g}" for b in show] +
      ["log-log slope, beta >= 1"], rows)
  summary = ("**(a)** Largest absolute Hessian eigenvalue against the embedding scale beta: the "
             "squared-distance cost's grows with log-log slope " +
             ", ".join(f"{results[e][f'sqdist_{s}']['slope_beta_ge_1']:.2f}"
                       for e in results for s in ("points", "linear")) +
             " (theory: 2), the GME's has slope " +
             ", ".join(f"{results[e][f'gme_{s}']['slope_beta_ge_1']:.2f}"
                       for e in results for s in ("points", "linear")) +
             " (theory: at most logarithmic growth) — random / trained encoder, points / "
             "linear-map directions.")
  return {"numbers": {"points": int(x.shape[0]), "lanczos_iters": iters, "encoders": results},
          "table": table, "summary": summary,
          "caption": "(a) largest absolute Hessian eigenvalue of the GME and the "
                     "squared-distance cost against the embedding scale beta"}


# ----------------------------------------------------------------------------------------------
# (b) During the encoder's training.

def probe_training(config, workdir: str, ctx, encs: Encoders) -> dict:
  enc, _ = encs.gpe()
  run_dir = enc["run_dir"]
  steps, lmin = common.curve(run_dir, "encoder", "hess_gme_min")
  _, lmax = common.curve(run_dir, "encoder", "hess_gme_max")
  _, gme = common.curve(run_dir, "encoder", "hess_gme_batch")
  _, mds = common.curve(run_dir, "encoder", "hess_mds_max")
  _, mds_min = common.curve(run_dir, "encoder", "hess_mds_min")
  if not len(steps):
    raise RuntimeError(f"{run_dir}/metrics.jsonl has no hess_gme_* rows; the encoder variant "
                       "ran without the 'hessian' evaluator (delete the variant to redo it).")
  order = np.argsort(gme)
  spearman_min = _spearman(gme, np.abs(lmin))
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  ax = axes[0]
  ax.semilogx(gme, lmax, "o-", ms=3, color="C1", label="lambda_max (GME)")
  ax.semilogx(gme, lmin, "o-", ms=3, color="C0", label="lambda_min (GME)")
  ax.axhline(0, color="k", lw=0.6)
  ax.set_xlabel("GME of the probed held-out batch")
  ax.set_ylabel("Hessian eigenvalue (w.r.t. Z)")
  ax.invert_xaxis()
  ax.legend(fontsize=8)
  ax.set_title("extreme eigenvalues against the GME (training runs right to left)", fontsize=9)
  ax = axes[1]
  ax.plot(steps, lmax, color="C1", label="lambda_max (GME)")
  ax.plot(steps, lmin, color="C0", label="lambda_min (GME)")
  ax.axhline(0, color="k", lw=0.6)
  ax2 = ax.twinx()
  ax2.semilogy(steps, gme, color="C2", lw=1, label="GME (right axis)")
  ax.set_xlabel("encoder step")
  ax.legend(fontsize=8, loc="upper right")
  ax2.legend(fontsize=8, loc="center right")
  ax.set_title("against the training step", fontsize=9)
  fig.suptitle(f"{ctx.data.name}: GME Hessian on {int(config.probes.points)} held-out points "
               "during the encoder's training", fontsize=10)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, figure_name("b")), dpi=110)
  plt.close(fig)

  picks = sorted(set([0, len(steps) // 4, len(steps) // 2, len(steps) - 1]))
  table = common.markdown_table(
      ["step", "GME (probed batch)", "lambda_min", "lambda_max", "-lambda_min / lambda_max",
       "squared-distance cost: lambda_min", "lambda_max"],
      [[int(steps[i]), gme[i], lmin[i], lmax[i], -lmin[i] / max(lmax[i], 1e-30)] +
       ([mds_min[i], mds[i]] if len(mds) == len(mds_min) == len(steps) else [None, None])
       for i in picks])
  summary = (f"**(b)** Over the encoder's training (GME of the probed batch "
             f"{gme[0]:.3g} -> {gme[-1]:.3g}), lambda_min of the GME Hessian went "
             f"{lmin[0]:.3g} -> {lmin[-1]:.3g} and lambda_max {lmax[0]:.3g} -> {lmax[-1]:.3g}; "
             f"Spearman correlation of GME and |lambda_min| over {len(steps)} evaluations: "
             f"{spearman_min:.2f} (Thm 3: the negative part shrinks with the GME).")
  return {"numbers": {"steps": steps.tolist(), "gme": gme.tolist(), "lambda_min": lmin.tolist(),
                      "lambda_max": lmax.tolist(), "sqdist_lambda_max": mds.tolist(),
                      "sqdist_lambda_min": mds_min.tolist(),
                      "spearman_gme_abs_lambda_min": spearman_min,
                      "lowest_gme_lambda_min": float(lmin[order[0]])},
          "table": table, "summary": summary,
          "caption": "(b) extreme eigenvalues of the GME Hessian during the encoder's training"}


def _spearman(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if len(a) < 3:
    return math.nan
  ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
  return float(np.corrcoef(ra, rb)[0, 1])


# ----------------------------------------------------------------------------------------------
# (c) Decoder conditioning against the encoder's distortion.

def feature_decoder(z: np.ndarray, x: np.ndarray, num_features: int, key, gd_steps: int):
  """Spectrum of the random-feature decoder's reconstruction Hessian on latents ``z`` (already
  normalised) and gradient descent on it with step 1 / lambda_max.

  Returns:
    dict: ``eigenvalues`` (ascending), ``lambda_min``, ``lambda_max``, ``condition``,
    ``gd_excess`` (excess loss over the least-squares optimum after ``gd_steps`` steps,
    relative to the excess at C = 0) and ``gd_curve`` (excess at each step).
  """
  phi = np.asarray(hessian.random_features(jnp.asarray(z, jnp.float32), num_features, key),
                   np.float64)
  x = np.asarray(x, np.float64).reshape(x.shape[0], -1)
  n, dim = x.shape
  evals = hessian.feature_hessian_spectrum(phi, dim)
  lam_min, lam_max = float(max(evals[0], 0.0)), float(evals[-1])

  def loss(c):
    return float(np.mean(np.square(x - phi @ c)))
  best = loss(np.linalg.lstsq(phi, x, rcond=None)[0])
  c = np.zeros((phi.shape[1], dim))
  start = loss(c) - best
  curve = []
  for _ in range(int(gd_steps)):
    grad = (-2.0 / (n * dim)) * phi.T @ (x - phi @ c)
    c -= grad / lam_max
    curve.append(max(loss(c) - best, 0.0) / max(start, 1e-30))
  return {"eigenvalues": evals, "lambda_min": lam_min, "lambda_max": lam_max,
          "condition": lam_max / lam_min if lam_min > 0 else math.inf,
          "gd_excess": curve[-1] if curve else 1.0, "gd_curve": curve}


def probe_decoder(config, workdir: str, ctx, encs: Encoders) -> dict:
  probes = config.probes
  n = min(int(probes.decoder_points), ctx.data.x_train.shape[0])
  x = np.asarray(ctx.data.x_train[:n], np.float32).reshape(n, -1)
  rows = []
  for enc in encs.all_trained():
    z = _embed(encoders.frozen_embed(ctx, enc["ckpt_dir"]), ctx, x)
    z = stage_common.normalize_latents(z, stage_common.latent_stats(z))
    feat = feature_decoder(z, x, int(probes.num_features), jax.random.key(config.seed),
                           int(probes.gd_steps))
    encoders.train_decoder(encs.train_config, workdir, enc["variant"], enc["method"],
                           enc["ckpt_dir"])
    run_dir = os.path.join(workdir, enc["variant"])
    curves = encoders.decoder_curves(run_dir)
    h_steps, h_max = common.curve(run_dir, "decoder", "hess_recon_max")
    _, h_min = common.curve(run_dir, "decoder", "hess_recon_min")
    rows.append(dict(enc, feat=feat, curves=curves, hess_steps=h_steps, hess_max=h_max,
                     hess_min=h_min))

  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  for i, r in enumerate(rows):
    label = f"{r['name']} (GME {r['gme']:.3g})"
    ev = np.maximum(r["feat"]["eigenvalues"][::-1], 1e-30)
    axes[0].semilogy(np.arange(1, len(ev) + 1), ev, color=f"C{i}", label=label)
    axes[1].semilogy(np.arange(1, len(r["feat"]["gd_curve"]) + 1),
                     np.maximum(r["feat"]["gd_curve"], 1e-16),
                     color=f"C{i}", label=label)
    axes[2].semilogy(r["curves"]["val_steps"], r["curves"]["val"], color=f"C{i}", label=label)
  axes[0].set_title(f"random-feature decoder ({int(probes.num_features)} features): "
                    "reconstruction Hessian spectrum", fontsize=9)
  axes[0].set_xlabel("eigenvalue index")
  axes[1].set_title("gradient descent on it (step 1 / lambda_max): excess loss", fontsize=9)
  axes[1].set_xlabel("step")
  axes[2].set_title("the configured decoder: held-out MSE", fontsize=9)
  axes[2].set_xlabel("decoder step")
  axes[0].legend(fontsize=7)
  for ax in axes:
    ax.grid(True, which="both", alpha=0.3)
  fig.suptitle(f"{ctx.data.name}: decoder conditioning on frozen encoders (Thm 4)", fontsize=10)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, figure_name("c")), dpi=110)
  plt.close(fig)

  def at(r, frac):
    return encoders.value_at_fraction(r["curves"]["val_steps"], r["curves"]["val"], frac)
  table = common.markdown_table(
      ["encoder", "held-out GME", "feature Hessian lambda_min", "lambda_max", "condition number",
       f"GD excess after {int(probes.gd_steps)} steps", "decoder param. Hessian lambda_max "
       "(first / last)", "held-out MSE at 10% / 100%"],
      [[r["name"], r["gme"], r["feat"]["lambda_min"], r["feat"]["lambda_max"],
        r["feat"]["condition"], r["feat"]["gd_excess"],
        (f"{r['hess_max'][0]:.3g} / {r['hess_max'][-1]:.3g}" if len(r["hess_max"]) else None),
        f"{at(r, 0.1):.4g} / {at(r, 1.0):.4g}"] for r in rows])
  gpe = [r for r in rows if r["method"] == "gpe"]
  by_gme = sorted(gpe, key=lambda r: r["gme"])
  monotone = bool(all(a["feat"]["condition"] <= b["feat"]["condition"]
                      for a, b in zip(by_gme, by_gme[1:])))
  summary = ("**(c)** Condition number of the random-feature decoder's reconstruction Hessian: " +
             ", ".join(f"{r['name']} (GME {r['gme']:.3g}) {r['feat']['condition']:.3g}"
                       for r in rows) +
             f"; among the GPE encoders it {'falls' if monotone else 'does not fall'} "
             "monotonically with the GME. The configured decoders' final held-out MSE: " +
             ", ".join(f"{r['name']} {at(r, 1.0):.4g}" for r in rows) + ".")
  numbers = {r["name"]: {
      "method": r["method"], "gme": r["gme"], "ckpt_dir": r["ckpt_dir"],
      "feature_lambda_min": r["feat"]["lambda_min"], "feature_lambda_max": r["feat"]["lambda_max"],
      "feature_condition": r["feat"]["condition"], "gd_excess": r["feat"]["gd_excess"],
      "decoder_hessian": {"steps": r["hess_steps"].tolist(), "lambda_max": r["hess_max"].tolist(),
                          "lambda_min": r["hess_min"].tolist()},
      "val_curve": {"steps": r["curves"]["val_steps"].tolist(),
                    "val_recon_mse": r["curves"]["val"].tolist()}} for r in rows}
  return {"numbers": {"points": n, "num_features": int(probes.num_features),
                      "condition_monotone_in_gme": monotone, "encoders": numbers},
          "table": table, "summary": summary,
          "caption": "(c) decoder conditioning on GPE encoders of different GME and the VAE's"}


# ----------------------------------------------------------------------------------------------
# (d) Weak bi-Lipschitz fractions against the Markov bound.

def bilip_curve(x: np.ndarray, z: np.ndarray, gme: float, alphas) -> dict:
  """Fraction of distinct pairs violating the weak alpha-bi-Lipschitz bound, and the Markov
  bound min(1, gme / (log alpha)^2), for each alpha."""
  lx = np.log1p(np.square(_pair_dists(x)))
  lz = np.log1p(np.square(_pair_dists(z)))
  dev = np.abs(lx - lz)
  alphas = np.asarray(alphas, np.float64)
  frac = np.array([np.mean(dev > math.log(a)) for a in alphas])
  bound = np.minimum(1.0, gme / np.square(np.log(alphas)))
  return {"alphas": alphas.tolist(), "violating": frac.tolist(), "bound": bound.tolist(),
          "gme_pairs": float(np.mean(np.square(lx - lz))),
          "bound_holds": bool(np.all(frac <= bound + 1e-12))}


def probe_bilip(config, workdir: str, ctx, encs: Encoders) -> dict:
  n = int(config.eval.geometry_points)
  x = _points(ctx, n)
  alphas = tuple(float(a) for a in config.probes.alphas)
  rows = []
  rand = _embed(random_encoder(ctx), ctx, x)
  rows.append({"name": "random encoder", "gme": float(costs.gme_cost(x, rand)), "z": rand})
  for enc in encs.all_trained():
    rows.append(dict(enc, z=_embed(encoders.frozen_embed(ctx, enc["ckpt_dir"]),
                                   ctx, x)))
  for r in rows:
    # Thm 2 with the encoder's held-out GME (the encoder stage's own estimate, other batches),
    # and, as a check of the inequality itself, with the GME of these very pairs.
    r["curve"] = bilip_curve(x, r["z"], r["gme"], alphas)
    r["self"] = bilip_curve(x, r["z"], r["curve"]["gme_pairs"], alphas)

  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  for i, r in enumerate(rows):
    c = r["curve"]
    ax.semilogy(c["alphas"], np.maximum(c["violating"], 1e-6), "o-", ms=3, color=f"C{i}",
                label=f"{r['name']}: measured")
    ax.semilogy(c["alphas"], c["bound"], "--", color=f"C{i}", label="  bound GME/(log a)^2")
  ax.set_xlabel("alpha")
  ax.set_ylabel("fraction of held-out pairs not weakly alpha-bi-Lipschitz")
  ax.set_ylim(1e-6, 1.5)
  ax.legend(fontsize=6)
  ax.grid(True, which="both", alpha=0.3)
  ax.set_title(f"{ctx.data.name}: Thm 2 on {x.shape[0]} held-out points "
               "(1e-6 = none)", fontsize=9)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, figure_name("d")), dpi=110)
  plt.close(fig)

  show = [a for a in (1.1, 1.5, 2.0) if a in alphas] or list(alphas[:3])
  table = common.markdown_table(
      ["encoder", "GME (held-out)"] + [f"violating / bound at alpha {a:g}" for a in show] +
      ["bound holds (held-out GME)", "bound holds (same pairs)"],
      [[r["name"], r["gme"]] + [
          f"{r['curve']['violating'][alphas.index(a)]:.4g} / "
          f"{r['curve']['bound'][alphas.index(a)]:.4g}" for a in show] +
       [r["curve"]["bound_holds"], r["self"]["bound_holds"]] for r in rows])
  summary = ("**(d)** Markov bound of Thm 2 from each encoder's held-out GME: it holds for " +
             ", ".join(f"{r['name']}: {'yes' if r['curve']['bound_holds'] else 'no'}"
                       for r in rows) + " at every alpha of the grid.")
  return {"numbers": {"points": int(x.shape[0]), "encoders": {
      r["name"]: {"gme": r["gme"], **r["curve"], "same_pairs": r["self"]} for r in rows}},
          "table": table, "summary": summary,
          "caption": "(d) weak bi-Lipschitz violations against the Markov bound of Thm 2"}


# ----------------------------------------------------------------------------------------------
# (e) Negative curvature at a collapsed map.

def collapse_hessian_closed_form(x: np.ndarray, d: int) -> np.ndarray:
  """-(8 / n^2) L (x) I_d, L = diag(W 1) - W, W_ij = log(1 + |x_i - x_j|^2): the GME Hessian
  w.r.t. Z at any constant map (float64)."""
  w = np.asarray(hessian.pair_targets(jnp.asarray(x, jnp.float32), "gme"), np.float64)
  w = 0.5 * (w + w.T)   # the float32 Gram form is symmetric only up to rounding
  np.fill_diagonal(w, 0.0)
  lap = np.diag(w.sum(axis=1)) - w
  n = x.shape[0]
  return -(8.0 / n ** 2) * np.kron(lap, np.eye(d))


def probe_collapse(config, workdir: str, ctx, encs: Encoders) -> dict:
  del encs
  probes = config.probes
  d = int(config.model.latent_dim)
  n = max(2, min(int(probes.points), int(probes.dense_max) // d, ctx.data.x_test.shape[0]))
  x = _points(ctx, n)
  fn = hessian.make_embedding_cost(x, "gme")
  z_c = jnp.zeros((n, d), jnp.float32)     # any constant map: the cost is translation invariant
  g0, grad0 = jax.jit(jax.value_and_grad(fn))(z_c)   # one program for both
  g0, grad_norm = float(g0), float(jnp.linalg.norm(grad0))
  dense = np.asarray(hessian.dense_hessian(fn, z_c), np.float64)
  closed = collapse_hessian_closed_form(x, d)
  evals = np.linalg.eigvalsh(dense)
  tol = 1e-6 * abs(evals[0])
  ritz = hessian.extreme_eigenpairs(*hessian.make_hvp(fn, z_c), int(probes.lanczos_iters),
                                    jax.random.key(config.seed))
  v = jnp.asarray(ritz["v_min"].reshape(n, d), jnp.float32)
  # Out to where the quadratic model predicts a 20% drop (v is a unit vector over all n d
  # coordinates: eps = sqrt(n) would move an average point by ~1).
  reach = min(math.sqrt(n), math.sqrt(0.4 * g0 / max(abs(ritz["lambda_min"]), 1e-30)))
  eps = np.linspace(-1.0, 1.0, 41) * reach
  # One compiled program for the 41 points of the line (eager calls compile op by op).
  line = np.asarray(jax.jit(jax.vmap(lambda e: fn(z_c + e * v)))(
      jnp.asarray(eps, jnp.float32)), np.float64)
  quad = g0 + 0.5 * ritz["lambda_min"] * np.square(eps)
  # Random linear maps A: curvature sum_ij -(4/n^2) W_ij |A(x_i - x_j)|^2 < 0 for every A that
  # does not annihilate all data differences.
  lin = hessian.make_linear_direction_cost(x, z_c, "gme")
  lin_hvp, lin_dim = hessian.make_hvp(lin, jnp.zeros((d, x.shape[1]), jnp.float32))
  keys = jax.random.split(jax.random.key(config.seed + 1), 32)

  def curvature(k):   # a^T H a along a random unit direction a
    a = jax.random.normal(k, (lin_dim,), jnp.float32)
    a = a / jnp.linalg.norm(a)
    return jnp.vdot(a, lin_hvp(a))
  curv = np.asarray(jax.jit(jax.vmap(curvature))(keys), np.float64)

  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  ax = axes[0]
  ax.plot(np.arange(1, len(evals) + 1), evals, ".", ms=3)
  ax.axhline(0, color="k", lw=0.6)
  ax.set_xlabel("eigenvalue index (ascending)")
  ax.set_ylabel("eigenvalue")
  ax.set_title(f"GME Hessian at a constant map: {int(np.sum(evals < -tol))} of {len(evals)} "
               f"negative, {int(np.sum(np.abs(evals) <= tol))} ~ 0 (translations: {d})",
               fontsize=9)
  ax = axes[1]
  ax.plot(eps, line, label="GME(constant + eps v_min)")
  ax.plot(eps, quad, "--", label="GME(constant) + lambda_min eps^2 / 2")
  ax.set_xlabel("eps")
  ax.set_ylabel("GME")
  ax.legend(fontsize=8)
  ax.set_title("not a local minimum: the GME falls along v_min", fontsize=9)
  fig.suptitle(f"{ctx.data.name}: Prop. 2 on {n} held-out points, latent dim {d}", fontsize=10)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, figure_name("e")), dpi=110)
  plt.close(fig)

  numbers = {
      "points": n, "latent_dim": d, "gme_at_collapse": g0, "grad_norm": grad_norm,
      "lambda_min_dense": float(evals[0]), "lambda_max_dense": float(evals[-1]),
      "lambda_min_lanczos": ritz["lambda_min"], "lambda_max_lanczos": ritz["lambda_max"],
      "negative_eigenvalues": int(np.sum(evals < -tol)), "expected_negative": (n - 1) * d,
      "max_abs_diff_closed_form": float(np.max(np.abs(dense - closed))),
      "max_abs_hessian": float(np.max(np.abs(dense))),
      "step_eps": float(eps[-1]), "gme_drop_along_v_min": g0 - float(line[-1]),
      "random_linear_maps_negative": f"{int(np.sum(curv < 0))}/{len(curv)}",
      "random_linear_curvature_max": float(curv.max()),
  }
  table = common.markdown_table(
      ["quantity", "value"],
      [["GME at the constant map", g0], ["gradient norm", grad_norm],
       ["lambda_min (dense / Lanczos)", f"{evals[0]:.6g} / {ritz['lambda_min']:.6g}"],
       ["lambda_max (dense / Lanczos)", f"{evals[-1]:.3g} / {ritz['lambda_max']:.3g}"],
       ["negative eigenvalues (expected (n - 1) d)", f"{numbers['negative_eigenvalues']} "
        f"({(n - 1) * d})"],
       ["largest entry of (H - closed form), relative to H's largest",
        numbers["max_abs_diff_closed_form"] / max(numbers["max_abs_hessian"], 1e-30)],
       [f"GME drop along v_min at eps = {eps[-1]:.3g}", numbers["gme_drop_along_v_min"]],
       ["random linear maps with negative curvature", numbers["random_linear_maps_negative"]]])
  summary = (f"**(e)** At a constant map on {n} held-out points: gradient norm {grad_norm:.2g}, "
             f"{numbers['negative_eigenvalues']} of {len(evals)} Hessian eigenvalues negative "
             f"(all but the {d} translations), lambda_min {evals[0]:.4g} (Lanczos "
             f"{ritz['lambda_min']:.4g}); the dense Hessian equals -(8/n^2) L (x) I to "
             f"{numbers['max_abs_diff_closed_form']:.2g}; a step along v_min lowers the GME by "
             f"{numbers['gme_drop_along_v_min']:.3g}: the collapsed map is not a local minimiser "
             "(Prop. 2).")
  return {"numbers": numbers, "table": table, "summary": summary,
          "caption": "(e) spectrum of the GME Hessian at a collapsed map, and the GME along its "
                     "bottom eigenvector"}


PROBE_FNS = {"a": probe_scaling, "b": probe_training, "c": probe_decoder, "d": probe_bilip,
             "e": probe_collapse}


def run(config, workdir: str) -> common.Report:
  """Run the probes of ``config.probes.which`` and return the report (figures in workdir)."""
  which = validate(config)
  ctx = encoders.load_context(config)
  encs = Encoders(config, workdir, ctx)
  report = common.Report(title=f"Hessian probes of the curvature bounds — {ctx.data.name}")
  parts = []
  for letter in which:
    logging.info("probe (%s) %s", letter, PROBES[letter])
    out = PROBE_FNS[letter](config, workdir, ctx, encs)
    report.tables.append(f"### ({letter}) {PROBES[letter]}\n\n" + out["table"])
    report.figures[figure_name(letter)] = out["caption"]
    report.numbers[letter] = out["numbers"]
    parts.append(out["summary"])
  report.summary = "\n\n".join(parts)
  return report


if __name__ == "__main__":
  common.main(run, "gpe_jax.experiments.probes")
