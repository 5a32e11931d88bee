"""Prefetching: the batches of the next steps are read on host threads and placed on the
devices while the current step runs.

The batch of step ``s`` is still ``batch_fn(s)`` (a pure function of the seed and the step), so
prefetching changes no number: a resumed run asks for the same steps and gets the same batches.
Host work (reading rows of a streamed dataset, converting them) runs on ``workers`` threads,
``host_ahead`` steps ahead; the device transfer of the next ``device_ahead`` steps is issued
before the current step's result is needed.
"""
from __future__ import annotations

import collections
import concurrent.futures
from collections.abc import Callable, Iterator
import signal


def _quiet_thread() -> None:
  """Worker threads never take Ctrl-C / SIGTERM: the main thread does (and defers them while
  a checkpoint is written), so a signal must not land on a reader thread instead."""
  if hasattr(signal, "pthread_sigmask"):
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


class Prefetcher:
  """Iterate ``(step, device_batch)`` for ``step`` in ``[start, stop)``.

  Args:
    batch_fn: step -> dict of host numpy arrays (this process's slice of the global batch).
    to_device: host batch -> device batch (e.g. ``parallel.to_global(batch, mesh)``).
    start, stop: the steps to produce.
    workers: host threads (0: read each batch on the calling thread, no prefetch).
    host_ahead: host batches in flight (>= device_ahead).
    device_ahead: device batches issued ahead of the step that consumes them.

  Use as a context manager (or call ``close``) so the threads stop when the loop ends early.
  """

  def __init__(self, batch_fn: Callable[[int], dict], to_device: Callable[[dict], dict],
               start: int, stop: int, workers: int = 2, host_ahead: int = 4,
               device_ahead: int = 2):
    self.batch_fn, self.to_device = batch_fn, to_device
    self.start, self.stop = int(start), int(stop)
    self.workers = max(0, int(workers))
    self.device_ahead = max(1, int(device_ahead))
    self.host_ahead = max(self.device_ahead, int(host_ahead))
    self._pool = (concurrent.futures.ThreadPoolExecutor(
        self.workers, 'gpe-prefetch', initializer=_quiet_thread) if self.workers else None)
    self._host: collections.deque = collections.deque()
    self._device: collections.deque = collections.deque()
    self._next_host = self.start

  def _submit_host(self) -> None:
    while self._next_host < self.stop and len(self._host) < self.host_ahead:
      s = self._next_host
      self._host.append((s, self._pool.submit(self.batch_fn, s)))
      self._next_host += 1

  def _fill_device(self) -> None:
    self._submit_host()
    while self._host and len(self._device) < self.device_ahead:
      s, fut = self._host.popleft()
      self._device.append((s, self.to_device(fut.result())))
      self._submit_host()

  def __iter__(self) -> Iterator[tuple[int, dict]]:
    if self._pool is None:
      for s in range(self.start, self.stop):
        yield s, self.to_device(self.batch_fn(s))
      return
    while True:
      self._fill_device()
      if not self._device:
        return
      yield self._device.popleft()

  def close(self) -> None:
    for _, fut in self._host:
      fut.cancel()
    self._host.clear()
    self._device.clear()
    if self._pool is not None:
      self._pool.shutdown(wait=True, cancel_futures=True)
      self._pool = None

  def __enter__(self) -> "Prefetcher":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
