"""Dataset registry: the data config, its defaults, and ``load_dataset``.

``default_data_config`` is the single source of the ``config.data`` defaults (configs/base.py
calls it). ``load_dataset`` validates the config, resolves ``source='auto'`` per dataset
name, and dispatches to a loader in ``sources``:

  name            'auto' resolves to
  digits          sklearn
  mnist           idx if IDX files are found, else tfds
  fashion_mnist   idx if IDX files are found (Debian dataset-fashion-mnist first), else tfds
  cifar10         tfds
  celeb_a(_hq)    tfds
  mixture         synthetic
  npz             npz
  image_folder    image_folder

A ``path`` that is a prepared folder (``python -m gpe_jax.data.prepare``, it holds
``prepared.json``) resolves to the ``prepared`` source for every image dataset: its images are
streamed from disk per batch instead of loaded.

For image datasets with ``source='auto'`` and ``path`` set, the path decides: a ``.npz``
file reads as npz, a directory as IDX files (mnist, fashion_mnist) or as an image folder
(every other image dataset). ``npz`` and ``image_folder`` may also be named explicitly for
any image dataset, so e.g. a local CIFAR-10 .npz keeps the cifar10 model config.
"""
from __future__ import annotations

import os

from absl import logging
import ml_collections

from gpe_jax.data import sources
from gpe_jax.data.core import DataError, Dataset

DATASETS = ('digits', 'fashion_mnist', 'mnist', 'cifar10', 'celeb_a', 'celeb_a_hq', 'mixture',
            'npz', 'image_folder')
SOURCES = ('auto', 'idx', 'tfds', 'npz', 'image_folder', 'prepared', 'sklearn', 'synthetic')

_FILE_SOURCES = ('npz', 'image_folder', 'prepared')
# Sources each dataset name accepts when named explicitly.
ALLOWED_SOURCES = {
    'digits': ('sklearn',) + _FILE_SOURCES,
    'mnist': ('idx', 'tfds') + _FILE_SOURCES,
    'fashion_mnist': ('idx', 'tfds') + _FILE_SOURCES,
    'cifar10': ('tfds',) + _FILE_SOURCES,
    'celeb_a': ('tfds',) + _FILE_SOURCES,
    'celeb_a_hq': ('tfds',) + _FILE_SOURCES,
    'mixture': ('synthetic',),
    'npz': ('npz', 'prepared'),
    'image_folder': ('image_folder', 'prepared'),
}

_FIELDS = ('name', 'path', 'source', 'image_size', 'center_crop', 'num_held_out', 'max_train',
           'max_test', 'split_seed', 'tfds_data_dir', 'mixture', 'batch_size', 'workers', 'prefetch', 'storage')
_MIXTURE_FIELDS = ('num_components', 'dim', 'num_train', 'num_test', 'radius', 'std_major',
                   'std_minor', 'seed', 'layout', 'shift')


def default_data_config(**overrides) -> ml_collections.ConfigDict:
  """``config.data`` with every field and its default; keyword arguments override fields.

  ``mixture`` may be overridden with a dict of its fields
  (``default_data_config(name='mixture', mixture=dict(dim=10))``); the other mixture
  fields keep their defaults.

  Returns:
    A ConfigDict with fields:
      name: one of ``DATASETS``.
      path: file or directory for file sources; '' = the source's default locations.
      source: one of ``SOURCES``; 'auto' picks per name (module docstring).
      image_size: 0 = native size, else square output size.
      center_crop: 0 = none, -1 = largest centred square, N > 0 = centred N x N (before resize).
      num_held_out: held-out size for sources without a test split; -1 = sized to the data
        (10%, at most 10,000, at least one batch).
      max_train, max_test: keep at most this many examples per split (0 = all).
      split_seed: seed of the held-out split.
      tfds_data_dir: '' = $TFDS_DATA_DIR or ~/tensorflow_datasets.
      batch_size: global training batch size.
      workers: host threads that read and convert the next training batches (0 = none: each
        batch is read when its step starts). Changes no number.
      prefetch: training batches placed on the devices ahead of the step that uses them.
      storage: 'auto' | 'memory' | 'stream'. 'stream' keeps image sources in their compact
        storage (uint8 IDX/npz/.npy read in place, image files decoded when their batch is
        read, tfds records) and converts each batch's rows; 'memory' converts everything to
        float32 in host memory once (refused when it would not fit); 'auto' streams when the
        float32 form would exceed 1 GiB. Changes no number.
      mixture: synthetic mixture (``sources.make_mixture``):
        num_components: K equal-weight Gaussians (labels 0..K-1).
        dim: ambient dimension (>= 2).
        num_train, num_test: points drawn per split.
        radius: 'circle': the circle's radius; 'rings': the unit r (rings at 3r and 9r).
        std_major: noise std in coordinates 0 and 1.
        std_minor: noise std in the other dim - 2 coordinates.
        seed: sampling seed (train and test are independent draws).
        layout: 'circle' (GPE paper: K centres on one circle) or 'rings' (GMEGAN authors:
          K/3 centres on a ring of radius 3r, 2K/3 on one of radius 9r; K a multiple of 3).
        shift: added to coordinates 0 and 1 of every centre (GMEGAN authors: 0.5).
      The GMEGAN authors' mixture is ``mixture=dict(layout='rings', num_components=12,
      dim=100, radius=0.165, shift=0.5, std_major=0.15, std_minor=0.015)``.
  """
  cfg = ml_collections.ConfigDict()
  cfg.name = 'digits'
  cfg.path = ''
  cfg.source = 'auto'
  cfg.image_size = 0
  cfg.center_crop = 0
  cfg.num_held_out = 297
  cfg.max_train = 0
  cfg.max_test = 0
  cfg.split_seed = 0
  cfg.tfds_data_dir = ''
  cfg.batch_size = 100
  cfg.workers = 2
  cfg.prefetch = 2
  cfg.storage = 'auto'
  cfg.mixture = ml_collections.ConfigDict()
  cfg.mixture.num_components = 6
  cfg.mixture.dim = 500
  cfg.mixture.num_train = 6000
  cfg.mixture.num_test = 1200
  cfg.mixture.radius = 4.0
  cfg.mixture.std_major = 0.6
  cfg.mixture.std_minor = 0.01
  cfg.mixture.seed = 0
  cfg.mixture.layout = 'circle'
  cfg.mixture.shift = 0.0
  for key, value in overrides.items():
    if key not in cfg:
      raise DataError(f'default_data_config: unknown field {key!r}; fields: '
                      f'{", ".join(_FIELDS)}.')
    if key == 'mixture' and not isinstance(value, ml_collections.ConfigDict):
      for sub, sub_value in dict(value).items():
        if sub not in cfg.mixture:
          raise DataError(f'default_data_config: unknown mixture field {sub!r}; fields: '
                          f'{", ".join(_MIXTURE_FIELDS)}.')
        cfg.mixture[sub] = sub_value
    else:
      cfg[key] = value
  return cfg


def _check_config(cfg):
  missing = [f for f in _FIELDS if f not in cfg]
  missing += [f'mixture.{f}' for f in _MIXTURE_FIELDS if 'mixture' in cfg and f not in cfg.mixture]
  if missing:
    raise DataError(f'The data config lacks {", ".join(missing)}; build it with '
                    'gpe_jax.data.default_data_config() so every field is present.')
  if cfg.name not in DATASETS:
    raise DataError(f'Unknown dataset {cfg.name!r} (--config.data.name); known datasets: '
                    f'{", ".join(DATASETS)}.')
  if cfg.source not in SOURCES:
    raise DataError(f'Unknown data source {cfg.source!r} for dataset {cfg.name!r} '
                    f'(--config.data.source); known sources: {", ".join(SOURCES)}.')
  if cfg.source != 'auto' and cfg.source not in ALLOWED_SOURCES[cfg.name]:
    raise DataError(f'Dataset {cfg.name!r} cannot be read from source {cfg.source!r}; use '
                    f'--config.data.source=auto or one of '
                    f'{", ".join(ALLOWED_SOURCES[cfg.name])}.')
  if cfg.storage not in sources.STORAGES:
    raise DataError(f'Unknown --config.data.storage={cfg.storage!r}; use one of '
                    f'{", ".join(sources.STORAGES)} (auto: stream image data whose float32 '
                    'form would exceed 1 GiB; memory: hold it as float32; stream: convert per '
                    'batch).')
  bad = [f'{f}={cfg[f]}' for f in ('image_size', 'max_train', 'max_test', 'split_seed',
                                   'workers') if cfg[f] < 0]
  if cfg.num_held_out < -1:
    bad.append(f'num_held_out={cfg.num_held_out}')
  if cfg.prefetch < 1:
    bad.append(f'prefetch={cfg.prefetch} (must be >= 1)')
  if cfg.center_crop < -1:
    bad.append(f'center_crop={cfg.center_crop}')
  if bad:
    raise DataError(f'Dataset {cfg.name!r}: invalid data config {", ".join(bad)}: sizes and '
                    'seeds must be >= 0 (center_crop may also be -1 for the largest square, '
                    'num_held_out -1 for a hold-out sized to the data).')


def resolve_source(cfg) -> str:
  """The concrete source ``load_dataset`` will use for ``cfg`` ('auto' resolved)."""
  name, source = cfg.name, cfg.source
  if source != 'auto':
    return source
  if cfg.path and name != 'mixture':
    path = os.path.abspath(os.path.expanduser(cfg.path))
    if os.path.isfile(os.path.join(path, 'prepared.json')):
      return 'prepared'
  if name in ('mixture', 'npz', 'image_folder'):
    return ALLOWED_SOURCES[name][0]
  if cfg.path:
    path = os.path.abspath(os.path.expanduser(cfg.path))
    if path.lower().endswith('.npz'):
      return 'npz'
    if name in ('mnist', 'fashion_mnist'):
      return 'idx'  # searched only at path; the error names it
    if os.path.isdir(path):
      return 'image_folder'
    raise DataError(
        f'Dataset {name!r}: --config.data.path={cfg.path!r} is neither a .npz file nor a '
        'directory of images. Point it at one of those, or clear it to use the default source '
        f'({ALLOWED_SOURCES[name][0]}); prepared tensorflow-datasets copies are found through '
        '--config.data.tfds_data_dir, not path.')
  if name == 'digits':
    return 'sklearn'
  if name in ('mnist', 'fashion_mnist'):
    directory, searched = sources.find_idx_dir(name)
    if directory is not None:
      return 'idx'
    data_dir = sources.tfds_data_dir(cfg)
    if sources.find_prepared_tfds(data_dir, sources.TFDS_SPECS[name][0]) is not None:
      return 'tfds'
    tfds_root = os.path.join(data_dir, sources.TFDS_SPECS[name][0])
    raise DataError(
        f'Dataset {name!r} not found: searched for IDX files '
        f'({", ".join(sources.IDX_FILES.values())}, each optionally .gz) in '
        f'{", ".join(searched)}, and for a prepared '
        f'tensorflow-datasets copy in {tfds_root}. To get it, {sources.idx_how_to(name)}; or '
        f'{sources.tfds_how_to(name, data_dir)}.')
  return 'tfds'


def load_dataset(data_cfg) -> Dataset:
  """Load, split, scale and resize the dataset described by ``data_cfg``.

  Every process of a multi-host run may call this and gets identical arrays; per-step
  slices are taken by ``BatchSampler``. Nothing is downloaded.

  Args:
    data_cfg: ``config.data`` (see ``default_data_config`` for the fields).

  Returns:
    A ``Dataset``: float32 ``[N, H, W, C]`` images in [-1, 1] or ``[N, D]`` vectors.

  Raises:
    DataError: unknown name/source, invalid settings, or data absent (the message names
      every place searched and how to get the data).
  """
  _check_config(data_cfg)
  source = resolve_source(data_cfg)
  name = data_cfg.name
  if source == 'sklearn':
    ds = sources.load_digits(data_cfg, name)
  elif source == 'idx':
    ds = sources.load_idx(data_cfg, name)
  elif source == 'tfds':
    ds = sources.load_tfds(data_cfg, name)
  elif source == 'npz':
    ds = sources.load_npz(data_cfg, name)
  elif source == 'image_folder':
    ds = sources.load_image_folder(data_cfg, name)
  elif source == 'prepared':
    ds = sources.load_prepared(data_cfg, name)
  elif source == 'synthetic':
    ds = sources.make_mixture(data_cfg, name)
  else:  # unreachable: _check_config validated the source
    raise DataError(f'Unknown data source {source!r}.')
  logging.info('Loaded dataset %s from %s: train %s, held-out %s, %s classes.', ds.name,
               ds.source, ds.x_train.shape, ds.x_test.shape, ds.num_classes)
  return ds
