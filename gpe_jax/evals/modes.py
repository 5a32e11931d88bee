"""Mode coverage, mode collapse and c-cyclical monotonicity, in pure NumPy (no JAX).

Scoring generated samples against a known Gaussian mixture (``gpe_jax.data.sources``:
``mixture_spec(config.data)`` gives the centres and stds without loading data):

  * ``assign_modes``      nearest centre of each sample and whether it is a good sample of it.
  * ``mode_metrics``      modes covered, high-quality fraction, KL to uniform, shares, counts.
  * ``reference_sets``    calibration samples: the mixture itself, its moment-matched single
                          Gaussian, a collapse onto one mode, and a smear along the rings.

The acceptance rule (``assign_modes``): a sample x belongs to mode k = the centre nearest to
x in coordinates 0 and 1, and it is a good ("ok") sample of that mode at ``s`` sigmas when

    |x[:2] - c_k[:2]|                          <= s * std_major    and
    sqrt(mean_j (x[j] - c_k[j])^2, j = 2..D-1)  <= s * std_minor

(the second condition is vacuous when D == 2). The lenient "2-D" rule keeps only the first
condition; it is what the GMEGAN authors' figures show (the first two coordinates). Under
the 2-D rule a real sample is ok at 3 sigma with probability 1 - exp(-4.5) = 0.989 and at
1 sigma with 1 - exp(-0.5) = 0.393; the strict rule also asks the other D - 2 coordinates to
be as tight as the data's (RMS within s * std_minor: about half of the real samples at
s = 1, all of them at s = 3 for D >> 2).

Calibration (12-mode rings mixture, D = 100; checked by tests/test_modes.py): the
moment-matched single Gaussian "covers" all 12 modes with 0.62 of its samples ok at 3
sigma (under both rules: its other coordinates have exactly std_minor), against 0.99 for
the data, so coverage alone cannot tell a mixture from a blob; ``kl_uniform`` (0.13 vs
0.00), ``inner_share`` (0.58 vs 0.33) and ``within_1sigma_2d`` (0.08 vs 0.39) can.

Other measures:

  * ``class_relative_std``    the GMEGAN paper's mode-collapse score: std / mean of the
                              per-class counts of generated samples under a classifier.
  * ``cyclical_monotonicity`` a check of Thm 3 of GMEGAN (G is c-cyclically monotone for
                              c(z, x) = |z - T(x)|^2) on random finite subsets.
  * ``pairing_gap``           cost of the identity pairing minus the optimal assignment.
"""
from __future__ import annotations

import math

import numpy as np


# --------------------------------------------------------------------------------------
# Mode assignment
# --------------------------------------------------------------------------------------


def _check_points(x, centres) -> tuple[np.ndarray, np.ndarray]:
  x = np.asarray(x, np.float64)
  centres = np.asarray(centres, np.float64)
  if x.ndim != 2 or centres.ndim != 2 or x.shape[1] != centres.shape[1] or x.shape[1] < 2:
    raise ValueError(f'Samples [n, D] and centres [K, D] with the same D >= 2 are needed; got '
                     f'samples of shape {x.shape} and centres of shape {centres.shape}.')
  if centres.shape[0] < 1:
    raise ValueError('At least one centre is needed; got centres of shape '
                     f'{centres.shape}.')
  return x, centres


def _nearest(x: np.ndarray, centres: np.ndarray):
  """Nearest centre in coords 0-1, its 2-D distance and the RMS over the other coords.

  Args:
    x: ``[n, D]`` float64 samples.
    centres: ``[K, D]`` float64 centres.

  Returns:
    ``nearest [n]`` int64, ``dist2d [n]`` float64, ``rms_other [n]`` float64 (0 if D == 2).
  """
  diff = x[:, None, :2] - centres[None, :, :2]  # [n, K, 2]
  d2 = np.sum(diff * diff, axis=-1)  # [n, K]
  nearest = np.argmin(d2, axis=1)
  dist2d = np.sqrt(d2[np.arange(x.shape[0]), nearest])
  if x.shape[1] > 2:
    rest = x[:, 2:] - centres[nearest, 2:]
    rms_other = np.sqrt(np.mean(rest * rest, axis=1))
  else:
    rms_other = np.zeros(x.shape[0])
  return nearest, dist2d, rms_other


def assign_modes(x, centres, std_major: float, std_minor: float,
                 radius_sigmas: float = 3.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Nearest mode of each sample and whether the sample is a good sample of it.

  Rule: the mode of ``x`` is the centre nearest in coordinates 0 and 1 (ties: the lowest
  index). ``ok`` holds when both

    ``dist2d = |x[:2] - c[:2]| <= radius_sigmas * std_major``, and
    ``sqrt(mean((x[2:] - c[2:])**2)) <= radius_sigmas * std_minor``

  where ``c`` is that centre (the second condition is dropped when D == 2).

  Args:
    x: ``[n, D]`` samples.
    centres: ``[K, D]`` mixture centres.
    std_major: the mixture's noise std in coordinates 0 and 1.
    std_minor: its noise std in the other D - 2 coordinates.
    radius_sigmas: acceptance radius in stds.

  Returns:
    ``nearest [n]`` int64 mode index, ``dist2d [n]`` float64 distance to it in coordinates
    0 and 1, ``ok [n]`` bool.
  """
  x, centres = _check_points(x, centres)
  nearest, dist2d, rms_other = _nearest(x, centres)
  ok = (dist2d <= radius_sigmas * std_major) & (rms_other <= radius_sigmas * std_minor)
  return nearest, dist2d, ok


def _coverage(nearest: np.ndarray, ok: np.ndarray, num_modes: int, n: int,
              min_fraction: float) -> tuple[np.ndarray, int]:
  counts = np.bincount(nearest[ok], minlength=num_modes)
  covered = int(np.sum(counts >= min_fraction * n)) if n else 0
  return counts, covered


def mode_metrics(x, centres, std_major: float, std_minor: float, inner: int | None = None,
                 min_fraction: float = 0.01) -> dict:
  """Mode coverage and sample quality of ``x`` against a Gaussian mixture.

  Counts use ``assign_modes`` (strict rule: coordinates 0-1 and the others; see the
  module docstring) unless the key ends in ``_2d`` (coordinates 0-1 only).

  Args:
    x: ``[n, D]`` samples (n >= 1).
    centres: ``[K, D]`` mixture centres.
    std_major: noise std in coordinates 0 and 1.
    std_minor: noise std in the other D - 2 coordinates.
    inner: number of inner-ring modes (the first ``inner`` centres), or None.
    min_fraction: a mode is covered when at least ``min_fraction * n`` samples are ok
      samples of it.

  Returns:
    A dict of Python scalars / lists:
      num_samples: n.
      num_modes: K.
      modes_covered: modes k with count_k / n >= min_fraction, count_k = ok samples of k
        at 3 sigma.
      high_quality: fraction of the n samples ok at 3 sigma.
      within_1sigma: fraction ok at 1 sigma (same rule, radius_sigmas=1).
      kl_uniform: KL(p || uniform over K) of p_k = count_k / sum(count) (0 log 0 = 0);
        log K when no sample is ok.
      min_share, max_share: min / max over modes of count_k / sum(count) (0 if none ok).
      inner_share: sum of the first ``inner`` shares (None without ``inner``; 1/3 in the
        rings data).
      counts: [K] list of count_k.
      high_quality_2d, within_1sigma_2d, modes_covered_2d: the same under the 2-D rule.
  """
  x, centres = _check_points(x, centres)
  n, num_modes = x.shape[0], centres.shape[0]
  if n < 1:
    raise ValueError('mode_metrics needs at least one sample; got none.')
  if inner is not None and not 0 <= inner <= num_modes:
    raise ValueError(f'inner={inner} must lie between 0 and the number of modes {num_modes}.')
  nearest, dist2d, rms_other = _nearest(x, centres)
  ok2d_3 = dist2d <= 3.0 * std_major
  ok2d_1 = dist2d <= 1.0 * std_major
  ok_3 = ok2d_3 & (rms_other <= 3.0 * std_minor)
  ok_1 = ok2d_1 & (rms_other <= 1.0 * std_minor)
  counts, covered = _coverage(nearest, ok_3, num_modes, n, min_fraction)
  _, covered_2d = _coverage(nearest, ok2d_3, num_modes, n, min_fraction)
  total = int(counts.sum())
  if total:
    p = counts / total
    nz = p > 0
    kl = float(np.sum(p[nz] * np.log(p[nz] * num_modes)))
    min_share, max_share = float(p.min()), float(p.max())
    inner_share = None if inner is None else float(p[:inner].sum())
  else:
    kl, min_share, max_share = math.log(num_modes), 0.0, 0.0
    inner_share = None if inner is None else 0.0
  return {
      'num_samples': int(n),
      'num_modes': int(num_modes),
      'modes_covered': covered,
      'high_quality': float(ok_3.mean()),
      'within_1sigma': float(ok_1.mean()),
      'kl_uniform': kl,
      'min_share': min_share,
      'max_share': max_share,
      'inner_share': inner_share,
      'counts': [int(c) for c in counts],
      'high_quality_2d': float(ok2d_3.mean()),
      'within_1sigma_2d': float(ok2d_1.mean()),
      'modes_covered_2d': covered_2d,
  }


# --------------------------------------------------------------------------------------
# Calibration references
# --------------------------------------------------------------------------------------


def _noise_std(dim: int, std_major: float, std_minor: float) -> np.ndarray:
  std = np.full(dim, float(std_minor))
  std[:2] = std_major
  return std


def moment_matched(centres, std_major: float, std_minor: float) -> tuple[np.ndarray, np.ndarray]:
  """Exact mean ``[D]`` and covariance ``[D, D]`` of the equal-weight mixture.

  ``mean = avg_k c_k``; ``cov = avg_k (c_k - mean)(c_k - mean)^T + diag(std^2)`` with
  ``std = std_major`` in coordinates 0-1 and ``std_minor`` elsewhere.
  """
  centres = np.asarray(centres, np.float64)
  mean = centres.mean(axis=0)
  dev = centres - mean
  cov = dev.T @ dev / centres.shape[0]
  cov += np.diag(_noise_std(centres.shape[1], std_major, std_minor) ** 2)
  return mean, cov


def reference_sets(centres, std_major: float, std_minor: float, n: int, seed: int,
                   origin=None, collapse_mode: int = 0) -> dict[str, np.ndarray]:
  """Calibration sample sets for ``mode_metrics``, each ``[n, D]`` float64.

  Args:
    centres: ``[K, D]`` mixture centres (``mixture_spec(cfg)['centres']``).
    std_major: noise std in coordinates 0 and 1.
    std_minor: noise std in the other D - 2 coordinates.
    n: samples per set.
    seed: seed of ``np.random.default_rng`` (one generator, used set by set in the order
      below).
    origin: ``[2]`` common centre of the rings in coordinates 0-1; default: the mean of the
      centres there (the layout's ``shift`` for every circle with K >= 2 and for rings with
      K >= 6).
    collapse_mode: the mode of the ``'collapse'`` set. Mode 0 of the rings layout is on the
      tightly packed inner ring (neighbours 4.7 std_major apart for K = 12), so about 1%
      of its own samples lie nearer each inner neighbour and count for it; an outer-ring
      mode (index >= K/3) gives a cleaner single-mode reference.

  Returns:
    ``{'real': the mixture itself (equal weights, as the data source samples it),
    'gaussian': one Gaussian with the mixture's exact mean and covariance
    (``moment_matched``), 'collapse': mode ``collapse_mode``'s Gaussian only,
    'ring_smear': a component
    drawn as in the data, its centre moved to a uniform random angle on the circle about
    ``origin`` through that centre, plus the same noise}``.
  """
  centres = np.asarray(centres, np.float64)
  k, dim = centres.shape
  if not 0 <= collapse_mode < k:
    raise ValueError(f'collapse_mode={collapse_mode} must index one of the {k} centres.')
  rng = np.random.default_rng(seed)
  std = _noise_std(dim, std_major, std_minor)
  origin = centres[:, :2].mean(axis=0) if origin is None else np.asarray(origin, np.float64)

  def noisy(means):
    return means + rng.standard_normal((n, dim)) * std

  out = {'real': noisy(centres[rng.integers(k, size=n)])}
  mean, cov = moment_matched(centres, std_major, std_minor)
  evals, evecs = np.linalg.eigh(cov)
  root = evecs * np.sqrt(np.clip(evals, 0.0, None))  # root @ root.T == cov
  out['gaussian'] = mean + rng.standard_normal((n, dim)) @ root.T
  out['collapse'] = noisy(np.repeat(centres[collapse_mode:collapse_mode + 1], n, axis=0))
  labels = rng.integers(k, size=n)
  ring_radius = np.linalg.norm(centres[labels, :2] - origin, axis=1)
  angle = rng.uniform(0.0, 2 * np.pi, size=n)
  smeared = centres[labels].copy()
  smeared[:, 0] = origin[0] + ring_radius * np.cos(angle)
  smeared[:, 1] = origin[1] + ring_radius * np.sin(angle)
  out['ring_smear'] = noisy(smeared)
  return out


# --------------------------------------------------------------------------------------
# Class balance (GMEGAN Sec. 6.3)
# --------------------------------------------------------------------------------------


def class_relative_std(labels, num_classes: int) -> float:
  """Relative std of the per-class counts of generated samples (GMEGAN's collapse score).

  With ``c_i`` = number of samples classified as class i (i < num_classes), ``m`` = mean
  and ``s`` = population std (ddof=0) of the ``c_i``: returns ``s / m``. 0 for perfectly
  balanced classes, ``sqrt(num_classes - 1)`` when every sample is one class.

  Args:
    labels: ``[n]`` int predicted classes in ``0 .. num_classes - 1`` (n >= 1).
    num_classes: K >= 1.

  Returns:
    ``s / m`` as a float.
  """
  labels = np.asarray(labels).reshape(-1)
  if num_classes < 1 or labels.size == 0:
    raise ValueError(f'class_relative_std needs num_classes >= 1 and at least one label; got '
                     f'num_classes={num_classes} and {labels.size} labels.')
  if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or \
      labels.max() >= num_classes:
    raise ValueError(f'Labels must be integers in 0..{num_classes - 1}; got dtype '
                     f'{labels.dtype}, range {labels.min()}..{labels.max()}.')
  counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
  return float(counts.std() / counts.mean())


# --------------------------------------------------------------------------------------
# c-cyclical monotonicity (GMEGAN Thm 3)
# --------------------------------------------------------------------------------------


def _pair_costs(z: np.ndarray, tz: np.ndarray) -> np.ndarray:
  """``[m, d], [m, d] -> [m, m]`` with ``C[i, j] = |z_i - tz_j|^2``."""
  diff = z[:, None, :] - tz[None, :, :]
  return np.sum(diff * diff, axis=-1)


def _optimum(cost: np.ndarray) -> float:
  from scipy.optimize import linear_sum_assignment  # pylint: disable=import-outside-toplevel
  rows, cols = linear_sum_assignment(cost)
  return float(cost[rows, cols].sum())


def pairing_gap(cost) -> float:
  """Cost of the identity pairing minus the optimal assignment's: ``tr C - min_s sum C[i, s(i)]``.

  Args:
    cost: ``[m, m]`` cost matrix, ``C[i, j]`` = cost of pairing i with j.

  Returns:
    The gap (>= 0 up to rounding; 0 when the identity pairing is optimal).
  """
  cost = np.asarray(cost, np.float64)
  if cost.ndim != 2 or cost.shape[0] != cost.shape[1]:
    raise ValueError(f'pairing_gap needs a square cost matrix; got shape {cost.shape}.')
  return float(np.trace(cost)) - _optimum(cost)


def cyclical_monotonicity(z, tz, set_size: int = 8, num_sets: int = 200, num_perms: int = 200,
                          seed: int = 0) -> dict:
  """How far ``z -> G(z)`` is from c-cyclically monotone for ``c(z, x) = |z - T(x)|^2``.

  c-CM (GMEGAN Def. 1, Thm 3) asks, for every finite family z_1..z_m and permutation s,
  ``sum_i c(z_i, G z_i) <= sum_i c(z_i, G z_{s(i)})``: the identity pairing is an optimal
  assignment of the cost matrix ``C[i, j] = |z_i - tz_j|^2``, ``tz = T(G(z))``. For each of
  ``num_sets`` random subsets of ``set_size`` distinct indices this compares the identity
  pairing with the exact optimum (``scipy.optimize.linear_sum_assignment``) and with
  ``num_perms`` random permutations. Gaps are divided by the subset's mean of C, so they
  are scale-free.

  Args:
    z: ``[n, d]`` latent points.
    tz: ``[n, d]`` their images ``T(G(z))``.
    set_size: points per subset (2 <= set_size <= n).
    num_sets: number of subsets.
    num_perms: random permutations tried per subset.
    seed: seed of ``np.random.default_rng``.

  Returns:
    ``identity_optimal``: fraction of subsets where ``tr C - optimum <= 1e-9 * scale``
      (``scale = set_size * mean(C)``, or 1 when C is all zero);
    ``worst_violation``: max over subsets and random permutations s of
      ``(tr C - sum_i C[i, s(i)]) / mean(C)`` (> 0 is a violation; <= 0 for a c-CM map);
    ``mean_gap``, ``max_gap``: mean / max over subsets of ``(tr C - optimum) / mean(C)``;
    ``set_size``, ``num_sets``, ``num_perms``.
  """
  z = np.asarray(z, np.float64)
  tz = np.asarray(tz, np.float64)
  if z.ndim != 2 or z.shape != tz.shape:
    raise ValueError(f'z and tz must both be [n, d] with the same shape; got {z.shape} and '
                     f'{tz.shape}.')
  n = z.shape[0]
  if not 2 <= set_size <= n or num_sets < 1 or num_perms < 0:
    raise ValueError(f'Need 2 <= set_size <= n (n={n}, set_size={set_size}), num_sets >= 1 '
                     f'(got {num_sets}) and num_perms >= 0 (got {num_perms}).')
  rng = np.random.default_rng(seed)
  optimal, gaps, worst = 0, [], -np.inf
  rows = np.arange(set_size)
  for _ in range(num_sets):
    idx = rng.choice(n, size=set_size, replace=False)
    cost = _pair_costs(z[idx], tz[idx])
    mean = float(cost.mean())
    norm = mean if mean > 0 else 1.0
    diag = float(np.trace(cost))
    gap = diag - _optimum(cost)
    optimal += gap <= 1e-9 * (set_size * mean if mean > 0 else 1.0)
    gaps.append(gap / norm)
    if num_perms:
      perms = np.argsort(rng.random((num_perms, set_size)), axis=1)  # [P, m] uniform perms
      permuted = cost[rows[None, :], perms].sum(axis=1)
      worst = max(worst, float(np.max(diag - permuted)) / norm)
  return {
      'identity_optimal': optimal / num_sets,
      'worst_violation': float(worst) if num_perms else float('nan'),
      'mean_gap': float(np.mean(gaps)),
      'max_gap': float(np.max(gaps)),
      'set_size': int(set_size),
      'num_sets': int(num_sets),
      'num_perms': int(num_perms),
  }
