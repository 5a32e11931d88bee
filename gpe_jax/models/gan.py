"""The GAN families' extra networks: critics psi (data -> R), VEEGAN's joint critic
D(x, z) and GMEGAN's small inverse network f (R^d -> R^d).

Generators G reuse the decoder families and encoders T the encoder families
(``gpe_jax.models.build_decoder`` / ``build_encoder``), so every GAN method shares its
architectures with the autoencoder methods. Critics have no BatchNorm: the gradient penalties
take per-example input gradients, which batch statistics would couple across the batch (and a
penalised critic with BatchNorm is not the function the penalty constrains). LayerNorm, which
is per example, is allowed.

``dtype`` (mixed precision) as in ``gpe_jax.models.nets``: Dense and Conv layers compute in it,
parameters, LayerNorms and outputs are float32.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpe_jax.models.nets import f32_out, norm_dtype, space_to_depth


def _act(x: jax.Array) -> jax.Array:
  return nn.leaky_relu(x, negative_slope=0.2)


class Critic(nn.Module):
  """x [B, ...] -> [B, out_dim] (``out_dim=1``: the critic's score, squeezed to [B]).

  ``kind='mlp'``: flatten, then ``hidden`` Dense layers with LeakyReLU(0.2) (optional
  LayerNorm). ``kind='conv'``: per entry of ``features`` a space-to-depth and a 3x3 conv
  (stride 1) with LeakyReLU, ``extra_convs`` more 3x3 convs per level, then flatten and the
  ``hidden`` Dense layers (may be empty: the paper's "without fully connected layers"
  variants), then the output layer.
  """
  kind: str
  hidden: Sequence[int]
  features: Sequence[int] = ()
  out_dim: int = 1
  layer_norm: bool = False
  extra_convs: int = 0
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = x
    if self.kind == "conv":
      for f in self.features:
        h = _act(nn.Conv(f, (3, 3), padding="SAME", dtype=self.dtype)(space_to_depth(h)))
        for _ in range(self.extra_convs):
          h = _act(nn.Conv(f, (3, 3), padding="SAME", dtype=self.dtype)(h))
    h = h.reshape(h.shape[0], -1)
    for width in self.hidden:
      h = nn.Dense(width, dtype=self.dtype)(h)
      if self.layer_norm:
        h = nn.LayerNorm(dtype=norm_dtype(self.dtype))(h)
      h = _act(h)
    out = f32_out(nn.Dense(self.out_dim, dtype=self.dtype)(h), self.dtype)
    return out[:, 0] if self.out_dim == 1 else out


class PairCritic(nn.Module):
  """VEEGAN's joint critic: (x [B, ...], z [B, d]) -> logit [B].

  A critic body maps x to ``x_features`` features; they are concatenated with z and passed
  through the ``head`` Dense layers (LeakyReLU) to one logit.
  """
  body: Critic
  head: Sequence[int]
  dtype: Any = None

  @nn.compact
  def __call__(self, x, z, train: bool = False):
    h = jnp.concatenate([_act(self.body(x, train=train)), z], axis=-1)
    for width in self.head:
      h = _act(nn.Dense(width, dtype=self.dtype)(h))
    return f32_out(nn.Dense(1, dtype=self.dtype)(h), self.dtype)[:, 0]


class InverseNet(nn.Module):
  """GMEGAN's f: R^d -> R^d, three fully connected layers with ReLU between them
  (``hidden`` gives the two inner widths). z [B, d] -> [B, d]."""
  hidden: Sequence[int]
  out_dim: int
  dtype: Any = None

  @nn.compact
  def __call__(self, z, train: bool = False):
    h = z
    for width in self.hidden:
      h = nn.relu(nn.Dense(width, dtype=self.dtype)(h))
    return f32_out(nn.Dense(self.out_dim, dtype=self.dtype)(h), self.dtype)
