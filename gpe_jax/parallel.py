"""Mesh, shardings and multi-host helpers.

One mesh axis, "data": the batch is sharded over it and parameters are replicated. Train steps
are plain ``jax.jit`` functions with explicit in/out shardings (no pmap), so XLA inserts the
collectives the pairwise GME term needs, and BatchNorm statistics are over the global batch:
one device and eight devices compute the same numbers.
"""
from __future__ import annotations

import logging

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P


from gpe_jax.errors import ConfigError  # noqa: F401  (re-exported)


def maybe_initialize_distributed(coordinator_address: str, num_processes: int,
                                 process_id: int) -> None:
  """Initialise multi-process JAX when a coordinator is given (pods, multi-node GPU).

  On TPU pods and SLURM clusters ``jax.distributed.initialize()`` can discover everything by
  itself; pass ``coordinator_address='auto'`` for that.
  """
  if not coordinator_address:
    return
  if coordinator_address == "auto":
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  logging.info("distributed: process %d of %d, %d global devices", jax.process_index(),
               jax.process_count(), jax.device_count())


def make_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D ("data",) mesh over the first ``num_devices`` devices (0 = all).

  Auto axis types: the compiler propagates shardings (JAX 0.10 defaults to Explicit).
  """
  devices = jax.devices()
  n = len(devices) if num_devices <= 0 else num_devices
  if n > len(devices):
    raise ConfigError(f"config.num_devices={num_devices} but only {len(devices)} devices are "
                      f"visible ({devices[0].platform}); lower --config.num_devices or set 0 "
                      "to use all of them.")
  return Mesh(np.asarray(devices[:n]), ("data",), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "config.data.batch_size") -> None:
  """The global batch must split evenly over the mesh and over the processes."""
  n = mesh.devices.size
  if batch_size % n:
    raise ConfigError(f"{what}={batch_size} is not divisible by the {n} devices of the mesh; "
                      f"choose a multiple of {n} (e.g. --config.data.batch_size="
                      f"{max(n, batch_size // n * n)}) or run on fewer devices with "
                      f"--config.num_devices.")


def to_global(batch: dict, mesh: Mesh) -> dict:
  """Host arrays holding this process's slice of a batch -> global arrays sharded on "data"."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}

