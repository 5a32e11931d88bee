r"""Every config field, its value and its meaning: the one source of the field descriptions.

    python -m gpe_jax.main --config=configs/default.py:smoke --config_help   # any command
    python -m gpe_jax.config_help                         # configs/base.py: the defaults
    python -m gpe_jax.config_help --markdown              # the README's table
    python -m gpe_jax.config_help --config=configs/mnist.py --config.encoder.lr=3e-4

``HELP`` maps each dotted field name (``encoder.lr``, ``data.mixture.dim``) to one line of
meaning. The sections that share a layout (the training stages made by ``configs/base.py``
``stage_config``, the GAN methods made by ``gan_config``, their per-network optimisers) are
described once and expanded per section below, so one field added to ``stage_config`` is one
entry here. ``tests/test_cli.py`` fails when a field of any config in ``configs/`` has no
entry (or an entry names a field no config has): a new field comes with its meaning.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Iterator

# --------------------------------------------------------------------------- the meanings

# The held-out number each training stage's ``target_loss`` (early stop) applies to.
_TARGET = {"encoder": "val_gme (held-out GME)", "decoder": "val_recon_mse",
           "vae": "val_recon_mse", "ae": "val_recon_mse", "vae_mds": "val_recon_mse",
           "ae_mds": "val_recon_mse", "prior": "val_fm_loss (held-out flow-matching loss)"}

# Every training stage's loop and optimiser settings (configs/base.py ``stage_config``).
_LOOP = {
    "num_steps": "training steps of the stage (raised on a finished workdir, it trains on "
                 "from its last checkpoint)",
    "lr": "peak learning rate (Adam)",
    "b1": "Adam's beta1, the decay of the gradient's running mean",
    "b2": "Adam's beta2, the decay of the squared gradient's running mean",
    "grad_clip": "clip the gradients to this global norm (0 = off)",
    "warmup_steps": "linear learning-rate warm-up from 0 over this many steps (0 = none)",
    "lr_schedule": "'constant', or 'cosine': decay to 1% of lr over num_steps",
    "target_loss": "stop early once {target} reaches this (0 = off: train num_steps)",
    "log_every": "steps between rows of metrics.jsonl (training loss, steps/s)",
    "eval_every": "steps between held-out evaluations (val_* rows, scheduled evaluators)",
    "checkpoint_every": "steps between checkpoints; a killed or stopped run resumes from the last",
    "keep_checkpoints": "how many of the newest checkpoints are kept on disk",
    "progress_bar": "show a progress bar with loss and steps/s while training",
}

# A GAN method's section (configs/base.py ``gan_config``): the loop, without lr/b1/b2 (those
# are per network), plus these.
_GAN = dict(
    {k: v for k, v in _LOOP.items() if k not in ("lr", "b1", "b2")},
    lr_schedule="'constant', or 'cosine': every network's lr decays to 1% over num_steps",
    warmup_steps="linear warm-up of every network's lr from 0 over this many steps (0 = none)",
    grad_clip="clip each network's gradients to this global norm (0 = off)",
    target_loss="not used by GAN methods (no held-out loss to stop at); they train num_steps",
    eval_every="steps between evaluations, at which the evals run (when any are listed)",
    n_critic="critic (psi) updates per iteration, each on fresh noise",
    evals="scheduled evaluators: 'modes' (mixture mode coverage), 'fd_<extractor>' (Frechet "
          "distance of G's samples)",
    evals_every="steps between runs of the evals (0 = at every evaluation)",
)

# The networks each GAN method trains, with what each one is.
_NETS = {"gmegan": ("psi", "T", "G", "f"), "gan": ("psi", "G"), "wgan": ("psi", "G"),
         "wgan_gp": ("psi", "G"), "wgan_div": ("psi", "G"), "vaegan": ("psi", "T", "G"),
         "veegan": ("psi", "T", "G")}
_NET_NAMES = {"G": "the generator G (z -> x)", "T": "the encoder T (x -> z)",
              "psi": "the critic psi", "f": "GMEGAN's inverse network f"}
_NET = {"lr": "peak learning rate of {net}",
        "b1": "Adam's beta1 of {net} (not used by rmsprop/sgd)",
        "b2": "Adam's beta2 of {net} (not used by rmsprop/sgd)",
        "optimizer": "optimiser of {net}: adam | rmsprop | sgd"}

# The loss weights of each GAN method.
_GAN_WEIGHTS = {
    "gmegan": {"c_T": "weight of the GME term of T's loss (geometry of T)",
               "c_G": "weight of the data reconstruction |x - G(f(T x))|^2",
               "c_R": "weight of the latent reconstruction |z - T(G z)|^2",
               "k": "gradient penalty (k/2) E|grad psi|^p at real and fake points",
               "p": "exponent p of the gradient penalty",
               "inverse": "train the inverse network f (False: f is the identity)"},
    "wgan": {"clip": "critic weights are clipped to [-clip, clip] after each update"},
    "wgan_gp": {"gp_weight": "weight lambda of the gradient penalty E(|grad psi| - 1)^2"},
    "wgan_div": {"k": "gradient penalty (k/2) E|grad psi|^p at real and fake points",
                 "p": "exponent p of the gradient penalty"},
    "vaegan": {"beta": "weight of the KL term (per dimension) in T's loss",
               "gamma": "weight of the data reconstruction in G's loss"},
    "veegan": {"recon_weight": "weight of the latent reconstruction |z - T(G z)|^2"},
}

_BASELINES = ("vae", "ae", "vae_mds", "ae_mds")

HELP: dict[str, str] = {
    # top level
    "seed": "base seed: parameters, data order and every random draw of the run derive from it",
    "stages": "the stages to run, in pipeline order (finished ones are kept, not redone)",
    "method": "whose autoencoder prior/sample/evaluate use: 'gpe', a baseline (vae, ae, "
              "vae_mds, ae_mds) or a GAN method (gmegan, gan, wgan, ...)",
    "num_devices": "devices the batch is sharded over (0 = all visible devices)",
    "fast_compile": "compile with XLA's cheap optimisation level (smoke runs: compile time "
                    "exceeds compute); faster start, float rounding may differ",
    # data (gpe_jax/data/registry.py default_data_config)
    "data.name": "dataset: digits, fashion_mnist, mnist, cifar10, celeb_a, celeb_a_hq, "
                 "mixture, npz, image_folder",
    "data.path": "file or folder to read for file sources ('' = the source's default places)",
    "data.source": "where the data comes from: auto (per dataset), idx, tfds, npz, "
                   "image_folder, prepared, sklearn, synthetic",
    "data.image_size": "square size images are resized to (0 = native size)",
    "data.center_crop": "centred crop before resizing: 0 = none, -1 = largest square, N = N x N",
    "data.num_held_out": "held-out examples for datasets without a test split (-1 = 10%, at "
                         "most 10,000, at least one batch)",
    "data.max_train": "keep at most this many training examples (0 = all)",
    "data.max_test": "keep at most this many held-out examples (0 = all)",
    "data.split_seed": "seed of the train / held-out split",
    "data.tfds_data_dir": "tensorflow-datasets folder ('' = $TFDS_DATA_DIR or "
                          "~/tensorflow_datasets)",
    "data.batch_size": "global training batch size (split over the devices)",
    "data.workers": "host threads reading the next training batches (0 = none); changes no "
                    "number",
    "data.prefetch": "training batches placed on the devices ahead of their step",
    "data.storage": "auto | memory | stream: stream images from their compact storage per "
                    "batch, or convert all to float32 once; changes no number",
    "data.mixture.num_components": "synthetic mixture: number K of equal-weight Gaussians",
    "data.mixture.dim": "synthetic mixture: ambient dimension (>= 2)",
    "data.mixture.num_train": "synthetic mixture: training points drawn",
    "data.mixture.num_test": "synthetic mixture: held-out points drawn",
    "data.mixture.radius": "synthetic mixture: circle radius ('circle'), or unit r of the "
                           "rings at 3r and 9r ('rings')",
    "data.mixture.std_major": "synthetic mixture: noise std in coordinates 0 and 1",
    "data.mixture.std_minor": "synthetic mixture: noise std in the other coordinates",
    "data.mixture.seed": "synthetic mixture: sampling seed",
    "data.mixture.layout": "synthetic mixture: 'circle' (K centres on one circle) or 'rings' "
                           "(K/3 inner, 2K/3 outer)",
    "data.mixture.shift": "synthetic mixture: added to coordinates 0 and 1 of every centre",
    # model
    "model.kind": "network family: 'mlp' (vectors, small images) or 'conv' (images)",
    "model.latent_dim": "dimension d of the latent space",
    "model.enc_hidden": "MLP encoder: hidden layer widths",
    "model.dec_hidden": "MLP decoder: hidden layer widths",
    "model.layer_norm": "MLPs: LayerNorm after each hidden layer",
    "model.enc_features": "conv encoder: channels per level (each level halves the resolution)",
    "model.dec_features": "conv decoder: channels per level (each level doubles the resolution)",
    "model.batch_norm": "conv networks: BatchNorm after each convolution",
    "model.extra_convs": "conv encoder: extra stride-1 convolutions per level",
    "model.enc_kernel": "conv encoder: kernel size of each level's stride-1 conv after "
                        "space-to-depth (2: the receptive field of a 4x4 stride-2 conv; 3: "
                        "of a 6x6)",
    "model.dec_kernel": "conv decoder: kernel size of its stride-1 convs",
    "model.dtype": "compute dtype of every network: float32 or bfloat16 (parameters and "
                   "losses stay float32)",
    # stage-specific fields of the GPE stages
    "encoder.gme_impl": "GME of a batch over the devices: 'dense' ([B, B] pairs) or "
                        "'row_block' (each device its rows, less memory)",
    "encoder.evals": "scheduled curvature evaluators: hessian, hessian_mds, bilip",
    "encoder.evals_every": "steps between runs of the evals (0 = at every evaluation)",
    "decoder.encoder_checkpoint": "frozen encoder to decode ('' = this workdir's encoder stage)",
    "decoder.encoder_method": "whose frozen encoder the decoder inverts: gpe, or a baseline",
    "decoder.l1_weight": "weight of an extra L1 reconstruction term (0 = off)",
    "decoder.evals": "scheduled evaluators: 'hessian' (of the loss w.r.t. the decoder's "
                     "parameters)",
    "decoder.evals_every": "steps between runs of the evals (0 = at every evaluation)",
    # baselines
    "vae.beta": "weight of the KL term against the summed squared error",
    "vae_mds.beta": "weight of the KL term against the summed squared error",
    "vae_mds.mds_weight": "weight of the MDS stress (squared data units, hence small)",
    "ae_mds.mds_weight": "weight of the MDS stress (squared data units, hence small)",
    # gans (shared by every GAN method)
    "gans.critic_hidden": "critic: Dense widths (mlp), or Dense layers after the convs (conv)",
    "gans.critic_features": "conv critic: channels per level (each halves the resolution)",
    "gans.critic_extra_convs": "conv critic: extra stride-1 convolutions per level",
    "gans.critic_layer_norm": "mlp critic: LayerNorm after each hidden layer",
    "gans.inverse_hidden": "GMEGAN's inverse network f: hidden widths (d -> ... -> d)",
    "gans.pair_hidden": "VEEGAN's joint critic head on [features(x), z]: widths",
    "gans.eval_samples": "generated samples per scheduled and final GAN evaluation",
    "gans.mode_min_fraction": "a mixture mode counts as covered with at least this fraction "
                              "of the samples",
    # prior
    "prior.net": "velocity network: 'mlp' (small latents) or 'resmlp' (residual, larger)",
    "prior.hidden": "mlp velocity network: hidden widths",
    "prior.width": "resmlp velocity network: width",
    "prior.depth": "resmlp velocity network: residual blocks",
    "prior.time_embed_dim": "size of the sinusoidal time embedding",
    "prior.time_scale": "t is multiplied by this before the sinusoids",
    "prior.ema_decay": "EMA of the weights used for sampling (0 = off)",
    "prior.ot_coupling": "pair noise and data by minibatch optimal transport (OT-CFM)",
    "prior.evals": "scheduled evaluators: fm_loss, fd_pixels, fd_classifier, fd_inception",
    "prior.eval_samples": "samples per scheduled Frechet evaluation",
    "prior.eval_method": "ODE integrator of the scheduled evaluations (euler | heun | rk4 | "
                         "dopri5)",
    "prior.eval_ode_steps": "integrator steps of the scheduled evaluations",
    # sample
    "sample.num_samples": "samples generated into sample/samples.npz",
    "sample.method": "ODE integrator: euler | heun | rk4 (fixed steps) | dopri5 (adaptive)",
    "sample.num_steps": "steps of the fixed-step integrators",
    "sample.t0": "integration starts at this t (noise end)",
    "sample.t1": "integration ends at this t (data end)",
    "sample.rtol": "dopri5: relative tolerance",
    "sample.atol": "dopri5: absolute tolerance",
    "sample.batch_size": "samples integrated and decoded at once",
    "sample.grid_size": "images in sample/samples.png",
    "sample.interp_pairs": "rows of the interpolation grids",
    "sample.interp_steps": "columns of the interpolation grids",
    "sample.compare_solvers": "also measure each integrator's NFE and error against a tight "
                              "dopri5 solution",
    # evaluate
    "evaluate.extractors": "feature spaces of the comparison: classifier, pixels, thumbnail, "
                           "inception",
    "evaluate.num_samples": "generated / reconstructed / real samples per comparison",
    "evaluate.num_reference": "held-out reference examples (at most the held-out split)",
    "evaluate.pr_k": "k of the k-NN manifolds of precision / recall",
    "evaluate.pr_samples": "points per set for precision / recall",
    "evaluate.cache_dir": "cache of the feature classifier ('' = $GPE_JAX_CACHE or "
                          "~/.cache/gpe_jax)",
    "evaluate.inception_weights": "local .npz of the FID Inception-v3 (for 'inception')",
    "evaluate.classifier.num_steps": "feature classifier: Adam steps (cosine-decayed lr)",
    "evaluate.classifier.batch_size": "feature classifier: training batch size",
    "evaluate.classifier.lr": "feature classifier: peak learning rate",
    "evaluate.classifier.width": "feature classifier: channels of the first conv level "
                                 "(doubling per level)",
    "evaluate.classifier.feature_dim": "feature classifier: size of the feature layer",
    "evaluate.classifier.num_levels": "feature classifier: conv levels for images",
    "evaluate.classifier.seed": "feature classifier: data order and initialisation seed",
    "evaluate.classifier.eval_batch_size": "feature classifier: batch of its feature / "
                                           "accuracy functions",
    # probes
    "probes.which": "Hessian probes to run, letters a-e (python -m gpe_jax.experiments.probes)",
    "probes.encoder_checkpoint": "a trained GPE encoder for probe (a) ('' = train one)",
    "probes.points": "held-out points per Hessian",
    "probes.lanczos_iters": "Krylov dimension of the Lanczos runs",
    "probes.dense_max": "below this dimension, also form the dense Hessian as a check",
    "probes.betas": "probe (a): the scales beta of GME vs MDS curvature",
    "probes.stop_fractions": "probe (c): where on the GME curve encoders are stopped (0-1)",
    "probes.num_features": "probe (c): random features of the decoder on the latents",
    "probes.decoder_points": "probe (c): training points of the feature Hessian",
    "probes.gd_steps": "probe (c): gradient-descent steps of the random-feature decoder",
    "probes.alphas": "probe (d): the bi-Lipschitz levels alpha",
    # experiments
    "experiments.workers": "variants run at a time, each in its own process",
    "experiments.seeds": "seeds of the experiments that repeat runs (GAN experiments, fig8_protocol)",
    "experiments.methods": "GAN methods compared (() = every registered one)",
    "experiments.variants": "gan_robustness: architecture variants (() = all)",
    "experiments.vae_betas": "table1_beta: the VAE KL weights swept (beta of config.vae)",
    "experiments.lrs": "fig8_protocol: learning-rate grid each method picks its own from",
    "experiments.gme_stop": "fig8_protocol: the GPE encoder stops at this held-out GME "
                            "(encoder.target_loss)",
    # eval (held-out evaluations during and after training)
    "eval.num_examples": "held-out examples per periodic evaluation (0 = all)",
    "eval.geometry_points": "held-out points of the final geometry metrics (all pairs)",
    "eval.alphas": "levels alpha of the weak alpha-bi-Lipschitz fractions",
    "eval.knn_k": "k of the k-NN preservation metric",
    "eval.latent_stats_samples": "training samples of the latent normalisation",
}
for _section in ("encoder", "decoder", *_BASELINES, "prior"):
  HELP.update({f"{_section}.{k}": v.format(target=_TARGET[_section]) for k, v in _LOOP.items()})
for _method, _nets in _NETS.items():
  HELP.update({f"{_method}.{k}": v for k, v in _GAN.items()})
  HELP.update({f"{_method}.{k}": v for k, v in _GAN_WEIGHTS.get(_method, {}).items()})
  for _net in _nets:
    HELP.update({f"{_method}.{_net}.{k}": v.format(net=_NET_NAMES[_net])
                 for k, v in _NET.items()})
del _section, _method, _nets, _net


# --------------------------------------------------------------------------- the listing


def flatten(config, prefix: str = "") -> Iterator[tuple[str, Any]]:
  """(dotted name, value) of every leaf field of a ConfigDict (or dict): at each level the
  plain fields first, then the sections, each in key order (ConfigDict's is alphabetical)."""
  keys = list(config.keys())
  sections = [k for k in keys if hasattr(config[k], "keys")]
  for key in [k for k in keys if k not in sections]:
    yield f"{prefix}{key}", config[key]
  for key in sections:
    yield from flatten(config[key], f"{prefix}{key}.")


def meaning(name: str) -> str:
  """The one-line meaning of field ``name`` ('' when ``HELP`` has none)."""
  return HELP.get(name, "")


def missing(config) -> list[str]:
  """The leaf fields of ``config`` that ``HELP`` does not describe."""
  return [name for name, _ in flatten(config) if name not in HELP]


def _value(value: Any) -> str:
  return repr(tuple(value)) if isinstance(value, list) else repr(value)


def text(config, source: str = "") -> str:
  """Every field of ``config``: dotted name, value, meaning; one line each, by section."""
  rows = [(name, _value(value), meaning(name) or "(no description)")
          for name, value in flatten(config)]
  name_w = max((len(r[0]) for r in rows), default=0)
  value_w = min(max((len(r[1]) for r in rows), default=0), 20)
  where = f" of {source}" if source else ""
  lines = [f"Config fields{where}: name, value in this config, meaning. Override any with "
           "--config.NAME=VALUE; configs/base.py holds the defaults."]
  section = None
  for name, value, what in rows:
    top = name.split(".")[0] if "." in name else ""
    if top != section:
      lines.append("")
      section = top
    lines.append(f"{name:<{name_w}}  {value:<{value_w}}  {what}")
  return "\n".join(lines)


def _cell(s: str) -> str:
  return s.replace("|", "\\|")


def markdown_table(config) -> str:
  """A Markdown table ``| field | default | meaning |`` of every field of ``config``."""
  lines = ["| field | default | meaning |", "|---|---|---|"]
  for name, value in flatten(config):
    lines.append(f"| `{name}` | `{_cell(_value(value))}` | {_cell(meaning(name))} |")
  return "\n".join(lines)


# --------------------------------------------------------------------------- command line


def _base_config_path() -> str:
  """configs/base.py of the current folder, else the one beside this package (a checkout)."""
  here = os.path.join("configs", "base.py")
  if os.path.isfile(here):
    return here
  return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "configs", "base.py")


USAGE = "python -m gpe_jax.config_help [--markdown] [--config=configs/NAME.py[:ARG]]"


def _fail(problem: str) -> None:
  print(f"gpe_jax error: {problem} Usage: {USAGE}", file=sys.stderr)
  raise SystemExit(2)


def load_config(source: str):
  """The config of ``configs/NAME.py[:ARG]`` (its ``get_config(ARG)``)."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  path, _, arg = source.partition(":")
  if not os.path.isfile(path):
    _fail(f"--config={source}: {path} is not a file; give a config file such as "
          "configs/default.py.")
  spec = importlib.util.spec_from_file_location("_config_for_help", path)
  module = importlib.util.module_from_spec(spec)
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(path))))
  try:
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # pylint: disable=broad-except  (a config file's own error)
    _fail(f"--config={source} cannot be loaded ({type(e).__name__}: {e}).")
  finally:
    sys.path.pop(0)


def main(argv: list[str] | None = None) -> None:
  """``python -m gpe_jax.config_help [--markdown] [--config=configs/NAME.py[:ARG]]``: print the
  fields (``--markdown``: as a Markdown table); the config defaults to configs/base.py. To see
  a config with overrides, use ``--config_help`` on the command itself."""
  args = list(sys.argv[1:] if argv is None else argv)
  markdown, source = False, _base_config_path()
  for a in args:
    if a == "--markdown":
      markdown = True
    elif a.startswith("--config="):
      source = a.split("=", 1)[1]
    else:
      _fail(f"unexpected argument {a!r}.")
  config = load_config(source)
  print(markdown_table(config) if markdown else text(config, source))


if __name__ == "__main__":
  main()
