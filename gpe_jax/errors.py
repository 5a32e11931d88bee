"""The errors a user can fix. Every command line (``gpe_jax.cli``) turns each into one paragraph
and exit status 2 (130 for an interrupted run), without a traceback unless ``--verbose``.

Each message names the problem and the fix: which config value, file or step, and the command
that mends it. Library code raises these; nothing else is caught as a "user error".
"""
from __future__ import annotations


class UserError(Exception):
  """Base of the errors a user can fix; the message is the paragraph the CLI prints."""


class ConfigError(UserError, ValueError):
  """A configuration that cannot run; the message says what to change."""


class DataError(UserError, ValueError):
  """Absent data or a bad data config.

  The message is one paragraph that names the dataset, every place that was searched and
  how to get the data (or fix the config), so a failed run tells the user what to do next.
  """


class CheckpointError(UserError, RuntimeError):
  """A checkpoint exists but cannot be restored (it is corrupt, or another config wrote it)."""


class NonFiniteError(UserError, FloatingPointError):
  """The training loss became NaN or Inf."""


class RecordError(UserError, RuntimeError):
  """A record file of the workdir (``done.json``, ``timing.json``, ``manifest.json``, ...) is
  corrupt: empty, torn by a kill or a full disk, or not JSON."""


class StaleError(UserError, RuntimeError):
  """A finished result in the workdir was computed from other inputs than the ones this run
  asks for (another config of a finished stage, or a changed upstream stage)."""


class WorkdirBusyError(UserError, RuntimeError):
  """Another live process holds the workdir's lock."""


class WorkdirWriteError(UserError, OSError):
  """The workdir cannot be written: read-only, no permission, or the disk is full."""


class DistributedError(UserError, RuntimeError):
  """The processes of a multi-process run could not join (a missing peer, a busy port)."""


class Interrupted(UserError, KeyboardInterrupt):
  """Ctrl-C or SIGTERM stopped a run; rerunning the same command resumes it.

  Attributes:
    stage: the stage that was running ('' when between stages).
    step: the last completed step of that stage (None when unknown).
    checkpoint: the step of its last checkpoint (None when none was written).
  """

  def __init__(self, message: str, stage: str = "", step: int | None = None,
               checkpoint: int | None = None):
    super().__init__(message)
    self.stage, self.step, self.checkpoint = stage, step, checkpoint


# What the command lines catch and print as one paragraph (exit 2; Interrupted: 130).
USER_ERRORS = (UserError,)
