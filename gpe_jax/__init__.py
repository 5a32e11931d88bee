"""gpe_jax: geometry-preserving latent generative models in JAX/Flax.

``gpe_jax.load(workdir, method=None)`` reads a trained method back from a finished workdir
(encode, decode, reconstruct, sample; see ``gpe_jax.autoencoders``); the command line is
``python -m gpe_jax.main --config=configs/NAME.py --workdir=DIR``.
"""


def load(workdir: str, method: str | None = None, batch_size: int = 0, complete: bool = False):
  """The trained ``method`` ('gpe', 'vae', ...; default: the one the workdir was run for) of
  ``workdir``, with its prior when there is one: ``encode(x)``, ``decode(z)``,
  ``reconstruct(x)``, ``sample(n, seed=..., solver=..., steps=...)``, ``latent_stats``.
  Needs neither the training data nor the config files. ``complete=True`` refuses a workdir
  that holds only the method's encoder."""
  from gpe_jax import autoencoders
  return autoencoders.load(workdir, method=method, batch_size=batch_size, complete=complete)
