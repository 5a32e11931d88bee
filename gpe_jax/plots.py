"""PNG plots a person would rather look at than read (GUIDE §9).

Every function takes host arrays (NumPy, or JAX arrays, which are converted), writes one PNG,
closes its figure (long runs call these repeatedly; open figures would leak memory) and returns
the path it wrote. On headless training machines the Agg backend is selected here, before pyplot
is imported; inside a Jupyter/Colab kernel, or when MPLBACKEND is set, the backend is left to the
user so inline plots keep working.
"""
from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import matplotlib

if "ipykernel" not in sys.modules and not os.environ.get("MPLBACKEND"):
  matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (must follow matplotlib.use)
from matplotlib.lines import Line2D  # noqa: E402
import numpy as np  # noqa: E402

_DPI = 110


def _save(fig, path) -> str:
  """Writes fig to path (creating the parent folder) on process 0, closes it, returns str(path).

  The other processes of a multi-process run only close the figure: the workdir is written
  by process 0 alone.
  """
  from gpe_jax import logs  # here, not at the top: plotting must not need JAX to import
  path = os.fspath(path)
  try:
    if logs.is_main_process():
      parent = os.path.dirname(path)
      if parent:
        os.makedirs(parent, exist_ok=True)
      with logs.naming(path):
        fig.savefig(path, dpi=_DPI, bbox_inches="tight")
  finally:
    plt.close(fig)
  return path


# --------------------------------------------------------------------------- loss curves


def _finite_float(v: Any) -> float | None:
  """v as a finite float, or None (strings, None, NaN, inf, arrays of size != 1)."""
  try:
    f = float(v)
  except (TypeError, ValueError):
    return None
  return f if math.isfinite(f) else None


def loss_curves(records: Sequence[dict], path, title: str = "") -> str:
  """Training loss and validation metrics vs step, one subplot per stage.

  Args:
    records: metrics.jsonl rows such as
      ``{"stage": "encoder", "step": 10, "loss": 0.1, "val_gme": 0.05}``. Rows without a
      ``stage`` go to a stage named ``"train"``; rows without a ``step`` use their index within
      the stage. ``loss`` is drawn as a line (markers too when there are few points), every
      ``val_*`` key as markers. Non-finite values are skipped. Each panel's y axis is labelled
      with the metrics it shows (and whether it is logarithmic), its x axis "step".
    path: output PNG path.
    title: figure title.

  Returns:
    The path written.
  """
  stages: dict[str, list[dict]] = {}
  for rec in records:
    stages.setdefault(str(rec.get("stage", "train")), []).append(rec)

  ncols = max(1, min(3, len(stages)))
  nrows = max(1, -(-len(stages) // ncols))
  fig, axes = plt.subplots(nrows, ncols, figsize=(5.0 * ncols, 3.6 * nrows), squeeze=False)
  for ax in axes.flat[len(stages):]:
    ax.set_visible(False)
  if not stages:
    axes[0, 0].set_visible(True)
    axes[0, 0].text(0.5, 0.5, "no records", ha="center", va="center",
                    transform=axes[0, 0].transAxes)
    axes[0, 0].set_axis_off()

  for ax, (stage, recs) in zip(axes.flat, stages.items()):
    series: dict[str, tuple[list[float], list[float]]] = {}
    for i, rec in enumerate(recs):
      step = _finite_float(rec.get("step", i))
      step = float(i) if step is None else step
      for key, val in rec.items():
        if key != "loss" and not key.startswith("val_"):
          continue
        fv = _finite_float(val)
        if fv is None:
          continue
        xs, ys = series.setdefault(key, ([], []))
        xs.append(step)
        ys.append(fv)

    all_y = [y for _, ys in series.values() for y in ys]
    if "loss" in series:
      xs, ys = series["loss"]
      order = np.argsort(xs, kind="stable")
      ax.plot(np.asarray(xs)[order], np.asarray(ys)[order], "-",
              marker="." if len(xs) <= 50 else None, lw=1.2, label="loss")
    for key in sorted(k for k in series if k != "loss"):
      xs, ys = series[key]
      ax.plot(xs, ys, "o", ms=4, label=key)
    log_scale = bool(all_y) and min(all_y) > 0
    if log_scale:
      ax.set_yscale("log")
    shown = (["loss"] if "loss" in series else []) + sorted(k for k in series if k != "loss")
    if shown:
      ax.set_ylabel(", ".join(shown) + (" (log scale)" if log_scale else ""))
    if not series:
      ax.text(0.5, 0.5, "no loss / val_* values", ha="center", va="center",
              transform=ax.transAxes)
    else:
      ax.legend(fontsize=8)
    ax.set_title(stage)
    ax.set_xlabel("step")
    ax.grid(True, which="both", alpha=0.3)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return _save(fig, path)


# --------------------------------------------------------------------------- image grids


def _as_nhwc(images) -> np.ndarray | None:
  """Images to a float [n, H, W, C] array (C in {1, 3}), or None for plain vectors.

  Accepts [n, H, W, C], [n, C, H, W] (when C in {1, 3} sits in axis 1 but not axis 3) and
  [n, H, W] (grey). Anything of rank <= 2 is treated as a batch of vectors.
  """
  a = np.asarray(images, dtype=np.float32)
  if a.ndim == 3:
    return a[..., None]
  if a.ndim != 4:
    return None
  if a.shape[-1] not in (1, 3) and a.shape[1] in (1, 3):
    a = np.transpose(a, (0, 2, 3, 1))
  if a.shape[-1] not in (1, 3):
    return None
  return a


def _tile(imgs: np.ndarray, ncol: int, pad: int = 1) -> np.ndarray:
  """[n, H, W, C] in [-1, 1] -> one [rows*(H+pad)+pad, ncol*(W+pad)+pad, C] canvas in [0, 1].

  Empty cells and the padding are white.
  """
  n, h, w, c = imgs.shape
  nrow = max(1, -(-n // ncol))
  canvas = np.ones((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), np.float32)
  vals = np.clip((imgs + 1.0) / 2.0, 0.0, 1.0)
  vals = np.nan_to_num(vals, nan=0.0)
  for i in range(n):
    r, col = divmod(i, ncol)
    top, left = pad + r * (h + pad), pad + col * (w + pad)
    canvas[top:top + h, left:left + w] = vals[i]
  return canvas


def _show_canvas(ax, canvas: np.ndarray) -> None:
  if canvas.shape[-1] == 1:
    ax.imshow(canvas[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
  else:
    ax.imshow(canvas, interpolation="nearest")
  ax.set_axis_off()


def _vector_heatmap(ax, vecs: np.ndarray, label: str = "") -> None:
  """Heatmap of [n, D] vectors (rows = samples), the fallback for non-image data."""
  vecs = np.asarray(vecs, np.float32).reshape(vecs.shape[0], -1)
  im = ax.imshow(vecs, aspect="auto", cmap="coolwarm", interpolation="nearest")
  ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
  ax.set_xlabel("dimension")
  ax.set_ylabel(label or "sample")


def image_grid(images, path, nrow: int | None = None, title: str = "") -> str:
  """Tiles a batch of images into one square-ish grid.

  Args:
    images: [n, H, W, C] with C in {1, 3} and values in [-1, 1] (also [n, C, H, W] and
      [n, H, W]). A batch of vectors [n, D] (e.g. a synthetic mixture) has no image layout,
      so it is drawn as a heatmap with one row per sample instead.
    path: output PNG path.
    nrow: images per grid row (torchvision's convention); default ceil(sqrt(n)).
    title: figure title.

  Returns:
    The path written.
  """
  imgs = _as_nhwc(images)
  if imgs is None:
    vecs = np.asarray(images, np.float32)
    vecs = vecs.reshape(vecs.shape[0], -1) if vecs.ndim >= 1 else vecs.reshape(1, 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    _vector_heatmap(ax, vecs)
  else:
    n = imgs.shape[0]
    ncol = nrow if nrow else max(1, math.ceil(math.sqrt(max(n, 1))))
    canvas = _tile(imgs, ncol)
    scale = 6.0 / max(canvas.shape[:2])
    fig, ax = plt.subplots(figsize=(max(2.0, canvas.shape[1] * scale),
                                    max(2.0, canvas.shape[0] * scale)))
    _show_canvas(ax, canvas)
  if title:
    ax.set_title(title)
  return _save(fig, path)


def paired_grid(left, right, path, titles: tuple[str, str] = ("", ""), nrow: int | None = None,
                title: str = "") -> str:
  """Two batches side by side, each tiled as ``image_grid`` tiles one, under its own title
  and with a vertical rule between them (e.g. samples with and without a prior).

  Args:
    left, right: [n, H, W, C] images in [-1, 1] (the layouts of ``image_grid``; the two may
      differ in n), or [n, D] vectors, drawn as heatmaps.
    path: output PNG path.
    titles: the titles of the left and the right half.
    nrow: images per grid row of each half; default ceil(sqrt(n)).
    title: figure title, above both halves.

  Returns:
    The path written.
  """
  halves = [_as_nhwc(np.asarray(left)), _as_nhwc(np.asarray(right))]
  if any(h is None for h in halves):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"wspace": 0.45})
    for ax, vecs in zip(axes, (left, right)):
      vecs = np.asarray(vecs, np.float32)
      _vector_heatmap(ax, vecs.reshape(vecs.shape[0], -1) if vecs.ndim else vecs.reshape(1, 1))
  else:
    canvases = [_tile(h, nrow if nrow else max(1, math.ceil(math.sqrt(max(h.shape[0], 1)))))
                for h in halves]
    height = max(c.shape[0] for c in canvases)
    width = sum(c.shape[1] for c in canvases)
    scale = 10.0 / max(width, height)
    fig, axes = plt.subplots(1, 2, figsize=(max(4.0, width * scale) + 0.6,
                                            max(2.0, height * scale) + 0.6),
                             gridspec_kw={"width_ratios": [c.shape[1] for c in canvases],
                                          "wspace": 0.12})
    for ax, canvas in zip(axes, canvases):
      _show_canvas(ax, canvas)
  for ax, name in zip(axes, titles):
    if name:
      ax.set_title(name, fontsize=10)
  # The rule: midway between the left half (with its colour bar, labels and title) and the
  # right one, as high as they are, from their drawn extents in figure coordinates.
  fig.canvas.draw()
  to_fig = fig.transFigure.inverted()
  boxes = [ax.get_tightbbox().transformed(to_fig) for ax in fig.axes]
  right = boxes[1]
  left_edge = max(b.x1 for b in boxes if b.x1 <= right.x0 + 1e-6)
  x = (left_edge + right.x0) / 2.0
  fig.add_artist(Line2D([x, x], [min(b.y0 for b in boxes), max(b.y1 for b in boxes)],
                        transform=fig.transFigure, color="0.15", lw=2.5))
  if title:
    fig.suptitle(title)
  return _save(fig, path)


def recon_grid(x, x_hat, path, n: int = 32, title: str = "") -> str:
  """Originals and reconstructions in alternating rows (original row above its reconstruction).

  Args:
    x: [N, H, W, C] originals in [-1, 1] (same layouts as ``image_grid``), or [N, D] vectors.
    x_hat: reconstructions, same shape as x.
    path: output PNG path.
    n: number of pairs shown (the first n).
    title: figure title.

  Returns:
    The path written.
  """
  n = max(1, min(int(n), np.shape(x)[0]))
  orig, rec = _as_nhwc(np.asarray(x)[:n]), _as_nhwc(np.asarray(x_hat)[:n])
  if orig is None or rec is None:
    xo = np.asarray(x, np.float32)[:n].reshape(n, -1)
    xr = np.asarray(x_hat, np.float32)[:n].reshape(n, -1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    _vector_heatmap(axes[0], xo, "original")
    _vector_heatmap(axes[1], xr, "reconstruction")
    axes[0].set_title("original")
    axes[1].set_title("reconstruction")
  else:
    ncol = max(1, math.ceil(math.sqrt(2 * n)))
    blank = np.ones_like(orig[:1])  # white cell in [-1, 1] units
    rows = []
    for s in range(0, n, ncol):
      for part in (orig[s:s + ncol], rec[s:s + ncol]):
        fill = ncol - part.shape[0]
        rows.append(np.concatenate([part] + [blank] * fill, axis=0) if fill else part)
    canvas = _tile(np.concatenate(rows, axis=0), ncol)
    scale = 6.0 / max(canvas.shape[:2])
    fig, ax = plt.subplots(figsize=(max(2.0, canvas.shape[1] * scale),
                                    max(2.0, canvas.shape[0] * scale)))
    _show_canvas(ax, canvas)
  if title:
    fig.suptitle(title)
  return _save(fig, path)


# --------------------------------------------------------------------------- latents


def scatter_by_label(ax, pts: np.ndarray, labels, size: float = 8, alpha: float = 0.7):
  """Scatter 2-D points [n, 2] on ``ax``, one colour per label (<= 20 classes, each a legend
  entry) or a continuous colour map (more classes; the mappable is returned for a colour bar).
  Returns None unless a colour bar is wanted."""
  if labels is None:
    ax.scatter(pts[:, 0], pts[:, 1], s=size, alpha=alpha, lw=0)
    return None
  labels = np.asarray(labels).reshape(-1)
  classes = np.unique(labels)
  if classes.size > 20:
    return ax.scatter(pts[:, 0], pts[:, 1], s=size, alpha=alpha, lw=0, c=labels,
                      cmap="viridis")
  cmap = plt.get_cmap("tab10" if classes.size <= 10 else "tab20")
  for i, c in enumerate(classes):
    sel = labels == c
    ax.scatter(pts[sel, 0], pts[sel, 1], s=size, alpha=alpha, lw=0, color=cmap(i),
               label=str(c))
  return None


def latent_scatter(z, labels, path, title: str = "") -> str:
  """2-D scatter of embeddings, coloured by class label when given.

  Args:
    z: [n, d] embeddings. d = 2 is drawn as is; d > 2 is projected on its top-2 principal
      components (NumPy SVD of the centred points; the axis labels say so and give the share
      of variance); d = 1 is drawn against the sample index.
    labels: [n] integer labels or None. Up to 20 classes get a discrete colormap and a legend;
      more get a continuous colormap with a colour bar.
    path: output PNG path.
    title: figure title.

  Returns:
    The path written.
  """
  z = np.asarray(z, np.float64)
  z = z.reshape(z.shape[0], -1)
  n, d = z.shape
  if d >= 3:
    zc = z - z.mean(axis=0)
    _, s, vt = np.linalg.svd(zc, full_matrices=False)
    pts = zc @ vt[:2].T
    var = s ** 2
    share = var[:2] / var.sum() if var.sum() > 0 else np.zeros(2)
    xlabel = f"PC1 ({100 * share[0]:.1f}% var, of d={d})"
    ylabel = f"PC2 ({100 * share[1]:.1f}% var, of d={d})"
  elif d == 2:
    pts, xlabel, ylabel = z, "z[0]", "z[1]"
  else:
    pts = np.stack([np.arange(n, dtype=np.float64), z[:, 0] if d else np.zeros(n)], axis=1)
    xlabel, ylabel = "index", "z[0]"

  fig, ax = plt.subplots(figsize=(6, 5.4))
  sc = scatter_by_label(ax, pts, labels, size=4 if n > 2000 else 8)
  if sc is not None:
    fig.colorbar(sc, ax=ax, label="label")
  elif labels is not None:
    ax.legend(fontsize=7, markerscale=2, loc="best", title="label", title_fontsize=8)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if d == 2:
    ax.set_aspect("equal", adjustable="datalim")
  if title:
    ax.set_title(title)
  return _save(fig, path)


def sample_scatter(x_gen, x_real, path, title: str = "") -> str:
  """Generated vectors over real ones in the first two coordinates (vector data).

  Args:
    x_gen: [n, D] generated samples (drawn as small crosses, coloured by their other-coordinate
      RMS, which shows samples that are off the data's thin slab).
    x_real: [m, D] real samples (grey dots).
    path: output PNG path.
    title: figure title.
  """
  g = np.asarray(x_gen, np.float64).reshape(len(x_gen), -1)
  r = np.asarray(x_real, np.float64).reshape(len(x_real), -1)
  fig, ax = plt.subplots(figsize=(5.6, 5.2))
  ax.scatter(r[:, 0], r[:, 1], s=4, c="0.7", lw=0, label="data")
  off = np.sqrt(np.mean(np.square(g[:, 2:]), axis=1)) if g.shape[1] > 2 else np.zeros(len(g))
  sc = ax.scatter(g[:, 0], g[:, 1], s=6, c=off, cmap="viridis", marker="x", lw=0.6,
                  label="generated")
  fig.colorbar(sc, ax=ax, label="RMS of coordinates 3..D")
  ax.set_xlabel("x[0]")
  ax.set_ylabel("x[1]")
  ax.set_aspect("equal", adjustable="datalim")
  ax.legend(fontsize=7, loc="upper right")
  if title:
    ax.set_title(title, fontsize=9)
  return _save(fig, path)


def distortion_plot(dx, dz, path, title: str = "") -> str:
  """How an encoder distorts distances: pairs of data vs latent distances.

  Left: |x - y| against |Tx - Ty| with the identity line (an isometry lies on it). Right:
  log(1 + |x - y|^2) against log(1 + |Tx - Ty|^2) -- the two quantities whose squared
  difference the GME cost averages (PAPERS §1.1) -- with the identity line.

  Args:
    dx: [m] data-space distances of some pairs (e.g. from ``evals.geometry.pair_distances``).
    dz: [m] latent distances of the same pairs.
    path: output PNG path.
    title: figure title.

  Returns:
    The path written.
  """
  dx = np.asarray(dx, np.float64).reshape(-1)
  dz = np.asarray(dz, np.float64).reshape(-1)
  lx, lz = np.log1p(dx ** 2), np.log1p(dz ** 2)
  alpha = float(np.clip(300.0 / max(dx.size, 1), 0.05, 0.6))
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
  panels = [
      (dx, dz, "|x - y|", "|Tx - Ty|", "distances"),
      (lx, lz, "log(1 + |x - y|^2)", "log(1 + |Tx - Ty|^2)", "what GME compares"),
  ]
  for ax, (a, b, xl, yl, name) in zip(axes, panels):
    ax.scatter(a, b, s=3, alpha=alpha, lw=0, rasterized=True)
    finite = np.concatenate([a[np.isfinite(a)], b[np.isfinite(b)]])
    hi = float(finite.max()) if finite.size else 1.0
    lo = min(0.0, float(finite.min())) if finite.size else 0.0
    hi = hi if hi > lo else lo + 1.0
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="identity")
    ax.set_xlabel(xl)
    ax.set_ylabel(yl)
    ax.set_title(name)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(True, alpha=0.3)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return _save(fig, path)
