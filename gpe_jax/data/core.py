"""The two types every data module shares: ``DataError`` and the in-memory ``Dataset``.

Kept in their own module so that sources, transforms, batching and the registry can all
raise the same error and build the same container without importing one another.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from gpe_jax.errors import DataError  # noqa: F401  (re-exported: data modules raise it)


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A dataset, already split: float32 in host memory, or streamed from a prepared folder.

  ``eq=False`` keeps identity comparison and hashing: comparing arrays element-wise is never
  what ``==`` on a dataset should mean.

  Attributes:
    name: registry name, e.g. ``'digits'``.
    x_train: float32 ``[N, H, W, C]`` images in [-1, 1] (NHWC), or ``[N, D]`` vectors; for a
      prepared folder a ``stream.StreamedImages`` view that converts rows when indexed.
    x_test: float32 held-out split, same layout as ``x_train`` (``[M, ...]``).
    y_train: int32 ``[N]`` labels, or None for unlabeled data.
    y_test: int32 ``[M]`` labels, or None (exactly when ``y_train`` is None).
    source: human-readable origin (a path, ``'sklearn digits'``, ``'tfds:mnist@DIR'``).
  """
  name: str
  x_train: np.ndarray
  x_test: np.ndarray
  y_train: np.ndarray | None
  y_test: np.ndarray | None
  source: str

  def __post_init__(self):
    for split in ('x_train', 'x_test'):
      x = getattr(self, split)
      streamed = type(x).__name__ == 'StreamedImages'   # gpe_jax.data.stream (no import)
      if not (isinstance(x, np.ndarray) or streamed) or x.dtype != np.float32 or (
          x.ndim not in (2, 4)):
        raise DataError(
            f'Dataset {self.name!r}: {split} must be a float32 numpy array of shape [N, D] or '
            f'[N, H, W, C]; got {type(x).__name__} {getattr(x, "dtype", None)} '
            f'{getattr(x, "shape", None)} (source: {self.source}).')
    if self.x_train.shape[1:] != self.x_test.shape[1:]:
      raise DataError(
          f'Dataset {self.name!r}: train examples have shape {self.x_train.shape[1:]} but '
          f'held-out examples have shape {self.x_test.shape[1:]} (source: {self.source}); '
          'both splits must share one example shape.')
    if (self.y_train is None) != (self.y_test is None):
      raise DataError(
          f'Dataset {self.name!r}: labels must be given for both splits or for neither '
          f'(source: {self.source}).')
    for xs, ys in (('x_train', 'y_train'), ('x_test', 'y_test')):
      y = getattr(self, ys)
      if y is None:
        continue
      if y.dtype != np.int32 or y.shape != (getattr(self, xs).shape[0],):
        raise DataError(
            f'Dataset {self.name!r}: {ys} must be int32 of shape [{getattr(self, xs).shape[0]}] '
            f'to match {xs}; got {y.dtype} {y.shape} (source: {self.source}).')

  @property
  def example_shape(self) -> tuple[int, ...]:
    """Shape of one example: ``(H, W, C)`` for images, ``(D,)`` for vectors."""
    return tuple(self.x_train.shape[1:])

  @property
  def is_image(self) -> bool:
    """True for ``[N, H, W, C]`` image data, False for ``[N, D]`` vectors."""
    return self.x_train.ndim == 4

  @property
  def num_classes(self) -> int | None:
    """1 + the largest label over both splits, or None for unlabeled data."""
    if self.y_train is None:
      return None
    labels = [y for y in (self.y_train, self.y_test) if y is not None and y.size]
    if not labels:
      return 0
    return int(max(int(y.max()) for y in labels)) + 1
