"""Generated (or reconstructed, or real) sets against a real reference, in one feature space.

For each candidate set: the Fréchet distance between Gaussians fitted to the features
(``gpe_jax.evals.frechet``: true matrix square root, statistics and distance in float64), and
improved precision/recall with k-NN manifolds (``gpe_jax.evals.prdc``). Every number comes
with what produced it: extractor, set sizes, reference.
"""
from __future__ import annotations

import numpy as np

from gpe_jax.evals import frechet, prdc


def compare_sets(extractor, reference: np.ndarray, sets: dict, pr_k: int = 3,
                 pr_samples: int = 5000, reference_name: str = "held-out") -> tuple[dict, dict]:
  """Compare each of ``sets`` with ``reference`` in ``extractor``'s feature space.

  Args:
    extractor: a ``FeatureExtractor`` (``name``, ``fn``: [N, ...] -> [N, F]).
    reference: real examples [R, ...].
    sets: {set name: examples [N_s, ...]}.
    pr_k: k of the k-NN manifolds.
    pr_samples: at most this many points of each set (and of the reference) enter
      precision/recall, whose cost is quadratic.
    reference_name: recorded with every number.

  Returns:
    (flat metrics {f'fd_{ext}_{set}', f'precision_{ext}_{set}', f'recall_{ext}_{set}'},
     records {metric name: {'value', 'extractor', 'n', 'n_reference', 'reference', ...}}).
  """
  ext = extractor.name
  f_ref = np.asarray(extractor.fn(reference), np.float64)
  flat, records = {}, {}
  for set_name, examples in sets.items():
    feats = np.asarray(extractor.fn(examples), np.float64)
    fd = frechet.frechet_distance_from_features(f_ref, feats)
    m = min(pr_samples, feats.shape[0], f_ref.shape[0])
    pr = prdc.precision_recall(f_ref[:m].astype(np.float32), feats[:m].astype(np.float32),
                               k=pr_k)
    base = {"extractor": ext, "feature_dim": int(feats.shape[1]), "set": set_name,
            "reference": reference_name}
    flat[f"fd_{ext}_{set_name}"] = fd
    records[f"fd_{ext}_{set_name}"] = dict(base, value=fd, n=int(feats.shape[0]),
                                           n_reference=int(f_ref.shape[0]))
    for key in ("precision", "recall"):
      flat[f"{key}_{ext}_{set_name}"] = pr[key]
      records[f"{key}_{ext}_{set_name}"] = dict(base, value=pr[key], n=m, n_reference=m,
                                                k=int(pr_k))
  return flat, records
