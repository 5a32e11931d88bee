"""Dataset sources: where the bytes come from, and how they become a ``Dataset``.

One loader per source, each taking the data config and returning a split, scaled,
resized ``Dataset``:

  * ``load_digits``       scikit-learn's bundled 8x8 digits (no files, no network).
  * ``load_idx``          MNIST-style IDX files (raw or .gz) read by a small NumPy parser.
  * ``load_tfds``         a dataset already prepared by tensorflow-datasets on local disk.
  * ``load_npz``          a user .npz with ``x_train`` (+ optional ``x_test``, labels).
  * ``load_image_folder`` a directory tree of .png/.jpg images.
  * ``make_mixture``      a synthetic Gaussian mixture: the GPE paper's circle (Fig. 3) or the
                          GMEGAN authors' two rings (``mixture.layout``).

Nothing here downloads: a source whose data is absent raises ``DataError`` with one
paragraph naming every place searched and how to get the data. Loaders decide first which
records each split needs (held-out split from ``split_seed``, then ``max_train`` /
``max_test``) and only then decode, so a truncated run never decodes the whole corpus.

Image sources keep their compact storage and return ``stream.StreamedImages`` views that
convert each batch's rows, or float32 arrays when the data is small (``config.data.storage``,
see ``wants_stream``); either way a row holds the same numbers.

Every process of a multi-host run may call these loaders and get identical arrays; each
then takes its own rows per step through ``BatchSampler``.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
import gzip
import importlib.util
import os

import numpy as np

from gpe_jax.data import stream, transforms
from gpe_jax.data.core import DataError, Dataset

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')
# PIL modes that carry a single grey channel.
_GRAY_MODES = frozenset({'1', 'L', 'LA', 'I', 'I;16', 'I;16B', 'I;16L', 'F'})
# Records decoded per chunk by the lazy readers (tfds, image folders).
_READ_CHUNK = 1024

# --------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------


def held_out_split(num_examples: int, num_held_out: int, split_seed: int, *, name: str,
                   max_train: int = 0, max_test: int = 0,
                   batch_size: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """Deterministic train / held-out indices for a source without a test split.

  ``perm = default_rng(split_seed).permutation(num_examples)``; the last ``num_held_out``
  entries are held out, the rest train. ``num_held_out=-1`` sizes the hold-out to the data:
  ``auto_held_out(num_examples, batch_size)``. ``max_train`` / ``max_test`` then keep the first
  entries of each part (a seeded random subset), and each part is sorted so records are
  read in storage order.

  Returns:
    int64 ``[n_train]`` and ``[n_test]`` sorted index arrays.
  """
  if num_held_out == -1:
    num_held_out = auto_held_out(num_examples, batch_size)
  if not 0 < num_held_out < num_examples:
    raise DataError(
        f'Dataset {name!r} has {num_examples} examples and no separate test split, so '
        f'--config.data.num_held_out (now {num_held_out}) must be between 1 and '
        f'{num_examples - 1} to leave both a held-out split and training data.')
  perm = np.random.default_rng(split_seed).permutation(num_examples)
  train, test = perm[:num_examples - num_held_out], perm[num_examples - num_held_out:]
  return np.sort(_truncate(train, max_train)), np.sort(_truncate(test, max_test))


def auto_held_out(num_examples: int, batch_size: int = 1) -> int:
  """The hold-out of ``num_held_out=-1``: 10% of the examples, at most 10,000, but at least one
  training batch (held-out metrics are means over batches of the training batch size)."""
  return int(min(10_000, max(batch_size, 1, round(0.1 * num_examples))))


def official_split(num_train: int, num_test: int, *, max_train: int = 0,
                   max_test: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Indices of a source with its own test split: the first ``max_*`` rows (0 = all)."""
  return (_truncate(np.arange(num_train), max_train), _truncate(np.arange(num_test), max_test))


def _truncate(idx: np.ndarray, max_n: int) -> np.ndarray:
  return idx[:max_n] if max_n else idx


def _cfg_split(cfg, name: str, num_examples: int) -> tuple[np.ndarray, np.ndarray]:
  return held_out_split(num_examples, cfg.num_held_out, cfg.split_seed, name=name,
                        max_train=cfg.max_train, max_test=cfg.max_test,
                        batch_size=cfg.get('batch_size', 1))


def _images(x: np.ndarray, cfg, name: str) -> np.ndarray:
  return transforms.prepare_images(x, center_crop_size=cfg.center_crop,
                                   image_size=cfg.image_size, name=name)


def _reject_image_options(cfg, name: str, what: str):
  if cfg.image_size or cfg.center_crop:
    raise DataError(
        f'Dataset {name!r} holds {what}, not images, so --config.data.image_size (now '
        f'{cfg.image_size}) and --config.data.center_crop (now {cfg.center_crop}) must be 0.')


def _home(*parts: str) -> str:
  return os.path.join(os.path.expanduser('~'), *parts)


def cache_dir(*parts: str) -> str:
  """``$GPE_JAX_CACHE`` if set (and non-empty), else ``~/.cache/gpe_jax``, joined with
  ``parts``: where downloaded copies of small datasets are looked for."""
  root = os.environ.get('GPE_JAX_CACHE', '')
  return os.path.join(os.path.expanduser(root) if root else _home('.cache', 'gpe_jax'), *parts)


# --------------------------------------------------------------------------------------
# Storage: float32 in host memory, or compact storage converted per batch
# --------------------------------------------------------------------------------------

STORAGES = ('auto', 'memory', 'stream')
# ``storage='auto'`` streams image splits whose float32 form would exceed this many bytes.
AUTO_STREAM_BYTES = 1 << 30
# ``storage='memory'`` refuses splits whose float32 form exceeds this share of host memory.
MEMORY_SHARE = 0.6


def host_memory_bytes() -> int:
  """Physical memory of this host (0 if unknown)."""
  try:
    return int(os.sysconf('SC_PAGE_SIZE')) * int(os.sysconf('SC_PHYS_PAGES'))
  except (AttributeError, OSError, ValueError):
    return 0


def _gib(nbytes: int) -> str:
  return f'{nbytes / 2**30:.1f} GiB'


def float32_bytes(rows: int, example_shape: Sequence[int]) -> int:
  return int(rows) * int(np.prod(example_shape, dtype=np.int64)) * 4


def check_fits_memory(nbytes: int, name: str, what: str):
  """``DataError`` when ``nbytes`` of float32 would not fit comfortably in host memory."""
  memory = host_memory_bytes()
  if memory and nbytes > MEMORY_SHARE * memory:
    raise DataError(
        f'Dataset {name!r}: holding {what} in host memory as float32 needs {_gib(nbytes)}, '
        f'more than {MEMORY_SHARE:.0%} of this machine\'s {_gib(memory)}. Stream it instead: '
        'use --config.data.storage=stream (or auto), or prepare it once with `python -m '
        'gpe_jax.data.prepare --out=DIR ...` and train with --config.data.path=DIR (uint8 on '
        'disk, converted per batch); or reduce --config.data.max_train / image_size.')


def wants_stream(cfg, name: str, rows: int, example_shape: Sequence[int], what: str) -> bool:
  """Whether a source that can stream should: ``storage`` (``'auto'``: above
  ``AUTO_STREAM_BYTES`` of float32), after checking that an in-memory load fits."""
  storage = cfg.get('storage', 'auto')
  nbytes = float32_bytes(rows, example_shape)
  if storage == 'stream' or (storage == 'auto' and nbytes > AUTO_STREAM_BYTES):
    return True
  check_fits_memory(nbytes, name, what)
  return False


def require_memory(cfg, name: str, rows: int, example_shape: Sequence[int], what: str):
  """For sources read into memory only: refuse ``storage='stream'`` and loads too large."""
  if cfg.get('storage', 'auto') == 'stream':
    raise DataError(
        f'Dataset {name!r}: {what} cannot be streamed from this source, but '
        '--config.data.storage=stream asks for it. Use --config.data.storage=auto, or prepare '
        'the data once with `python -m gpe_jax.data.prepare --out=DIR ...` and train with '
        '--config.data.path=DIR, which streams.')
  check_fits_memory(float32_bytes(rows, example_shape), name, what)


def image_splits(cfg, name: str, train_store, train_idx: np.ndarray, test_store,
                 test_idx: np.ndarray, what: str):
  """``(x_train, x_test)`` from two uint8 (or float) row stores: ``StreamedImages`` views
  that convert each batch's rows when asked for, or float32 arrays converted now (chunk by
  chunk, the same numbers) when the data is small enough to hold (see ``wants_stream``)."""
  views = [stream.StreamedImages(store, idx, cfg.center_crop, cfg.image_size, name)
           for store, idx in ((train_store, train_idx), (test_store, test_idx))]
  rows = len(train_idx) + len(test_idx)
  if wants_stream(cfg, name, rows, views[0].shape[1:], what):
    return views[0], views[1]
  return np.asarray(views[0]), np.asarray(views[1])


# --------------------------------------------------------------------------------------
# scikit-learn digits
# --------------------------------------------------------------------------------------


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's digits, ``(images [1797, 8, 8] float64, target [1797] int)``, exactly what
  ``sklearn.datasets.load_digits()`` returns, read from the CSV file scikit-learn bundles: the
  import of scikit-learn itself takes 1-2 s, longer than the rest of a digits smoke run's data
  step (tests/test_data.py compares the two)."""
  spec = importlib.util.find_spec('sklearn')
  for folder in (spec.submodule_search_locations or []) if spec else []:
    path = os.path.join(folder, 'datasets', 'data', 'digits.csv.gz')
    if os.path.exists(path):
      table = np.loadtxt(path, delimiter=',')
      return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)
  from sklearn import datasets as sk_datasets  # pylint: disable=import-outside-toplevel
  digits = sk_datasets.load_digits()
  return digits.images, digits.target


def load_digits(cfg, name: str = 'digits') -> Dataset:
  """scikit-learn's bundled 1,797 8x8 digits (values 0..16) as ``[N, 8, 8, 1]`` in [-1, 1].

  The held-out split is the last ``num_held_out`` rows of a ``split_seed`` permutation.
  """
  images, target = digits_arrays()
  x = (images.astype(np.float32) / np.float32(16.0) * 2 - 1)[..., None]
  y = target.astype(np.int32)
  require_memory(cfg, name, x.shape[0], x.shape[1:], 'the bundled digits')
  train, test = _cfg_split(cfg, name, x.shape[0])
  return Dataset(name=name, x_train=_images(x[train], cfg, name),
                 x_test=_images(x[test], cfg, name), y_train=y[train], y_test=y[test],
                 source='sklearn digits')


# --------------------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST)
# --------------------------------------------------------------------------------------

IDX_FILES = {
    'x_train': 'train-images-idx3-ubyte',
    'y_train': 'train-labels-idx1-ubyte',
    'x_test': 't10k-images-idx3-ubyte',
    'y_test': 't10k-labels-idx1-ubyte',
}
# Third magic byte -> element type (big-endian on disk).
_IDX_DTYPES = {0x08: '>u1', 0x09: '>i1', 0x0B: '>i2', 0x0C: '>i4', 0x0D: '>f4', 0x0E: '>f8'}


def parse_idx(data: bytes, what: str = 'IDX data') -> np.ndarray:
  """Parse the bytes of one IDX file (LeCun's MNIST format).

  Layout: magic ``00 00 <type> <ndim>``, then ``ndim`` big-endian uint32 sizes, then the
  elements in C order. The length must match the header exactly.

  Args:
    data: the (decompressed) file contents.
    what: the file name, for error messages.

  Returns:
    Array of shape ``[d0, ..., d_{ndim-1}]`` in native byte order (uint8 for images/labels).
  """
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES or not data[3]:
    raise DataError(
        f'{what} is not a valid IDX file: bad magic number {bytes(data[:4]).hex() or "(empty)"} '
        '(expected 0000 followed by a type byte 08/09/0b/0c/0d/0e and a non-zero rank); the '
        'file is corrupt or not an IDX file, so download it again.')
  ndim = data[3]
  header = 4 + 4 * ndim
  if len(data) < header:
    raise DataError(f'{what} is a truncated IDX file: {len(data)} bytes cannot hold the '
                    f'{ndim} dimension sizes its header announces; download it again.')
  dims = tuple(int(d) for d in np.frombuffer(data, '>u4', count=ndim, offset=4))
  dtype = np.dtype(_IDX_DTYPES[data[2]])
  expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
  if len(data) != expected:
    raise DataError(f'{what} is a corrupt IDX file: the header announces shape {dims} '
                    f'({expected} bytes) but the file has {len(data)} bytes; download it again.')
  arr = np.frombuffer(data, dtype, offset=header).reshape(dims)
  return arr.astype(dtype.newbyteorder('='), copy=False)


def read_idx(path: str) -> np.ndarray:
  """Read an IDX file, gunzipping it first if its name ends in ``.gz``."""
  try:
    with open(path, 'rb') as f:
      data = f.read()
    if path.endswith('.gz'):
      data = gzip.decompress(data)
  except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
    raise DataError(f'Cannot read IDX file {path}: {e}; the file is corrupt or unreadable, so '
                    'download it again.') from e
  return parse_idx(data, what=path)


def idx_rows(path: str):
  """The images of an IDX file as a row store of ``[N, H, W, 1]``: read in place with
  positional reads for a raw file, decompressed once into memory (uint8, compact) for .gz."""
  if path.endswith('.gz'):
    return stream.ArrayRows(_images_or_raise(read_idx(path), path), path)
  try:
    with open(path, 'rb') as f:
      head = f.read(4)
      if len(head) < 4 or head[0] or head[1] or head[2] not in _IDX_DTYPES or head[3] != 3:
        return stream.ArrayRows(_images_or_raise(read_idx(path), path), path)
      dims = tuple(int(d) for d in np.frombuffer(f.read(12), '>u4'))
  except OSError as e:
    raise DataError(f'Cannot read IDX file {path}: {e}; download it again.') from e
  dtype = np.dtype(_IDX_DTYPES[head[2]])
  expected = 16 + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
  if os.path.getsize(path) != expected:
    raise DataError(f'{path} is a corrupt IDX file: the header announces shape {dims} '
                    f'({expected} bytes) but the file has {os.path.getsize(path)} bytes; '
                    'download it again.')
  return stream.FileRows(path, 16, dims + (1,), dtype)


def _images_or_raise(arr: np.ndarray, path: str) -> np.ndarray:
  if arr.ndim != 3:
    raise DataError(f'{path} holds an IDX array of shape {arr.shape}; images must be '
                    '[N, H, W]. Download the file again.')
  return arr[..., None]


def idx_search_dirs(name: str, path: str = '') -> list[str]:
  """Directories searched for the IDX files of ``name``: ``path`` alone if it is set."""
  if path:
    return [os.path.abspath(os.path.expanduser(path))]
  home_cache = cache_dir(name)
  local = os.path.abspath(os.path.join('data', name))
  if name == 'fashion_mnist':
    # Debian/Ubuntu package dataset-fashion-mnist.
    return ['/usr/share/datasets/fashion-mnist', home_cache, local]
  return [home_cache, local, f'/usr/share/datasets/{name}']


def find_idx_files(directory: str) -> dict[str, str] | None:
  """The four IDX files in ``directory`` (raw preferred over .gz), or None if any is absent."""
  found = {}
  for key, base in IDX_FILES.items():
    for candidate in (base, base + '.gz'):
      full = os.path.join(directory, candidate)
      if os.path.isfile(full):
        found[key] = full
        break
    else:
      return None
  return found


def find_idx_dir(name: str, path: str = '') -> tuple[str | None, list[str]]:
  """First searched directory holding all four IDX files, and the list searched."""
  searched = idx_search_dirs(name, path)
  for directory in searched:
    if find_idx_files(directory) is not None:
      return directory, searched
  return None, searched


def idx_how_to(name: str) -> str:
  """How to obtain the IDX files of ``name`` (one sentence fragment)."""
  cache = cache_dir(name)
  files = ', '.join(b + '.gz' for b in IDX_FILES.values())
  if name == 'fashion_mnist':
    return ('install the Debian/Ubuntu package dataset-fashion-mnist (apt-get install '
            'dataset-fashion-mnist, files in /usr/share/datasets/fashion-mnist), or download '
            f'{files} from https://github.com/zalandoresearch/fashion-mnist into {cache}, or '
            'point --config.data.path at a directory that holds them')
  return (f'download {files} (e.g. from https://ossci-datasets.s3.amazonaws.com/mnist/) into '
          f'{cache}, or point --config.data.path at a directory that holds them')


def load_idx(cfg, name: str, directory: str | None = None) -> Dataset:
  """MNIST-style IDX files -> ``[N, 28, 28, 1]`` in [-1, 1] with the official split.

  Args:
    cfg: data config.
    name: ``'mnist'`` or ``'fashion_mnist'`` (any IDX dataset works).
    directory: where the files are; searched for (see ``idx_search_dirs``) if None.
  """
  if directory is None:
    directory, searched = find_idx_dir(name, cfg.path)
    if directory is None:
      raise DataError(
          f'Dataset {name!r}: no IDX files ({", ".join(IDX_FILES.values())}, each optionally '
          f'.gz) found; searched {", ".join(searched)}. To get them, {idx_how_to(name)}.')
  files = find_idx_files(directory)
  if files is None:
    raise DataError(f'Dataset {name!r}: {directory} does not hold all four IDX files '
                    f'({", ".join(IDX_FILES.values())}, each optionally .gz). To get them, '
                    f'{idx_how_to(name)}.')
  images = {key: idx_rows(files[key]) for key in ('x_train', 'x_test')}
  labels = {key: read_idx(files[key]) for key in ('y_train', 'y_test')}
  for split in ('train', 'test'):
    x, y = images['x_' + split], labels['y_' + split]
    if len(x.shape) != 4 or y.ndim != 1 or x.shape[0] != y.shape[0]:
      raise DataError(
          f'Dataset {name!r}: IDX files in {directory} have inconsistent shapes for the '
          f'{split} split (images {x.shape[:-1]}, labels {y.shape}); expected [N, H, W] images '
          'and [N] labels. Download the files again.')
  train, test = official_split(images['x_train'].shape[0], images['x_test'].shape[0],
                               max_train=cfg.max_train, max_test=cfg.max_test)
  x_train, x_test = image_splits(cfg, name, images['x_train'], train, images['x_test'], test,
                                 f'the IDX images in {directory}')
  return Dataset(
      name=name, x_train=x_train, x_test=x_test,
      y_train=labels['y_train'][train].astype(np.int32),
      y_test=labels['y_test'][test].astype(np.int32),
      source=f'idx:{directory}')


# --------------------------------------------------------------------------------------
# tensorflow-datasets (prepared on local disk only)
# --------------------------------------------------------------------------------------

# name -> (tfds name incl. config, train split, test split or None, label key or None)
TFDS_SPECS = {
    'mnist': ('mnist', 'train', 'test', 'label'),
    'fashion_mnist': ('fashion_mnist', 'train', 'test', 'label'),
    'cifar10': ('cifar10', 'train', 'test', 'label'),
    'celeb_a': ('celeb_a', 'train', 'validation', None),
    'celeb_a_hq': ('celeb_a_hq/256', 'train', None, None),
}


def tfds_data_dir(cfg) -> str:
  """``tfds_data_dir``, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``."""
  data_dir = cfg.tfds_data_dir or os.environ.get('TFDS_DATA_DIR') or _home('tensorflow_datasets')
  return os.path.abspath(os.path.expanduser(data_dir))


def _version_key(version: str) -> tuple:
  try:
    return (1,) + tuple(int(p) for p in version.split('.'))
  except ValueError:
    return (0, version)


def find_prepared_tfds(data_dir: str, tfds_name: str) -> str | None:
  """Newest ``<data_dir>/<tfds_name>/<version>/`` holding a dataset_info.json, or None.

  Pure file-system check: it runs before tensorflow-datasets is imported, so an absent
  dataset fails in milliseconds instead of entering tfds' download/retry logic.
  """
  root = os.path.join(data_dir, *tfds_name.split('/'))
  if not os.path.isdir(root):
    return None
  versions = [v for v in os.listdir(root)
              if os.path.isfile(os.path.join(root, v, 'dataset_info.json'))]
  if not versions:
    return None
  return os.path.join(root, max(versions, key=_version_key))


def tfds_how_to(name: str, data_dir: str) -> str:
  """How to obtain ``name`` for the tfds source (one sentence fragment)."""
  tfds_name = TFDS_SPECS[name][0]
  base, _, config = tfds_name.partition('/')
  build = f'tfds build {base}' + (f' --config={config}' if config else '')
  build += ' --file_format=array_record' + (' --manual_dir=DIR' if name == 'celeb_a_hq' else '')
  needs = ('(`tfds build` needs TensorFlow: `pip install tensorflow array_record` on that '
           'machine; reading the result here does not)')
  copy = (f'copy the resulting folder ~/tensorflow_datasets/{base} to {data_dir}/{base}, or set '
          '--config.data.tfds_data_dir (or $TFDS_DATA_DIR) to the directory that holds it')
  folder = ('or point --config.data.path at a folder of aligned face images with '
            '--config.data.source=image_folder')
  if name == 'celeb_a':
    return (f'prepare it with `{build}` {needs} on a machine with internet access and {copy}, '
            f'{folder}')
  if name == 'celeb_a_hq':
    return (f'download CelebA-HQ manually as the tfds celeb_a_hq instructions describe, '
            f'prepare it with `{build}` {needs} and {copy}, {folder}')
  return f'prepare it with `{build}` {needs} on a machine with internet access and {copy}'


def tfds_missing_message(name: str, data_dir: str) -> str:
  tfds_name = TFDS_SPECS[name][0]
  return (f'Dataset {name!r}: no prepared tensorflow-datasets copy of {tfds_name!r} found; '
          f'searched {os.path.join(data_dir, *tfds_name.split("/"))} (a version folder with '
          f'dataset_info.json). Nothing is downloaded at run time. To get it, '
          f'{tfds_how_to(name, data_dir)}.')


def _tfds_builder(tfds_name: str, data_dir: str, version_dir: str, name: str):
  """Builder for the prepared copy in ``version_dir`` (never downloads)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  version = os.path.basename(version_dir)
  try:
    return tfds.builder(f'{tfds_name}:{version}', data_dir=data_dir)
  except Exception as first:  # pylint: disable=broad-except
    # E.g. the copy was prepared by a tfds release whose code knows other versions:
    # the folder's own metadata is enough to read it.
    try:
      return tfds.builder_from_directory(version_dir)
    except Exception as second:  # pylint: disable=broad-except
      raise DataError(
          f'Dataset {name!r}: tensorflow-datasets cannot open the prepared copy in '
          f'{version_dir} ({type(first).__name__}: {first}; {type(second).__name__}: {second}). '
          f'Re-prepare it: {tfds_how_to(name, data_dir)}.') from second


def _is_array_record(builder) -> bool:
  fmt = builder.info.file_format
  return str(getattr(fmt, 'value', fmt) or '').lower() == 'array_record'


def _record_image(record, name: str) -> np.ndarray:
  image = np.asarray(record['image'])
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3:
    raise DataError(f'Dataset {name!r}: tfds record has an image of shape {image.shape}, '
                    'expected [H, W, C].')
  return image


def _stack_same_shape(images: list[np.ndarray]) -> Iterator[np.ndarray]:
  """Stack consecutive same-shaped images into ``[n, H, W, C]`` chunks."""
  start = 0
  for i in range(1, len(images) + 1):
    if i == len(images) or images[i].shape != images[start].shape:
      yield np.stack(images[start:i])
      start = i


def _read_tfds_array_record(builder, split: str, indices: np.ndarray, label_key: str | None,
                            labels: list, name: str) -> Iterator[np.ndarray]:
  """Image chunks of ``split`` at sorted ``indices`` via ``as_data_source`` (no TensorFlow).

  Labels (if ``label_key``) are appended to ``labels`` as the chunks are produced.
  """
  source = builder.as_data_source(split=split)
  for start in range(0, len(indices), _READ_CHUNK):
    keys = [int(i) for i in indices[start:start + _READ_CHUNK]]
    if hasattr(source, '__getitems__'):
      records = source.__getitems__(keys)
    else:
      records = [source[k] for k in keys]
    if label_key:
      labels.extend(int(r[label_key]) for r in records)
    yield from _stack_same_shape([_record_image(r, name) for r in records])


def _read_tfds_tensorflow(builder, split: str, indices: np.ndarray, label_key: str | None,
                          labels: list, name: str) -> Iterator[np.ndarray]:
  """Same as ``_read_tfds_array_record`` for tfrecord copies, through TensorFlow."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  if not len(indices):
    return
  stop = int(indices[-1]) + 1
  wanted = np.zeros(stop, bool)
  wanted[indices] = True
  ds = builder.as_dataset(split=f'{split}[:{stop}]', shuffle_files=False)
  batch = []
  for pos, record in enumerate(tfds.as_numpy(ds)):
    if not wanted[pos]:
      continue
    if label_key:
      labels.append(int(record[label_key]))
    batch.append(_record_image(record, name))
    if len(batch) == _READ_CHUNK:
      yield from _stack_same_shape(batch)
      batch = []
  if batch:
    yield from _stack_same_shape(batch)


def _tfds_image_shape(builder) -> tuple[int, int, int] | None:
  """The fixed ``(H, W, C)`` of the dataset's ``image`` feature, or None if it varies."""
  try:
    shape = tuple(builder.info.features['image'].shape)
  except (KeyError, AttributeError, TypeError):
    return None
  if len(shape) == 2:
    shape = shape + (1,)
  if len(shape) != 3 or any(d is None for d in shape):
    return None
  return tuple(int(d) for d in shape)


class TfdsRows:
  """Random access to the images of one split of an array_record tfds copy (no TensorFlow):
  ``read(rows)`` decodes just those records."""

  def __init__(self, builder, split: str, shape: tuple[int, int, int], name: str):
    self._source = builder.as_data_source(split=split)
    self.shape = (len(self._source),) + tuple(shape)
    self.dtype = np.dtype(np.uint8)
    self.path = f'{builder.data_dir}:{split}'
    self.name = name

  def __len__(self) -> int:
    return self.shape[0]

  def read(self, rows: np.ndarray) -> np.ndarray:
    keys = [int(i) for i in np.asarray(rows).reshape(-1)]
    if not keys:
      return np.zeros((0,) + self.shape[1:], np.uint8)
    if hasattr(self._source, '__getitems__'):
      records = self._source.__getitems__(keys)
    else:
      records = [self._source[k] for k in keys]
    images = [_record_image(r, self.name) for r in records]
    if any(im.shape != self.shape[1:] for im in images):
      raise DataError(f'Dataset {self.name!r}: a record of {self.path} is not '
                      f'{self.shape[1:]}; the dataset info says every image has that shape.')
    return np.stack(images).astype(np.uint8, copy=False)


def load_tfds(cfg, name: str) -> Dataset:
  """A dataset prepared by tensorflow-datasets on local disk; never downloads.

  The folder ``<data_dir>/<tfds_name>/<version>/dataset_info.json`` is checked first
  (``DataError`` at once if absent). array_record copies are read with
  ``builder.as_data_source`` (no TensorFlow needed); other formats need TensorFlow.
  Only the records the splits keep (after ``max_train`` / ``max_test``) are decoded.
  Unlabelled array_record copies with fixed-size images (CelebA, CelebA-HQ) can be streamed
  (``TfdsRows``: a batch's records are decoded when its step asks for them; see
  ``wants_stream``); the others are loaded into memory.
  """
  if name not in TFDS_SPECS:
    raise DataError(f'Dataset {name!r} has no tensorflow-datasets source; datasets with one: '
                    f'{", ".join(TFDS_SPECS)}.')
  tfds_name, train_split, test_split, label_key = TFDS_SPECS[name]
  data_dir = tfds_data_dir(cfg)
  version_dir = find_prepared_tfds(data_dir, tfds_name)
  if version_dir is None:
    raise DataError(tfds_missing_message(name, data_dir))
  builder = _tfds_builder(tfds_name, data_dir, version_dir, name)

  array_record = _is_array_record(builder)
  if array_record and importlib.util.find_spec('array_record') is not None:
    reader = _read_tfds_array_record
  elif importlib.util.find_spec('tensorflow') is not None:
    reader = _read_tfds_tensorflow
  elif array_record:
    raise DataError(
        f'Dataset {name!r}: the prepared copy in {version_dir} is stored as array_record, '
        'which needs the array_record package (or TensorFlow) to read; '
        '`pip install array_record`.')
  else:
    raise DataError(
        f'Dataset {name!r}: the prepared copy in {version_dir} is stored as '
        f'{builder.info.file_format or "tfrecord"}, which needs TensorFlow to read, and '
        'TensorFlow is not installed. Either `pip install tensorflow`, or re-prepare it in a '
        f'format read without TensorFlow: `tfds build {tfds_name.split("/")[0]} '
        '--file_format=array_record` (with `pip install array_record`).')

  splits = builder.info.splits
  n_train = splits[train_split].num_examples
  if test_split is None:
    train_idx, test_idx = _cfg_split(cfg, name, n_train)
    read = [(train_split, train_idx), (train_split, test_idx)]
  else:
    train_idx, test_idx = official_split(n_train, splits[test_split].num_examples,
                                         max_train=cfg.max_train, max_test=cfg.max_test)
    read = [(train_split, train_idx), (test_split, test_idx)]

  shape = _tfds_image_shape(builder)
  rows = len(train_idx) + len(test_idx)
  what = f'the images of {version_dir}'
  out_shape = (transforms.output_shape(shape, cfg.center_crop, cfg.image_size) if shape
               else None)
  if reader is _read_tfds_array_record and label_key is None and shape:
    # Unlabelled, fixed-size images in array_record (CelebA, CelebA-HQ) can be streamed: each
    # batch's records are decoded when its step asks for them.
    for split, idx in read:
      if not len(idx):
        raise DataError(f'Dataset {name!r}: split {split!r} of {version_dir} is empty.')
    if wants_stream(cfg, name, rows, out_shape, what):
      xs = [stream.StreamedImages(TfdsRows(builder, split, shape, name), idx, cfg.center_crop,
                                  cfg.image_size, name) for split, idx in read]
      return Dataset(name=name, x_train=xs[0], x_test=xs[1], y_train=None, y_test=None,
                     source=f'tfds:{tfds_name}@{data_dir}')
  elif cfg.get('storage', 'auto') == 'stream' or out_shape:
    require_memory(cfg, name, rows, out_shape or (), what)

  xs, ys = [], []
  for split, idx in read:
    if not len(idx):
      raise DataError(f'Dataset {name!r}: split {split!r} of {version_dir} is empty.')
    labels = []
    chunks = reader(builder, split, idx, label_key, labels, name)
    xs.append(transforms.transform_chunks(chunks, len(idx), center_crop_size=cfg.center_crop,
                                          image_size=cfg.image_size, name=name))
    ys.append(np.asarray(labels, np.int32) if label_key else None)
  return Dataset(name=name, x_train=xs[0], x_test=xs[1], y_train=ys[0], y_test=ys[1],
                 source=f'tfds:{tfds_name}@{data_dir}')


# --------------------------------------------------------------------------------------
# .npz files
# --------------------------------------------------------------------------------------


def _npz_examples(store, key: str, path: str, name: str):
  """Validate one npz member (a row store); give ``[N, H, W]`` images a channel axis.

  Returns:
    A row store of ``[N, H, W, C]`` images, or an in-memory ``[N, D]`` array of vectors.
  """
  dtype, shape = store.dtype, tuple(store.shape)
  if dtype != np.uint8 and not np.issubdtype(dtype, np.floating):
    raise DataError(
        f'Dataset {name!r}: {key} in {path} has dtype {dtype}; store uint8 pixels (0..255) '
        'or floats already scaled to [-1, 1].')
  if np.issubdtype(dtype, np.floating) and shape[0]:
    lo, hi = np.inf, -np.inf
    step = max(1, (16 << 20) // max(1, int(np.prod(shape[1:])) * dtype.itemsize))
    for start in range(0, shape[0], step):
      part = store.read(np.arange(start, min(shape[0], start + step)))
      lo, hi = min(lo, float(np.min(part))), max(hi, float(np.max(part)))
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -1.001 or hi > 1.001:
      raise DataError(
          f'Dataset {name!r}: float array {key} in {path} has values in [{lo:g}, {hi:g}], but '
          'float data must already lie in [-1, 1]; rescale it (e.g. x / 127.5 - 1 for 0..255 '
          'pixels) or store uint8 pixels, which are scaled automatically.')
  if len(shape) == 3:
    store = stream.with_channel_axis(store)
    shape = tuple(store.shape)
  if len(shape) == 4 and shape[-1] not in (1, 2, 3, 4) and shape[1] in (1, 3):
    raise DataError(f'Dataset {name!r}: {key} in {path} has shape {shape}, which looks like '
                    'NCHW; store images channels-last as [N, H, W, C].')
  if len(shape) not in (2, 4):
    raise DataError(f'Dataset {name!r}: {key} in {path} has shape {shape}; expected [N, D] '
                    'vectors, [N, H, W] or [N, H, W, C] images.')
  if len(shape) == 2:
    return store.read(np.arange(shape[0]))
  return store


def _npz_members(path: str, name: str) -> dict:
  """``{key: row store}`` for the arrays of a ``.npz``: members stored uncompressed
  (``np.savez``) are read in place with positional reads, compressed ones
  (``np.savez_compressed``) are decompressed once into memory in their own dtype."""
  import zipfile  # pylint: disable=import-outside-toplevel
  members = {}
  with zipfile.ZipFile(path) as zf, open(path, 'rb') as raw:
    for info in zf.infolist():
      if not info.filename.endswith('.npy'):
        continue
      key = info.filename[:-4]
      if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 1:
        raw.seek(info.header_offset)
        local = raw.read(30)
        if local[:4] != b'PK\x03\x04':
          raise ValueError(f'bad local header for member {info.filename}')
        start = (info.header_offset + 30 + int.from_bytes(local[26:28], 'little')
                 + int.from_bytes(local[28:30], 'little'))
        raw.seek(start)
        shape, dtype = stream.npy_header(raw, f'{path}:{key}')
        members[key] = stream.FileRows(path, raw.tell(), shape, dtype)
      else:
        with zf.open(info) as f:
          members[key] = stream.ArrayRows(np.lib.format.read_array(f, allow_pickle=False),
                                          f'{path}:{key}')
  return members


def _npz_labels(y: np.ndarray | None, key: str, n: int, path: str, name: str):
  if y is None:
    return None
  if not np.issubdtype(y.dtype, np.integer) or y.shape != (n,):
    raise DataError(f'Dataset {name!r}: {key} in {path} must be integers of shape [{n}]; got '
                    f'{y.dtype} {y.shape}.')
  return y.astype(np.int32)


def load_npz(cfg, name: str = 'npz') -> Dataset:
  """A .npz at ``path`` with ``x_train`` and optional ``x_test``, ``y_train``, ``y_test``.

  uint8 arrays are scaled ``/255*2-1``; float arrays must already be in [-1, 1] (checked to
  1e-3, then clipped). ``[N, H, W]`` images get a channel axis, ``[N, D]`` vectors stay
  vectors. Without ``x_test`` a held-out split of ``num_held_out`` rows is made.
  """
  path = os.path.abspath(os.path.expanduser(cfg.path)) if cfg.path else ''
  if not path or not os.path.isfile(path):
    raise DataError(
        f'Dataset {name!r}: the npz source reads --config.data.path, which '
        f'{"is not set" if not path else f"points to {path}, which does not exist"}. Set it '
        'to a .npz file holding x_train ([N, H, W(, C)] uint8/float images or [N, D] vectors) '
        'and optionally x_test, y_train, y_test.')
  try:
    members = _npz_members(path, name)
  except DataError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f'Dataset {name!r}: cannot read {path} as a .npz file ({e}).') from e
  if 'x_train' not in members:
    raise DataError(f'Dataset {name!r}: {path} has no x_train array (it holds '
                    f'{", ".join(sorted(members)) or "nothing"}); save the training examples '
                    'under the key x_train.')

  def labels(key):
    return None if key not in members else members[key].read(np.arange(len(members[key])))

  x_train = _npz_examples(members['x_train'], 'x_train', path, name)
  y_train = _npz_labels(labels('y_train'), 'y_train', x_train.shape[0], path, name)
  if 'x_test' in members:
    x_test = _npz_examples(members['x_test'], 'x_test', path, name)
    y_test = _npz_labels(labels('y_test'), 'y_test', x_test.shape[0], path, name)
    if (y_train is None) != (y_test is None):
      raise DataError(f'Dataset {name!r}: {path} has labels for only one split; store both '
                      'y_train and y_test, or neither.')
    train, test = official_split(x_train.shape[0], x_test.shape[0], max_train=cfg.max_train,
                                 max_test=cfg.max_test)
  else:
    if 'y_test' in members:
      raise DataError(f'Dataset {name!r}: {path} has y_test but no x_test.')
    train, test = _cfg_split(cfg, name, x_train.shape[0])
    x_test, y_test = x_train, y_train
  if len(x_train.shape) != len(x_test.shape):
    raise DataError(f'Dataset {name!r}: x_train {tuple(x_train.shape)} and x_test '
                    f'{tuple(x_test.shape)} in {path} have different layouts.')
  if len(x_train.shape) == 2:
    _reject_image_options(cfg, name, 'vectors')
    require_memory(cfg, name, len(train) + len(test), x_train.shape[1:], f'the vectors in {path}')
    convert = lambda x: np.clip(transforms.to_signed_unit(x), -1.0, 1.0)
    xs = convert(x_train[train]), convert(x_test[test])
  else:
    xs = image_splits(cfg, name, x_train, train, x_test, test, f'the images in {path}')
  return Dataset(name=name, x_train=xs[0], x_test=xs[1],
                 y_train=None if y_train is None else y_train[train],
                 y_test=None if y_test is None else y_test[test], source=f'npz:{path}')


# --------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------


def list_images(directory: str) -> list[str]:
  """All .png/.jpg/.jpeg files under ``directory`` (recursive), sorted by relative path."""
  found = []
  for root, dirs, files in os.walk(directory):
    dirs.sort()
    for f in files:
      if f.lower().endswith(IMAGE_SUFFIXES):
        found.append(os.path.relpath(os.path.join(root, f), directory))
  return [os.path.join(directory, f) for f in sorted(found)]


GRAY_MODES = _GRAY_MODES


def load_image_folder(cfg, name: str = 'image_folder') -> Dataset:
  """Every .png/.jpg/.jpeg under ``path`` (recursive, sorted), unlabeled.

  RGB, or single-channel if every image is greyscale; centre crop and resize per config
  (images of different sizes need ``image_size``). Held-out split of ``num_held_out``.
  Only the headers are read here; streamed (``config.data.storage``), each image is decoded
  when its batch is read (``stream.FolderRows``).
  """
  path = os.path.abspath(os.path.expanduser(cfg.path)) if cfg.path else ''
  if not path or not os.path.isdir(path):
    raise DataError(
        f'Dataset {name!r}: the image_folder source reads --config.data.path, which '
        f'{"is not set" if not path else f"points to {path}, which is not a directory"}. Set '
        'it to a directory holding .png/.jpg/.jpeg images (searched recursively).')
  files = list_images(path)
  if not files:
    raise DataError(f'Dataset {name!r}: no .png/.jpg/.jpeg images found under {path} '
                    '(searched recursively); point --config.data.path at a folder of images.')
  store = stream.FolderRows(files, name, gray_modes=_GRAY_MODES)
  train, test = _cfg_split(cfg, name, len(files))
  x_train, x_test = image_splits(cfg, name, store, train, store, test, f'the images under {path}')
  return Dataset(name=name, x_train=x_train, x_test=x_test, y_train=None, y_test=None,
                 source=f'image_folder:{path}')


# --------------------------------------------------------------------------------------
# Prepared folders (``gpe_jax.data.prepare``): uint8 .npy splits, streamed per batch
# --------------------------------------------------------------------------------------


def load_prepared(cfg, name: str) -> Dataset:
  """A folder written by ``python -m gpe_jax.data.prepare``, streamed: nothing but the labels
  is loaded; each batch's rows are read and converted (crop, scale, resize) when asked for."""
  path = os.path.abspath(os.path.expanduser(cfg.path)) if cfg.path else ''
  meta = stream.read_meta(path) if path else None
  if meta is None:
    raise DataError(
        f'Dataset {name!r}: the prepared source reads --config.data.path, which '
        f'{"is not set" if not path else f"points to {path}, which holds no {stream.META}"}. '
        'Prepare a folder first, e.g. `python -m gpe_jax.data.prepare --out=DIR image_folder '
        'IMAGES` (see `python -m gpe_jax.data.prepare --help`), and pass '
        '--config.data.path=DIR.')
  if meta.get('format') != stream.FORMAT:
    raise DataError(f'Dataset {name!r}: {path} was prepared in format {meta.get("format")}, '
                    f'this version reads format {stream.FORMAT}; prepare it again.')
  train_store = stream.NpyRows(os.path.join(path, 'train_images.npy'))
  test_file = os.path.join(path, 'test_images.npy')
  has_test = os.path.exists(test_file)
  if has_test:
    test_store = stream.NpyRows(test_file)
    train_idx, test_idx = official_split(len(train_store), len(test_store),
                                         max_train=cfg.max_train, max_test=cfg.max_test)
  else:
    test_store = train_store
    train_idx, test_idx = _cfg_split(cfg, name, len(train_store))
  y_train = y_test = None
  if meta.get('labels'):
    labels = np.load(os.path.join(path, 'train_labels.npy')).astype(np.int32)
    y_train = labels[train_idx]
    y_test = (np.load(os.path.join(path, 'test_labels.npy')).astype(np.int32)[test_idx]
              if has_test else labels[test_idx])
  x_train = stream.StreamedImages(train_store, train_idx, cfg.center_crop, cfg.image_size, name)
  x_test = stream.StreamedImages(test_store, test_idx, cfg.center_crop, cfg.image_size, name)
  return Dataset(name=name, x_train=x_train, x_test=x_test, y_train=y_train, y_test=y_test,
                 source=f'prepared:{path}')


# --------------------------------------------------------------------------------------
# Synthetic Gaussian mixture
# --------------------------------------------------------------------------------------


MIXTURE_LAYOUTS = ('circle', 'rings')


def mixture_centres(num_components: int, dim: int, radius: float, layout: str = 'circle',
                    shift: float = 0.0) -> np.ndarray:
  """[K, dim] float64 mixture centres, non-zero only in coordinates 0 and 1.

  Args:
    num_components: K.
    dim: ambient dimension (>= 2).
    radius: ``'circle'``: the circle's radius; ``'rings'``: the unit r of the rings.
    layout: ``'circle'`` (GPE paper): K centres at angles 2 pi k / K on a circle of
      ``radius``. ``'rings'`` (GMEGAN authors): an inner ring of K/3 centres at radius
      3 * radius, then an outer ring of 2K/3 centres at radius 9 * radius; a ring of n
      centres has them at angles 2 pi i / n, i = 0..n-1. Row k is component (label) k:
      inner ring first.
    shift: added to coordinates 0 and 1 of every centre (the rings' common centre).

  Returns:
    ``[K, dim]`` centres.
  """
  if layout == 'circle':
    rings = [(num_components, radius)]
  elif layout == 'rings':
    _check_rings(num_components)
    rings = [(num_components // 3, 3.0 * radius), (2 * num_components // 3, 9.0 * radius)]
  else:
    raise DataError(_layout_message(layout))
  centres = np.zeros((num_components, dim))
  row = 0
  for n, ring_radius in rings:
    angles = 2 * np.pi * np.arange(n) / n
    centres[row:row + n, 0] = ring_radius * np.cos(angles)
    centres[row:row + n, 1] = ring_radius * np.sin(angles)
    row += n
  centres[:, :2] += shift
  return centres


def _layout_message(layout) -> str:
  return (f'Unknown mixture layout {layout!r} (--config.data.mixture.layout); set it to one '
          f'of {", ".join(repr(v) for v in MIXTURE_LAYOUTS)}.')


def _rings_problem(num_components: int) -> str | None:
  if num_components < 3 or num_components % 3:
    return (f'num_components={num_components} with layout=\'rings\' (need a multiple of 3, '
            '>= 3: K/3 centres on the inner ring and 2K/3 on the outer; e.g. 12 or 9)')
  return None


def _check_rings(num_components: int):
  problem = _rings_problem(num_components)
  if problem:
    raise DataError(f'Invalid --config.data.mixture settings: {problem}.')


def mixture_spec(data_cfg) -> dict:
  """What the mixture of ``data_cfg`` (``config.data``) is, without sampling any data.

  Returns:
    ``{'centres': [K, dim] float64, 'std_major': float, 'std_minor': float,
    'layout': str, 'inner': K // 3 for 'rings' else None, 'shift': float}`` -- enough
    for ``gpe_jax.evals.modes`` to score samples against the mixture.
  """
  m = data_cfg.mixture
  layout = m.get('layout', 'circle')
  shift = float(m.get('shift', 0.0))
  centres = mixture_centres(m.num_components, m.dim, m.radius, layout=layout, shift=shift)
  return {'centres': centres, 'std_major': float(m.std_major), 'std_minor': float(m.std_minor),
          'layout': layout, 'inner': m.num_components // 3 if layout == 'rings' else None,
          'shift': shift}


def sample_mixture(rng: np.random.Generator, n: int, centres: np.ndarray, std_major: float,
                   std_minor: float) -> tuple[np.ndarray, np.ndarray]:
  """``n`` draws of the equal-weight mixture: float32 ``[n, dim]`` points, int32 ``[n]`` labels."""
  k, dim = centres.shape
  labels = rng.integers(k, size=n)
  std = np.full(dim, std_minor)
  std[:2] = std_major
  x = centres[labels] + rng.standard_normal((n, dim)) * std
  return x.astype(np.float32), labels.astype(np.int32)


def make_mixture(cfg, name: str = 'mixture') -> Dataset:
  """A synthetic mixture of ``num_components`` equal-weight Gaussians in R^dim.

  ``layout='circle'`` is the GPE paper's Fig. 3 data: centres on a circle of ``radius``
  in the first two coordinates (zero elsewhere). ``layout='rings'`` is the GMEGAN
  authors' mixture: K/3 centres on a ring of radius 3 * radius and 2K/3 on a ring of
  radius 9 * radius (their setting: K=12, radius=0.165, shift=0.5, std_major=0.15,
  std_minor=0.015, dim=100). Both add ``shift`` to coordinates 0 and 1 of every centre
  (see ``mixture_centres``). The std is ``std_major`` in those two coordinates and
  ``std_minor`` in the other dim - 2, so the data is a thin slab around a 2-D pattern.
  Labels are the components (inner ring first). Train and test
  are independent draws from ``default_rng([seed, 0])`` and ``default_rng([seed, 1])``
  (changing ``num_train`` leaves the test set unchanged). Not rescaled to [-1, 1].
  """
  m = cfg.mixture
  _reject_image_options(cfg, name, 'synthetic vectors')
  if cfg.path:
    raise DataError(f'Dataset {name!r} is synthetic (generated from --config.data.mixture.*) '
                    f'and reads no files, but --config.data.path is set to {cfg.path!r}; '
                    'clear it.')
  problems = []
  if m.num_components < 1:
    problems.append(f'num_components={m.num_components} (need >= 1)')
  if m.dim < 2:
    problems.append(f'dim={m.dim} (need >= 2: the circle lives in the first two coordinates)')
  if m.num_train < 1 or m.num_test < 1:
    problems.append(f'num_train={m.num_train}, num_test={m.num_test} (need >= 1)')
  if m.std_major < 0 or m.std_minor < 0 or m.radius < 0:
    problems.append(f'radius={m.radius}, std_major={m.std_major}, std_minor={m.std_minor} '
                    '(need >= 0)')
  if m.seed < 0:
    problems.append(f'seed={m.seed} (need >= 0)')
  if m.layout not in MIXTURE_LAYOUTS:
    problems.append(f'layout={m.layout!r} (need one of '
                    f'{", ".join(repr(v) for v in MIXTURE_LAYOUTS)})')
  elif m.layout == 'rings' and m.num_components >= 1 and _rings_problem(m.num_components):
    problems.append(_rings_problem(m.num_components))
  if problems:
    raise DataError(f'Dataset {name!r}: invalid --config.data.mixture settings: '
                    f'{"; ".join(problems)}.')
  require_memory(cfg, name, m.num_train + m.num_test, (m.dim,), 'the synthetic mixture')
  centres = mixture_centres(m.num_components, m.dim, m.radius, layout=m.layout, shift=m.shift)
  x_train, y_train = sample_mixture(np.random.default_rng([m.seed, 0]), m.num_train, centres,
                                    m.std_major, m.std_minor)
  x_test, y_test = sample_mixture(np.random.default_rng([m.seed, 1]), m.num_test, centres,
                                  m.std_major, m.std_minor)
  train, test = official_split(m.num_train, m.num_test, max_train=cfg.max_train,
                               max_test=cfg.max_test)
  extra = '' if m.layout == 'circle' else f', layout={m.layout}'
  extra += f', shift={m.shift}' if m.shift else ''
  return Dataset(name=name, x_train=x_train[train], x_test=x_test[test], y_train=y_train[train],
                 y_test=y_test[test],
                 source=f'synthetic mixture (K={m.num_components}, dim={m.dim}{extra}, '
                        f'seed={m.seed})')
