r"""Command line: ``python -m gpe_jax.main --config=configs/default.py --workdir=runs/default``.

Any config field can be overridden, e.g. ``--config.encoder.lr=3e-4`` or
``--config.stages="('encoder',)"``; ``--config=configs/mnist.py:smoke`` selects a config's
seconds-long CPU variant. Rerunning a command with the same workdir resumes it.
For multi-host runs pass ``--coordinator_address`` (``auto`` on TPU pods / SLURM).
"""
from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from gpe_jax import logs, pipeline
from gpe_jax.parallel import maybe_initialize_distributed
from gpe_jax.pipeline import USER_ERRORS

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/NAME.py[:smoke]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and plots go.")
flags.DEFINE_string("coordinator_address", "", "host:port of process 0, or 'auto'.")
flags.DEFINE_integer("num_processes", 1, "Number of processes (multi-host).")
flags.DEFINE_integer("process_id", 0, "This process's index (multi-host).")
flags.mark_flags_as_required(["config"])

def main(argv):
  del argv
  logs.setup_logging()
  config = FLAGS.config
  workdir = FLAGS.workdir or f"runs/{config.data.name}"
  maybe_initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id)
  try:
    summary = pipeline.run(config, workdir)
  except USER_ERRORS as e:
    print(f"\ngpe_jax error ({type(e).__name__}): {e}", file=sys.stderr)
    sys.exit(2)
  for stage, vals in summary.items():
    keys = [k for k in ("steps", "seconds", "val_gme", "weak_bilip_frac_a1.5",
                        "val_recon_mse", "val_mean_image_mse", "val_fm_loss",
                        "nfe_per_sample", "fd_classifier_prior", "fd_classifier_noprior",
                        "fd_classifier_recon", "fd_classifier_floor", "fd_pixels_prior",
                        "fd_pixels_noprior") if k in vals]
    print(f"{stage}: " + ", ".join(f"{k}={vals[k]:.4g}" if isinstance(vals[k], float)
                                   else f"{k}={vals[k]}" for k in keys))
  print(f"outputs in {workdir}")


if __name__ == "__main__":
  app.run(main)
