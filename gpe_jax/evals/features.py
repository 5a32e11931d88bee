"""Feature spaces for generation-quality measurements, by name (PAPERS §3).

  * ``classifier``: the penultimate layer of a small classifier trained by the project on the
    dataset's labels (``gpe_jax.evals.classifier``; trained once per dataset, cached on disk);
  * ``pixels``: the raw pixels (or vector entries) in [-1, 1];
  * ``thumbnail``: images average-pooled to at most 16 x 16 (cheap on large images);
  * ``inception``: pool3 of the standard FID Inception-v3, from a local weights file
    (``config.evaluate.inception_weights``; ``docs/inception.md``) — the only one whose
    Fréchet distance is "FID" proper.

Extractors are built once per process and dataset and shared by the prior stage's scheduled
evaluators and the evaluate stage.
"""
from __future__ import annotations

import numpy as np

from gpe_jax.data import Dataset
from gpe_jax.evals.classifier import FeatureExtractor, default_cache_dir, get_classifier
from gpe_jax.errors import ConfigError

EXTRACTORS = ("classifier", "pixels", "thumbnail", "inception")
THUMBNAIL_SIDE = 16   # 'thumbnail': images average-pooled to at most 16 x 16

_CACHE: dict = {}


def pixels_extractor(data: Dataset) -> FeatureExtractor:
  dim = int(np.prod(data.example_shape))

  def fn(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float32).reshape(x.shape[0], -1)
  return FeatureExtractor(name="pixels", dim=dim, fn=fn,
                          info={"space": f"raw values in [-1, 1], {dim}-D"})


def thumbnail_extractor(data: Dataset) -> FeatureExtractor:
  """Images average-pooled to at most ``THUMBNAIL_SIDE`` pixels a side: a label-free feature
  space whose Fréchet distance stays cheap on large images (64 x 64 x 3 raw pixels are
  12,288-D; their covariance's eigendecomposition takes minutes on a CPU)."""
  if not data.is_image:
    raise ConfigError(f"The 'thumbnail' extractor needs images, but {data.name!r} holds vectors "
                      f"of shape {data.example_shape}; use 'pixels'.")
  h, w, c = data.example_shape
  fh, fw = max(1, h // THUMBNAIL_SIDE), max(1, w // THUMBNAIL_SIDE)
  oh, ow = h // fh, w // fw

  def fn(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)[:, :oh * fh, :ow * fw]
    pooled = x.reshape(x.shape[0], oh, fh, ow, fw, c).mean(axis=(2, 4))
    return pooled.reshape(x.shape[0], -1)
  return FeatureExtractor(name="thumbnail", dim=oh * ow * c, fn=fn,
                          info={"space": f"values in [-1, 1] average-pooled {fh}x{fw} to "
                                         f"{oh}x{ow}x{c} ({oh * ow * c}-D)"})


def inception_extractor(data: Dataset, eval_cfg) -> FeatureExtractor:
  from gpe_jax.evals import inception
  if not data.is_image:
    raise ConfigError(f"The 'inception' extractor needs images, but {data.name!r} holds "
                      f"vectors of shape {data.example_shape}; use "
                      "--config.evaluate.extractors=\"('pixels',)\" (or 'classifier').")
  variables = inception.load_variables(eval_cfg.inception_weights)
  fn = inception.make_feature_fn(variables)
  return FeatureExtractor(name="inception", dim=2048, fn=fn,
                          info={"space": "FID Inception-v3 pool3, 2048-D",
                                "weights": str(eval_cfg.inception_weights)})


def get_extractor(name: str, data: Dataset, eval_cfg) -> FeatureExtractor:
  """The named feature extractor for ``data`` (built once per process and dataset).

  Raises:
    ConfigError: an unknown name, a classifier on unlabelled data, or missing Inception
      weights, each with the fix.
  """
  if name not in EXTRACTORS:
    raise ConfigError(f"config.evaluate.extractors names {name!r}, which is not a feature "
                      f"extractor; choose from {EXTRACTORS}.")
  key = (name, id(data), repr(sorted(eval_cfg.to_dict().items()))
         if name not in ("pixels", "thumbnail") else "")
  if key not in _CACHE:
    if name == "pixels":
      _CACHE[key] = pixels_extractor(data)
    elif name == "thumbnail":
      _CACHE[key] = thumbnail_extractor(data)
    elif name == "classifier":
      _CACHE[key] = get_classifier(data, eval_cfg.classifier,
                                   eval_cfg.cache_dir or default_cache_dir())
    else:
      _CACHE[key] = inception_extractor(data, eval_cfg)
  return _CACHE[key]


def validate_names(names, where: str) -> None:
  bad = [n for n in names if n not in EXTRACTORS]
  if bad:
    raise ConfigError(f"{where} names unknown feature extractor(s) {bad}; choose from "
                      f"{EXTRACTORS}.")


def validate_extractors(names, data: Dataset, eval_cfg, where: str) -> None:
  """Everything about the extractors that can be checked before training: the names, the
  Inception weights file (opened and converted), and features that need what the data lacks
  (labels for the classifier, images for Inception).

  Raises:
    ConfigError: with the fix.
  """
  validate_names(names, where)
  if "classifier" in names and (data.y_train is None or data.y_test is None):
    others = tuple(n for n in names if n != "classifier") or (
        ("thumbnail",) if data.is_image else ("pixels",))
    raise ConfigError(
        f"{where} lists 'classifier', a classifier trained on the dataset's labels, but "
        f"{data.name!r} ({data.source}) has no labels. Measure in a label-free feature space: "
        f"--config.evaluate.extractors=\"{others!r}\" (or 'inception' with "
        "--config.evaluate.inception_weights).")
  if "thumbnail" in names and not data.is_image:
    thumbnail_extractor(data)   # raises the ConfigError
  if "inception" in names:
    if not data.is_image:
      raise ConfigError(f"{where} lists 'inception', which needs images, but {data.name!r} "
                        f"holds vectors of shape {data.example_shape}; use 'pixels' instead.")
    from gpe_jax.evals import inception
    inception.load_variables(eval_cfg.inception_weights)
