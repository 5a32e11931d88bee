"""Velocity networks v_theta(z, t) of the flow-matching prior (PAPERS §1.5).

The prior lives in the normalised GPE latent space (vectors ``[B, d]``), so the velocity
networks are MLPs; what matters is that they *see time*: t in [0, 1] is lifted by a sinusoidal
embedding (log-spaced frequencies, as in diffusion/flow models) and enters every layer, not
just the input. Two sizes of one family:

  * ``VelocityMLP``: [z, emb(t)] -> hidden layers, each with an additive time projection.
    Right for small latents (d <= ~32; digits, Fashion-MNIST, mixtures).
  * ``VelocityResMLP``: a residual MLP whose blocks are modulated by t (adaptive LayerNorm:
    scale and shift from emb(t)), for larger latents (CIFAR-10, CelebA).

Default (LeCun) initialisation throughout, so even an untrained network depends on t.

``time_scale`` (t is multiplied by it before the sinusoids) defaults to 30, not the 1000 of
discrete-time diffusion code: with 1000 the fastest features oscillate with period 0.006 in t,
the learned v(z, t) wiggles in t, and ODE solvers pay for it (measured on digits: RK4 no more
accurate than Heun at 25 steps, dopri5 469 NFE; with 30: RMS error 1e-5 for RK4 against
1.7e-3 for Heun, dopri5 79 NFE, same held-out loss and Fréchet distance; docs/results).

``dtype`` (mixed precision) as in ``gpe_jax.models.nets``: Dense layers compute in it; the time
embedding's sinusoids, parameters, LayerNorms and the output velocity are float32.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpe_jax.models.nets import f32_out, norm_dtype


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0,
                       scale: float = 1000.0) -> jax.Array:
  """Sinusoidal embedding of times t in [0, 1].

  Args:
    t: ``[B]`` (or scalar, broadcast) times.
    dim: even embedding size.
    max_period: the slowest frequency's period (in units of ``scale * t``).
    scale: t is multiplied by this first, so that t in [0, 1] spans many periods of the fast
      frequencies and fractions of the slowest.

  Returns:
    ``[B, dim]``: [cos(scale t w_k), sin(scale t w_k)], w_k = max_period^(-k / (dim/2)).
  """
  if dim % 2:
    raise ValueError(f"time embedding dim must be even, got {dim}")
  t = jnp.atleast_1d(jnp.asarray(t, jnp.float32))
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = scale * t[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def _broadcast_t(t: jax.Array, batch: int) -> jax.Array:
  t = jnp.asarray(t, jnp.float32)
  return jnp.broadcast_to(t.reshape(-1), (batch,)) if t.size == 1 else t.reshape(batch)


class TimeEmbed(nn.Module):
  """t [B] -> [B, features]: sinusoidal embedding, then a 2-layer MLP."""
  features: int
  embed_dim: int = 64
  time_scale: float = 30.0
  dtype: Any = None

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    h = timestep_embedding(t, self.embed_dim, scale=self.time_scale)
    h = nn.silu(nn.Dense(self.features, dtype=self.dtype)(h))
    return nn.Dense(self.features, dtype=self.dtype)(h)


class VelocityMLP(nn.Module):
  """v(z, t): z [B, d], t [B] or scalar -> [B, d]; time added to every hidden layer."""
  hidden: Sequence[int]
  embed_dim: int = 64
  time_scale: float = 30.0
  dtype: Any = None

  @nn.compact
  def __call__(self, z: jax.Array, t: jax.Array, train: bool = False) -> jax.Array:
    del train
    temb = TimeEmbed(max(self.hidden), self.embed_dim, self.time_scale, self.dtype)(
        _broadcast_t(t, z.shape[0]))
    h = z
    for width in self.hidden:
      h = nn.Dense(width, dtype=self.dtype)(h) + nn.Dense(width, dtype=self.dtype)(nn.silu(temb))
      h = nn.silu(h)
    return f32_out(nn.Dense(z.shape[-1], dtype=self.dtype)(h), self.dtype)


class ResBlock(nn.Module):
  """h + MLP(adaLN(h, t)): LayerNorm without affine, scale/shift from the time embedding."""
  width: int
  expansion: int = 2
  dtype: Any = None

  @nn.compact
  def __call__(self, h: jax.Array, temb: jax.Array) -> jax.Array:
    scale, shift = jnp.split(nn.Dense(2 * self.width, dtype=self.dtype)(nn.silu(temb)), 2,
                             axis=-1)
    y = nn.LayerNorm(use_bias=False, use_scale=False, dtype=norm_dtype(self.dtype))(h)
    y = y * (1.0 + scale) + shift
    y = nn.silu(nn.Dense(self.width * self.expansion, dtype=self.dtype)(y))
    y = nn.Dense(self.width, dtype=self.dtype)(y)
    return h + y


class VelocityResMLP(nn.Module):
  """v(z, t) as a residual MLP: in-projection, ``depth`` time-modulated blocks, out-projection."""
  width: int
  depth: int
  embed_dim: int = 64
  time_scale: float = 30.0
  dtype: Any = None

  @nn.compact
  def __call__(self, z: jax.Array, t: jax.Array, train: bool = False) -> jax.Array:
    del train
    temb = TimeEmbed(self.width, self.embed_dim, self.time_scale, self.dtype)(
        _broadcast_t(t, z.shape[0]))
    h = nn.Dense(self.width, dtype=self.dtype)(z)
    for _ in range(self.depth):
      h = ResBlock(self.width, dtype=self.dtype)(h, temb)
    h = nn.silu(nn.LayerNorm(dtype=norm_dtype(self.dtype))(h))
    return f32_out(nn.Dense(z.shape[-1], dtype=self.dtype)(h), self.dtype)
