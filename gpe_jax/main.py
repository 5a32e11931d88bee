r"""Command line: ``python -m gpe_jax.main --config=configs/default.py --workdir=runs/default``.

Any config field can be overridden, e.g. ``--config.encoder.lr=3e-4`` or
``--config.stages="('encoder',)"``; ``--config=configs/mnist.py:smoke`` selects a config's
seconds-long CPU variant. Rerunning a command with the same workdir resumes it (Ctrl-C or
SIGTERM stop it resumably). Without ``--workdir`` the run goes to ``runs/<data.name>``.
For multi-host runs pass ``--coordinator_address`` (``auto`` on TPU pods / SLURM). The flags
and the one-paragraph error messages are those of ``gpe_jax.cli``.
"""
from __future__ import annotations

from gpe_jax import cli, logs

def headline(stage: str, values: dict) -> str:
  """One line per stage: ``stage: steps=4, seconds=1.23, val_gme=...`` (the stage spec's
  ``headline`` keys that its summary has)."""
  from gpe_jax.stages import registry
  names = registry.get(stage).headline if stage in registry.names() else ()
  keys = [k for k in names if k in values]
  return f"{stage}: " + ", ".join(f"{k}={values[k]:.4g}" if isinstance(values[k], float)
                                  else f"{k}={values[k]}" for k in keys)


def default_workdir(config) -> str:
  return f"runs/{config.data.name}"


def run(config, workdir: str) -> None:
  """Run the pipeline in ``workdir`` (holding its lock) and print each stage's headline."""
  with logs.workdir_lock(workdir, what="python -m gpe_jax.main"):
    from gpe_jax import pipeline  # here: a bad command line or a busy workdir fail at once
    summary = pipeline.run(config, workdir)
  if not logs.is_main_process():   # one summary per run, from process 0
    return
  for stage, values in summary.items():
    print(headline(stage, values))
  print(f"outputs in {workdir}")


def main() -> None:
  cli.run(run, "gpe_jax.main", require_workdir=False, default_workdir=default_workdir)


if __name__ == "__main__":
  main()
