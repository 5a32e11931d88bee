"""ODE samplers: convergence orders on a linear ODE, time dependence, adaptive DOPRI5, jit."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from gpe_jax import sampling

# Rotation (frequency 3) + decay, with a little coupling; float32 like the sampler.
A = np.array([[-0.75, -3.0, 0.45],
              [3.0, -0.75, 0.0],
              [0.3, 0.0, -1.5]], np.float32)
Z0 = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)


def linear_velocity(z, t):
  del t
  return z @ jnp.asarray(A).T


def linear_exact(z0, t0, t1):
  """Exact solution of dz/dt = A z (rows of z0 are states), in float64."""
  return np.asarray(z0, np.float64) @ scipy.linalg.expm((t1 - t0) * A.astype(np.float64)).T


def cos_velocity(z, t):
  return jnp.cos(t) * z


def cos_exact(z0, t0, t1):
  return np.asarray(z0, np.float64) * np.exp(np.sin(t1) - np.sin(t0))


def max_err(got, want):
  return float(np.max(np.abs(np.asarray(got, np.float64) - want)))


@pytest.mark.parametrize("method,order,steps", [
    ("euler", 1, (16, 32, 64)),
    ("heun", 2, (16, 32, 64)),
    ("rk4", 4, (8, 16, 32)),
])
def test_fixed_step_convergence_order(method, order, steps):
  exact = linear_exact(Z0, 0.0, 1.0)
  errs = []
  for n in steps:
    z1, info = sampling.integrate(linear_velocity, Z0, method=method, num_steps=n,
                                  t0=0.0, t1=1.0)
    assert z1.shape == Z0.shape and z1.dtype == jnp.float32
    assert int(info["nfe"]) == sampling._NFE_PER_STEP[method] * n
    errs.append(max_err(z1, exact))
  orders = [np.log2(errs[i] / errs[i + 1]) for i in range(len(errs) - 1)]
  for p in orders:
    assert abs(p - order) <= 0.3, (method, errs, orders)


@pytest.mark.parametrize("method", sampling.METHODS + ("dopri5",))
def test_time_dependent_ode(method):
  t0, t1 = 0.1, 2.0
  z1, _ = sampling.solve(cos_velocity, Z0, method=method, num_steps=64, t0=t0, t1=t1)
  tol = {"euler": 5e-2, "heun": 2e-3, "rk4": 1e-5, "dopri5": 1e-4}[method]
  assert max_err(z1, cos_exact(Z0, t0, t1)) < tol
  # A wrong time argument (e.g. t fixed at t0) would give a very different answer.
  assert max_err(Z0 * np.exp(np.cos(t0) * (t1 - t0)), cos_exact(Z0, t0, t1)) > 100 * tol


def test_backward_integration_inverts_forward():
  for method in ("rk4", "dopri5"):
    z1, _ = sampling.solve(cos_velocity, Z0, method=method, num_steps=32, t0=0.0, t1=1.0)
    z0, _ = sampling.solve(cos_velocity, z1, method=method, num_steps=32, t0=1.0, t1=0.0)
    assert max_err(z0, np.asarray(Z0, np.float64)) < 1e-4, method


@pytest.mark.parametrize("tol", [1e-4, 1e-5])
def test_dopri5_accuracy_and_counts(tol):
  z1, info = sampling.integrate_adaptive(linear_velocity, Z0, t0=0.0, t1=1.0, rtol=tol,
                                         atol=tol)
  assert bool(info["reached_t1"])
  acc, rej, nfe = int(info["num_accepted"]), int(info["num_rejected"]), int(info["nfe"])
  assert acc > 0 and nfe > 0
  assert nfe == 1 + 6 * (acc + rej)
  assert max_err(z1, linear_exact(Z0, 0.0, 1.0)) < 10 * tol


def test_dopri5_tighter_tolerance_costs_more():
  nfes = []
  for tol in (1e-3, 1e-5, 1e-6):
    _, info = sampling.integrate_adaptive(linear_velocity, Z0, t0=0.0, t1=1.0, rtol=tol,
                                          atol=tol)
    nfes.append(int(info["nfe"]))
  assert nfes[0] < nfes[1] < nfes[2], nfes


def test_dopri5_rejects_oversized_first_step_and_respects_max_steps():
  _, info = sampling.integrate_adaptive(linear_velocity, Z0, t0=0.0, t1=1.0, first_step=1.0)
  assert int(info["num_rejected"]) >= 1 and bool(info["reached_t1"])
  _, info = sampling.integrate_adaptive(linear_velocity, Z0, t0=0.0, t1=1.0, rtol=1e-6,
                                        atol=1e-6, first_step=1e-3, max_steps=3)
  assert int(info["num_accepted"]) + int(info["num_rejected"]) == 3
  assert not bool(info["reached_t1"])
  assert int(info["nfe"]) == 1 + 6 * 3


def test_dopri5_error_norm_is_max_over_batch():
  # One example with a fast rate dominates step-size control; all must meet the tolerance.
  rates = jnp.asarray([0.1, 0.1, 0.1, 4.0], jnp.float32)[:, None]
  z1, _ = sampling.integrate_adaptive(lambda z, t: -rates * z, Z0, t0=0.0, t1=1.0,
                                      rtol=1e-5, atol=1e-5)
  exact = np.asarray(Z0, np.float64) * np.exp(-np.asarray(rates, np.float64))
  assert max_err(z1, exact) < 1e-4


def test_jit_flax_closure_and_path():
  model = nn.Dense(3)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4)))

  def velocity(params, z, t):
    inp = jnp.concatenate([z, jnp.broadcast_to(t, (z.shape[0], 1))], axis=1)
    return jnp.tanh(model.apply(params, inp))

  @functools.partial(jax.jit, static_argnames=("method", "num_steps"))
  def sample(params, z0, method, num_steps):
    return sampling.solve(functools.partial(velocity, params), z0, method=method,
                          num_steps=num_steps)

  z_heun, info = sample(params, Z0, "heun", 25)
  assert int(info["nfe"]) == 50
  z_ref, _ = sampling.solve(functools.partial(velocity, params), Z0, method="heun")
  np.testing.assert_allclose(z_heun, z_ref, rtol=1e-5, atol=1e-6)
  z_dp, info = sample(params, Z0, "dopri5", 25)
  assert bool(info["reached_t1"])
  np.testing.assert_allclose(z_dp, z_heun, atol=1e-3)

  z1, info = jax.jit(lambda z: sampling.integrate(
      functools.partial(velocity, params), z, "rk4", 10, return_path=True))(Z0)
  assert info["path"].shape == (11, 4, 3) and info["times"].shape == (11,)
  np.testing.assert_allclose(info["path"][0], Z0)
  np.testing.assert_allclose(info["path"][-1], z1)
  np.testing.assert_allclose(info["times"][0], 1e-4, rtol=1e-6)
  np.testing.assert_allclose(info["times"][-1], 1.0 - 1e-4, rtol=1e-6)
  assert np.all(np.diff(np.asarray(info["times"])) > 0)


def test_unknown_method_raises():
  with pytest.raises(ValueError, match="euler.*heun.*rk4.*dopri5"):
    sampling.solve(linear_velocity, Z0, method="bogus")
  with pytest.raises(ValueError):
    sampling.integrate(linear_velocity, Z0, method="dopri5")


def test_generate_with_a_mesh_prior_and_a_one_device_decoder():
  """While a prior trains, its parameters live on the whole mesh (8 devices here) and the
  frozen decoder's on one device: generation must not hand one's outputs to the other on
  device (jit refuses arrays committed to different devices)."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec

  class Velocity(nn.Module):
    @nn.compact
    def __call__(self, z, t):
      return nn.Dense(z.shape[-1])(jnp.concatenate([z, jnp.broadcast_to(t, z[:, :1].shape)], -1))

  model = Velocity()
  params = model.init(jax.random.key(0), jnp.zeros((4, 3)), jnp.zeros(()))["params"]
  mesh = Mesh(np.asarray(jax.devices()), ("data",))
  params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
  w = jax.device_put(jnp.ones((3, 5)), jax.devices()[0])
  decode = functools.partial(jax.jit(lambda w, z: z @ w), w)   # parameters as an argument
  sampler = sampling.make_latent_sampler(model, method="euler", num_steps=2)
  z0, z, x, nfe = sampling.generate(sampler, params, decode, 6, 3, seed=0, batch_size=4)
  assert z.shape == (6, 3) and x.shape == (6, 5) and nfe == 2
  np.testing.assert_allclose(x, z @ np.ones((3, 5)), rtol=1e-6)


def _dopri5_attempts(velocity, z0, t0, t1, **kw):
  """Run ``integrate_adaptive`` and recover every attempted step from the times it evaluates.

  Each attempt from t with step dt evaluates six stages at t + c dt, c = 1/5, 3/10, 4/5, 8/9,
  1, 1 (after one evaluation at t0 before the loop), so dt = (T5 - T1) * 5/4 and t = T5 - dt.
  An attempt was accepted when the next one starts at t + dt rather than at t again.

  Returns:
    ``(z1, info, dt [n], accepted [n])`` over the n attempts, in order.
  """
  times = []

  def recording(z, t):
    jax.debug.callback(lambda tt: times.append(float(tt)), t, ordered=True)
    return velocity(z, t)

  z1, info = sampling.integrate_adaptive(recording, z0, t0=t0, t1=t1, **kw)
  jax.effects_barrier()
  stages = np.asarray(times[1:], np.float64).reshape(-1, 6)
  dt = (stages[:, 4] - stages[:, 0]) * 1.25
  start = stages[:, 4] - dt
  accepted = np.zeros(len(dt), bool)
  accepted[:-1] = (np.abs(start[1:] - (start[:-1] + dt[:-1]))
                   < np.abs(start[1:] - start[:-1]))
  accepted[-1] = bool(info["reached_t1"])
  assert len(dt) == int(info["num_accepted"]) + int(info["num_rejected"])
  assert accepted.sum() == int(info["num_accepted"])
  return z1, info, dt, accepted


def _switch_velocity(z, t, xp=jnp):
  """Relaxation towards a forcing that switches sign sharply at t = 0.5."""
  return -z + 5.0 * xp.tanh(200.0 * (t - 0.5))


def _van_der_pol(mu):
  def velocity(z, t, xp=jnp):
    del t
    x, y = z[:, :1], z[:, 1:2]
    return xp.concatenate([y, mu * (1.0 - x * x) * y - x], axis=1)
  return velocity


def _solve_ivp_reference(velocity, z0, t0, t1):
  """float64 reference by scipy's DOP853 at rtol = atol = 1e-12 (``velocity`` in NumPy)."""
  import scipy.integrate  # pylint: disable=import-outside-toplevel
  shape = np.shape(z0)

  def rhs(t, y):
    return velocity(y.reshape(shape), t, xp=np).ravel()

  out = scipy.integrate.solve_ivp(rhs, (t0, t1), np.asarray(z0, np.float64).ravel(),
                                  method="DOP853", rtol=1e-12, atol=1e-12)
  assert out.success
  return out.y[:, -1].reshape(shape)


@pytest.mark.parametrize("problem", ["switch", "van_der_pol"])
def test_dopri5_no_step_growth_right_after_a_rejection(problem):
  """After a rejected attempt, the accepted step that follows proposes no larger a step.

  Measured before the rule (step factor free on every accepted step): the step after such an
  accepted step grew by up to 3.8x (switch: 115 NFE, 8 rejections) and 1.13x (Van der Pol
  mu = 5: 613 NFE, 26 rejections); with it 109 NFE / 6 rejections and 607 NFE / 25.
  """
  if problem == "switch":
    velocity, z0, t0, t1, tol = _switch_velocity, Z0, 0.0, 1.0, 1e-5
  else:
    velocity, z0, t0, t1, tol = (_van_der_pol(5.0), np.array([[2.0, 0.0], [1.0, 1.0]],
                                                             np.float32), 0.0, 10.0, 1e-4)
  z1, info, dt, accepted = _dopri5_attempts(velocity, z0, t0, t1, rtol=tol, atol=tol,
                                            max_steps=5000)
  assert bool(info["reached_t1"])
  after_rejection = [i for i in range(1, len(dt) - 1) if accepted[i] and not accepted[i - 1]]
  assert len(after_rejection) >= 3  # the rule is exercised
  growth = np.array([dt[i + 1] / dt[i] for i in after_rejection])
  # dt is recovered from float32 times: 1e-3 covers the rounding, a real growth would not hide.
  assert np.all(growth <= 1.0 + 1e-3), growth
  # Elsewhere steps do grow (the cap is not applied everywhere).
  free = [dt[i + 1] / dt[i] for i in range(1, len(dt) - 1) if accepted[i] and accepted[i - 1]]
  assert max(free) > 1.05
  # A rejected attempt is retried with a smaller step.
  rejected = np.flatnonzero(~accepted[:-1])
  assert np.all(dt[rejected + 1] < dt[rejected])
  # The solution still meets the tolerance against a tight float64 reference.
  want = _solve_ivp_reference(velocity, z0, t0, t1)
  err = np.max(np.abs(np.asarray(z1, np.float64) - want) / (1.0 + np.abs(want)))
  assert err < 5 * tol, err  # measured 9.8e-6 (switch), 4.5e-5 (Van der Pol)
