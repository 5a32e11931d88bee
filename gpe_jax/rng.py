"""Named host-side random streams: every NumPy generator of the project comes from here.

A stream is ``stream(seed, name, *words)``: the generator seeded with ``[seed, tag(name),
*words]``. Names keep purposes apart: the data order of epoch e is the stream
``data_order`` (``[seed, e]``, see ``gpe_jax.data.batching``), and no other stream can have
the key of an epoch:

  * the streams that existed before names did keep their 2-word keys ``[seed, tag]``
    (``LEGACY_TAGS``), so every number they produce is unchanged, and the data order skips
    those few tags: an epoch equal to one is seeded ``[seed, e, DATA_MARK]`` instead;
  * every other name gets a 3-word key ``[seed, NAMED_MARK, crc32(name)]`` (plus its words),
    which no 2-word epoch key can equal.

Device-side keys are ``jax.random`` keys folded from the stage salt (``train_loop``).
"""
from __future__ import annotations

import zlib

import numpy as np

# Streams whose keys predate names (kept, so their numbers are unchanged).
LEGACY_TAGS = {
    "sample.solvers": 0x501,      # noise for comparing the integrators
    "sample.generate": 0x5A4,     # noise of generated samples
    "evaluate.sets": 0xE7A,       # the evaluate stage's no-prior noise and floor subset
    "prior.heldout": 0xE7A1,      # fixed noise and times of the held-out flow-matching loss
    "table2.batch": 0x7AB1,       # Table 2's timing batch
    "table2.latents": 0x7AB2,     # Table 2's latents
}
PRIOR_NOISE_TAG = 0x9E1          # prior training noise: [seed, step, process, PRIOR_NOISE_TAG]
NAMED_MARK = 0x6E616D65          # 'name'
DATA_MARK = 0x64617461           # 'data'


def tag(name: str) -> list[int]:
  """The key words of stream ``name`` after the seed."""
  if name in LEGACY_TAGS:
    return [LEGACY_TAGS[name]]
  return [NAMED_MARK, zlib.crc32(name.encode())]


def stream(seed: int, name: str, *words: int) -> np.random.Generator:
  """The generator of stream ``name`` (e.g. ``'sample.interpolation'``) under ``seed``."""
  return np.random.default_rng([int(seed)] + tag(name) + [int(w) for w in words])


def data_order_key(seed: int, epoch: int) -> list[int]:
  """Seed words of the data order of ``epoch``: ``[seed, epoch]``, or ``[seed, epoch,
  DATA_MARK]`` at the few epochs equal to a legacy stream tag (so the two never coincide)."""
  if epoch in _LEGACY_VALUES:
    return [int(seed), int(epoch), DATA_MARK]
  return [int(seed), int(epoch)]


def prior_noise(seed: int, step: int, process: int) -> np.random.Generator:
  """Noise of the prior's training step ``step`` on process ``process``."""
  return np.random.default_rng([int(seed), int(step), int(process), PRIOR_NOISE_TAG])


_LEGACY_VALUES = frozenset(LEGACY_TAGS.values())
