"""A small label classifier trained on the dataset itself, used as a feature extractor.

Fréchet distances and precision/recall of generated samples need an embedding in which
distances are semantically meaningful. Pretrained Inception weights are not always available
(and are a poor fit for 8x8 digits or 28x28 Fashion-MNIST), so this module trains a small
classifier on the dataset's own labels and uses its penultimate activations as features:

  cfg = classifier_config()
  ext = get_classifier(ds, cfg)            # trains once, then loads from the on-disk cache
  feats = ext.fn(samples)                  # [N, *example_shape] -> [N, ext.dim] float32
  ext.info['test_accuracy']                # held-out accuracy of the classifier

The trained parameters are cached as ``{cache_dir}/classifiers/{name}-{key}.msgpack`` (flax
``to_bytes``) with a ``.json`` of training info next to it. ``key`` hashes the dataset's
contents and every training-relevant config value, so a changed dataset or config trains a
new classifier and an unchanged one is never trained twice.

CPU note: like ``gpe_jax.models.nets`` the image network changes resolution by space-to-depth
followed by a stride-1 convolution (no strided convolutions, no ConvTranspose, which are slow
on XLA:CPU), and normalises with GroupNorm (no BatchNorm state to carry).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import tempfile
import time
from typing import Any, Callable

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from gpe_jax.data import Dataset, sources
from gpe_jax.models import space_to_depth
from gpe_jax.parallel import ConfigError

# Bump when the architecture or training procedure changes, so old caches are not reused.
_CACHE_VERSION = 1
# Config fields that do not change the trained parameters (left out of the cache key).
_NON_TRAINING_FIELDS = ('eval_batch_size',)
CACHE_ENV = 'GPE_JAX_CACHE'


def classifier_config() -> ml_collections.ConfigDict:
  """Default training config of the feature classifier.

  Fields:
    num_steps: Adam steps (cosine-decayed learning rate).
    batch_size: training batch size (capped at the number of training examples).
    lr: peak learning rate.
    width: channels of the first conv level (doubling per level); the MLP's hidden is 4x.
    feature_dim: size of the feature (penultimate) layer, the extractor's ``dim``.
    num_levels: space-to-depth + conv levels for images (space-to-depth is skipped once H or
      W is odd).
    seed: data order and parameter initialisation.
    eval_batch_size: fixed batch of the jitted feature / accuracy functions (not hashed).

  The defaults serve every dataset. Measured on a 2-core CPU (shared, load ~1.6): sklearn
  digits (1,500 8x8 images) trains in 10 s to 0.993 held-out accuracy; Fashion-MNIST at 32x32
  (60k) in 71 s to 0.896. Width 32 (channels 32/64/128) costs ~3.5x per step for +0.5% on
  Fashion-MNIST; width 64 makes even 8x8 digits take ~35 s.
  """
  c = ml_collections.ConfigDict()
  c.num_steps = 2500
  c.batch_size = 128
  c.lr = 3e-3
  c.width = 16
  c.feature_dim = 128
  c.num_levels = 3
  c.seed = 0
  c.eval_batch_size = 500
  return c


def default_cache_dir() -> str:
  """``$GPE_JAX_CACHE`` if set (and non-empty), else ``~/.cache/gpe_jax``."""
  return sources.cache_dir()


def _group_norm(features: int) -> nn.GroupNorm:
  return nn.GroupNorm(num_groups=math.gcd(features, 8))


class Conv3x3(nn.Module):
  """Stride-1 3x3 'SAME' convolution, [B, H, W, C] -> [B, H, W, features].

  Same parameters (``kernel`` [3, 3, C, features], ``bias``) and result as ``nn.Conv``, but
  lowered as patches @ kernel when the feature map is small (H * W <= ``small``): XLA:CPU's
  convolution gradients are several times slower than a matmul on 1x1 .. 4x4 maps with many
  channels (measured: 65 vs 18 ms per training step on 8x8 digits at width 64). A 1x1 map
  only sees the kernel's centre tap.
  """
  features: int
  small: int = 16

  @nn.compact
  def __call__(self, h: jax.Array) -> jax.Array:
    _, hh, ww, c = h.shape
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (3, 3, c, self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    if hh == 1 and ww == 1:
      return h @ kernel[1, 1] + bias
    if hh * ww <= self.small:
      hp = jnp.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
      patches = jnp.concatenate(
          [hp[:, i:i + hh, j:j + ww] for i in range(3) for j in range(3)], axis=-1)
      return patches @ kernel.reshape(9 * c, self.features) + bias
    y = jax.lax.conv_general_dilated(h, kernel, (1, 1), 'SAME',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return y + bias


class Classifier(nn.Module):
  """Label classifier whose penultimate layer is the feature embedding.

  Images [B, H, W, C]: ``num_levels`` levels of space-to-depth(2) (skipped once H or W is
  odd) then a stride-1 3x3 conv with ``width * 2**level`` channels, GroupNorm and ReLU; global
  mean pool; dense to ``feature_dim`` + ReLU (the features); dense to ``num_classes`` (the
  logits). No BatchNorm (no mutable state) and no strided / transposed convolutions (slow on
  XLA:CPU).
  Vectors [B, D]: dense ``4 * width`` + LayerNorm + ReLU, dense ``feature_dim`` + ReLU (the
  features), dense to ``num_classes``.
  """
  num_classes: int
  width: int = 16
  feature_dim: int = 128
  num_levels: int = 3

  @nn.compact
  def __call__(self, x: jax.Array, features_only: bool = False) -> jax.Array:
    """x [B, *example_shape] -> logits [B, num_classes] (or features if ``features_only``)."""
    if x.ndim == 4:
      h = x
      for i in range(self.num_levels):
        f = self.width * 2 ** i
        if h.shape[1] % 2 == 0 and h.shape[2] % 2 == 0:
          h = space_to_depth(h, 2)
        h = Conv3x3(f, name=f'conv{i}')(h)
        h = nn.relu(_group_norm(f)(h))
      h = h.mean(axis=(1, 2))
    else:
      h = x.reshape(x.shape[0], -1)
      h = nn.Dense(4 * self.width, name='hidden')(h)
      h = nn.relu(nn.LayerNorm()(h))
    h = nn.relu(nn.Dense(self.feature_dim, name='feat')(h))
    if features_only:
      return h
    return nn.Dense(self.num_classes, name='head')(h)

  def features(self, x: jax.Array) -> jax.Array:
    """x [B, *example_shape] -> features [B, feature_dim] (after the activation)."""
    return self(x, features_only=True)


@dataclasses.dataclass
class FeatureExtractor:
  """A named embedding of samples for Fréchet distances and precision/recall.

  Attributes:
    name: extractor name (``'classifier'``).
    dim: feature dimension.
    fn: ``[N, *example_shape]`` array -> ``[N, dim]`` float32 numpy (jitted, fixed batch).
    info: provenance: cache path, held-out accuracy, training steps / seconds, ...
    classify: ``[N, *example_shape]`` -> predicted labels ``[N]`` int (the classifier only;
      None for the other extractors).
  """
  name: str
  dim: int
  fn: Callable[[np.ndarray], np.ndarray]
  info: dict
  classify: Callable[[np.ndarray], np.ndarray] | None = None


def _cache_key(data: Dataset, cfg) -> str:
  """First 16 hex chars of sha256 over the dataset's contents and the training config."""
  h = hashlib.sha256()
  cfg_values = {k: v for k, v in cfg.to_dict().items() if k not in _NON_TRAINING_FIELDS}
  header = dict(version=_CACHE_VERSION, name=data.name, example_shape=list(data.example_shape),
                num_classes=data.num_classes, x_train_shape=list(data.x_train.shape),
                x_test_shape=list(data.x_test.shape),
                y_test_shape=None if data.y_test is None else list(data.y_test.shape),
                cfg=cfg_values)
  h.update(json.dumps(header, sort_keys=True, default=str).encode())
  if hasattr(data.x_train, "fingerprint"):   # streamed: its stored bytes, rows and transform
    h.update(data.x_train.fingerprint().encode())
  else:
    h.update(np.ascontiguousarray(data.x_train).data)
  h.update(np.ascontiguousarray(data.y_train).data)
  return h.hexdigest()[:16]


def _atomic_write(path: str, payload: bytes) -> None:
  """Write ``payload`` to ``path`` through a temporary file in the same directory."""
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix='.tmp-',
                             suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(payload)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _ensure_writable(directory: str) -> None:
  """Create ``directory`` and check that files can be written there; else ConfigError."""
  try:
    os.makedirs(directory, exist_ok=True)
    fd, probe = tempfile.mkstemp(dir=directory, prefix='.probe-')
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise ConfigError(
        f'The classifier cache directory {directory!r} is not writable ({e}). The feature '
        f'classifier is trained once per dataset and cached there; point the cache at a '
        f'writable directory with the environment variable {CACHE_ENV}=DIR or the config key '
        f'--config.evaluate.cache_dir=DIR.') from e


@functools.lru_cache(maxsize=16)
def _jitted_apply(model: Classifier, method: str):
  """Jitted (params, x [B, ...]) -> model.<method>(x) as float32 (cached per model)."""
  return jax.jit(lambda p, xb: model.apply(p, xb, method=method).astype(jnp.float32))


def _make_apply(model: Classifier, method: str, batch: int, example_shape: tuple[int, ...],
                out_dim: int) -> Callable[[Any, np.ndarray], np.ndarray]:
  """A host function (params, x [N, ...]) -> [N, out_dim] float32 numpy, in fixed batches."""
  apply = _jitted_apply(model, method)

  def run(params, x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = x.shape[0]
    if x.shape[1:] != example_shape:
      if x.ndim >= 1 and math.prod(x.shape[1:]) == math.prod(example_shape):
        x = x.reshape((n,) + example_shape)
      else:
        raise ValueError(f'classifier features: expected examples of shape {example_shape}, '
                         f'got an array of shape {x.shape}.')
    out = np.empty((n, out_dim), np.float32)
    for start in range(0, n, batch):
      xb = x[start:start + batch]
      m = xb.shape[0]
      if m < batch:
        xb = np.concatenate([xb, np.zeros((batch - m,) + example_shape, np.float32)])
      out[start:start + m] = np.asarray(apply(params, xb))[:m]
    return out

  return run


def _accuracy(logits_fn, params, x: np.ndarray, y: np.ndarray) -> float | None:
  if x.shape[0] == 0:
    return None
  pred = logits_fn(params, x).argmax(axis=-1)
  return float(np.mean(pred == y))


@functools.lru_cache(maxsize=16)
def _optimizer(lr: float, steps: int) -> optax.GradientTransformation:
  """Adam with a cosine-decayed learning rate (cached, so equal configs share a jit)."""
  return optax.adam(optax.cosine_decay_schedule(lr, max(steps, 1)))


@functools.lru_cache(maxsize=16)
def _train_step_fn(model: Classifier, tx: optax.GradientTransformation):
  """Jitted (params, opt_state, x [B, ...], y [B]) -> (params, opt_state, loss)."""

  @jax.jit
  def train_step(params, opt_state, xb, yb):
    def loss_fn(p):
      logits = model.apply(p, xb)
      return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return train_step


def _train(model: Classifier, data: Dataset, cfg) -> tuple[Any, float]:
  """Adam + cosine decay on softmax cross-entropy; returns (params, seconds)."""
  t0 = time.perf_counter()
  n = data.x_train.shape[0]
  bs = min(int(cfg.batch_size), n)
  steps = int(cfg.num_steps)
  key = jax.random.PRNGKey(int(cfg.seed))
  # One compiled init instead of ~100 eagerly compiled initialiser ops (~5 s on CPU).
  params = jax.jit(model.init)(key, jnp.zeros((1,) + data.example_shape, jnp.float32))
  tx = _optimizer(float(cfg.lr), steps)
  opt_state = jax.jit(tx.init)(params)

  train_step = _train_step_fn(model, tx)

  rng = np.random.default_rng(int(cfg.seed))
  per_epoch = n // bs
  perm = None
  logging.info('Feature classifier for %r: training %d steps (batch %d, %d examples).',
               data.name, steps, bs, n)
  loss = None
  for step in range(steps):
    i = step % per_epoch
    if i == 0:
      perm = rng.permutation(n)
    idx = perm[i * bs:(i + 1) * bs]
    params, opt_state, loss = train_step(params, opt_state, data.x_train[idx],
                                         data.y_train[idx])
  params = jax.block_until_ready(params)
  seconds = time.perf_counter() - t0
  logging.info('Feature classifier for %r: trained in %.1f s (final batch loss %.4f).',
               data.name, seconds, float('nan') if loss is None else float(loss))
  return jax.device_get(params), seconds


def _unlabelled_error(data: Dataset) -> ConfigError:
  return ConfigError(
      f'Dataset {data.name!r} (source: {data.source}) has no labels, so the classifier '
      f'feature extractor cannot be trained on it. Use --config.evaluate.extractors='
      f"\"('pixels',)\", or \"('pixels','inception')\" with Inception weights available, "
      f'for Fréchet distances and precision/recall on unlabelled data.')


def get_classifier(data: Dataset, cfg, cache_dir: str = '') -> FeatureExtractor:
  """Load (or train once and cache) the feature classifier of ``data``.

  Args:
    data: a labelled Dataset; images [N, H, W, C] or vectors [N, D].
    cfg: ``classifier_config()``-style ConfigDict.
    cache_dir: cache root ('' = ``default_cache_dir()``); the classifier lives under
      ``{cache_dir}/classifiers/``.

  Returns:
    FeatureExtractor(name='classifier', dim=cfg.feature_dim, fn, info) where ``fn`` maps
    [N, *example_shape] -> [N, feature_dim] float32 numpy.

  Raises:
    ConfigError: unlabelled data, or a cache directory that is not writable when the
      classifier has to be trained.
  """
  if data.y_train is None or data.y_test is None:
    raise _unlabelled_error(data)
  if data.x_train.shape[0] == 0:
    raise ConfigError(f'Dataset {data.name!r} has no training examples; the classifier '
                      'feature extractor cannot be trained.')
  num_classes = data.num_classes
  if num_classes < 2:
    raise ConfigError(f'Dataset {data.name!r} has {num_classes} label class(es); the classifier '
                      "feature extractor needs at least 2. Use --config.evaluate.extractors="
                      "\"('pixels',)\".")

  cache_root = cache_dir or default_cache_dir()
  directory = os.path.join(cache_root, 'classifiers')
  key = _cache_key(data, cfg)
  path = os.path.join(directory, f'{data.name}-{key}.msgpack')
  info_path = path[:-len('.msgpack')] + '.json'

  model = Classifier(num_classes=num_classes, width=int(cfg.width),
                     feature_dim=int(cfg.feature_dim), num_levels=int(cfg.num_levels))
  ex_shape = data.example_shape
  batch = int(cfg.eval_batch_size)
  logits_fn = _make_apply(model, '__call__', batch, ex_shape, num_classes)
  features_fn = _make_apply(model, 'features', batch, ex_shape, int(cfg.feature_dim))
  target = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jnp.zeros((1,) + ex_shape, jnp.float32))

  params = None
  if os.path.exists(path):
    try:
      with open(path, 'rb') as f:
        loaded = flax.serialization.from_bytes(target, f.read())
      same = jax.tree.map(lambda a, b: tuple(np.shape(a)) == tuple(b.shape), loaded, target)
      if not all(jax.tree.leaves(same)):
        raise ValueError('parameter shapes differ from the model')
      params = loaded
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('Feature classifier cache %s is unreadable (%s); retraining.', path, e)

  if params is not None:
    info = {}
    try:
      with open(info_path) as f:
        info = json.load(f)
    except (OSError, ValueError):
      info = dict(test_accuracy=_accuracy(logits_fn, params, data.x_test, data.y_test),
                  train_steps=int(cfg.num_steps), train_seconds=None)
    info.update(cache_path=path, trained_now=False, dataset=data.name,
                num_train=int(data.x_train.shape[0]))
    logging.info('Feature classifier for %r loaded from %s (held-out accuracy %s).',
                 data.name, path, info.get('test_accuracy'))
  else:
    writer = jax.process_index() == 0
    if writer:
      _ensure_writable(directory)
    params, seconds = _train(model, data, cfg)
    acc = _accuracy(logits_fn, params, data.x_test, data.y_test)
    info = dict(cache_path=path, test_accuracy=acc, train_steps=int(cfg.num_steps),
                train_seconds=seconds, trained_now=True, dataset=data.name,
                num_train=int(data.x_train.shape[0]))
    logging.info('Feature classifier for %r: held-out accuracy %s after %d steps, %.1f s.',
                 data.name, 'n/a' if acc is None else f'{acc:.4f}', int(cfg.num_steps), seconds)
    if writer:
      stored = {k: v for k, v in info.items() if k != 'trained_now'}
      _atomic_write(info_path, json.dumps(stored, indent=2, sort_keys=True).encode())
      _atomic_write(path, flax.serialization.to_bytes(params))

  params = jax.device_put(params)
  return FeatureExtractor(name='classifier', dim=int(cfg.feature_dim),
                          fn=lambda x: features_fn(params, x), info=info,
                          classify=lambda x: np.argmax(logits_fn(params, x), axis=1))
