"""Data: dataset registry, local sources, transforms and deterministic batching.

Public API::

  cfg = default_data_config(name='fashion_mnist', image_size=32)
  ds = load_dataset(cfg)            # Dataset: float32 [N, H, W, C] in [-1, 1] (or [N, D])
  sampler = BatchSampler({'x': ds.x_train}, cfg.batch_size, seed=0)
  batch = sampler(step)             # rows batch_indices(0, step, N, B) of x_train
  for xb in iterate_eval_batches(ds.x_test, 500): ...

Nothing here downloads; absent data raises ``DataError`` with instructions.
"""
from gpe_jax.data.batching import BatchSampler
from gpe_jax.data.batching import batch_indices
from gpe_jax.data.batching import iterate_eval_batches
from gpe_jax.data.batching import steps_per_epoch
from gpe_jax.data.core import DataError
from gpe_jax.data.core import Dataset
from gpe_jax.data.registry import DATASETS
from gpe_jax.data.registry import SOURCES
from gpe_jax.data.registry import default_data_config
from gpe_jax.data.registry import load_dataset
from gpe_jax.data.registry import resolve_source
from gpe_jax.data.sources import parse_idx
from gpe_jax.data.sources import read_idx

__all__ = [
    'BatchSampler',
    'DATASETS',
    'DataError',
    'Dataset',
    'SOURCES',
    'batch_indices',
    'default_data_config',
    'iterate_eval_batches',
    'load_dataset',
    'parse_idx',
    'read_idx',
    'resolve_source',
    'steps_per_epoch',
]
