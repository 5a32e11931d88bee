"""Inception-v3 "pool3" features of the standard FID network, in Flax linen (inference only).

The network is the one ``pytorch-fid`` 0.3.0 builds with ``InceptionV3([3])``: torchvision's
Inception-v3 patched into the TensorFlow FID variant (``fid_inception_v3``):

- ``Mixed_5b..5d`` / ``Mixed_6b..6e`` / ``Mixed_7b``: their pooling branch averages with
  ``count_include_pad=False`` (TensorFlow's padding convention);
- ``Mixed_7c``: its pooling branch is a 3x3 *max* pool (a quirk of the TF graph);
- every convolution is bias-free and followed by BatchNorm (eps 1e-3, running statistics) and
  ReLU;
- the output is the 2048-D global average pool after ``Mixed_7c`` (the fc layer is unused).

pytorch-fid takes NCHW images in [0, 1], resizes them to 299x299 (bilinear, align_corners=False,
no antialiasing) and maps them to [-1, 1]. Our images are NHWC in [-1, 1]; ``make_feature_fn``
does the same resize (it commutes with the affine map to [-1, 1]) inside a jitted function.

Weights: the FID weights (``pt_inception-2015-12-05-6726825d.pth``) are not bundled and cannot
be downloaded at run time. ``scripts/convert_inception_weights.py`` turns that file into an
``.npz`` keyed by the torch parameter names, ``load_variables`` reads it and
``convert_state_dict`` maps the names onto this module (see ``docs/inception.md``).

Flax modules carry the torch names (``Conv2d_1a_3x3/conv``, ``Mixed_5b/branch1x1/bn``, ...), so
the mapping is mechanical: ``X.conv.weight`` [O, I, kh, kw] -> ``params/X/conv/kernel``
[kh, kw, I, O]; ``X.bn.weight`` / ``X.bn.bias`` -> ``params/X/bn/scale`` / ``bias``;
``X.bn.running_mean`` / ``running_var`` -> ``batch_stats/X/bn/mean`` / ``var``.
"""
from __future__ import annotations

import functools
import os
import re
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gpe_jax.parallel import ConfigError

FEATURE_DIM = 2048
INPUT_SIZE = 299
BN_EPS = 1e-3
# Smallest spatial size the module itself accepts (three VALID stride-2 stages + two more).
MIN_INPUT_SIZE = 75

# pytorch-fid's InceptionV3 wraps the layers in ``blocks.<i>.<j>``; these are the torchvision
# names of the parameterised layers at each (i, j) (max/avg pools have no parameters).
_PYTORCH_FID_BLOCKS = {
    (0, 0): "Conv2d_1a_3x3", (0, 1): "Conv2d_2a_3x3", (0, 2): "Conv2d_2b_3x3",
    (1, 0): "Conv2d_3b_1x1", (1, 1): "Conv2d_4a_3x3",
    (2, 0): "Mixed_5b", (2, 1): "Mixed_5c", (2, 2): "Mixed_5d", (2, 3): "Mixed_6a",
    (2, 4): "Mixed_6b", (2, 5): "Mixed_6c", (2, 6): "Mixed_6d", (2, 7): "Mixed_6e",
    (3, 0): "Mixed_7a", (3, 1): "Mixed_7b", (3, 2): "Mixed_7c",
}
_BLOCKS_PREFIX = re.compile(r"^blocks\.(\d+)\.(\d+)\.")
# torch suffix -> (flax collection, flax leaf name), per layer kind.
_TORCH_TO_FLAX = {
    "conv.weight": ("params", "conv", "kernel"),
    "bn.weight": ("params", "bn", "scale"),
    "bn.bias": ("params", "bn", "bias"),
    "bn.running_mean": ("batch_stats", "bn", "mean"),
    "bn.running_var": ("batch_stats", "bn", "var"),
}
_FLAX_TO_TORCH = {(c, m, leaf): t for t, (c, m, leaf) in _TORCH_TO_FLAX.items()}


# ------------------------------------------------------------------------------------------
# Network.
# ------------------------------------------------------------------------------------------

class BasicConv2d(nn.Module):
  """Bias-free conv -> BatchNorm (running stats, eps 1e-3) -> ReLU.

  [B, H, W, Cin] -> [B, H', W', features].
  """
  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ph, pw = self.padding
    x = nn.Conv(self.features, self.kernel_size, strides=self.strides,
                padding=((ph, ph), (pw, pw)), use_bias=False, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3_same(x: jax.Array) -> jax.Array:
  """3x3 stride-1 average pool, padding 1, padded zeros not counted (TF's convention)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool_3x3_same(x: jax.Array) -> jax.Array:
  """3x3 stride-1 max pool, padding 1 (padded with -inf, as torch)."""
  return nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """3x3 stride-2 max pool, no padding (floor mode)."""
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nn.Module):
  """FIDInceptionA (Mixed_5b..5d): [B, H, W, C] -> [B, H, W, 224 + pool_features]."""
  pool_features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = BasicConv2d(64, (1, 1), name="branch1x1")(x)
    b5 = BasicConv2d(48, (1, 1), name="branch5x5_1")(x)
    b5 = BasicConv2d(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = BasicConv2d(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3_same(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """InceptionB (Mixed_6a), grid reduction: [B, H, W, C] -> [B, (H-3)//2+1, ..., 480 + C]."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = BasicConv2d(384, (3, 3), strides=(2, 2), name="branch3x3")(x)
    bd = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = BasicConv2d(96, (3, 3), strides=(2, 2), name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  """FIDInceptionC (Mixed_6b..6e), factorised 7x7: [B, H, W, C] -> [B, H, W, 768]."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c7 = self.channels_7x7
    b1 = BasicConv2d(192, (1, 1), name="branch1x1")(x)
    b7 = BasicConv2d(c7, (1, 1), name="branch7x7_1")(x)
    b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = BasicConv2d(c7, (1, 1), name="branch7x7dbl_1")(x)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = BasicConv2d(192, (1, 1), name="branch_pool")(_avg_pool_3x3_same(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """InceptionD (Mixed_7a), grid reduction: [B, H, W, 768] -> [B, (H-3)//2+1, ..., 1280]."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = BasicConv2d(192, (1, 1), name="branch3x3_1")(x)
    b3 = BasicConv2d(320, (3, 3), strides=(2, 2), name="branch3x3_2")(b3)
    b7 = BasicConv2d(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv2d(192, (3, 3), strides=(2, 2), name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
  """FIDInceptionE_1 (``pool="avg"``, Mixed_7b) / _2 (``pool="max"``, Mixed_7c).

  [B, H, W, C] -> [B, H, W, 2048].
  """
  pool: str = "avg"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = BasicConv2d(320, (1, 1), name="branch1x1")(x)
    b3 = BasicConv2d(384, (1, 1), name="branch3x3_1")(x)
    b3 = jnp.concatenate([
        BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
        BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
    bd = BasicConv2d(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv2d(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([
        BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
        BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
    if self.pool == "avg":
      pooled = _avg_pool_3x3_same(x)
    elif self.pool == "max":
      pooled = _max_pool_3x3_same(x)
    else:
      raise ValueError(f"InceptionE.pool must be 'avg' or 'max', got {self.pool!r}")
    bp = BasicConv2d(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """The FID Inception-v3 up to the final average pool (inference network, no dropout/fc).

  ``__call__(x)``: x [B, H, W, 3] in [-1, 1] (the FID network is trained for H = W = 299;
  being fully convolutional it runs on any H, W >= 75) -> pool3 features [B, 2048].
  Resizing and gray-to-RGB are done by ``make_feature_fn``, not here.
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"InceptionV3 expects NHWC RGB images [B, H, W, 3], got {x.shape}")
    x = BasicConv2d(32, (3, 3), strides=(2, 2), name="Conv2d_1a_3x3")(x)
    x = BasicConv2d(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = BasicConv2d(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = BasicConv2d(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = BasicConv2d(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    x = InceptionC(128, name="Mixed_6b")(x)
    x = InceptionC(160, name="Mixed_6c")(x)
    x = InceptionC(160, name="Mixed_6d")(x)
    x = InceptionC(192, name="Mixed_6e")(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE("avg", name="Mixed_7b")(x)
    x = InceptionE("max", name="Mixed_7c")(x)
    return jnp.mean(x, axis=(1, 2))


# ------------------------------------------------------------------------------------------
# Weights.
# ------------------------------------------------------------------------------------------

def variable_shapes() -> dict[str, Any]:
  """Flax variable shapes of ``InceptionV3`` ({"params", "batch_stats"} of ShapeDtypeStructs).

  Computed with ``jax.eval_shape`` (no FLOPs, no memory); the shapes do not depend on the
  input size, so a minimal 75x75 input is traced.
  """
  x = jax.ShapeDtypeStruct((1, MIN_INPUT_SIZE, MIN_INPUT_SIZE, 3), jnp.float32)
  return jax.eval_shape(lambda x: InceptionV3().init(jax.random.PRNGKey(0), x), x)


def flax_path_to_torch_name(collection: str, path: tuple[str, ...]) -> str:
  """("params", ("Mixed_5b", "branch1x1", "conv", "kernel")) -> "Mixed_5b.branch1x1.conv.weight"."""
  key = (collection,) + tuple(path[-2:])
  if len(path) < 3 or key not in _FLAX_TO_TORCH:
    raise KeyError(f"no torch name for Flax variable {collection}/{'/'.join(path)}")
  return ".".join(path[:-2]) + "." + _FLAX_TO_TORCH[key]


def torch_shape(leaf_name: str, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  """Torch shape of a Flax leaf: HWIO kernels -> OIHW; vectors unchanged."""
  if leaf_name == "kernel":
    h, w, i, o = flax_shape
    return (o, i, h, w)
  return tuple(flax_shape)


@functools.lru_cache(maxsize=1)
def expected_state_dict_spec() -> dict[str, tuple[str, tuple[str, ...], tuple[int, ...]]]:
  """torch name -> (flax collection, flax path, torch shape), for every tensor the model needs."""
  spec = {}
  for collection, tree in variable_shapes().items():
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      path = tuple(k.key for k in key_path)
      spec[flax_path_to_torch_name(collection, path)] = (
          collection, path, torch_shape(path[-1], leaf.shape))
  return spec


def _canonical_name(name: str) -> str | None:
  """Map a state-dict key onto the raw file's torchvision names.

  Strips a ``module.`` (DataParallel) prefix and maps pytorch-fid's ``blocks.<i>.<j>.`` onto the
  layer name; returns None for tensors that are deliberately ignored (fc, num_batches_tracked).
  """
  if name.startswith("module."):
    name = name[len("module."):]
  m = _BLOCKS_PREFIX.match(name)
  if m:
    layer = _PYTORCH_FID_BLOCKS.get((int(m.group(1)), int(m.group(2))))
    if layer is not None:
      name = layer + "." + name[m.end():]
  if name in ("fc.weight", "fc.bias") or name.endswith(".num_batches_tracked"):
    return None
  return name


def _listing(names, limit: int = 8) -> str:
  names = sorted(names)
  more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more


def convert_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
  """pytorch-fid / torchvision Inception-v3 state dict (NumPy arrays) -> Flax variables.

  Args:
    state_dict: torch parameter name -> array, as in ``pt_inception-2015-12-05-6726825d.pth``
      (``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch1x1.bn.running_mean``, ...). The names of
      pytorch-fid's ``InceptionV3`` module (``blocks.0.0.conv.weight``, ...) and a ``module.``
      prefix are accepted too. ``fc.*`` and ``*.num_batches_tracked`` are ignored. Conv weights
      are OIHW [O, I, kh, kw]; BatchNorm tensors are [C].

  Returns:
    ``{"params": ..., "batch_stats": ...}`` for ``InceptionV3().apply``, float32 NumPy arrays,
    conv kernels transposed to HWIO [kh, kw, I, O].

  Raises:
    ValueError: naming the missing and unexpected keys and any shape mismatches (or a name that
      appears twice after prefix stripping).
  """
  spec = expected_state_dict_spec()
  canonical: dict[str, np.ndarray] = {}
  duplicates, unexpected = [], []
  fc_rows = None
  for name, value in state_dict.items():
    cname = _canonical_name(name)
    if cname is None:
      if name.endswith("fc.weight"):
        fc_rows = np.shape(value)[0]
      continue
    if cname in canonical:
      duplicates.append(cname)
    elif cname not in spec:
      unexpected.append(name)
    canonical[cname] = np.asarray(value)
  missing = [n for n in spec if n not in canonical]
  mismatched = [f"{n}: got {tuple(canonical[n].shape)}, expected {spec[n][2]}"
                for n in spec if n in canonical and tuple(canonical[n].shape) != spec[n][2]]
  if missing or unexpected or mismatched or duplicates:
    parts = ["Cannot load these weights into the FID Inception-v3 "
             f"({len(spec)} tensors expected, {len(canonical)} given)."]
    if missing:
      parts.append(f"Missing keys ({len(missing)}): {_listing(missing)}.")
    if unexpected:
      parts.append(f"Unexpected keys ({len(unexpected)}): {_listing(unexpected)}.")
    if mismatched:
      parts.append(f"Shape mismatches ({len(mismatched)}): {_listing(mismatched, 4)}.")
    if duplicates:
      parts.append(f"Keys given twice (with and without a prefix): {_listing(duplicates)}.")
    if any(n.startswith("AuxLogits.") for n in unexpected) or fc_rows == 1000:
      parts.append("These look like torchvision's ImageNet inception_v3 weights, which are NOT "
                   "the FID network; use pt_inception-2015-12-05-6726825d.pth.")
    raise ValueError(" ".join(parts))

  variables: dict[str, Any] = {"params": {}, "batch_stats": {}}
  for name, (collection, path, _) in spec.items():
    value = canonical[name].astype(np.float32)
    if path[-1] == "kernel":
      value = np.ascontiguousarray(value.transpose(2, 3, 1, 0))  # OIHW -> HWIO
    node = variables[collection]
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = value
  return variables


_MISSING_WEIGHTS_MESSAGE = (
    "The Inception-v3 FID weights are not bundled with gpe_jax and cannot be downloaded at run "
    "time{why}. Set --config.evaluate.inception_weights=/path/pt_inception.npz to a converted "
    "copy of the standard pytorch-fid weights: get pt_inception-2015-12-05-6726825d.pth (the "
    "file pytorch-fid downloads from its GitHub release 'fid_weights') on a machine with network "
    "access and run `python scripts/convert_inception_weights.py IN.pth OUT.npz` (torch is needed "
    "for that conversion only); see docs/inception.md. Alternatively choose the feature "
    "extractor 'classifier' or 'pixels', which need no external weights.")


def load_variables(path: str | os.PathLike | None) -> dict[str, Any]:
  """Load the FID Inception-v3 weights from an ``.npz`` of the torch state dict.

  Args:
    path: an ``.npz`` whose keys are the torch parameter names and whose values are the arrays
      (written by ``scripts/convert_inception_weights.py``).

  Returns:
    Flax variables ``{"params", "batch_stats"}`` (see ``convert_state_dict``).

  Raises:
    ConfigError: ``path`` is empty, does not exist, is a ``.pth`` file, is not a readable
      ``.npz``, or its tensors do not fit the network (says how to make the ``.npz``).
  """
  path = os.fspath(path) if path else ""
  if not path:
    raise ConfigError(_MISSING_WEIGHTS_MESSAGE.format(why=" (no weights path is configured)"))
  if not os.path.isfile(path):
    raise ConfigError(_MISSING_WEIGHTS_MESSAGE.format(why=f" ({path!r} does not exist)"))
  if path.endswith((".pth", ".pt")):
    raise ConfigError(_MISSING_WEIGHTS_MESSAGE.format(
        why=f" ({path!r} is a torch file; it must be converted to .npz first)"))
  try:
    with np.load(path, allow_pickle=False) as data:
      state_dict = {k: data[k] for k in data.files}
    return convert_state_dict(state_dict)
  except Exception as e:  # not an npz, a torn file, or tensors that do not fit the network
    raise ConfigError(_MISSING_WEIGHTS_MESSAGE.format(
        why=f" ({path!r} is not a usable weights file: {type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''})")) from None


# ------------------------------------------------------------------------------------------
# Batched feature extraction.
# ------------------------------------------------------------------------------------------

def preprocess(images: jax.Array) -> jax.Array:
  """[B, H, W, C in {1, 3}] in [-1, 1] -> [B, 299, 299, 3] float32, as pytorch-fid's input path.

  Gray is tiled to RGB; the resize is bilinear with half-pixel centres (torch's
  ``align_corners=False``) and no antialiasing (torch's ``F.interpolate`` has none).
  """
  x = jnp.asarray(images, jnp.float32)
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise ValueError(f"expected NHWC images with 1 or 3 channels, got shape {x.shape}")
  if x.shape[-1] == 1:
    x = jnp.tile(x, (1, 1, 1, 3))
  if x.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
    x = jax.image.resize(x, (x.shape[0], INPUT_SIZE, INPUT_SIZE, 3), method="bilinear",
                         antialias=False)
  return x


def make_feature_fn(variables: dict[str, Any], batch_size: int = 50
                    ) -> Callable[[np.ndarray], np.ndarray]:
  """A host function images -> pool3 features, jitted per fixed batch shape.

  Args:
    variables: Flax variables of ``InceptionV3`` (``load_variables`` / ``convert_state_dict``).
    batch_size: images per jitted call; the last batch is padded (by repeating its last image)
      to the same shape, so one compilation serves a whole set. Sets smaller than
      ``batch_size`` run as one batch of their own size.

  Returns:
    ``features(images)``: images [N, H, W, C] (C 1 or 3, any H, W; values in [-1, 1]) ->
    NumPy float32 [N, 2048].
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  model = InceptionV3()
  variables = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), variables)

  @jax.jit
  def _features(variables, images):
    return model.apply(variables, preprocess(images))

  def features(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
      raise ValueError(f"expected NHWC images [N, H, W, 1 or 3], got shape {images.shape}")
    n = images.shape[0]
    if n == 0:
      return np.zeros((0, FEATURE_DIM), np.float32)
    bs = min(batch_size, n)
    out = []
    for start in range(0, n, bs):
      batch = images[start:start + bs]
      valid = batch.shape[0]
      if valid < bs:
        pad = np.repeat(batch[-1:], bs - valid, axis=0)
        batch = np.concatenate([batch, pad], axis=0)
      out.append(np.asarray(_features(variables, batch.astype(np.float32)))[:valid])
    return np.concatenate(out, axis=0)

  return features
