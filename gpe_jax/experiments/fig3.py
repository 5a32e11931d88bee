"""Fig. 3 of the paper: the configured data embedded by the GPE encoder and by a VAE.

The paper embeds a mixture of Gaussians in 500-D (``configs/mixture.py``) into 2-D: the GPE
encoder keeps the layout of the components, the VAE squeezes them into one Gaussian blob.

Two variants of the configured run, identical but for their stages:

  * ``gpe``: ``stages=("encoder",)``, the GPE encoder trained alone on the GME cost;
  * ``vae``: ``stages=("vae",)``, the VAE baseline (encoder and decoder trained jointly; its
    embedding is the encoder's mean).

Both encoders are restored from their checkpoints and embed the same held-out points (the first
``config.eval.geometry_points`` of the held-out split, the points their stages' geometry
metrics were computed on). ``fig3.png`` shows the two embeddings side by side, coloured by
label (the mixture component), with a third panel of the data's own first two principal
components for reference; embeddings of more than two dimensions are drawn on their first two
principal components. The table gives each encoder's geometry metrics from its stage summary.

    python -m gpe_jax.experiments.fig3 --config=configs/mixture.py --workdir=runs/fig3
    python -m gpe_jax.experiments.fig3 --config=configs/mixture.py:smoke --workdir=/tmp/fig3
"""
from __future__ import annotations

import logging
import math
import os

import numpy as np
from matplotlib import pyplot as plt

from gpe_jax import parallel, plots, train_loop
from gpe_jax.data import load_dataset
from gpe_jax.evals import geometry
from gpe_jax.experiments import common, encoders
from gpe_jax.stages import common as stage_common

VARIANTS = {"gpe": ("encoder",), "vae": ("vae",)}
LABELS = {"gpe": "GPE encoder", "vae": "VAE (encoder mean)"}
STAGE_OF = {"gpe": "encoder", "vae": "vae"}


def metric_keys(summary: dict) -> list[str]:
  """The geometry metrics of a stage summary, in table order (whatever alphas, k and
  quantiles the config asked for; see ``gpe_jax.evals.geometry.geometry_metrics``)."""
  def starting(prefix):
    return sorted(k for k in summary if k.startswith(prefix))
  keys = ["gme_all_pairs", "gme_all_pairs_distinct"]
  keys += starting("weak_bilip_frac_a") + starting("weak_bilip_bound_a")
  keys += starting("knn_preservation_k") + ["spearman_dist"]
  keys += ["ratio_q01", "ratio_q50", "ratio_q99"]
  return [k for k in keys if k in summary]


def project_2d(v: np.ndarray) -> tuple[np.ndarray, str]:
  """(points [n, 2], axis description): ``v`` itself when it has <= 2 columns, else its
  projection on the first two principal components (centred SVD)."""
  v = np.asarray(v, np.float64).reshape(v.shape[0], -1)
  if v.shape[1] == 2:
    return v, "coordinates 1-2"
  if v.shape[1] == 1:
    return np.stack([v[:, 0], np.zeros(v.shape[0])], axis=1), "coordinate 1"
  vc = v - v.mean(axis=0)
  _, s, vt = np.linalg.svd(vc, full_matrices=False)
  var = np.square(s)
  share = float(var[:2].sum() / var.sum()) if var.sum() > 0 else 0.0
  return vc @ vt[:2].T, f"first 2 PCs of {v.shape[1]}-D ({100 * share:.1f}% of variance)"


def _scatter(ax, pts: np.ndarray, labels, title: str) -> None:
  plots.scatter_by_label(ax, pts, labels, size=4 if pts.shape[0] > 2000 else 9, alpha=0.75)
  ax.set_aspect("equal", adjustable="datalim")
  ax.set_title(title, fontsize=9)


def _describe(shape) -> str:
  if len(shape) == 1:
    return f"{shape[0]}-D vectors"
  return f"{'x'.join(map(str, shape))} images"


def _fmt(v) -> str:
  return "n/a" if v is None or not math.isfinite(float(v)) else f"{float(v):.3g}"


def embed_heldout(ctx: stage_common.Context, name: str, x: np.ndarray) -> np.ndarray:
  """Raw embeddings T(x) of the variant's trained encoder (the mean for the VAE), the same
  map its stage evaluated the geometry metrics on (read back from its manifest)."""
  stage = STAGE_OF[name]
  embed = encoders.frozen_embed(ctx, train_loop.checkpoint_dir(ctx.workdir, stage))
  return stage_common.batched_apply(embed, x, ctx.config.data.batch_size)


def run(config, workdir: str) -> common.Report:
  summaries = {name: common.run_variant(config, workdir, name, stages=stages)
               for name, stages in VARIANTS.items()}
  results = {name: summaries[name][STAGE_OF[name]] for name in VARIANTS}

  data = load_dataset(config.data)
  mesh = parallel.make_mesh(config.num_devices)
  n_geo = min(int(config.eval.geometry_points), data.x_test.shape[0])
  x_geo = data.x_test[:n_geo]
  labels = None if data.y_test is None else data.y_test[:n_geo]
  latent_dim = int(config.model.latent_dim)

  embeddings, checks = {}, {}
  for name, stages in VARIANTS.items():
    ctx = stage_common.Context(config=common.variant(config, stages=stages),
                               workdir=os.path.join(workdir, name), mesh=mesh, data=data,
                               writer=None)
    z = embed_heldout(ctx, name, x_geo)
    embeddings[name] = z
    # The restored encoder must be the one the stage measured: recompute its held-out GME.
    gme = geometry.geometry_metrics(x_geo, z, alphas=tuple(config.eval.alphas),
                                    knn_k=config.eval.knn_k)["gme_all_pairs"]
    checks[name] = gme
    ref = results[name].get("gme_all_pairs")
    if ref is not None and not math.isclose(gme, ref, rel_tol=1e-3, abs_tol=1e-6):
      logging.warning("fig3: %s held-out GME of the restored encoder %.6g differs from its "
                      "stage summary's %.6g", name, gme, ref)

  # Figure: GPE | VAE | data.
  fig, axes = plt.subplots(1, 3, figsize=(15, 5))
  a15 = "weak_bilip_frac_a1.5"
  for ax, name in zip(axes[:2], VARIANTS):
    pts, how = project_2d(embeddings[name])
    r = results[name]
    _scatter(ax, pts, labels,
             f"{LABELS[name]} ({r.get('steps')} steps)\nall-pairs held-out GME {_fmt(r.get('gme_all_pairs'))}"
             f", weak 1.5-bi-Lipschitz {_fmt(r.get(a15))}")
    ax.set_xlabel(f"latent, {how}", fontsize=8)
  pts, how = project_2d(x_geo.reshape(n_geo, -1))
  _scatter(axes[2], pts, labels, f"data (reference)\n{how}")
  axes[2].set_xlabel(f"data, {how}", fontsize=8)
  if labels is not None and np.unique(labels).size <= 20:
    axes[2].legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1.02, 0.5),
                   title="label", title_fontsize=8)
  fig.suptitle(f"{data.name}: {n_geo} held-out points embedded in {latent_dim}-D")
  fig.tight_layout()
  plots._save(fig, os.path.join(workdir, "fig3.png"))  # pylint: disable=protected-access

  keys = [k for k in metric_keys(results["gpe"]) if k in results["vae"]]
  table = common.markdown_table(
      ["metric", "GPE encoder", "VAE"],
      [[k, results["gpe"][k], results["vae"][k]] for k in keys]
      + [["training steps", results["gpe"].get("steps"), results["vae"].get("steps")],
         ["training seconds", results["gpe"].get("seconds"), results["vae"].get("seconds")]])
  numbers = {name: dict({k: float(results[name][k]) for k in keys},
                        steps=int(results[name].get("steps", 0)),
                        seconds=float(results[name].get("seconds", float("nan"))),
                        gme_all_pairs_restored=float(checks[name]))
             for name in VARIANTS}
  numbers["vae"]["val_recon_mse"] = float(results["vae"].get("val_recon_mse", float("nan")))
  numbers.update(num_points=n_geo, latent_dim=latent_dim, dataset=data.name,
                 data_shape=list(data.example_shape))

  g, v = results["gpe"], results["vae"]
  better = "lower" if g.get("gme_all_pairs", math.inf) < v.get("gme_all_pairs", math.inf) \
      else "higher"
  proj = "" if latent_dim <= 2 else (f" The latents are {latent_dim}-D, so each panel shows "
                                     "their first two principal components.")
  summary = (
      f"The {data.name} data ({_describe(data.example_shape)}) embedded "
      f"in {latent_dim}-D by the GPE encoder ({g.get('steps')} steps on the GME cost alone) and "
      f"by the VAE's encoder mean ({v.get('steps')} joint steps), on {n_geo} held-out points. "
      f"The GPE encoder's all-pairs held-out GME is {_fmt(g.get('gme_all_pairs'))} vs the VAE's "
      f"{_fmt(v.get('gme_all_pairs'))} ({better} for GPE); the fraction of held-out pairs that "
      f"are weakly 1.5-bi-Lipschitz is {_fmt(g.get(a15))} vs {_fmt(v.get(a15))}; the median "
      f"ratio |Tx - Ty| / |x - y| is {_fmt(g.get('ratio_q50'))} vs {_fmt(v.get('ratio_q50'))} "
      f"and the Spearman correlation of data and latent distances {_fmt(g.get('spearman_dist'))}"
      f" vs {_fmt(v.get('spearman_dist'))}." + proj)
  notes = [
      "The paper (Fig. 3): GPE keeps the layout of the mixture's components in 2-D, while the "
      "VAE squeezes them into a Gaussian. Compare the first two panels with the third, the "
      "data's own first two principal components (for the mixture these span its first two "
      "coordinates, where the components' centres lie).",
      "Metrics (gpe_jax/evals/geometry.py), all on the same held-out points: `gme_all_pairs` is "
      "the paper's GME (mean over all n^2 ordered pairs), `gme_all_pairs_distinct` the mean over "
      "distinct pairs; `weak_bilip_frac_aA` the fraction of pairs whose log-distortion is within "
      "log A and `weak_bilip_bound_aA` its Markov lower bound from the GME; "
      "`knn_preservation_kK` the mean overlap of the K nearest neighbours in data and latent "
      "space; `spearman_dist` the rank correlation of data and latent distances; `ratio_qQQ` "
      "quantiles of |Tx - Ty| / |x - y|. The VAE's metrics are of its raw encoder mean (no "
      "rescaling), as the GME is scale-sensitive by design.",
      f"Each variant trains with its own config section (encoder: {g.get('steps')} steps, "
      f"vae: {v.get('steps')} steps, see config.encoder / config.vae); the restored encoders "
      f"reproduce their stage summaries' held-out GME ({_fmt(checks['gpe'])}, "
      f"{_fmt(checks['vae'])}).",
  ]
  return common.Report(
      title=f"Fig. 3: {data.name} embedded by GPE and by a VAE", summary=summary,
      tables=[table],
      figures={"fig3.png": f"Held-out embeddings: GPE encoder (left), VAE encoder mean "
                           f"(middle), the data's first two principal components (right), "
                           f"coloured by label.{proj}"},
      numbers=numbers, notes=notes)


if __name__ == "__main__":
  common.main(run, "gpe_jax.experiments.fig3")
