"""Image transforms shared by every image source: scaling to [-1, 1], centre crop, resize.

All work happens on the host in NumPy, chunk by chunk, so a large uint8 dataset is never
held in float32 twice and no XLA compilation is spent on preprocessing.

Resizing is separable linear (triangle-kernel) interpolation with antialiasing: when
downsampling, the kernel is widened by the scale factor so each output pixel averages the
input area it covers (the behaviour of ``jax.image.resize(..., method='linear',
antialias=True)``, which the tests use as the reference). Each axis is one small matrix
product, ``[out, in] @ [in, ...]``, which keeps 70k 28x28 images well under a second.
"""
from __future__ import annotations

from collections.abc import Iterable
import functools

import numpy as np

from gpe_jax.data.core import DataError

# Upper bound on the float32 elements of one chunk in flight (64 MiB).
_CHUNK_ELEMENTS = 1 << 24


# uint8 -> [-1, 1] lookup table: one gather per pixel, bit-identical to x / 255 * 2 - 1.
_UINT8_TO_SIGNED = (np.arange(256, dtype=np.float32) / np.float32(255.0) * 2 - 1).clip(-1, 1)


def to_signed_unit(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
  """Pixels to float32 in [-1, 1].

  Args:
    x: uint8 array (0..255, scaled by ``x / 255 * 2 - 1``) or a float array assumed to be
      in [-1, 1] already (cast only).
    out: optional float32 array of ``x``'s shape to write into.

  Returns:
    float32 array of the same shape (``out`` if given).
  """
  if x.dtype == np.uint8:
    return np.take(_UINT8_TO_SIGNED, x, out=out)
  if np.issubdtype(x.dtype, np.floating):
    if out is None:
      return x.astype(np.float32, copy=False)
    out[...] = x
    return out
  raise DataError(f'Cannot scale pixels of dtype {x.dtype}: expected uint8 (0..255) or float '
                  'values already in [-1, 1].')


def crop_box(height: int, width: int, center_crop: int) -> tuple[int, int, int, int]:
  """Centred crop window ``(top, left, crop_height, crop_width)``.

  Args:
    height: image height.
    width: image width.
    center_crop: 0 = no crop, -1 = the largest centred square, N > 0 = a centred N x N crop.

  Returns:
    The window; for an odd margin the extra pixel goes to the bottom/right.
  """
  if center_crop == 0:
    return 0, 0, height, width
  if center_crop == -1:
    size_h = size_w = min(height, width)
  elif center_crop > 0:
    if center_crop > min(height, width):
      raise DataError(
          f'center_crop={center_crop} is larger than the {height}x{width} images; set '
          '--config.data.center_crop to at most the smaller side, -1 (largest square) or 0.')
    size_h = size_w = center_crop
  else:
    raise DataError(f'center_crop must be 0 (none), -1 (largest centred square) or a positive '
                    f'size; got {center_crop}.')
  return (height - size_h) // 2, (width - size_w) // 2, size_h, size_w


def center_crop(images: np.ndarray, center_crop: int) -> np.ndarray:
  """Centred crop of ``[N, H, W, C]`` images (a view, no copy); see ``crop_box``."""
  top, left, h, w = crop_box(images.shape[1], images.shape[2], center_crop)
  return images[:, top:top + h, left:left + w, :]


@functools.lru_cache(maxsize=64)
def resize_weights(in_size: int, out_size: int) -> np.ndarray:
  """[out_size, in_size] float32 matrix of antialiased linear-interpolation weights.

  Output pixel i samples input coordinate ``(i + 0.5) * in/out - 0.5`` (pixel centres
  aligned, half-pixel convention). The triangle kernel is stretched by ``max(in/out, 1)``
  so that downsampling averages instead of aliasing; each row is normalised to sum 1.
  """
  scale = out_size / in_size
  kernel_scale = max(1.0 / scale, 1.0)
  centres = (np.arange(out_size, dtype=np.float64) + 0.5) / scale - 0.5
  dist = np.abs(centres[:, None] - np.arange(in_size, dtype=np.float64)[None, :]) / kernel_scale
  weights = np.maximum(0.0, 1.0 - dist)
  totals = weights.sum(axis=1, keepdims=True)
  weights = np.where(totals > 0, weights / np.where(totals > 0, totals, 1.0), 0.0)
  return weights.astype(np.float32)


def resize(images: np.ndarray, size: int) -> np.ndarray:
  """Resize float ``[N, H, W, C]`` images to ``[N, size, size, C]`` (antialiased linear).

  Separable: rows then columns, each a batched ``[out, in]`` matrix product. No-op (the
  input is returned) when the images already have that size.
  """
  n, h, w, c = images.shape
  if (h, w) == (size, size):
    return images
  images = images.astype(np.float32, copy=False)
  wh = resize_weights(h, size)  # [size, h]
  ww = resize_weights(w, size)  # [size, w]
  # Height: [size, h] @ [n, h, w*c] -> [n, size, w*c].
  out = np.matmul(wh, images.reshape(n, h, w * c))
  # Width: [size, w] @ [n*size, w, c] -> [n*size, size, c].
  out = np.matmul(ww, out.reshape(n * size, w, c))
  return out.reshape(n, size, size, c)


def output_shape(example_shape: tuple[int, ...], center_crop_size: int,
                 image_size: int) -> tuple[int, int, int]:
  """``(H', W', C)`` of an ``(H, W, C)`` image after ``center_crop`` then ``image_size``."""
  h, w, c = example_shape
  _, _, h, w = crop_box(h, w, center_crop_size)
  return (image_size, image_size, c) if image_size else (h, w, c)


def transform_chunk(images: np.ndarray, center_crop_size: int, image_size: int,
                    out: np.ndarray | None = None) -> np.ndarray:
  """One chunk: ``[n, H, W, C]`` uint8 or float -> float32 ``[n, H', W', C]`` in [-1, 1].

  Order: centre crop (on the raw pixels, cheap), scale to [-1, 1], resize, clip (the
  interpolation cannot overshoot, but float inputs may sit a hair outside [-1, 1]).
  The result is written into ``out`` when given; the input is never modified.
  """
  cropped = center_crop(images, center_crop_size)
  if image_size and cropped.shape[1:3] != (image_size, image_size):
    x = resize(to_signed_unit(cropped), image_size)
  elif cropped.dtype == np.uint8:
    return to_signed_unit(cropped, out=out)  # the table is already within [-1, 1]
  else:
    x = cropped
  return np.clip(x, -1.0, 1.0, out=out)


def chunk_rows(example_shape: tuple[int, ...], max_rows: int = 2048) -> int:
  """Rows per chunk so one float32 chunk stays under ``_CHUNK_ELEMENTS`` elements."""
  per_example = max(1, int(np.prod(example_shape)))
  return int(max(1, min(max_rows, _CHUNK_ELEMENTS // per_example)))


def transform_chunks(chunks: Iterable[np.ndarray], total: int, *, center_crop_size: int,
                     image_size: int, name: str) -> np.ndarray:
  """Crop/scale/resize a stream of image chunks into one preallocated float32 array.

  Sources that decode records lazily (tfds, image folders) feed chunks here so at most one
  raw chunk and the final float32 array are in memory at once.

  Args:
    chunks: iterable of ``[n_i, H_i, W_i, C]`` uint8/float arrays, sum of ``n_i`` = total.
      Chunks may differ in H, W (e.g. image folders) as long as crop + resize make the
      outputs agree.
    total: number of images over all chunks.
    center_crop_size: see ``crop_box``.
    image_size: 0 = keep size, else output ``image_size x image_size``.
    name: dataset name for error messages.

  Returns:
    float32 ``[total, H', W', C]`` in [-1, 1].
  """
  out = None
  pos = 0
  for chunk in chunks:
    if chunk.ndim != 4:
      raise DataError(f'Dataset {name!r}: expected [N, H, W, C] images, got shape {chunk.shape}.')
    shape = output_shape(chunk.shape[1:], center_crop_size, image_size)
    if out is None:
      out = np.empty((total,) + shape, np.float32)
    elif shape != out.shape[1:]:
      raise DataError(
          f'Dataset {name!r}: images have different sizes after cropping ({out.shape[1:]} vs '
          f'{shape}); set --config.data.image_size (and optionally '
          '--config.data.center_crop=-1) so every image is brought to one size.')
    if pos + chunk.shape[0] > total:
      raise DataError(f'Dataset {name!r}: more images than the {total} expected.')
    step = chunk_rows(chunk.shape[1:])
    for start in range(0, chunk.shape[0], step):
      part = chunk[start:start + step]
      transform_chunk(part, center_crop_size, image_size, out=out[pos:pos + part.shape[0]])
      pos += part.shape[0]
  if out is None or pos != total:
    raise DataError(f'Dataset {name!r}: expected {total} images, got {pos}.')
  return out


def prepare_images(images: np.ndarray, *, center_crop_size: int = 0, image_size: int = 0,
                   name: str = 'images') -> np.ndarray:
  """In-memory ``[N, H, W, C]`` uint8/float images -> float32 in [-1, 1], cropped and resized.

  Args:
    images: ``[N, H, W, C]`` array (uint8 0..255 or float in [-1, 1]).
    center_crop_size: 0 = none, -1 = largest centred square, N > 0 = centred N x N.
    image_size: 0 = keep, else square output size.
    name: dataset name for error messages.

  Returns:
    float32 ``[N, H', W', C]``.
  """
  if images.ndim != 4:
    raise DataError(f'Dataset {name!r}: expected [N, H, W, C] images, got shape {images.shape}.')
  if images.shape[0] == 0:
    shape = output_shape(images.shape[1:], center_crop_size, image_size)
    return np.zeros((0,) + shape, np.float32)
  return transform_chunks([images], images.shape[0], center_crop_size=center_crop_size,
                          image_size=image_size, name=name)
