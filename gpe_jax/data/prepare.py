r"""Prepare a dataset for streaming: uint8 ``.npy`` splits that training reads row by row.

Large image sets (CelebA at 64 px is ~10 GB as float32, CelebA-HQ at 256 px ~24 GB) are not
loaded into memory: prepare them once into a folder, then train with
``--config.data.source=prepared --config.data.path=DIR`` (``source=auto`` recognises the folder
too). Every process of a multi-host run then reads only the rows of its slice of each batch, and
the host's memory does not grow with the number of images.

    python -m gpe_jax.data.prepare --out=DIR image_folder PATH [--image_size=64 --center_crop=-1]
    python -m gpe_jax.data.prepare --out=DIR tfds celeb_a_hq/256 [--data_dir=~/tensorflow_datasets]
    python -m gpe_jax.data.prepare --out=DIR npz FILE.npz
    python -m gpe_jax.data.prepare --out=DIR synthetic --num=5000 --shape=256,256,3

The folder holds ``train_images.npy`` (uint8 ``[N, H, W, C]``), optionally ``test_images.npy``
(a source's own test split), ``train_labels.npy`` / ``test_labels.npy`` (int32) when the source
has labels, and ``prepared.json`` (written last: a folder without it is incomplete). Images keep
their stored pixels; crop and resize happen per batch at training time from
``config.data.center_crop`` / ``image_size``. Only an image folder whose images differ in size
needs ``--image_size`` here (those are resized once, rounded to uint8).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from gpe_jax.data import sources, stream, transforms
from gpe_jax.data.core import DataError
from gpe_jax.data.stream import FORMAT, META, read_meta  # noqa: F401  (the folder format)


class NpyWriter:
  """Writes a C-ordered ``.npy`` array of known shape chunk by chunk (no memory map), under a
  temporary name renamed into place by ``close`` once every row is written."""

  def __init__(self, path: str, shape: tuple[int, ...], dtype):
    self.path, self.shape, self.dtype = path, tuple(int(s) for s in shape), np.dtype(dtype)
    self._tmp = path + '.partial'
    self._f = open(self._tmp, 'wb')
    header = {'descr': np.lib.format.dtype_to_descr(self.dtype), 'fortran_order': False,
              'shape': self.shape}
    np.lib.format.write_array_header_2_0(self._f, header)
    self.rows = 0

  def write(self, chunk: np.ndarray) -> None:
    chunk = np.ascontiguousarray(chunk, self.dtype)
    if chunk.shape[1:] != self.shape[1:]:
      raise DataError(f'{self.path}: a chunk of shape {chunk.shape[1:]} does not match '
                      f'{self.shape[1:]}; every image must have one size (pass --image_size).')
    if self.rows + len(chunk) > self.shape[0]:
      raise DataError(f'{self.path}: more rows than the {self.shape[0]} expected.')
    self._f.write(chunk.tobytes())
    self.rows += len(chunk)

  def close(self) -> None:
    self._f.close()
    if self.rows != self.shape[0]:
      os.unlink(self._tmp)
      raise DataError(f'{self.path}: {self.rows} rows written, {self.shape[0]} expected.')
    os.replace(self._tmp, self.path)


def write_split(out_dir: str, split: str, chunks, count: int, labels=None) -> tuple:
  """Write ``<split>_images.npy`` from uint8 image chunks; returns the image shape."""
  writer = None
  for chunk in chunks:
    if chunk.dtype != np.uint8:
      raise DataError(f'Prepared images must be uint8; got {chunk.dtype}.')
    if writer is None:
      writer = NpyWriter(os.path.join(out_dir, f'{split}_images.npy'),
                         (count,) + chunk.shape[1:], np.uint8)
    writer.write(chunk)
  if writer is None:
    raise DataError(f'The {split} split has no images.')
  writer.close()
  if labels is not None:
    labels = np.asarray(labels, np.int32)
    if labels.shape != (count,):
      raise DataError(f'{count} {split} images but {labels.shape[0]} labels.')
    np.save(os.path.join(out_dir, f'{split}_labels.npy'), labels)
  return writer.shape[1:]


def write_meta(out_dir: str, name: str, source: str, counts: dict, shape, labelled: bool):
  meta = {'format': FORMAT, 'name': name, 'source': source, 'counts': counts,
          'image_shape': list(shape), 'labels': bool(labelled)}
  tmp = os.path.join(out_dir, META + '.partial')
  with open(tmp, 'w') as f:
    json.dump(meta, f, indent=1)
  os.replace(tmp, os.path.join(out_dir, META))
  return meta


def _as_uint8(x: np.ndarray) -> np.ndarray:
  """float images in [-1, 1] -> uint8 (rounded); uint8 passes through."""
  if x.dtype == np.uint8:
    return x
  return np.clip(np.rint((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def synthetic_chunks(num: int, shape: tuple[int, int, int], seed: int = 0, chunk: int = 64):
  """Deterministic smooth random uint8 images (low-resolution noise upsampled, plus grain):
  data of a real dataset's shape and size for memory and throughput measurements."""
  h, w, c = shape
  for start in range(0, num, chunk):
    n = min(chunk, num - start)
    rng = np.random.default_rng([seed, start])
    coarse = rng.uniform(-1, 1, (n, 8, 8, c)).astype(np.float32)
    img = transforms.resize(coarse, max(h, w))[:, :h, :w]
    img = img + rng.normal(0, 0.05, (n, h, w, c)).astype(np.float32)
    yield _as_uint8(np.clip(img, -1, 1))


def prepare_synthetic(out_dir: str, num: int, shape, seed: int = 0, num_test: int = 0) -> dict:
  os.makedirs(out_dir, exist_ok=True)
  counts = {'train': num}
  shape = write_split(out_dir, 'train', synthetic_chunks(num, tuple(shape), seed), num)
  if num_test:
    write_split(out_dir, 'test', synthetic_chunks(num_test, tuple(shape), seed + 1), num_test)
    counts['test'] = num_test
  return write_meta(out_dir, 'synthetic', f'synthetic:{tuple(shape)}@seed{seed}', counts,
                    shape, False)


def prepare_image_folder(out_dir: str, path: str, image_size: int = 0,
                         center_crop: int = 0) -> dict:
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(path):
    raise DataError(f'{path} is not a directory; give a folder of .png/.jpg/.jpeg images.')
  files = sources.list_images(path)
  if not files:
    raise DataError(f'No .png/.jpg/.jpeg images found under {path} (searched recursively).')
  store = stream.FolderRows(files, 'image_folder', gray_modes=sources.GRAY_MODES)
  step = 256

  def chunks():
    for start in range(0, len(files), step):
      rows = np.arange(start, min(len(files), start + step))
      if image_size or center_crop:
        yield _as_uint8(store.convert(rows, center_crop, image_size))
      else:
        yield store.read(rows)

  os.makedirs(out_dir, exist_ok=True)
  shape = write_split(out_dir, 'train', chunks(), len(files))
  return write_meta(out_dir, 'image_folder', f'image_folder:{path}', {'train': len(files)},
                    shape, False)


def prepare_npz(out_dir: str, path: str) -> dict:
  path = os.path.abspath(os.path.expanduser(path))
  try:
    data = np.load(path)
  except (OSError, ValueError) as e:
    raise DataError(f'Cannot read {path} as .npz ({e}).') from e
  os.makedirs(out_dir, exist_ok=True)
  counts, labelled, shape = {}, False, None
  for split, key in (('train', 'x_train'), ('test', 'x_test')):
    if key not in data:
      if split == 'train':
        raise DataError(f'{path} has no x_train array (keys: {", ".join(data.files)}).')
      continue
    x = data[key]
    if x.ndim == 3:
      x = x[..., None]
    y = data[f'y_{split}'] if f'y_{split}' in data else None
    labelled = y is not None
    step = transforms.chunk_rows(x.shape[1:])
    shape = write_split(out_dir, split, (_as_uint8(x[i:i + step]) for i in
                                         range(0, len(x), step)), len(x), y)
    counts[split] = int(len(x))
  return write_meta(out_dir, 'npz', f'npz:{path}', counts, shape, labelled)


def prepare_tfds(out_dir: str, tfds_name: str, data_dir: str = '') -> dict:
  """A tensorflow-datasets copy prepared on local disk (array_record: no TensorFlow)."""
  specs = {v[0]: (k,) + v for k, v in sources.TFDS_SPECS.items()}
  if tfds_name not in specs:
    raise DataError(f'Unknown tfds dataset {tfds_name!r}; known: {", ".join(specs)}.')
  name, _, train_split, test_split, label_key = specs[tfds_name]
  data_dir = os.path.expanduser(data_dir or os.environ.get('TFDS_DATA_DIR') or
                                os.path.join('~', 'tensorflow_datasets'))
  version_dir = sources.find_prepared_tfds(data_dir, tfds_name)
  if version_dir is None:
    raise DataError(sources.tfds_missing_message(name, data_dir))
  builder = sources._tfds_builder(tfds_name, data_dir, version_dir, name)  # pylint: disable=protected-access
  os.makedirs(out_dir, exist_ok=True)
  counts, shape = {}, None
  for split, part in (('train', train_split), ('test', test_split)):
    if part is None:
      continue
    n = builder.info.splits[part].num_examples
    labels = [] if label_key else None
    chunks = sources._read_tfds_array_record(builder, part, np.arange(n), label_key,  # pylint: disable=protected-access
                                             labels if labels is not None else [], name)
    # labels fill while the chunks are consumed, so write images first, labels after
    shape = write_split(out_dir, split, chunks, n)
    if labels is not None:
      np.save(os.path.join(out_dir, f'{split}_labels.npy'), np.asarray(labels, np.int32))
    counts[split] = int(n)
  return write_meta(out_dir, name, f'tfds:{tfds_name}@{data_dir}', counts, shape,
                    label_key is not None)


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m gpe_jax.data.prepare',
                              description=__doc__.split('\n\n')[0])
  p.add_argument('--out', required=True, help='the prepared folder to write')
  sub = p.add_subparsers(dest='kind', required=True)
  s = sub.add_parser('synthetic', help='random smooth images of a given shape')
  s.add_argument('--num', type=int, required=True)
  s.add_argument('--num_test', type=int, default=0)
  s.add_argument('--shape', default='256,256,3', help='H,W,C')
  s.add_argument('--seed', type=int, default=0)
  f = sub.add_parser('image_folder', help='a folder of .png/.jpg/.jpeg images')
  f.add_argument('path')
  f.add_argument('--image_size', type=int, default=0)
  f.add_argument('--center_crop', type=int, default=0)
  n = sub.add_parser('npz', help='an .npz with x_train (and x_test, y_train, y_test)')
  n.add_argument('path')
  t = sub.add_parser('tfds', help='a tensorflow-datasets copy prepared as array_record')
  t.add_argument('name')
  t.add_argument('--data_dir', default='')
  return p


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  try:
    if args.kind == 'synthetic':
      shape = tuple(int(v) for v in args.shape.split(','))
      if len(shape) != 3 or min(shape) < 1 or args.num < 1:
        raise DataError(f'--shape must be H,W,C with positive sizes and --num >= 1; got '
                        f'--shape={args.shape} --num={args.num}.')
      meta = prepare_synthetic(args.out, args.num, shape, args.seed, args.num_test)
    elif args.kind == 'image_folder':
      meta = prepare_image_folder(args.out, args.path, args.image_size, args.center_crop)
    elif args.kind == 'npz':
      meta = prepare_npz(args.out, args.path)
    else:
      meta = prepare_tfds(args.out, args.name, args.data_dir)
  except DataError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(json.dumps(meta))
  return 0


if __name__ == '__main__':
  sys.exit(main())
