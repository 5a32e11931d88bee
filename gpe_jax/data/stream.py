"""Streamed images: compact storage, float32 only for the rows a batch asks for.

Row stores give random access to the stored pixels of one split (``shape``, ``dtype``,
``read(rows)``) without holding the split in memory as float32:

* ``FileRows`` reads rows of an array stored raw in a file (raw IDX files, ``.npy`` files,
  uncompressed ``.npz`` members) with positional reads (``os.pread``): nothing is memory-mapped,
  the pages read never count towards the process's resident memory, and it is safe to call from
  several threads at once (the prefetching workers do). ``NpyRows`` opens a ``.npy``.
* ``ArrayRows`` serves rows of an array already in memory in its compact form (decompressed
  uint8 ``.gz`` IDX pixels, compressed ``.npz`` members).
* ``FolderRows`` decodes image files when their rows are read; images of different sizes are
  cropped and resized one by one (``convert``).
* ``sources.TfdsRows`` (in ``sources``) decodes tfds array_record records.

``StreamedImages`` looks like the float32 ``[N, H', W', C]`` array in [-1, 1] the rest of the
code expects (``shape``, ``dtype``, ``len``, indexing with an int, a slice or an index array)
and converts only the rows asked for: centre crop, scale, resize
(``transforms.transform_chunk``, the same function an in-memory load uses, so a row is
bit-identical to what the in-memory path holds for the same pixels).

Whole-array uses stay possible for small data (``np.asarray`` materialises it) and the few
whole-split statistics the stages need (``mean``) are computed in chunks. A prepared dataset
(``gpe_jax.data.prepare``) is a folder of uint8 ``.npy`` arrays plus ``prepared.json``.
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from gpe_jax.data import transforms
from gpe_jax.data.core import DataError

# A prepared folder (written by ``gpe_jax.data.prepare``): its record, written last, and format.
META = 'prepared.json'
FORMAT = 1

# Rows converted per chunk by whole-split passes (``mean``, ``__array__``, ``fingerprint``).
_CHUNK_ROWS = 256


class FileRows:
  """Random access to the rows of a C-ordered array stored raw in a file at byte ``offset``.

  Rows are read with positional reads (``os.pread``): nothing is memory-mapped, the pages read
  never count towards the process's resident memory, and several threads may read at once.

  Attributes:
    path: the file.
    shape: the array's shape (rows first).
    dtype: its element type.
  """

  def __init__(self, path: str, offset: int, shape: tuple[int, ...], dtype):
    self.path = path
    self.offset = int(offset)
    self.shape = tuple(int(s) for s in shape)
    self.dtype = np.dtype(dtype)
    self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
    expected = self.offset + self._row_bytes * self.shape[0]
    size = os.path.getsize(path)
    if size < expected:
      raise DataError(f'{path} is truncated: {size} bytes, {expected} expected for '
                      f'{self.shape} {self.dtype}. Write the file again.')
    self._fd = os.open(path, os.O_RDONLY)

  def __len__(self) -> int:
    return self.shape[0]

  def read(self, rows: np.ndarray) -> np.ndarray:
    """The rows ``rows`` (int array, any order, repeats allowed) as ``[len(rows), ...]``."""
    rows = np.asarray(rows, np.int64).reshape(-1)
    out = np.empty((rows.size,) + self.shape[1:], self.dtype)
    if not rows.size:
      return out
    if rows.min() < 0 or rows.max() >= self.shape[0]:
      raise IndexError(f'row index out of range for {self.path} with {self.shape[0]} rows')
    order = np.argsort(rows, kind='stable')
    srt = rows[order]
    flat = out.reshape(rows.size, -1).view(np.uint8).reshape(rows.size, self._row_bytes)
    # Runs of consecutive rows become one read each.
    breaks = np.flatnonzero(np.diff(srt) != 1) + 1
    for run in np.split(np.arange(rows.size), breaks):
      flat[order[run]] = self._pread(int(srt[run[0]]), len(run))
    return out if self.dtype.isnative else out.astype(self.dtype.newbyteorder('='))

  def _pread(self, first: int, count: int) -> np.ndarray:
    """``count`` consecutive rows from row ``first``, as ``[count, row_bytes]`` uint8."""
    nbytes = count * self._row_bytes
    parts, got, offset = [], 0, self.offset + first * self._row_bytes
    while got < nbytes:
      part = os.pread(self._fd, nbytes - got, offset + got)
      if not part:
        raise DataError(f'{self.path}: short read at row {first} (file changed on disk?); '
                        'write or prepare the dataset again.')
      parts.append(part)
      got += len(part)
    buf = parts[0] if len(parts) == 1 else b''.join(parts)
    return np.frombuffer(buf, np.uint8).reshape(count, self._row_bytes)

  def fingerprint(self) -> str:
    """sha256 (16 hex digits) of the array's bytes, read in chunks."""
    h = hashlib.sha256(repr((self.shape, self.dtype.str)).encode())
    step = max(1, (64 << 20) // max(1, self._row_bytes))
    for start in range(0, self.shape[0], step):
      h.update(self._pread(start, min(step, self.shape[0] - start)).data)
    return h.hexdigest()[:16]

  def __del__(self):
    fd = getattr(self, '_fd', None)
    if fd is not None:
      try:
        os.close(fd)
      except OSError:
        pass

  def __getstate__(self):   # picklable (spawned worker processes reopen the file)
    return {'args': (self.path, self.offset, self.shape, self.dtype.str)}

  def __setstate__(self, state):
    FileRows.__init__(self, *state['args'])


def npy_header(f, what: str) -> tuple[tuple[int, ...], np.dtype]:
  """Shape and dtype of the ``.npy`` array whose header starts at ``f``'s position; leaves
  ``f`` at the first data byte. Raises ``DataError`` unless it is a C-ordered numeric array."""
  try:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
      shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    else:
      shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
  except (OSError, ValueError) as e:
    raise DataError(f'{what} is not a readable .npy array ({e}); write or prepare it again '
                    '(`python -m gpe_jax.data.prepare`).') from e
  if fortran or dtype.hasobject or not shape:
    raise DataError(f'{what} holds a {"Fortran-ordered " if fortran else ""}{dtype} array of '
                    f'shape {shape}; it must be a C-ordered numeric array with rows first. '
                    'Write or prepare it again (`python -m gpe_jax.data.prepare`).')
  return tuple(int(s) for s in shape), np.dtype(dtype)


class NpyRows(FileRows):
  """Random access to the rows of an uncompressed, C-ordered ``.npy`` file (``offset``: where
  the ``.npy`` bytes start, e.g. an uncompressed member inside a ``.npz``)."""

  def __init__(self, path: str, offset: int = 0):
    try:
      with open(path, 'rb') as f:
        f.seek(offset)
        shape, dtype = npy_header(f, path)
        data_offset = f.tell()
    except OSError as e:
      raise DataError(f'{path} is not readable ({e}).') from e
    super().__init__(path, data_offset, shape, dtype)


class ArrayRows:
  """Rows of an array already in host memory in its compact form (e.g. decompressed uint8
  IDX pixels or a compressed npz member): ``read`` copies just the rows asked for."""

  def __init__(self, array: np.ndarray, path: str = 'array'):
    self.array = array
    self.path = path
    self.shape = tuple(array.shape)
    self.dtype = array.dtype

  def __len__(self) -> int:
    return self.shape[0]

  def read(self, rows: np.ndarray) -> np.ndarray:
    return np.take(self.array, np.asarray(rows, np.int64).reshape(-1), axis=0)

  def fingerprint(self) -> str:
    h = hashlib.sha256(repr((self.shape, self.dtype.str)).encode())
    h.update(np.ascontiguousarray(self.array).data)
    return h.hexdigest()[:16]


def with_channel_axis(store):
  """The same rows of a ``[N, H, W]`` store seen as ``[N, H, W, 1]``."""
  if isinstance(store, FileRows):
    return FileRows(store.path, store.offset, tuple(store.shape) + (1,), store.dtype)
  return ArrayRows(store.array[..., None], store.path)


class FolderRows:
  """Random access to a list of image files, decoded when their rows are asked for.

  Only the image headers are read here (sizes and modes). The images are RGB, or
  single-channel when every one is greyscale. Images of one size are served by ``read`` as
  uint8 ``[n, H, W, C]``; when sizes differ, ``convert`` crops and resizes each image on its
  own (``image_size`` is then required) so a batch still comes out as one array.
  """

  def __init__(self, files, name: str = 'image_folder', gray_modes=frozenset({'L'})):
    from PIL import Image  # pylint: disable=import-outside-toplevel
    self.files = list(files)
    self.name = name
    self.path = os.path.dirname(os.path.commonprefix(self.files)) if self.files else ''
    sizes, gray = [], True
    for f in self.files:
      try:
        with Image.open(f) as im:
          sizes.append((im.size[1], im.size[0]))   # PIL: (width, height)
          gray = gray and im.mode in gray_modes
      except Exception as e:  # pylint: disable=broad-except
        raise DataError(f'Dataset {name!r}: cannot read image {f} ({e}); remove or replace '
                        'the file.') from e
    self.mode = 'L' if gray else 'RGB'
    channels = 1 if gray else 3
    self.sizes = sorted(set(sizes))
    self.uniform = len(self.sizes) <= 1
    h, w = self.sizes[0] if self.sizes else (0, 0)
    self.shape = (len(self.files), h, w, channels)
    self.dtype = np.dtype(np.uint8)

  def __len__(self) -> int:
    return self.shape[0]

  def _decode(self, i: int) -> np.ndarray:
    from PIL import Image  # pylint: disable=import-outside-toplevel
    path = self.files[i]
    try:
      with Image.open(path) as im:
        arr = np.asarray(im.convert(self.mode))
    except Exception as e:  # pylint: disable=broad-except
      raise DataError(f'Dataset {self.name!r}: cannot decode image {path} ({e}).') from e
    return arr[..., None] if arr.ndim == 2 else arr

  def read(self, rows: np.ndarray) -> np.ndarray:
    """uint8 ``[len(rows), H, W, C]`` (images of one size only)."""
    if not self.uniform:
      raise DataError(f'Dataset {self.name!r}: images under {self.path} have '
                      f'{len(self.sizes)} different sizes; they can only be read resized to '
                      'one size (--config.data.image_size; --image_size when preparing).')
    rows = np.asarray(rows, np.int64).reshape(-1)
    out = np.empty((rows.size,) + self.shape[1:], np.uint8)
    for j, i in enumerate(rows):
      out[j] = self._decode(int(i))
    return out

  def output_shape(self, center_crop_size: int, image_size: int) -> tuple[int, int, int]:
    """``(H', W', C)`` after crop and resize; checks the crop against every image size."""
    shapes = {transforms.output_shape(hw + (self.shape[3],), center_crop_size, image_size)
              for hw in self.sizes}
    if len(shapes) > 1:
      raise DataError(
          f'Dataset {self.name!r}: images under {self.path} have different sizes after '
          f'cropping ({", ".join(str(s) for s in sorted(shapes)[:3])}...); set '
          '--config.data.image_size (and optionally --config.data.center_crop=-1) so every '
          'image is brought to one size.')
    return shapes.pop() if shapes else (0, 0, self.shape[3])

  def convert(self, rows: np.ndarray, center_crop_size: int, image_size: int) -> np.ndarray:
    """float32 ``[len(rows), H', W', C]`` in [-1, 1], each image cropped/resized on its own
    (the same numbers as converting a same-size chunk at once: the transform is per image)."""
    rows = np.asarray(rows, np.int64).reshape(-1)
    if self.uniform:
      return transforms.transform_chunk(self.read(rows), center_crop_size, image_size)
    out = np.empty((rows.size,) + self.output_shape(center_crop_size, image_size), np.float32)
    for j, i in enumerate(rows):
      transforms.transform_chunk(self._decode(int(i))[None], center_crop_size, image_size,
                                 out=out[j:j + 1])
    return out

  def fingerprint(self) -> str:
    """sha256 (16 hex digits) of the file names, sizes and modification times."""
    h = hashlib.sha256(repr((self.shape, self.mode)).encode())
    for f in self.files:
      st = os.stat(f)
      h.update(f'{f}\0{st.st_size}\0{st.st_mtime_ns}\n'.encode())
    return h.hexdigest()[:16]


class StreamedImages:
  """A float32 ``[N, H', W', C]`` view in [-1, 1] of rows ``rows`` of a uint8 image store.

  Args:
    store: an ``NpyRows`` (or any object with ``shape``, ``dtype`` and ``read(rows)``).
    rows: int64 row numbers of the store this split holds, in order.
    center_crop_size, image_size: as ``config.data.center_crop`` / ``image_size``.
    name: dataset name for messages.
  """

  dtype = np.dtype(np.float32)
  ndim = 4

  def __init__(self, store, rows: np.ndarray, center_crop_size: int = 0, image_size: int = 0,
               name: str = 'images'):
    if len(store.shape) != 4:
      raise DataError(f'Dataset {name!r}: {getattr(store, "path", "the store")} holds an array '
                      f'of shape {store.shape}; images must be [N, H, W, C].')
    self.store = store
    self.rows = np.asarray(rows, np.int64)
    self.center_crop_size = int(center_crop_size)
    self.image_size = int(image_size)
    self.name = name
    if hasattr(store, 'output_shape'):
      example = store.output_shape(self.center_crop_size, self.image_size)
    else:
      example = transforms.output_shape(tuple(store.shape[1:]), self.center_crop_size,
                                        self.image_size)
    self.shape = (len(self.rows),) + tuple(example)

  def __len__(self) -> int:
    return self.shape[0]

  @property
  def size(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64))

  def _convert(self, store_rows: np.ndarray) -> np.ndarray:
    if not len(store_rows):
      return np.zeros((0,) + self.shape[1:], np.float32)
    if hasattr(self.store, 'convert'):
      return self.store.convert(store_rows, self.center_crop_size, self.image_size)
    raw = self.store.read(store_rows)
    if not len(raw):
      return np.zeros((0,) + self.shape[1:], np.float32)
    return transforms.transform_chunk(raw, self.center_crop_size, self.image_size)

  def __getitem__(self, key):
    if isinstance(key, tuple):
      head, rest = key[0], key[1:]
      out = self[head]
      return out[(slice(None),) + rest] if np.ndim(out) == 4 else out[rest]
    if isinstance(key, (int, np.integer)):
      return self._convert(self.rows[[int(key)]])[0]
    if isinstance(key, slice):
      return self._convert(self.rows[key])
    key = np.asarray(key)
    if key.dtype == bool:
      key = np.flatnonzero(key)
    if not np.issubdtype(key.dtype, np.integer):
      raise IndexError(f'StreamedImages index must be int, slice or int/bool array; got '
                       f'{key.dtype}')
    return self._convert(self.rows[key.reshape(-1)]).reshape(key.shape + self.shape[1:])

  def subset(self, key) -> "StreamedImages":
    """A view of some of the rows (a slice or an index array), still streamed."""
    return StreamedImages(self.store, self.rows[key], self.center_crop_size, self.image_size,
                          self.name)

  def chunks(self, rows: int = _CHUNK_ROWS):
    """Consecutive float32 chunks of at most ``rows`` rows, in order."""
    for start in range(0, len(self), rows):
      yield self[start:start + rows]

  def __array__(self, dtype=None, copy=None):
    out = np.empty(self.shape, np.float32)
    for i, chunk in enumerate(self.chunks()):
      out[i * _CHUNK_ROWS:i * _CHUNK_ROWS + len(chunk)] = chunk
    return out if dtype is None else out.astype(dtype)

  def mean(self, axis=0, keepdims: bool = False):
    """Mean over rows (``axis=0``, the only axis the stages average over), in float64 chunks,
    returned as float32."""
    if axis != 0:
      raise ValueError('StreamedImages.mean supports axis=0 only')
    total = np.zeros(self.shape[1:], np.float64)
    for chunk in self.chunks():
      total += chunk.sum(axis=0, dtype=np.float64)
    mean = (total / max(1, len(self))).astype(np.float32)
    return mean[None] if keepdims else mean

  def fingerprint(self) -> str:
    """What identifies this view: the store's content, the rows and the transform."""
    base = (self.store.fingerprint() if hasattr(self.store, 'fingerprint')
            else repr(self.store.shape))
    h = hashlib.sha256(base.encode())
    h.update(self.rows.tobytes())
    h.update(repr((self.center_crop_size, self.image_size)).encode())
    return h.hexdigest()[:16]

  def __repr__(self) -> str:
    return (f'StreamedImages({getattr(self.store, "path", "store")}, shape={self.shape}, '
            f'crop={self.center_crop_size}, size={self.image_size})')


def head(x, n: int):
  """The first ``n`` rows of ``x``: a slice of an in-memory array, or a still-streamed view of
  a ``StreamedImages`` (so a later batched pass converts one batch at a time)."""
  return x.subset(slice(0, n)) if isinstance(x, StreamedImages) else x[:n]


def read_meta(path: str) -> dict | None:
  """``prepared.json`` of a prepared folder, or None if ``path`` is not one."""
  try:
    with open(os.path.join(path, META)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None
