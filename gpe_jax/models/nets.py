"""Encoder and decoder families (Flax linen), one parameterised family per role.

Images are NHWC in [-1, 1]; vectors are [B, D]. Sizes come from config through
``gpe_jax.models.build_encoder`` / ``build_decoder``; modules take typed fields only.

CPU note (measured in ``benchmarks/``): on XLA:CPU a stride-2 convolution's input gradient and
any ConvTranspose are very slow, so the conv families here change resolution without them:
down-sampling is space-to-depth (a free reshape) followed by a stride-1 convolution, and
up-sampling is a stride-1 convolution to 4x channels followed by depth-to-space (pixel
shuffle). Both are as expressive as their strided counterparts (a stride-2 kxk conv is a
stride-1 ceil(k/2)-conv after space-to-depth) and fast on every backend.

Mixed precision: every module takes ``dtype``, the dtype its Dense and Conv layers compute in
(``None``: from the inputs and parameters, float32; ``jnp.bfloat16`` from
``config.model.dtype='bfloat16'``). Parameters are float32 whatever ``dtype`` is, norm layers
compute and return float32 (``norm_dtype``), and the output is cast to float32 (``f32_out``),
so every loss and every GME distance is taken in float32.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def space_to_depth(x: jax.Array, block: int = 2) -> jax.Array:
  """[B, H, W, C] -> [B, H/b, W/b, C*b*b]."""
  b, h, w, c = x.shape
  if h % block or w % block:
    raise ValueError(f"space_to_depth needs H and W divisible by {block}, got {h}x{w}; "
                     "choose an image_size that is a multiple of 2**len(features).")
  x = x.reshape(b, h // block, block, w // block, block, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // block, w // block, block * block * c)


def depth_to_space(x: jax.Array, block: int = 2) -> jax.Array:
  """[B, H, W, C*b*b] -> [B, H*b, W*b, C] (pixel shuffle; inverse of space_to_depth)."""
  b, h, w, c = x.shape
  co = c // (block * block)
  x = x.reshape(b, h, w, block, block, co)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * block, w * block, co)


def _act(x: jax.Array) -> jax.Array:
  return nn.leaky_relu(x, negative_slope=0.2)


def norm_dtype(dtype: Any) -> Any:
  """The dtype of the norm layers of a network computing in ``dtype``: float32 (statistics and
  outputs) under mixed precision, the default (``None``) otherwise."""
  return None if dtype is None else jnp.float32


def f32_out(h: jax.Array, dtype: Any) -> jax.Array:
  """A network's output in float32 (a no-op unless it computes in a narrower ``dtype``)."""
  return h if dtype is None else h.astype(jnp.float32)


class MLPEncoder(nn.Module):
  """x [B, ...] -> z [B, latent_dim] (or [B, 2*latent_dim] if ``out_mult=2``).

  ``final_bias``: a bias on the output layer. Off for point encoders: GME is invariant under
  latent translations, so that bias has an exactly-zero gradient and Adam would only amplify
  float noise into it (the decoder's first layer absorbs translations anyway). On for the
  VAE's (mean, log-variance) head, whose KL term is not translation invariant.
  """
  hidden: Sequence[int]
  latent_dim: int
  out_mult: int = 1
  norm: bool = False
  final_bias: bool = False
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = x.reshape(x.shape[0], -1)
    for width in self.hidden:
      h = nn.Dense(width, dtype=self.dtype)(h)
      if self.norm:
        h = nn.LayerNorm(dtype=norm_dtype(self.dtype))(h)
      h = _act(h)
    h = nn.Dense(self.latent_dim * self.out_mult, use_bias=self.final_bias, dtype=self.dtype)(h)
    return f32_out(h, self.dtype)


class MLPDecoder(nn.Module):
  """z [B, d] -> x [B, *out_shape]; ``tanh`` output for [-1, 1] images, linear for vectors."""
  hidden: Sequence[int]
  out_shape: Sequence[int]
  tanh_output: bool = True
  norm: bool = False
  dtype: Any = None

  @nn.compact
  def __call__(self, z, train: bool = False):
    h = z
    for width in self.hidden:
      h = nn.Dense(width, dtype=self.dtype)(h)
      if self.norm:
        h = nn.LayerNorm(dtype=norm_dtype(self.dtype))(h)
      h = _act(h)
    size = 1
    for s in self.out_shape:
      size *= s
    h = f32_out(nn.Dense(size, dtype=self.dtype)(h), self.dtype)
    if self.tanh_output:
      h = jnp.tanh(h)
    return h.reshape((z.shape[0],) + tuple(self.out_shape))


class ConvEncoder(nn.Module):
  """Image encoder: per level, space-to-depth then a ``kernel`` x ``kernel`` conv (stride 1;
  3 by default, 2 covers the paper's 4x4 stride-2 receptive field, 1 maps each 2x2 patch),
  LeakyReLU(0.2), BatchNorm on every other level; then flatten and a dense map to the latent.

  x [B, H, W, C] -> z [B, latent_dim * out_mult]. H and W must be divisible by
  2**len(features). ``final_bias`` as in MLPEncoder.
  """
  features: Sequence[int]
  latent_dim: int
  out_mult: int = 1
  batch_norm: bool = True
  kernel: int = 3
  extra_convs: int = 0
  final_bias: bool = False
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = x
    k = (self.kernel, self.kernel)

    def conv(f):
      # kernel 1: a dense map of each 2x2 patch's channels, written as a matrix product (on
      # XLA:CPU a 1x1 convolution's gradient measured 1.5x the same product's)
      if self.kernel == 1:
        return nn.Dense(f, dtype=self.dtype)
      return nn.Conv(f, k, padding="SAME", dtype=self.dtype)

    for i, f in enumerate(self.features):
      h = space_to_depth(h)
      h = _act(conv(f)(h))
      for _ in range(self.extra_convs):
        h = _act(conv(f)(h))
      if self.batch_norm and i % 2 == 0:
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                         dtype=norm_dtype(self.dtype))(h)
    h = h.reshape(h.shape[0], -1)
    h = nn.Dense(self.latent_dim * self.out_mult, use_bias=self.final_bias, dtype=self.dtype)(h)
    return f32_out(h, self.dtype)


class ConvDecoder(nn.Module):
  """Image decoder: dense to [B, s, s, features[0]], then per level a 3x3 conv to 4x channels
  and depth-to-space (x2 resolution), LeakyReLU(0.2), optional BatchNorm and a second 3x3 conv;
  a final 3x3 conv to ``channels`` and tanh.

  z [B, d] -> x [B, H, W, channels] with H = W = image_size.
  """
  features: Sequence[int]
  image_size: int
  channels: int
  batch_norm: bool = True
  kernel: int = 3
  dtype: Any = None

  @nn.compact
  def __call__(self, z, train: bool = False):
    levels = len(self.features)
    base = self.image_size // (2 ** levels)
    if base * 2 ** levels != self.image_size or base < 1:
      raise ValueError(f"ConvDecoder: image_size {self.image_size} is not divisible by "
                       f"2**{levels}; change model.dec_features or data.image_size.")
    h = nn.Dense(base * base * self.features[0], dtype=self.dtype)(z)
    h = _act(h).reshape(z.shape[0], base, base, self.features[0])
    k = (self.kernel, self.kernel)
    for f in self.features:
      h = nn.Conv(4 * f, k, padding="SAME", dtype=self.dtype)(h)
      h = _act(depth_to_space(h))
      # No bias before BatchNorm: BN removes it, its gradient is exactly zero.
      h = nn.Conv(f, k, padding="SAME", use_bias=not self.batch_norm, dtype=self.dtype)(h)
      if self.batch_norm:
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                         dtype=norm_dtype(self.dtype))(h)
      h = _act(h)
    h = nn.Conv(self.channels, k, padding="SAME", dtype=self.dtype)(h)
    return jnp.tanh(f32_out(h, self.dtype))
