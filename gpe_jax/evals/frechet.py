"""Frechet distance between Gaussians fitted to two feature sets (the FID formula).

For N(mu1, S1) and N(mu2, S2) the squared 2-Wasserstein (Frechet) distance is

  d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^{1/2} S2 S1^{1/2})^{1/2}).

Both square roots here are TRUE matrix square roots of symmetric positive semi-definite
matrices, taken through a symmetric eigendecomposition (``eigh``): S1^{1/2} = V diag(sqrt(l)) V^T
with the eigenvalues l clipped at 0, and tr(M^{1/2}) = sum(sqrt(clip(eigvalsh(M), 0))) for the
symmetrised M = S1^{1/2} S2 S1^{1/2}. (M is similar to S1 S2, so this equals tr((S1 S2)^{1/2}) of
the usual ``scipy.linalg.sqrtm`` formulation, without a non-symmetric square root.) An
elementwise square root of a matrix product is NOT a matrix square root and is never used.

Three entry points:

- ``gaussian_stats`` / ``frechet_distance``: jittable JAX, computed in the input dtype (float32
  by default, float64 when the caller has enabled x64). Matmuls use ``Precision.HIGHEST`` so
  accelerators do not silently drop to bf16/TF32 passes.
- ``gaussian_stats_np`` / ``frechet_distance_np``: float64 NumPy, the host reference (and the
  sensible choice for very large F).
- ``frechet_distance_from_features``: statistics in float64 on the host, then the distance in
  float64 (JAX under x64 if this JAX offers an x64 context manager, else the NumPy path).
"""
from __future__ import annotations

import jax
import jax.experimental  # noqa: F401  (probed for ``enable_x64`` below)
import jax.numpy as jnp
import numpy as np

_HI = jax.lax.Precision.HIGHEST


def _float_array(a) -> jax.Array:
  """As a JAX array of a floating dtype (integers/bools go to the default float dtype)."""
  a = jnp.asarray(a)
  if not jnp.issubdtype(a.dtype, jnp.floating):
    a = a.astype(jnp.result_type(float))
  return a


@jax.jit
def gaussian_stats(features: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean and unbiased covariance of a feature set, in the input dtype.

  Args:
    features: [N, F] features (N >= 2); extra trailing axes are flattened into F.

  Returns:
    ``(mu, cov)``: mu [F] the mean, cov [F, F] the covariance with the N - 1 denominator
    (matches ``np.cov(features, rowvar=False)``).
  """
  x = _float_array(features)
  x = x.reshape(x.shape[0], -1)
  n = x.shape[0]
  mu = jnp.mean(x, axis=0)
  xc = x - mu
  cov = jnp.matmul(xc.T, xc, precision=_HI) / (n - 1)
  return mu, cov


def gaussian_stats_np(features) -> tuple[np.ndarray, np.ndarray]:
  """``gaussian_stats`` in float64 NumPy on the host.

  Args:
    features: [N, F] array-like (N >= 2); extra trailing axes are flattened into F.

  Returns:
    ``(mu, cov)``: float64 mu [F] and unbiased cov [F, F].
  """
  x = np.asarray(features, dtype=np.float64)
  x = x.reshape(x.shape[0], -1)
  if x.shape[0] < 2:
    raise ValueError(f"need at least 2 samples for a covariance, got {x.shape[0]}")
  mu = x.mean(axis=0)
  xc = x - mu
  cov = xc.T @ xc / (x.shape[0] - 1)
  return mu, cov


@jax.jit
def frechet_distance(mu1: jax.Array, cov1: jax.Array, mu2: jax.Array,
                     cov2: jax.Array) -> jax.Array:
  """Squared Frechet distance between N(mu1, cov1) and N(mu2, cov2), in JAX.

  Jittable and accelerator-friendly (``eigh``/``eigvalsh`` only). Computed in the common
  floating dtype of the inputs.

  Args:
    mu1: [F] mean of the first Gaussian.
    cov1: [F, F] covariance of the first Gaussian (symmetric PSD; symmetrised here).
    mu2: [F] mean of the second Gaussian.
    cov2: [F, F] covariance of the second Gaussian.

  Returns:
    [] scalar d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^{1/2} S2 S1^{1/2})^{1/2}).
    The exact value is >= 0; a tiny negative value can only come from rounding (e.g. for
    identical statistics), so the result is clipped at 0.
  """
  dtype = jnp.result_type(_float_array(mu1), _float_array(cov1), _float_array(mu2),
                          _float_array(cov2))
  mu1, mu2 = jnp.asarray(mu1, dtype), jnp.asarray(mu2, dtype)
  s1 = jnp.asarray(cov1, dtype)
  s2 = jnp.asarray(cov2, dtype)
  s1 = 0.5 * (s1 + s1.T)
  s2 = 0.5 * (s2 + s2.T)

  # S1^{1/2} = V diag(sqrt(max(l, 0))) V^T.
  w, v = jnp.linalg.eigh(s1)
  s1h = jnp.matmul(v * jnp.sqrt(jnp.maximum(w, 0.0))[None, :], v.T, precision=_HI)
  m = jnp.matmul(jnp.matmul(s1h, s2, precision=_HI), s1h, precision=_HI)
  m = 0.5 * (m + m.T)
  tr_sqrt = jnp.sum(jnp.sqrt(jnp.maximum(jnp.linalg.eigvalsh(m), 0.0)))

  diff = mu1 - mu2
  d = jnp.dot(diff, diff, precision=_HI) + jnp.trace(s1) + jnp.trace(s2) - 2.0 * tr_sqrt
  return jnp.maximum(d, 0.0)


def frechet_distance_np(mu1, cov1, mu2, cov2) -> float:
  """``frechet_distance`` in float64 NumPy (host reference; fine for large F).

  Args:
    mu1: [F] mean of the first Gaussian.
    cov1: [F, F] covariance of the first Gaussian.
    mu2: [F] mean of the second Gaussian.
    cov2: [F, F] covariance of the second Gaussian.

  Returns:
    The squared Frechet distance as a Python float, clipped at 0 (a negative value can only
    be rounding error).
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  s1, s2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
  s1 = 0.5 * (s1 + s1.T)
  s2 = 0.5 * (s2 + s2.T)
  w, v = np.linalg.eigh(s1)
  s1h = (v * np.sqrt(np.maximum(w, 0.0))[None, :]) @ v.T
  m = s1h @ s2 @ s1h
  m = 0.5 * (m + m.T)
  tr_sqrt = np.sum(np.sqrt(np.maximum(np.linalg.eigvalsh(m), 0.0)))
  diff = mu1 - mu2
  d = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)
  return max(d, 0.0)


def _x64_context():
  """A context manager that enables JAX x64, or None if this JAX has none that works.

  Tries ``jax.experimental.enable_x64()`` (older JAX) and then ``jax.enable_x64(True)`` (the
  config-state context manager of newer JAX, where the experimental one is gone), and checks
  that float64 arrays really survive inside it.
  """
  candidates = []
  exp = getattr(jax.experimental, "enable_x64", None)
  if callable(exp):
    candidates.append(lambda: exp())
  state = getattr(jax, "enable_x64", None)
  if callable(state):
    candidates.append(lambda: state(True))
  for make in candidates:
    try:
      ctx = make()
      with ctx:
        ok = jnp.asarray(np.zeros(1, np.float64)).dtype == jnp.float64
    except Exception:  # pylint: disable=broad-except
      continue
    if ok:
      return make()
  return None


def frechet_distance_from_features(f1, f2) -> float:
  """Frechet distance between Gaussians fitted to two feature sets, in float64.

  Statistics are computed on the host in float64 NumPy; the distance runs through the JAX
  ``frechet_distance`` under an x64 context when this JAX has one, else through
  ``frechet_distance_np``.

  Args:
    f1: [N1, F] features of the first set.
    f2: [N2, F] features of the second set.

  Returns:
    The squared Frechet distance as a Python float.
  """
  mu1, cov1 = gaussian_stats_np(f1)
  mu2, cov2 = gaussian_stats_np(f2)
  if mu1.shape != mu2.shape:
    raise ValueError(f"feature dims differ: {mu1.shape} vs {mu2.shape}")
  ctx = _x64_context()
  if ctx is None:
    return frechet_distance_np(mu1, cov1, mu2, cov2)
  with ctx:
    args = [jnp.asarray(a, jnp.float64) for a in (mu1, cov1, mu2, cov2)]
    return float(frechet_distance(*args))
