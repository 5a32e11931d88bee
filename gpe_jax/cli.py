r"""The one command line of every gpe_jax command: its flags, and how a failure is reported.

    python -m gpe_jax.main --config=configs/default.py:smoke --workdir=/tmp/smoke
    python -m gpe_jax.experiments.table1 --config=configs/default.py:smoke --workdir=/tmp/t1

Flags: ``--config`` (``configs/NAME.py[:ARG]``; any field can be overridden after it, e.g.
``--config.encoder.lr=3e-4``), ``--workdir``, ``--verbose``, ``--config_help`` (print every
field of the config, its value and its meaning, then exit 0; ``gpe_jax.config_help``), and
the multi-process ones
(``parallel.distributed_settings``; each also from an environment variable, the flag winning):
``--coordinator_address`` (``GPE_JAX_COORDINATOR_ADDRESS``; host:port of process 0, or
``auto`` on Cloud TPU pods / SLURM / Open MPI), ``--num_processes`` (``GPE_JAX_NUM_PROCESSES``),
``--process_id`` (``GPE_JAX_PROCESS_ID``), ``--distributed_init_timeout``
(``GPE_JAX_DISTRIBUTED_INIT_TIMEOUT``, s) and ``--heartbeat_timeout``
(``GPE_JAX_HEARTBEAT_TIMEOUT``, s). In a multi-process run every process also logs to
``WORKDIR/logs/process_<i>.log``; the workdir's records, plots and reports are process 0's.

A failure a user can fix is one paragraph on stderr, ``gpe_jax error (KIND): what happened and
the fix``, with exit status 2, and no traceback unless ``--verbose``:
  * a bad command line or config (a mistyped field, a missing config file, a bad ``:ARG``, an
    override of the wrong type) -- the errors absl and ml_collections raise while parsing;
  * any ``gpe_jax.errors.UserError`` raised by the command;
  * a workdir that cannot be written (read-only, no permission, disk full), recognised through
    the exception chains of orbax and tensorstore (``logs.workdir_write_error``).
A command that fails before any of its stages started leaves no workdir behind when it
created it (``logs.removed_if_nothing_started``); an existing workdir is never removed.
Ctrl-C and SIGTERM stop a run with exit status 130 and a paragraph that says how to resume.
A process of a multi-process run whose peer died or stopped on an error exits with status 1
and a paragraph (``PeerLost``) that names that process and its log.
Every other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import contextlib
import functools
import glob
import logging
import os
import re
import signal
import sys
import threading
import traceback
from typing import Callable, Iterator

from absl import app, flags
from ml_collections import config_flags

from gpe_jax import errors, hostmem, logs, parallel

FLAGS = flags.FLAGS
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
_OVERRIDE = re.compile(r"^--?(?:no)?config\.([^=]+)(?:=(.*))?$", re.DOTALL)


def define_flags() -> None:
  """Define the shared flags on ``absl.flags.FLAGS`` (once; later calls do nothing)."""
  if "config" in FLAGS:
    return
  config_flags.DEFINE_config_file(
      "config", None, "Config file, configs/NAME.py or configs/NAME.py:smoke; override any "
      "field after it, e.g. --config.encoder.lr=3e-4.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Where checkpoints, metrics, plots and reports go.")
  flags.DEFINE_string(
      "coordinator_address", None, "Multi-process runs: host:port of process 0, or 'auto' "
      "(jax's cluster detection: Cloud TPU pods, SLURM under srun, Open MPI); unset = one "
      "process unless such a cluster is detected. Env: GPE_JAX_COORDINATOR_ADDRESS.")
  flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run "
                       "(with a host:port address). Env: GPE_JAX_NUM_PROCESSES.")
  flags.DEFINE_integer("process_id", None, "This process's index, 0 to num_processes - 1 "
                       "(process 0 runs the coordinator). Env: GPE_JAX_PROCESS_ID.")
  flags.DEFINE_integer("distributed_init_timeout", None, "Seconds to wait for every process "
                       "to join (default 300). Env: GPE_JAX_DISTRIBUTED_INIT_TIMEOUT.")
  flags.DEFINE_integer("heartbeat_timeout", None, "Seconds after which a silent process "
                       "counts as dead and the others stop (default 100). Env: "
                       "GPE_JAX_HEARTBEAT_TIMEOUT.")
  flags.DEFINE_bool("verbose", False, "On a failure, print the full traceback, not only the "
                    "one-paragraph message.")
  flags.DEFINE_bool("config_help", False, "Print every field of the --config (dotted name, "
                    "its value there, its meaning) and exit without running anything.")


# The multi-process flags (``parallel.ENV_VARS`` holds their environment variables).
DISTRIBUTED_FLAGS = ("coordinator_address", "num_processes", "process_id",
                     "distributed_init_timeout", "heartbeat_timeout")


def start_processes(workdir: str) -> None:
  """Join a multi-process run when the flags, the ``GPE_JAX_*`` environment variables or a
  detected cluster ask for one (``parallel.initialize``; before any other JAX call); then
  every process of such a run also logs to ``workdir/logs/process_<i>.log``."""
  given = {name: FLAGS[name].value for name in DISTRIBUTED_FLAGS
           if FLAGS[name].present and FLAGS[name].value is not None}
  if not parallel.initialize(parallel.distributed_settings(given)):
    return
  import jax
  if jax.process_count() > 1 and workdir:
    path = logs.add_process_log(workdir, jax.process_index())
    watch = parallel.peer_watch()
    if watch is not None and path:
      watch.log_hint = os.path.join(os.path.dirname(path), "process_{i}.log")


def usage(module: str, require_workdir: bool) -> str:
  """The one-line usage of the command ``python -m module``."""
  workdir = "--workdir=DIR" if require_workdir else "[--workdir=DIR]"
  return (f"python -m {module} --config=configs/NAME.py[:smoke] {workdir} "
          "[--config.SECTION.FIELD=VALUE ...] [--verbose] [--config_help]")


# --------------------------------------------------------------------------- reporting


def print_error(err: BaseException, verbose: bool = False,
                cause: BaseException | None = None) -> int:
  """Print a user-facing failure as one paragraph on stderr; returns its exit status.

  Every command reports its failures through this function.

  Args:
    err: the error to report (its message is the paragraph).
    verbose: also print the traceback of ``cause`` (or of ``err``) first.
    cause: the exception that was raised, when ``err`` was made from it.

  Returns:
    130 for an interrupted run, else 2.
  """
  sys.stdout.flush()
  if verbose:
    traceback.print_exception(cause if cause is not None else err, file=sys.stderr)
  message = re.sub(r"\n\s*\n+", "\n", str(err).strip())  # one paragraph: no blank lines
  print(f"\ngpe_jax error ({type(err).__name__}): {message}", file=sys.stderr, flush=True)
  logs.to_log_files(f"gpe_jax error ({type(err).__name__}): {message}")
  return EXIT_INTERRUPTED if isinstance(err, errors.Interrupted) else EXIT_USER_ERROR


def _interrupted() -> errors.Interrupted:
  """The paragraph for a Ctrl-C or SIGTERM that no stage turned into ``errors.Interrupted``."""
  how = ("SIGTERM" if _signal_received == signal.SIGTERM else "Ctrl-C (SIGINT)")
  return errors.Interrupted(
      f"Interrupted by {how}; rerun the same command to resume: finished stages are kept and "
      "an unfinished training stage continues from its last checkpoint.")


def user_error(exc: BaseException, workdir: str = "") -> errors.UserError | None:
  """What ``exc`` means to a user: the ``UserError`` to print, or None for a bug.

  Args:
    exc: the exception that stopped the command.
    workdir: the command's workdir, named when a write failure gives no path.

  Returns:
    ``exc`` itself for a ``UserError``; ``errors.Interrupted`` for a KeyboardInterrupt (Ctrl-C,
    SIGTERM); ``errors.WorkdirWriteError`` when the chain shows a failed write (read-only
    file system, permission, full disk); None for anything else and for ``SystemExit``.
  """
  if isinstance(exc, errors.UserError):
    return exc
  if isinstance(exc, KeyboardInterrupt):
    return _interrupted()
  if isinstance(exc, Exception):
    return logs.workdir_write_error(exc, workdir)
  return None


def exit_with(err: errors.UserError, verbose: bool = False,
              cause: BaseException | None = None) -> None:
  """Print ``err`` (``print_error``) and exit: ``sys.exit(2)``, or, for an interrupted run
  and in a multi-process run, ``os._exit`` right after flushing the logs and streams
  (``_exit_now``; the other processes are told to stop).

  An interrupted run skips the interpreter's teardown: a Ctrl-C that lands while XLA compiles
  on a background thread otherwise crashes it (SIGSEGV) or ends it by SIGINT, and the exit
  status would not be 130. Nothing is lost that a kill would keep: the train loop has waited
  for its checkpoint, and a killed run resumes exactly.
  """
  code = print_error(err, verbose, cause)
  if code != EXIT_INTERRUPTED and not _multi_process():
    sys.exit(code)
  _exit_now(code)


def _multi_process() -> bool:
  """Whether this process is one of a multi-process run (without starting JAX's backend)."""
  import jax
  return jax.distributed.is_initialized()


def _exit_now(code: int) -> None:
  """Tell the other processes of a multi-process run that this one stops (they stop too, at
  once), flush the logs and streams, and end the process without the interpreter's teardown.

  In a multi-process run that teardown would wait in jax's shutdown barrier for the other
  processes, which stop without one (or are stuck in a collective waiting for this one), until
  the heartbeat timeout, and then abort.
  """
  parallel.process_failing()
  with contextlib.suppress(Exception):
    logging.shutdown()
  with contextlib.suppress(Exception):
    sys.stdout.flush()
    sys.stderr.flush()
  os._exit(code)


@contextlib.contextmanager
def reporting(verbose: bool = False, workdir: str = "") -> Iterator[None]:
  """Turn user-facing failures of the body into one paragraph and exit 2 (130 when
  interrupted) through ``exit_with``.

  Bugs (anything ``user_error`` does not recognise) propagate with their traceback; in a
  multi-process run the traceback is printed here and the process ends at once with status 1
  (``_exit_now``), so the other processes stop too instead of waiting for it.
  """
  try:
    yield
  except BaseException as e:  # KeyboardInterrupt too; the rest is re-raised
    err = user_error(e, workdir)
    if err is None:
      if isinstance(e, Exception) and _multi_process():
        traceback.print_exc()
        _exit_now(1)
      raise
    exit_with(err, verbose, cause=e)


# --------------------------------------------------------------------------- signals

_signal_received: signal.Signals | None = None  # the last SIGINT / SIGTERM, once one came


def _raise_interrupt(signum, frame) -> None:
  """SIGINT / SIGTERM handler: stop the main thread with KeyboardInterrupt (as Ctrl-C does)."""
  del frame
  global _signal_received
  _signal_received = signal.Signals(signum)
  raise KeyboardInterrupt(_signal_received.name)


def install_signal_handlers() -> None:
  """SIGTERM (and SIGINT, unless it is ignored) raise KeyboardInterrupt in the main thread,
  so a stopped run unwinds (the train loop reports its step and checkpoint) and exits 130.

  A KeyboardInterrupt that Python has to drop (raised inside a garbage-collector callback or
  a ``__del__``, e.g. JAX's) would lose the signal, and the run would go on: the signal is
  sent again a moment later, from another thread, to land in ordinary code.
  """
  signal.signal(signal.SIGTERM, _raise_interrupt)
  if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _raise_interrupt)
  previous = sys.unraisablehook

  def unraisable(info):
    if isinstance(info.exc_value, KeyboardInterrupt) and _signal_received is not None:
      resend = threading.Timer(0.05, os.kill, (os.getpid(), _signal_received))
      resend.daemon = True
      resend.start()
      return None
    return previous(info)

  sys.unraisablehook = unraisable


def _is_teardown_noise(exc: BaseException | None) -> bool:
  """A failed write, or the 'Event loop is closed' of orbax's asyncio teardown after one:
  what background threads and exit hooks print tracebacks for after the failure that the
  main thread reports as a paragraph."""
  if exc is None:
    return False
  if isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc):
    return True
  return isinstance(exc, Exception) and logs.workdir_write_error(exc) is not None


def install_quiet_hooks() -> None:
  """Background threads and exit hooks that fail on a full or read-only disk log one line
  instead of a traceback (``sys.unraisablehook``, ``threading.excepthook``); other failures
  keep the default hooks. Not installed with --verbose."""
  previous_unraisable, previous_thread = sys.unraisablehook, threading.excepthook

  def unraisable(info):
    if not _is_teardown_noise(info.exc_value):
      return previous_unraisable(info)
    logging.debug("ignored after a write failure: %r", info.exc_value)
    return None

  def thread(args):
    if not _is_teardown_noise(args.exc_value):
      return previous_thread(args)
    first = (str(args.exc_value).strip().splitlines() or [""])[0][:300]
    name = args.thread.name if args.thread is not None else "?"
    logging.warning("thread %s: %s: %s", name, type(args.exc_value).__name__, first)
    return None

  sys.unraisablehook, threading.excepthook = unraisable, thread


# --------------------------------------------------------------------------- flag errors


def _chain(exc: BaseException) -> list[BaseException]:
  """``exc`` and its causes/contexts, outermost first."""
  out = []
  while exc is not None and exc not in out:
    out.append(exc)
    exc = exc.__cause__ or exc.__context__
  return out


def _message(exc: BaseException) -> str:
  """The plain text of an exception (a KeyError's argument without repr quotes)."""
  if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
    return exc.args[0]
  return str(exc)


def config_source(argv: list[str]) -> str:
  """The value given to --config in ``argv`` ('' when absent), e.g. 'configs/mnist.py:smoke'."""
  return _config_arg(argv)


def _config_arg(argv: list[str]) -> str:
  """The value given to --config in ``argv`` ('' when absent)."""
  for i, arg in enumerate(argv):
    m = re.match(r"^--?config(=(.*))?$", arg, re.DOTALL)
    if m:
      return m.group(2) if m.group(1) else (argv[i + 1] if i + 1 < len(argv) else "")
  return ""


def _available_configs() -> str:
  """' configs/ here holds: a.py, b.py.' for the current folder ('' when it has none)."""
  names = sorted(os.path.basename(p) for p in glob.glob(os.path.join("configs", "*.py")))
  names = [n for n in names if n not in ("__init__.py", "base.py")]
  if not names:
    return ""
  return f" configs/ here holds: {', '.join(names)}."


def _field_value(path: str) -> str:
  """' (config.PATH is of type T, now V)' from the already parsed --config ('' if unknown)."""
  try:
    node = FLAGS["config"].value
    for key in path.split("."):
      node = node[key]
  except Exception:  # a description only: no value is better than a wrong one
    return ""
  if hasattr(node, "keys"):
    return f" (config.{path} is a section, not a value)"
  now = repr(node) if len(repr(node)) <= 80 else repr(node)[:77] + "..."
  return f" (config.{path} is of type {type(node).__name__}, now {now})"


def _unknown_field(exc: BaseException, argv: list[str]) -> errors.ConfigError:
  """The paragraph for an override of a field the config does not have."""
  chain = _chain(exc)
  key = _message(chain[-1]).strip("'\"")
  suggestion = ""
  for e in chain:
    m = re.search(r'Did you mean "([^"]+)"', " ".join(str(a) for a in e.args))
    if m:
      suggestion = f' Did you mean "{m.group(1)}" instead of "{key}"?'
      break
  overrides = [a for a in argv if _OVERRIDE.match(a)]
  culprit = next((a for a in overrides
                  if key in _OVERRIDE.match(a).group(1).split(".")), None)
  if culprit is not None and re.fullmatch(r"\w+", key):
    path = _OVERRIDE.match(culprit).group(1).split(".")
    parent = ".".join(["config"] + path[:path.index(key)])
    what = f"{culprit}: {parent} has no field '{key}'."
  else:
    what = f"{' '.join(overrides) or 'an override'}: the config has no such field ({key})."
  return errors.ConfigError(
      f"{what}{suggestion} Fix the name (configs/base.py defines every field, with its "
      "default); overrides cannot add new fields.")


def _illegal_value(exc: flags.IllegalFlagValueError, argv: list[str]) -> errors.ConfigError:
  """The paragraph for a --config file that raised while loading, or a bad override value."""
  inner = _chain(exc)[-1]
  reason = _message(inner).strip()
  if "Traceback (most recent call last)" in reason:  # ml_collections pastes the traceback
    reason = reason.splitlines()[-1]
  reason = reason.rstrip(".")
  m = re.match(r"^flag --([\w.]+)=", str(exc))
  name = m.group(1) if m else ""
  if name.startswith("config."):
    path = name[len("config."):]
    arg = next((a for a in argv if a.startswith(f"--{name}=") or a.startswith(f"-{name}=")),
               f"--{name}")
    return errors.ConfigError(
        f"{arg}: the value cannot be used{_field_value(path)}: {reason}. Pass a value of the "
        "field's type; tuples as --config.FIELD=\"(a, b)\", strings as they are.")
  config = _config_arg(argv)
  if isinstance(inner, TypeError) and "get_config" in reason:
    fix = ("Give the config argument that file accepts (configs/NAME.py for the full run, "
           "configs/NAME.py:smoke for a seconds-long CPU run), or none.")
  elif "configs/NAME.py" in reason:
    fix = ""  # the config's own message says what to pass
  else:
    fix = "Fix the --config argument (configs/NAME.py or configs/NAME.py:smoke)."
  return errors.ConfigError(f"--config={config}: the config file failed to load: {reason}. "
                            f"{fix}".strip())


def _unloadable_config(exc: BaseException, argv: list[str]) -> errors.ConfigError:
  """The paragraph for a config file that does not exist or cannot be read."""
  text = _message(_chain(exc)[-1])
  m = re.search(r"\[Errno \d+\][^\n]*", text)
  reason = m.group(0) if m else text.strip().splitlines()[-1].strip()
  config = _config_arg(argv).split(":", 1)[0]
  return errors.ConfigError(
      f"--config={_config_arg(argv)}: the config file {config!r} cannot be loaded ({reason}). "
      f"Pass an existing config file, relative to the current folder {os.getcwd()} or "
      f"absolute, e.g. --config=configs/default.py:smoke.{_available_configs()}")


def flag_error(exc: BaseException, argv: list[str], module: str,
               require_workdir: bool) -> errors.ConfigError | None:
  """What an exception raised while parsing the command line means, or None for a bug.

  ml_collections and absl raise (``argv`` as in ``sys.argv``):
    * ``AttributeError``/``KeyError`` from ``ml_collections.config_dict`` for an override of
      a field the config lacks (the message may hold 'Did you mean "x" instead of "y"?');
    * ``absl.flags.IllegalFlagValueError`` for a config file whose ``get_config`` raised
      ``ValueError``/``TypeError`` (e.g. ``configs/base.py: apply_arg`` for a bad ``:ARG``;
      the cause holds the original), and for an override value of the wrong type;
    * ``OSError`` ('Configuration is not available because of an earlier failure to load')
      for a config file that does not exist, on the first access of the config (or during
      parsing when overrides follow it);
    * ``SyntaxError`` for a --config file that is not Python;
    * other ``absl.flags.Error``s for unknown flags, a flag without its value, or an
      override placed before --config (``config_flags.FlagOrderError``).
  """
  if isinstance(exc, (AttributeError, KeyError)):
    tb = traceback.extract_tb(_chain(exc)[-1].__traceback__)
    if tb and "ml_collections" in tb[-1].filename:
      return _unknown_field(exc, argv)
    return None
  if isinstance(exc, flags.IllegalFlagValueError):
    return _illegal_value(exc, argv)
  if isinstance(exc, OSError) and any(
      "earlier failure to load" in str(e) or "Failed loading config file" in str(e)
      for e in _chain(exc)):
    return _unloadable_config(exc, argv)
  if isinstance(exc, SyntaxError):
    return errors.ConfigError(
        f"--config={_config_arg(argv)}: the config file is not Python ({exc.msg}, line "
        f"{exc.lineno}). Pass a config module such as configs/default.py.")
  if isinstance(exc, flags.Error):
    return errors.ConfigError(f"{exc}. Usage: {usage(module, require_workdir)} "
                              f"(--helpfull lists every flag).")
  return None


def _verbose_in(argv: list[str]) -> bool:
  """Whether ``argv`` asks for --verbose (for failures before the flags are parsed)."""
  value = False
  for arg in argv[1:]:
    if arg in ("--verbose", "-verbose"):
      value = True
    elif arg in ("--noverbose", "-noverbose"):
      value = False
    elif arg.startswith(("--verbose=", "-verbose=")):
      value = arg.split("=", 1)[1].lower() in ("1", "true", "t", "yes", "y")
  return value


def _configs_importable(argv: list[str]) -> None:
  """Config files import their siblings as ``from configs import base``; ``configs`` is not an
  installed package, so put the folder above the config file's folder on ``sys.path`` (the
  repository root for ``--config=configs/NAME.py``, from wherever the command runs)."""
  for arg in argv[1:]:
    if arg.startswith("--config="):
      path = arg[len("--config="):].split(":")[0]
      folder = os.path.dirname(os.path.abspath(path))
      if os.path.isfile(os.path.join(folder, "base.py")):
        root = os.path.dirname(folder)
        if root not in sys.path:
          sys.path.insert(0, root)


def parse_flags(argv: list[str], module: str, require_workdir: bool) -> list[str]:
  """Parse ``argv`` into FLAGS (the ``flags_parser`` of ``absl.app.run``); on a bad command
  line print its paragraph and exit 2.

  The config is loaded here too (a missing config file otherwise fails on first use), and
  --config (and --workdir where the command needs it) must be given.
  """
  try:
    _configs_importable(argv)
    rest = FLAGS(argv)
    if FLAGS.config is None:
      help_hint = (" (--config_help lists the fields of that config; python -m "
                   "gpe_jax.config_help those of configs/base.py)" if FLAGS.config_help else "")
      raise errors.ConfigError(f"--config is required{help_hint}. Usage: "
                               f"{usage(module, require_workdir)}")
    FLAGS.config.keys()  # raises here for a config file that failed to load
    if require_workdir and not FLAGS.workdir and not FLAGS.config_help:
      raise errors.ConfigError(f"--workdir is required. Usage: "
                               f"{usage(module, require_workdir)}")
    return rest
  except BaseException as e:  # KeyboardInterrupt too; the rest is re-raised
    err = e if isinstance(e, errors.UserError) else (
        _interrupted() if isinstance(e, KeyboardInterrupt) else
        flag_error(e, argv, module, require_workdir) if isinstance(e, Exception) else None)
    if err is None:
      raise
    exit_with(err, _verbose_in(argv), cause=e)


# --------------------------------------------------------------------------- running


COMPILATION_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
# XLA:CPU without its expensive passes (``config.fast_compile``): smoke runs compile far more
# than they compute.
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0",
                      "--xla_llvm_disable_expensive_passes=true")


def use_fast_compile() -> None:
  """Add ``FAST_COMPILE_FLAGS`` to ``$XLA_FLAGS`` (read when the backend starts, which is
  after this: no device has been touched while the flags are parsed)."""
  flags = os.environ.get("XLA_FLAGS", "").split()
  flags += [f for f in FAST_COMPILE_FLAGS if f.split("=")[0] not in
            {g.split("=")[0] for g in flags}]
  os.environ["XLA_FLAGS"] = " ".join(flags)


def enable_compilation_cache() -> str:
  """A persistent XLA compilation cache for command-line runs; returns its folder ('' = off).

  ``$GPE_JAX_CACHE/xla`` (default ``~/.cache/gpe_jax/xla``), kept under ``CACHE_MAX_BYTES``
  (2 GiB) by ``prune_compilation_cache`` when the command starts, unless
  ``$JAX_COMPILATION_CACHE_DIR`` is set (empty: no cache; a folder: the user's, left as they
  set it up). A second run of a command loads its compiled programs instead of compiling them
  again; an entry is keyed by the program, the XLA flags and the jax version, so it changes no
  number. jax's own size bound (``jax_compilation_cache_max_size``) is not used: before every
  write it lists the folder and reads each entry's access-time file under a lock shared by all
  processes, 0.22 s per write in a folder of 2,958 entries (measured), which is minutes for a
  command that compiles a few thousand small programs into a warm folder.
  """
  if COMPILATION_CACHE_ENV in os.environ:   # the user's (or the tests') choice, jax reads it
    path = os.environ[COMPILATION_CACHE_ENV]
    if path and os.path.isdir(path) and jax_bounds_cache():
      repair_compilation_cache(path)
    return path
  import jax  # pylint: disable=import-outside-toplevel
  from gpe_jax.data import sources  # pylint: disable=import-outside-toplevel
  path = sources.cache_dir("xla")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError:
    return ""      # an unwritable cache folder only costs compile time
  if jax_bounds_cache():
    repair_compilation_cache(path)
  else:
    prune_compilation_cache(path, CACHE_MAX_BYTES)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  return path


def jax_bounds_cache() -> bool:
  """Whether jax bounds the compilation cache itself (``JAX_COMPILATION_CACHE_MAX_SIZE`` or
  ``jax_compilation_cache_max_size`` set by the user; -1, jax's default, is unbounded)."""
  import jax  # pylint: disable=import-outside-toplevel
  return int(jax.config.jax_compilation_cache_max_size) != -1


CACHE_MAX_BYTES = 2 * 1024**3
_CACHE_ENTRY, _CACHE_ATIME = "-cache", "-atime"   # jax's names (atime: a bounded jax's only)


def prune_compilation_cache(path: str, max_bytes: int = CACHE_MAX_BYTES) -> int:
  """Keep an XLA compilation cache folder under ``max_bytes``; returns how many entries went.

  When the folder's ``KEY-cache`` entries add up to more than ``max_bytes``, the least recently
  used go first (by the later of the file's access and modification times, as the file system
  keeps them: with ``relatime`` to within a day) until 3/4 of the bound is left, each with its
  ``KEY-atime`` file if a bounded jax left one. One listing of the folder per call; commands
  call it once at start. An entry that another process removes meanwhile, or that cannot be
  removed, is skipped; an unreadable folder is left alone (0).
  """
  entries, total = [], 0
  try:
    with os.scandir(path) as it:
      for entry in it:
        if entry.name.endswith(_CACHE_ENTRY) and entry.is_file(follow_symlinks=False):
          st = entry.stat(follow_symlinks=False)
          entries.append((max(st.st_atime, st.st_mtime), st.st_size, entry.name))
          total += st.st_size
  except OSError:
    return 0
  if total <= max_bytes:
    return 0
  removed, target = 0, max_bytes * 3 // 4
  for _, size, name in sorted(entries):
    if total <= target:
      break
    for stale in (name, name[:-len(_CACHE_ENTRY)] + _CACHE_ATIME):
      try:
        os.remove(os.path.join(path, stale))
      except OSError:
        pass
    total -= size
    removed += 1
  logging.info("compilation cache %s: removed the %d least recently used entries (bound %d "
               "bytes)", path, removed, max_bytes)
  return removed


def repair_compilation_cache(path: str) -> int:
  """Remove the entries of an XLA compilation cache folder that have no access-time file.

  Needed only where jax bounds the cache (``jax_bounds_cache``): a size-bounded jax cache keeps
  a ``KEY-atime`` file beside each ``KEY-cache`` entry and reads all of them before it writes a
  new entry; one entry without its atime file (written by a process that did not bound the
  cache, or killed between the two writes) makes every later write into the folder fail, so
  every run compiles everything again. Such entries are removed (under the cache's own lock
  when ``filelock`` is installed); removing one costs only one compilation. Returns how many
  were removed; an unreadable folder is left alone (0).
  """
  try:
    names = set(os.listdir(path))
  except OSError:
    return 0
  orphans = [n for n in names if n.endswith(_CACHE_ENTRY)
             and n[:-len(_CACHE_ENTRY)] + _CACHE_ATIME not in names]
  if not orphans:
    return 0
  try:
    import filelock  # pylint: disable=import-outside-toplevel
    lock = filelock.FileLock(os.path.join(path, ".lockfile"), timeout=10)
  except ImportError:
    lock = contextlib.nullcontext()
  removed = 0
  try:
    with lock:
      for name in orphans:
        key = name[:-len(_CACHE_ENTRY)]
        if not os.path.exists(os.path.join(path, key + _CACHE_ATIME)):
          try:
            os.remove(os.path.join(path, name))
            removed += 1
          except OSError:
            pass
  except Exception:  # noqa: BLE001  (a lock timeout: another process holds it; try next run)
    return removed
  if removed:
    logging.info("compilation cache %s: removed %d entries without an access-time file",
                 path, removed)
  return removed


def run(body: Callable[..., object], module: str, require_workdir: bool = False,
        default_workdir: Callable[..., str] | None = None) -> None:
  """Parse the command line, then run ``body(config, workdir)``; never returns.

  Sets up logging and multi-host JAX, turns SIGTERM into KeyboardInterrupt, and reports every
  user-facing failure through ``exit_with`` (exit 2, or 130 when interrupted).

  Args:
    body: the command's work, ``body(config, workdir)``; it prints its own results.
    module: the command's module, for the usage line (``python -m module``).
    require_workdir: whether --workdir must be given.
    default_workdir: ``default_workdir(config)``, the workdir when --workdir is absent.
  """
  hostmem.keep_freed_memory()   # before the XLA backend's threads start
  define_flags()
  for name in ("config", "workdir", *DISTRIBUTED_FLAGS, "verbose", "config_help"):  # --help
    FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])
  install_signal_handlers()

  def main(argv):
    verbose = FLAGS.verbose
    with reporting(verbose):
      if len(argv) > 1:
        raise errors.ConfigError(
            f"Unexpected argument(s) {' '.join(argv[1:])}: flags take the form --name=value. "
            f"Usage: {usage(module, require_workdir)}")
      if FLAGS.config_help:   # the fields, their values and meanings; nothing runs
        from gpe_jax import config_help
        print(config_help.text(FLAGS.config, config_source(sys.argv)))
        return
      logs.setup_logging(verbose)
      enable_compilation_cache()
      if FLAGS.config.get("fast_compile"):
        use_fast_compile()
      if not verbose:
        install_quiet_hooks()
      config = FLAGS.config
      workdir = FLAGS.workdir or (default_workdir(config) if default_workdir else "")
    with reporting(verbose, workdir), logs.removed_if_nothing_started(workdir):
      start_processes(workdir)
      body(config, workdir)
    parallel.process_finished()

  app.run(main, flags_parser=functools.partial(parse_flags, module=module,
                                               require_workdir=require_workdir))
