"""The stage registry: the only module that imports concrete stages.

``pipeline.py``, ``main.py`` and the experiments iterate it; adding a method (a baseline, a
GAN) is its stage module plus one entry here (or, from a test or a script, ``register``).
The order is the pipeline order: stages that train a method's encoder/decoder first, then the
prior, sampling and evaluation, which work on ``config.method``'s trained autoencoder.
"""
from __future__ import annotations

from gpe_jax.errors import ConfigError
from gpe_jax.stages import baselines, decoder, encoder, evaluate, gans, prior, sample
from gpe_jax.stages.common import StageSpec
from gpe_jax.train_loop import stage_salt

_SPECS: dict[str, StageSpec] = {}


def register(spec: StageSpec, before: str | None = "prior") -> StageSpec:
  """Add ``spec`` to the pipeline, before stage ``before`` (None: at the end).

  Raises:
    ValueError: the name is taken, or its key salt equals another stage's.
  """
  if spec.name in _SPECS:
    raise ValueError(f"a stage named {spec.name!r} is already registered")
  salts = {stage_salt(n): n for n in _SPECS}
  if stage_salt(spec.name) in salts:
    raise ValueError(f"stage {spec.name!r} would share random keys with "
                     f"{salts[stage_salt(spec.name)]!r}")
  items = list(_SPECS.items())
  at = len(items) if before is None or before not in _SPECS else list(_SPECS).index(before)
  items.insert(at, (spec.name, spec))
  _SPECS.clear()
  _SPECS.update(items)
  return spec


def unregister(name: str) -> None:
  _SPECS.pop(name, None)


def names() -> tuple[str, ...]:
  """Every stage, in pipeline order."""
  return tuple(_SPECS)


def get(name: str) -> StageSpec:
  if name not in _SPECS:
    raise ConfigError(f"Unknown stage {name!r}. Known stages, in pipeline order: {names()}.")
  return _SPECS[name]


def specs() -> tuple[StageSpec, ...]:
  return tuple(_SPECS.values())


def methods() -> dict[str, str]:
  """{method: the stage that completes it (writes its encoder-and-decoder manifest)}."""
  return {s.method: s.name for s in _SPECS.values() if s.method and s.complete}


def encoder_stage(method: str) -> str:
  """The stage that trains ``method``'s encoder (its encoder-only stage, else the one that
  completes it)."""
  partial = [s.name for s in _SPECS.values() if s.method == method and not s.complete]
  return partial[0] if partial else methods().get(method, "")


for _spec in (encoder.SPEC, decoder.SPEC, *baselines.SPECS, *gans.SPECS, prior.SPEC, sample.SPEC,
              evaluate.SPEC):
  register(_spec, before=None)
