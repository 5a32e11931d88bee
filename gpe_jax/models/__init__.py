"""Model families and the builders that size them from config.

``build_encoder`` / ``build_decoder`` are the only places that read ``config.model``; modules
themselves take typed fields.

``config.model.dtype`` ('float32' or 'bfloat16') is the dtype every network built here computes
in (encoders, decoders, critics, GMEGAN's f, the prior's velocity net): with 'bfloat16' the
Dense and Conv layers run in bf16 while parameters, optimiser state, norm layers and network
outputs stay float32 (``gpe_jax.models.nets``), so losses and GME distances are float32.
"""
from __future__ import annotations

from typing import Sequence

from gpe_jax.errors import ConfigError

from gpe_jax.models.gan import Critic, InverseNet, PairCritic
from gpe_jax.models.nets import (ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder,
                                 depth_to_space, space_to_depth)
from gpe_jax.models.velocity import VelocityMLP, VelocityResMLP, timestep_embedding

__all__ = ["ConvDecoder", "ConvEncoder", "Critic", "InverseNet", "PairCritic", "MLPDecoder", "MLPEncoder", "VelocityMLP",
           "VelocityResMLP", "build_critic", "build_decoder", "build_encoder",
           "build_inverse", "build_pair_critic", "build_velocity", "compute_dtype",
           "depth_to_space", "space_to_depth", "timestep_embedding"]

KINDS = ("mlp", "conv")
DTYPES = ("float32", "bfloat16")


def compute_dtype(model_cfg):
  """The dtype the networks' layers compute in, from ``config.model.dtype``: None for
  'float32' (the layers' default, float32), ``jnp.bfloat16`` for 'bfloat16'.

  Raises:
    ConfigError: another value.
  """
  import jax.numpy as jnp
  name = model_cfg.get("dtype", "float32")   # manifests written before the field: float32
  if name not in DTYPES:
    raise ConfigError(f"config.model.dtype={name!r} is not a compute dtype; use one of "
                      f"{DTYPES} ('bfloat16' runs activations and matmuls in bf16 and keeps "
                      "parameters and losses float32), e.g. --config.model.dtype=bfloat16.")
  return None if name == "float32" else jnp.bfloat16


def _check_kind(kind: str, example_shape: Sequence[int]) -> None:
  if kind not in KINDS:
    raise ConfigError(f"config.model.kind={kind!r} is not a model family; use one of {KINDS}.")
  if kind == "conv" and len(example_shape) != 3:
    raise ConfigError(f"config.model.kind='conv' needs images [H, W, C], but the data's examples "
                     f"have shape {tuple(example_shape)}; use --config.model.kind=mlp.")


def build_encoder(model_cfg, example_shape: Sequence[int], out_mult: int = 1):
  """Encoder T: x [B, *example_shape] -> [B, latent_dim * out_mult].

  ``out_mult=2`` gives the (mean, log-variance) head of a VAE encoder.
  """
  _check_kind(model_cfg.kind, example_shape)
  dtype = compute_dtype(model_cfg)
  if model_cfg.kind == "mlp":
    return MLPEncoder(hidden=tuple(model_cfg.enc_hidden), latent_dim=model_cfg.latent_dim,
                      out_mult=out_mult, norm=model_cfg.layer_norm, final_bias=out_mult > 1,
                      dtype=dtype)
  return ConvEncoder(features=tuple(model_cfg.enc_features), latent_dim=model_cfg.latent_dim,
                     out_mult=out_mult, batch_norm=model_cfg.batch_norm,
                     kernel=_kernel(model_cfg, 'enc_kernel'), extra_convs=model_cfg.extra_convs,
                     final_bias=out_mult > 1, dtype=dtype)


def build_decoder(model_cfg, example_shape: Sequence[int]):
  """Decoder S: z [B, latent_dim] -> x [B, *example_shape]."""
  _check_kind(model_cfg.kind, example_shape)
  dtype = compute_dtype(model_cfg)
  is_image = len(example_shape) == 3
  if model_cfg.kind == "mlp":
    return MLPDecoder(hidden=tuple(model_cfg.dec_hidden), out_shape=tuple(example_shape),
                      tanh_output=is_image, norm=model_cfg.layer_norm, dtype=dtype)
  h, w, c = example_shape
  if h != w:
    raise ConfigError(f"ConvDecoder makes square images; the data is {h}x{w}. Set "
                     "--config.data.image_size (with center_crop) to make it square.")
  return ConvDecoder(features=tuple(model_cfg.dec_features), image_size=h, channels=c,
                     batch_norm=model_cfg.batch_norm, kernel=_kernel(model_cfg, 'dec_kernel'),
                     dtype=dtype)


def _kernel(model_cfg, key: str) -> int:
  k = model_cfg.get(key, 3)
  if isinstance(k, bool) or not isinstance(k, int) or k < 1:
    raise ConfigError(f"config.model.{key} is {k!r}; it must be a positive integer kernel "
                      f"size (3 by default, 2 for the paper's 4x4 stride-2 receptive field).")
  return k


def _sizes(gan_cfg, key: str, what: str, allow_empty: bool = False) -> tuple:
  if key not in gan_cfg:
    raise ConfigError(f"config.gans.{key} is missing: the {what} needs it (a tuple of layer "
                      "sizes); add it to the config (configs/base.py has the default).")
  sizes = tuple(int(s) for s in gan_cfg[key])
  if (not sizes and not allow_empty) or any(s < 1 for s in sizes):
    raise ConfigError(f"config.gans.{key}={tuple(gan_cfg[key])!r}: the {what} needs "
                      f"{'' if allow_empty else 'at least one '}layer size"
                      f"{'s' if allow_empty else ''} >= 1, e.g. --config.gans.{key}=\"(128, 128)\".")
  return sizes


def build_critic(gan_cfg, model_cfg, example_shape: Sequence[int], out_dim: int = 1):
  """Critic psi: x [B, *example_shape] -> [B] (or [B, out_dim]), of the family
  ``config.model.kind``, sized by ``config.gans`` (``critic_hidden``; conv: ``critic_features``,
  ``critic_extra_convs``).

  Raises:
    ConfigError: a missing or empty size.
  """
  _check_kind(model_cfg.kind, example_shape)
  conv = model_cfg.kind == "conv"
  hidden = _sizes(gan_cfg, "critic_hidden", "critic", allow_empty=conv)
  features = _sizes(gan_cfg, "critic_features", "conv critic") if conv else ()
  return Critic(kind=model_cfg.kind, hidden=hidden, features=features, out_dim=out_dim,
                layer_norm=bool(gan_cfg.get("critic_layer_norm", False)),
                extra_convs=int(gan_cfg.get("critic_extra_convs", 0)) if conv else 0,
                dtype=compute_dtype(model_cfg))


def build_pair_critic(gan_cfg, model_cfg, example_shape: Sequence[int]):
  """VEEGAN's joint critic D(x, z): a critic body to ``latent_dim`` features, concatenated with
  z, then ``config.gans.pair_hidden`` Dense layers to one logit."""
  body = build_critic(gan_cfg, model_cfg, example_shape, out_dim=int(model_cfg.latent_dim))
  return PairCritic(body=body, head=_sizes(gan_cfg, "pair_hidden", "VEEGAN joint critic"),
                    dtype=compute_dtype(model_cfg))


def build_inverse(gan_cfg, model_cfg):
  """GMEGAN's inverse network f: R^d -> R^d, three fully connected ReLU layers (the two inner
  widths ``config.gans.inverse_hidden``)."""
  hidden = _sizes(gan_cfg, "inverse_hidden", "inverse network f")
  if len(hidden) != 2:
    raise ConfigError(f"config.gans.inverse_hidden={hidden!r}: f has three fully connected "
                      "layers, so give its two inner widths, e.g. (128, 128).")
  return InverseNet(hidden=hidden, out_dim=int(model_cfg.latent_dim),
                    dtype=compute_dtype(model_cfg))


VELOCITY_NETS = ("mlp", "resmlp")


def build_velocity(prior_cfg, model_cfg=None):
  """Velocity network v(z, t) of the flow-matching prior, from ``config.prior``.

  ``prior_cfg.net``: 'mlp' (``hidden`` widths; small latents) or 'resmlp' (``width`` x
  ``depth`` time-modulated residual blocks; larger latents); ``time_embed_dim`` sizes the
  sinusoidal time embedding. ``model_cfg`` (``config.model``) gives the compute dtype
  (``config.model.dtype``); without it the net computes in float32.
  """
  dtype = None if model_cfg is None else compute_dtype(model_cfg)
  if prior_cfg.net == "mlp":
    return VelocityMLP(hidden=tuple(prior_cfg.hidden), embed_dim=prior_cfg.time_embed_dim,
                       time_scale=prior_cfg.time_scale, dtype=dtype)
  if prior_cfg.net == "resmlp":
    return VelocityResMLP(width=prior_cfg.width, depth=prior_cfg.depth,
                          embed_dim=prior_cfg.time_embed_dim, time_scale=prior_cfg.time_scale,
                          dtype=dtype)
  raise ConfigError(f"config.prior.net={prior_cfg.net!r} is not a velocity network; use one "
                   f"of {VELOCITY_NETS}.")


def apply_model(model, params, batch_stats, x, train: bool, **kwargs):
  """Run ``model`` and return (output, new_batch_stats); handles models without BatchNorm.

  Args:
    model: a linen module.
    params, batch_stats: its variables (``batch_stats`` may be ``{}``).
    x: the input batch.
    train: training mode (batch statistics are then used and updated).

  Returns:
    (output, batch_stats after the call: updated when ``train`` and the model has any).
  """
  variables = {"params": params}
  if batch_stats:
    variables["batch_stats"] = batch_stats
    if train:
      out, updates = model.apply(variables, x, train=True, mutable=["batch_stats"], **kwargs)
      return out, updates["batch_stats"]
  return model.apply(variables, x, train=train, **kwargs), batch_stats


def inference_fn(model, **kwargs):
  """A jitted (params, batch_stats, x) -> model(x) in inference mode (running BatchNorm
  statistics). Make it once per model and bind variables with ``functools.partial``: the
  parameters stay arguments, so evaluations do not recompile."""
  import jax

  @jax.jit
  def fn(params, batch_stats, x):
    out, _ = apply_model(model, params, batch_stats, x, train=False, **kwargs)
    return out
  return fn


def encode_mean(h):
  """The embedding of a (mean, log-variance) encoder head: its first half."""
  import jax.numpy as jnp
  return jnp.split(h, 2, axis=-1)[0]


def init_variables(model, key, example_shape):
  """(params, batch_stats) of ``model`` for inputs [B, *example_shape]."""
  import jax.numpy as jnp
  variables = model.init({"params": key}, jnp.zeros((2,) + tuple(example_shape), jnp.float32),
                         train=False)
  return variables["params"], variables.get("batch_stats", {})
