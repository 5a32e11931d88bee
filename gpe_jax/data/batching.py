"""Batching: which rows each training step and each process sees, and eval batches.

Data order is a pure function of ``(seed, epoch)`` (guide, practice 7): the batch of step
``s`` never depends on what ran before, so a run resumed at step ``s`` sees exactly the
batches an uninterrupted run would, and every process of a multi-host run computes the
same global batch and takes its own contiguous slice of it without communicating.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
import threading

import numpy as np

from gpe_jax import rng
from gpe_jax.data.core import DataError


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Full batches per epoch (the remainder is dropped)."""
  if batch_size < 1:
    raise DataError(f'batch_size must be >= 1; got {batch_size}.')
  if batch_size > num_examples:
    raise DataError(f'batch_size={batch_size} is larger than the {num_examples} training '
                    'examples; lower --config.data.batch_size or use more data.')
  return num_examples // batch_size


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """int64 ``[num_examples]`` order of epoch ``epoch``: ``default_rng([seed, epoch])``."""
  if seed < 0 or epoch < 0:
    raise DataError(f'The data seed and epoch must be >= 0; got seed={seed}, epoch={epoch}.')
  return np.random.default_rng(rng.data_order_key(seed, epoch)).permutation(num_examples).astype(np.int64)


def batch_indices(seed: int, step: int, num_examples: int, batch_size: int) -> np.ndarray:
  """Global example indices of training step ``step``.

  ``epoch = step // steps_per_epoch`` with ``steps_per_epoch = num_examples // batch_size``
  (remainder dropped); the batch is slice ``step % steps_per_epoch`` of the epoch's
  permutation ``default_rng([seed, epoch]).permutation(num_examples)``.

  Args:
    seed: data-order seed (>= 0).
    step: global training step (>= 0).
    num_examples: training-set size N.
    batch_size: global batch size B (<= N).

  Returns:
    int64 ``[B]`` indices, distinct within the batch and over an epoch.
  """
  per_epoch = steps_per_epoch(num_examples, batch_size)
  if step < 0:
    raise DataError(f'step must be >= 0; got {step}.')
  epoch, pos = divmod(step, per_epoch)
  perm = epoch_permutation(seed, epoch, num_examples)
  return perm[pos * batch_size:(pos + 1) * batch_size]


class BatchSampler:
  """This process's rows of the global batch of any training step.

  Process ``p`` of ``P`` gets rows ``[p*B/P, (p+1)*B/P)`` of ``batch_indices(seed, step,
  N, B)`` from every array, so the processes' slices concatenate to the global batch.
  The current epoch's permutation is cached, so a step costs one gather.

  Example:
    sampler = BatchSampler({'x': ds.x_train, 'y': ds.y_train}, batch_size=256, seed=0,
                           process_index=jax.process_index(),
                           process_count=jax.process_count())
    batch = sampler(step)  # {'x': [256 / P, ...], 'y': [256 / P]}

  Entries of ``arrays`` that are None (e.g. ``y_train`` of an unlabeled dataset) are
  left out of the batches.
  """

  def __init__(self, arrays: Mapping[str, np.ndarray | None], batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1):
    self.arrays = {k: v for k, v in arrays.items() if v is not None}
    if not self.arrays:
      raise DataError('BatchSampler needs at least one array.')
    sizes = {k: len(v) for k, v in self.arrays.items()}
    if len(set(sizes.values())) != 1:
      raise DataError(f'BatchSampler arrays have different numbers of rows: {sizes}.')
    if process_count < 1 or not 0 <= process_index < process_count:
      raise DataError(f'Invalid process_index={process_index} for process_count='
                      f'{process_count}.')
    if batch_size % process_count:
      raise DataError(f'batch_size={batch_size} is not divisible by the {process_count} '
                      'processes; choose a global batch size that is a multiple of the '
                      'process count.')
    self.num_examples = next(iter(sizes.values()))
    self.batch_size = batch_size
    self.seed = seed
    self.process_index = process_index
    self.process_count = process_count
    self.local_batch_size = batch_size // process_count
    self.steps_per_epoch = steps_per_epoch(self.num_examples, batch_size)
    if seed < 0:
      raise DataError(f'The data seed must be >= 0; got {seed}.')
    self._epoch = -1
    self._perm = None
    self._lock = threading.Lock()   # prefetching threads ask for several steps at once

  def indices(self, step: int) -> np.ndarray:
    """int64 ``[B / P]`` global row indices of this process at ``step``."""
    if step < 0:
      raise DataError(f'step must be >= 0; got {step}.')
    epoch, pos = divmod(step, self.steps_per_epoch)
    with self._lock:
      if epoch != self._epoch:
        self._perm = epoch_permutation(self.seed, epoch, self.num_examples)
        self._epoch = epoch
      perm = self._perm
    start = pos * self.batch_size + self.process_index * self.local_batch_size
    return perm[start:start + self.local_batch_size]

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    """This process's slice of the global batch of ``step``, one entry per array."""
    idx = self.indices(step)
    return {k: v[idx] for k, v in self.arrays.items()}


def iterate_eval_batches(x: np.ndarray, batch_size: int,
                         max_examples: int = 0) -> Iterator[np.ndarray]:
  """Consecutive full batches over the first ``max_examples`` rows (0 = all).

  The remainder is dropped so every batch has exactly ``batch_size`` rows (one jitted eval
  shape). Validation happens at call time, not at the first ``next``.

  Args:
    x: ``[N, ...]`` examples.
    batch_size: rows per batch.
    max_examples: use only the first this many rows (0 = all).

  Returns:
    An iterator of ``[batch_size, ...]`` views of ``x``.
  """
  n = len(x) if not max_examples else min(max_examples, len(x))
  if batch_size < 1 or n < batch_size:
    raise DataError(f'Cannot make a single evaluation batch of {batch_size} from {n} examples '
                    f'({len(x)} available, max_examples={max_examples}); lower the eval batch '
                    'size or raise the number of examples.')
  num_batches = n // batch_size
  return (x[i * batch_size:(i + 1) * batch_size] for i in range(num_batches))
