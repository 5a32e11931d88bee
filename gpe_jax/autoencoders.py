"""The hand-off between stages, and the public Python API: a method's trained encoder/decoder
(and the prior sampling in its latent space), read back from a workdir.

The stage that completes a method writes ``<stage>/manifest.json``:

    {"format": 1, "kind": "autoencoder", "method": "gpe", "stage": "decoder",
     "model": {...config.model...}, "example_shape": [8, 8, 1], "latent_dim": 10,
     "encoder": {"checkpoint": "encoder/checkpoints", "step": 4000, "subtree": null,
                 "head": "identity" | "mean"},
     "decoder": {"checkpoint": "decoder/checkpoints", "step": 3000, "subtree": null,
                 "input": "normalised" | "raw" | "noise"} | null,
     "latent_stats": {"mean": [...], "scale": C, "num_samples": n} | null,
     "data": {"name": "digits", "labelled": true}}

``encoder`` (null for a generator trained without one: GAN, WGAN) says which checkpoint (exact step) holds the encoder T and where in its
``params``/``batch_stats`` the encoder's variables are (``subtree``, e.g. ``"encoder"`` for a
jointly trained baseline), and the head (``mean``: the first half of a (mean, log-variance)
output). ``decoder.input`` says what the decoder takes: the normalised latents z = C (T(x) - m)
(GPE's decoder), the raw ones T(x) (the baselines'), or noise (a generator). A stage that trains
only an encoder writes ``decoder: null``. Paths are relative to the workdir when inside it.
The prior stage writes ``prior/manifest.json`` (``kind: "prior"``): the velocity network's
config, its checkpoint and step, whether to sample with the EMA weights, and the method.

Models are rebuilt with ``gpe_jax.models.build_*`` and only their parameters and batch
statistics are restored (orbax partial restore; no optimiser is rebuilt), so
``gpe_jax.load(workdir)`` needs neither the training data nor the config files:

    import gpe_jax
    ae = gpe_jax.load("runs/default")               # the workdir's method (config.method)
    z = ae.encode(x)                                # [N, ...] -> normalised latents [N, d]
    x_hat = ae.decode(z)                            # or ae.reconstruct(x)
    samples = ae.sample(64, seed=0, solver="heun", steps=25)
"""
from __future__ import annotations

import functools
import glob
import os
from typing import Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from ml_collections import ConfigDict

from gpe_jax import logs, models, sampling
from gpe_jax.errors import CheckpointError, ConfigError, RecordError

MANIFEST = "manifest.json"
FORMAT = 1
HEADS = ("identity", "mean")
DECODER_INPUTS = ("normalised", "raw", "noise")


# ----------------------------------------------------------------------------------------------
# Batched host-side helpers shared by the stages (latent statistics, batched inference).

def batched_apply(fn: Callable[[jax.Array], jax.Array], x: np.ndarray,
                  batch_size: int) -> np.ndarray:
  """Apply a jitted per-batch ``fn`` to all rows of ``x`` (the last batch is padded, so one
  compiled shape serves all), returning a host array [N, ...]."""
  n = x.shape[0]
  outs = []
  for i in range(0, n, batch_size):
    xb = x[i:i + batch_size]
    m = xb.shape[0]
    if m < batch_size:
      xb = np.concatenate([xb, np.repeat(xb[-1:], batch_size - m, axis=0)], axis=0)
    outs.append(np.asarray(fn(xb))[:m])
  return np.concatenate(outs, axis=0)


def latent_stats(z: np.ndarray) -> dict:
  """PAPERS §1.4: mean m and scale C = sqrt(d / E|z - m|^2), accumulated in float64."""
  z = np.asarray(z, np.float64)
  mean = z.mean(axis=0)
  spread = np.mean(np.sum(np.square(z - mean), axis=1))
  scale = np.sqrt(z.shape[1] / max(spread, 1e-30))
  return {"mean": mean, "scale": np.float64(scale), "num_samples": np.int64(z.shape[0])}


def normalize_latents(z: np.ndarray, stats: dict) -> np.ndarray:
  """z -> C (z - m), float32."""
  return ((np.asarray(z, np.float64) - stats["mean"]) * stats["scale"]).astype(np.float32)


def stats_to_json(stats: dict | None) -> dict | None:
  if stats is None:
    return None
  return {"mean": [float(v) for v in np.asarray(stats["mean"], np.float64)],
          "scale": float(stats["scale"]), "num_samples": int(stats["num_samples"])}


def stats_from_json(rec: dict | None) -> dict | None:
  if rec is None:
    return None
  return {"mean": np.asarray(rec["mean"], np.float64), "scale": np.float64(rec["scale"]),
          "num_samples": np.int64(rec["num_samples"])}


# ----------------------------------------------------------------------------------------------
# Manifests.

def part(workdir: str, ckpt_dir: str, step: int, subtree: str | None = None, **fields) -> dict:
  """One network's entry of a manifest: its checkpoint folder (relative to ``workdir`` when
  inside it), the exact step, the sub-tree of params/batch_stats, and ``fields`` (``head`` or
  ``input``)."""
  ckpt_dir = os.path.abspath(ckpt_dir)
  root = os.path.abspath(workdir) + os.sep
  rel = ckpt_dir[len(root):] if ckpt_dir.startswith(root) else ckpt_dir
  return dict({"checkpoint": rel, "step": int(step), "subtree": subtree}, **fields)


def autoencoder_manifest(method: str, stage: str, config, example_shape, encoder: dict | None,
                         decoder: dict | None, stats: dict | None, labelled: bool) -> dict:
  """The manifest a stage writes when it completes (part of) ``method``."""
  if encoder is not None and encoder.get("head") not in HEADS:
    raise ValueError(f"encoder head {encoder.get('head')!r} is not one of {HEADS}")
  if decoder is not None and decoder.get("input") not in DECODER_INPUTS:
    raise ValueError(f"decoder input {decoder.get('input')!r} is not one of {DECODER_INPUTS}")
  return {"format": FORMAT, "kind": "autoencoder", "method": method, "stage": stage,
          "model": config.model.to_dict(), "example_shape": [int(s) for s in example_shape],
          "latent_dim": int(config.model.latent_dim), "encoder": encoder, "decoder": decoder,
          "latent_stats": stats_to_json(stats), "batch_size": int(config.data.batch_size),
          "data": {"name": str(config.data.name), "labelled": bool(labelled)}}


def write_manifest(stage_dir: str, manifest: dict) -> str:
  path = os.path.join(stage_dir, MANIFEST)
  logs.write_json(path, manifest)
  return path


def read_manifest(stage_dir: str) -> dict | None:
  """The manifest in ``stage_dir`` (None when absent)."""
  rec = logs.read_json(os.path.join(stage_dir, MANIFEST))
  if rec is not None and (not isinstance(rec, dict) or rec.get("format") != FORMAT):
    raise RecordError(f"{os.path.join(stage_dir, MANIFEST)} is not a gpe_jax manifest of "
                      f"format {FORMAT}. Rerun the command that trained this workdir once (it "
                      "rewrites the manifest without training), or use another --workdir.")
  return rec


def manifests(workdir: str, kind: str = "autoencoder") -> list[tuple[str, dict]]:
  """(stage folder, manifest) of every manifest of ``kind`` directly under ``workdir``."""
  out = []
  for path in sorted(glob.glob(os.path.join(workdir, "*", MANIFEST))):
    stage_dir = os.path.dirname(path)
    rec = read_manifest(stage_dir)
    if rec is not None and rec.get("kind") == kind:
      out.append((stage_dir, rec))
  return out


def find(workdir: str, method: str, complete: bool = True,
         exclude_stage: str = "") -> tuple[str, dict] | None:
  """(stage folder, manifest) of ``method`` in ``workdir``: with a decoder when
  ``complete``; any that holds its encoder otherwise (the encoder-only one first)."""
  found = [(d, m) for d, m in manifests(workdir) if m["method"] == method
           and m["stage"] != exclude_stage and (m["decoder"] is not None or not complete)]
  found.sort(key=lambda dm: dm[1]["decoder"] is not None)
  return found[0] if found else None


def resolve(workdir: str, path: str) -> str:
  return path if os.path.isabs(path) else os.path.join(workdir, path)


# ----------------------------------------------------------------------------------------------
# Restoring variables (params and batch statistics only).

def _select(tree, subtree: str | None):
  if not subtree:
    return tree
  for key in subtree.split("/"):
    tree = tree[key] if isinstance(tree, dict) and key in tree else {}
  return tree


def _nest(tree, subtree: str | None):
  """``tree`` placed at the path ``subtree`` ('a/b') of an otherwise empty dict."""
  for key in reversed(subtree.split("/") if subtree else []):
    tree = {key: tree}
  return tree


def restore_variables(ckpt_dir: str, step: int, subtree: str | None = None,
                      use_ema: bool = False) -> tuple[dict, dict]:
  """(params, batch_stats) at ``step`` of a train-state checkpoint, restoring nothing else.

  ``use_ema`` takes the EMA weights (``ema_params``) in place of ``params``.

  Raises:
    CheckpointError: the step is absent or unreadable (the message names both).
  """
  step_dir = os.path.join(ckpt_dir, str(int(step)))
  if not os.path.isdir(step_dir):
    have = sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit()) \
        if os.path.isdir(ckpt_dir) else []
    raise CheckpointError(
        f"The manifest names step {step} of {ckpt_dir}, which is not there (steps on disk: "
        f"{have or 'none'}). Rerun the command that trained this workdir: the stage that "
        "wrote it trains to that step again, reproducing it exactly.")
  params_key = "ema_params" if use_ema else "params"
  try:
    with ocp.CheckpointManager(ckpt_dir,
                                item_handlers=ocp.StandardCheckpointHandler()) as mngr:
      meta = mngr.item_metadata(int(step))
    tree = getattr(meta, "tree", meta)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def abstract(t):
      return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype,
                                                         sharding=device), t)
    target = {params_key: _nest(abstract(_select(tree[params_key], subtree)), subtree)}
    stats_meta = _select(tree.get("batch_stats", {}) or {}, subtree)
    if stats_meta:
      target["batch_stats"] = _nest(abstract(stats_meta), subtree)
    restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=device), target)
    restored = ocp.PyTreeCheckpointer().restore(
        os.path.join(step_dir, "default"),
        args=ocp.args.PyTreeRestore(target, restore_args=restore_args, partial_restore=True))
    restored = {k: _select(v, subtree) for k, v in restored.items()}
  except Exception as e:  # orbax raises many types; all mean an unreadable step here
    raise CheckpointError(
        f"The checkpoint at step {step} in {ckpt_dir} cannot be read ({type(e).__name__}: "
        f"{str(e).splitlines()[0][:300] if str(e) else ''}). If it is corrupt, delete it "
        f"(rm -r '{step_dir}') and rerun the command that trained this workdir; it trains "
        "that step again.") from None
  return restored[params_key], restored.get("batch_stats", {})


# ----------------------------------------------------------------------------------------------
# The trained model, read back.

class Autoencoder:
  """A method's frozen encoder and decoder (and, where the workdir has one, its prior).

  Attributes:
    method: the method ('gpe', 'vae', ...).
    manifest: the manifest it was read from; ``stage_dir`` its folder.
    latent_stats: {'mean': [d], 'scale': C, 'num_samples'} of the normalisation
      z = C (T(x) - m), or None (a generator without an encoder's statistics).
    latent_dim, example_shape: sizes.
    embed_fn: jitted x [B, ...] -> raw embeddings T(x) [B, d] (the mean for a VAE).
    decode_fn: jitted normalised z [B, d] -> x [B, ...], or None when the method has no
      decoder (an encoder-only stage).
  """

  def __init__(self, stage_dir: str, manifest: dict, workdir: str, batch_size: int = 0):
    self.stage_dir, self.manifest, self.workdir = stage_dir, manifest, workdir
    self.method = manifest["method"]
    self.latent_dim = int(manifest["latent_dim"])
    self.example_shape = tuple(manifest["example_shape"])
    self.batch_size = int(batch_size or manifest.get("batch_size") or 100)
    self.latent_stats = stats_from_json(manifest.get("latent_stats"))
    self._model_cfg = ConfigDict(manifest["model"])
    self.embed_fn = self._build_encoder(manifest["encoder"]) if manifest["encoder"] else None
    self.decode_fn = self._build_decoder(manifest["decoder"]) if manifest["decoder"] else None
    self.prior = None

  def _build_encoder(self, enc: dict):
    head = enc.get("head", "identity")
    model = models.build_encoder(self._model_cfg, self.example_shape,
                                 out_mult=2 if head == "mean" else 1)
    params, batch_stats = restore_variables(resolve(self.workdir, enc["checkpoint"]),
                                            enc["step"], enc.get("subtree"))
    infer = models.inference_fn(model)
    if head == "identity":
      return functools.partial(infer, params, batch_stats)

    @jax.jit
    def embed(p, s, x):
      return models.encode_mean(infer(p, s, x))
    return functools.partial(embed, params, batch_stats)

  def _build_decoder(self, dec: dict):
    model = models.build_decoder(self._model_cfg, self.example_shape)
    params, batch_stats = restore_variables(resolve(self.workdir, dec["checkpoint"]),
                                            dec["step"], dec.get("subtree"))
    infer = models.inference_fn(model)
    if dec["input"] != "raw":
      return functools.partial(infer, params, batch_stats)
    mean = np.asarray(self.latent_stats["mean"], np.float32)
    inv_scale = np.float32(1.0 / float(self.latent_stats["scale"]))

    @jax.jit
    def decode(z):  # normalised z -> the raw latents the decoder was trained on
      return infer(params, batch_stats, z * inv_scale + mean)
    return decode

  # -- host-side, batched ------------------------------------------------------------------
  def embed(self, x: np.ndarray) -> np.ndarray:
    """x [N, ...] -> raw embeddings T(x) [N, d]."""
    if self.embed_fn is None:
      raise ConfigError(f"Method {self.method!r} has no encoder in {self.stage_dir}.")
    return batched_apply(self.embed_fn, np.asarray(x, np.float32), self.batch_size)

  @property
  def samples_noise(self) -> bool:
    """True for a generator of N(0, I) noise (a GAN's G): its latents are the noise space."""
    return bool(self.manifest["decoder"]) and self.manifest["decoder"]["input"] == "noise"

  def encode(self, x: np.ndarray) -> np.ndarray:
    """x [N, ...] -> normalised latents C (T(x) - m) [N, d] (the space the prior lives in);
    for a noise generator (a GAN) the raw T(x), which lives in G's noise space."""
    if self.samples_noise:
      return self.embed(x)
    return normalize_latents(self.embed(x), self.latent_stats)

  def decode(self, z: np.ndarray) -> np.ndarray:
    """Normalised latents z [N, d] -> x [N, ...]."""
    if self.decode_fn is None:
      raise ConfigError(f"Method {self.method!r} has no decoder in {self.workdir} yet: "
                        f"{self.stage_dir} holds its encoder only. Train the stage that "
                        "completes it (e.g. 'decoder' for GPE) first.")
    return batched_apply(self.decode_fn, np.asarray(z, np.float32), self.batch_size)

  def reconstruct(self, x: np.ndarray) -> np.ndarray:
    """x [N, ...] -> decode(encode(x))."""
    return self.decode(self.encode(x))

  def sample(self, n: int, seed: int = 0, solver: str | None = None, steps: int | None = None,
             return_latents: bool = False):
    """``n`` generated examples: N(0, I) noise carried by the prior's flow (a GAN: G(noise);
    ``solver`` and ``steps`` then do not apply) (integrator
    ``solver``: euler | heun | rk4 | dopri5, ``steps`` for the fixed-step ones; defaults are
    the workdir's ``config.sample``), then decoded. Returns x [n, ...] (and the latents when
    ``return_latents``)."""
    if self.samples_noise:   # a GAN: x = G(z), z ~ N(0, I)
      z0, z, x, _ = sampling.generate(sampling.identity_sampler, None, self.decode_fn, n,
                                      self.latent_dim, seed, self.batch_size)
      return (x, z) if return_latents else x
    if self.prior is None:
      raise ConfigError(f"{self.workdir} holds no trained prior for method {self.method!r}; "
                        "run the 'prior' stage with --config.method="
                        f"{self.method} first.")
    _, z, x, _ = self.prior.generate(self.decode_fn, n, seed, solver, steps)
    return (x, z) if return_latents else x


class Prior:
  """The flow-matching prior read back from ``prior/manifest.json``."""

  def __init__(self, stage_dir: str, manifest: dict, workdir: str):
    self.stage_dir, self.manifest = stage_dir, manifest
    self.method = manifest["method"]
    self.latent_dim = int(manifest["latent_dim"])
    self.defaults = dict(manifest.get("sample", {}))
    self.velocity = models.build_velocity(ConfigDict(manifest["prior"]))
    self.params, _ = restore_variables(resolve(workdir, manifest["checkpoint"]),
                                       manifest["step"], use_ema=bool(manifest.get("ema")))

  def latent_sampler(self, solver: str | None = None, steps: int | None = None, **kw):
    d = dict(self.defaults, **kw)
    return sampling.make_latent_sampler(
        self.velocity, method=solver or d.get("method", "heun"),
        num_steps=int(steps or d.get("num_steps", 25)), t0=d.get("t0", 1e-4),
        t1=d.get("t1", 1.0 - 1e-4), rtol=d.get("rtol", 1e-5), atol=d.get("atol", 1e-5))

  def generate(self, decode_fn, n: int, seed: int, solver=None, steps=None):
    """(z0, z, x, nfe) of ``sampling.generate`` with this prior's sampling params."""
    return sampling.generate(self.latent_sampler(solver, steps), self.params, decode_fn, n,
                             self.latent_dim, seed, int(self.defaults.get("batch_size", 500)))


def prior_manifest(config, method: str, workdir: str, step: int, ckpt_dir: str) -> dict:
  return {"format": FORMAT, "kind": "prior", "method": method, "stage": "prior",
          "prior": config.prior.to_dict(), "latent_dim": int(config.model.latent_dim),
          "checkpoint": part(workdir, ckpt_dir, step)["checkpoint"], "step": int(step),
          "ema": bool(config.prior.ema_decay),
          "sample": {k: config.sample[k] for k in ("method", "num_steps", "t0", "t1", "rtol",
                                                   "atol", "batch_size")}}


def default_method(workdir: str) -> str:
  """The method a workdir was run for: its prior's, else config.json's, else its only
  complete autoencoder's."""
  priors = manifests(workdir, "prior")
  if priors:
    return priors[0][1]["method"]
  raw = logs.read_json(os.path.join(workdir, "config.json"))
  if raw and raw.get("method"):
    return raw["method"]
  complete = sorted({m["method"] for _, m in manifests(workdir) if m["decoder"] is not None})
  if len(complete) == 1:
    return complete[0]
  raise ConfigError(f"Say which method to load from {workdir}: load(workdir, method=...); "
                    f"trained there: {complete or 'none'}.")


def load(workdir: str, method: str | None = None, batch_size: int = 0,
         complete: bool = False) -> Autoencoder:
  """The trained ``method`` of ``workdir`` (default: the one it was run for), with its prior
  when the workdir's prior was trained on it. Needs no training data. Where only the method's
  encoder is trained (an encoder-only run), ``encode`` works and ``decode`` says what is
  missing, unless ``complete`` asks for both.

  Raises:
    ConfigError: no manifest of that method in the workdir (the message lists what is there).
    CheckpointError: a checkpoint the manifest names is gone or unreadable.
  """
  workdir = os.path.abspath(workdir)
  if not os.path.isdir(workdir):
    raise ConfigError(f"{workdir} is not a directory; give the --workdir of a finished run.")
  method = method or default_method(workdir)
  found = find(workdir, method, complete=True) or (
      None if complete else find(workdir, method, complete=False))
  if found is None:
    have = sorted({f"{m['method']} ({m['stage']})" for _, m in manifests(workdir)})
    raise ConfigError(
        f"{workdir} holds no trained {'encoder and decoder' if complete else 'encoder'} of "
        f"method {method!r} (manifests there: {have or 'none'}). Train it first, e.g. "
        f"python -m gpe_jax.main --config=... --workdir={workdir} --config.method={method}; a "
        "workdir trained before manifests existed gets them by rerunning its command once.")
  ae = Autoencoder(found[0], found[1], workdir, batch_size)
  priors = [(d, m) for d, m in manifests(workdir, "prior") if m["method"] == method]
  if priors and ae.decode_fn is not None:
    ae.prior = Prior(priors[0][0], priors[0][1], workdir)
  return ae
