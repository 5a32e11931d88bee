"""Workdir bookkeeping, written by process 0 only: metrics.jsonl, TensorBoard, summary.json.

Workdir layout (each arrow of the pipeline is a file here):
  config.json                 the full config of the latest invocation
  metrics.jsonl               one JSON object per logged/evaluated step: stage, step, loss, ...,
                              time (Unix seconds), elapsed_s (seconds since the stage started
                              in the process that wrote the row)
  summary.json                per stage: steps, seconds, stopped_by, final held-out metrics
  tensorboard/                TensorBoard event files
  <stage>/checkpoints/        orbax checkpoints of the stage's full train state
  <stage>/done.json           written when a stage has finished (it is then not redone)
  <stage>/*.png               the stage's plots
  encoder/latent_stats.npz    latent normalisation (mean [d], scale C) -- PAPERS §1.4
  .lock                       held (flock) by the run using the workdir: pid, host, command
  logs/process_<i>.log        multi-process runs: each process's own log (``add_process_log``)

Record files survive kills and full disks: JSON files are replaced atomically (temp file,
fsync, rename), a torn last line of metrics.jsonl is dropped (and cut off before the next
append), and anything else that cannot be read is a ``RecordError`` that names the file and
the fix. Failures to write the workdir (read-only, no permission, disk full) are recognised
through the wrappers of orbax and tensorstore by ``workdir_write_error``.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import re
import shutil
import socket
import sys
import time
from typing import Any, Iterator

import jax
import numpy as np

from gpe_jax.errors import RecordError, UserError, WorkdirBusyError, WorkdirWriteError


class QuietLibraries(logging.Filter):
  """Drop INFO chatter of orbax/tensorstore (they log every checkpoint step at INFO).

  Unless ``verbose``, records of a failed write (a full disk, a read-only file system) lose
  their traceback: each of orbax's background threads logs the same failure with a long one,
  and the command line reports it as one paragraph. asyncio's 'exception was never retrieved'
  for such a failure (logged when orbax's futures are collected, at exit) is dropped, and so
  is orbax's error record of a Ctrl-C / SIGTERM that lands while it waits for a save (the
  interruption is reported by the command line).
  """

  def __init__(self, verbose: bool = False):
    super().__init__()
    self.verbose = verbose

  def filter(self, record):
    noisy = "/orbax/" in record.pathname or "/tensorstore/" in record.pathname
    exc = record.exc_info[1] if record.exc_info else None
    if exc is not None and not self.verbose:
      if isinstance(exc, KeyboardInterrupt) and noisy:
        return False
      if isinstance(exc, Exception) and workdir_write_error(exc) is not None:
        if record.name == "asyncio":
          return False
        record.exc_info, record.exc_text = None, None
    return record.levelno >= logging.WARNING or not noisy


def setup_logging(verbose: bool = False) -> None:
  """INFO logging for command-line runs, without the checkpoint libraries' chatter.

  Args:
    verbose: keep the tracebacks the checkpoint libraries attach to write failures.
  """
  logging.getLogger().setLevel(logging.INFO)
  for handler in logging.getLogger().handlers:
    handler.addFilter(QuietLibraries(verbose))
  # jax logs every platform it probes and does not find ("Unable to initialize backend
  # 'tpu'") at INFO when its backends start, the first line of every command on a machine
  # without that accelerator. Its warnings (e.g. a GPU without a CUDA jaxlib) still show.
  if not verbose:
    logging.getLogger(_BACKEND_PROBE_LOGGER).setLevel(logging.WARNING)


_BACKEND_PROBE_LOGGER = "jax._src.xla_bridge"   # a logger name; nothing is imported from it


def is_main_process() -> bool:
  """Whether this is process 0, the one that writes the workdir's records, plots and reports
  (every process calls orbax's save and restore; each writes its own log file)."""
  return jax.process_index() == 0


PROCESS_LOG = os.path.join("logs", "process_{i}.log")


def to_log_files(message: str, level: int = logging.ERROR) -> None:
  """Write ``message`` to the log files only (``add_process_log``), e.g. the paragraph of a
  failure that is printed on stderr already."""
  record = logging.LogRecord("gpe_jax", level, __file__, 0, "%s", (message,), None)
  for handler in logging.getLogger().handlers:
    if isinstance(handler, logging.FileHandler):
      with contextlib.suppress(Exception):
        handler.handle(record)
        handler.flush()


def add_process_log(workdir: str, index: int) -> str:
  """Also log (INFO and up, timestamped) to ``workdir/logs/process_<index>.log``, appending:
  each process of a multi-process run keeps its own log beside the run's outputs.

  Returns:
    The log file's path; '' when it cannot be opened (a warning; the run goes on, logging to
    stderr only, and fails on its first real write if the workdir is not writable).
  """
  path = os.path.join(os.path.abspath(workdir), PROCESS_LOG.replace("{i}", str(int(index))))
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handler = logging.FileHandler(path)
  except OSError as e:
    logging.warning("process %d: cannot open its log file %s (%s); logging to stderr only",
                    index, path, e)
    return ""
  handler.setLevel(logging.INFO)
  handler.setFormatter(logging.Formatter(
      f"%(asctime)s process {int(index)} %(levelname)s %(name)s: %(message)s"))
  handler.addFilter(QuietLibraries())
  logging.getLogger().addHandler(handler)
  logging.info("process %d of %d: logging to %s (pid %d on %s, %d local of %d devices)",
               index, jax.process_count(), path, os.getpid(), socket.gethostname(),
               jax.local_device_count(), jax.device_count())
  return path


def to_jsonable(obj: Any) -> Any:
  """Convert numpy/jax scalars and arrays (and nested containers) to plain JSON values."""
  if isinstance(obj, dict):
    return {str(k): to_jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_jsonable(v) for v in obj]
  if isinstance(obj, (np.ndarray, jax.Array)):
    arr = np.asarray(obj)
    return arr.item() if arr.ndim == 0 else arr.tolist()
  if isinstance(obj, (np.floating, float)):
    f = float(obj)
    return f if math.isfinite(f) else str(f)
  if isinstance(obj, np.integer):
    return int(obj)
  return obj


@contextlib.contextmanager
def naming(path: str) -> Iterator[None]:
  """Give an ``OSError`` raised in the body that names no file (a failed ``write`` or
  ``flush`` on a full disk) the file ``path``, so the error message can say which."""
  try:
    yield
  except OSError as e:
    if e.filename is None and e.errno is not None:
      e.filename = os.fspath(path)
    raise


def _atomic_write(path: str, text: str) -> None:
  """Write ``text`` to ``path`` via a temp file, flush + fsync, rename (temp removed on
  failure): a kill or a full disk leaves the old file or the new one, never a torn one."""
  tmp = path + ".tmp"
  try:
    with naming(path):
      with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def write_json(path: str, obj: Any) -> None:
  """Atomic JSON write (temp file, flush + fsync, rename), process 0 only."""
  if not is_main_process():
    return
  _atomic_write(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=True))


# What deleting a record file costs, for the fix in RecordError messages.
_DELETE_HINTS = {
    "done.json": "the stage is then redone (a training stage resumes from its last checkpoint)",
    "summary.json": "each stage rewrites its entry when it next runs",
    "timing.json": "only the stage's accumulated wall time is lost",
    "config.json": "it is rewritten by the next run",
}


def read_json(path: str, default: Any = None) -> Any:
  """The JSON value in ``path``, or ``default`` when the file does not exist.

  Raises:
    RecordError: the file exists but is empty or not JSON (torn by a kill or a full disk, or
      edited); the message names the file and the fix.
  """
  if not os.path.exists(path):
    return default
  with open(path, "rb") as f:
    raw = f.read()
  if not raw.strip():
    problem = "is empty"
  else:
    try:
      return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
      problem = f"is not valid JSON ({e})"
  hint = _DELETE_HINTS.get(os.path.basename(path), "it is rewritten when its stage runs again")
  raise RecordError(
      f"The record file {path} {problem}; it was torn by a kill or a full disk, or edited. "
      f"Delete it and rerun the same command ({hint}): rm '{path}'.")


def _parse_metrics(path: str, raw: bytes) -> tuple[list[dict], int | None]:
  """Rows of metrics.jsonl bytes, and the byte offset of a torn last line (None if intact).

  Raises:
    RecordError: a line other than the last is not JSON.
  """
  lines = raw.split(b"\n")
  rows, offset, torn = [], 0, None
  last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
  for i, line in enumerate(lines):
    start, offset = offset, offset + len(line) + 1
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except (ValueError, UnicodeDecodeError) as e:
      if i == last:
        torn = start
        break
      raise RecordError(
          f"{path}, line {i + 1}: not valid JSON ({e}). Only the last line can be torn (by a "
          "kill or a full disk), so the file was edited or damaged. Delete or mend that line "
          "and rerun; deleting the whole file loses only the logged training curves.") from None
  return rows, torn


def read_metrics(workdir: str) -> list[dict]:
  """The rows of ``workdir/metrics.jsonl`` ([] when absent).

  A torn last line (a kill mid-append, a full disk) is dropped with a warning.

  Raises:
    RecordError: a line other than the last is not JSON.
  """
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path, "rb") as f:
    raw = f.read()
  rows, torn = _parse_metrics(path, raw)
  if torn is not None:
    logging.warning("%s: dropped its torn last line (%d bytes, from a kill or a full disk)",
                    path, len(raw) - torn)
  return rows


# The wall-clock columns of every metrics.jsonl row (not metrics: not sent to TensorBoard, and
# they differ between two runs that are otherwise bitwise equal).
CLOCK_KEYS = ("time", "elapsed_s")


class MetricsWriter:
  """Appends JSON lines to metrics.jsonl and scalars to TensorBoard (process 0 only).

  Every row also gets ``time`` (``time.time()``, seconds since the Unix epoch) and
  ``elapsed_s`` (seconds since this process started the row's stage: ``start(stage)``, else
  its first row).
  """

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    self._started: dict[str, float] = {}   # stage -> time.perf_counter() at its start
    self.enabled = is_main_process()
    if self.enabled:
      self.repair()

  def repair(self) -> None:
    """Mend a torn tail so the next row starts on a line of its own.

    A last line that is not JSON is cut off (with a warning); a complete last row that lacks
    its newline gets one.
    """
    if not os.path.exists(self.path):
      return
    with open(self.path, "rb") as f:
      raw = f.read()
    _, torn = _parse_metrics(self.path, raw)
    if torn is not None:
      logging.warning("%s: cut off its torn last line (%d bytes, from a kill or a full disk) "
                      "before appending", self.path, len(raw) - torn)
      with naming(self.path), open(self.path, "r+b") as f:
        f.truncate(torn)
        f.flush()
        os.fsync(f.fileno())
    elif raw and not raw.endswith(b"\n"):
      with naming(self.path), open(self.path, "ab") as f:
        f.write(b"\n")

  def _tensorboard(self):
    if self._tb is None and self.enabled:
      from tensorboardX import SummaryWriter  # light, no TensorFlow needed
      self._tb = SummaryWriter(os.path.join(self.workdir, "tensorboard"), flush_secs=10)
    return self._tb

  def truncate(self, stage: str, after_step: int) -> None:
    """Drop rows of ``stage`` logged after ``after_step`` (a resumed run re-logs them)."""
    if not self.enabled or not os.path.exists(self.path):
      return
    rows = read_metrics(self.workdir)
    keep = [r for r in rows if not (r.get("stage") == stage and r.get("step", 0) > after_step)]
    if len(keep) != len(rows):
      _atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in keep))

  def start(self, stage: str) -> None:
    """Start the ``elapsed_s`` clock of ``stage`` (the train loop calls this on entry)."""
    self._started[stage] = time.perf_counter()

  def write(self, stage: str, step: int, values: dict) -> None:
    if not self.enabled:
      return
    started = self._started.setdefault(stage, time.perf_counter())
    row = {"stage": stage, "step": int(step)}
    row.update(to_jsonable(values))
    row["time"] = time.time()
    row["elapsed_s"] = round(time.perf_counter() - started, 3)
    with naming(self.path), open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    tb = self._tensorboard()
    for k, v in row.items():
      if isinstance(v, (int, float)) and k != "step" and k not in CLOCK_KEYS:
        tb.add_scalar(f"{stage}/{k}", v, int(step))

  def close(self) -> None:
    """Flush and close TensorBoard. A failed flush (disk full) loses only the TensorBoard
    events (metrics.jsonl holds the same rows) and is a warning."""
    tb, self._tb = self._tb, None
    if tb is None:
      return
    try:
      tb.close()
    except OSError as e:
      logging.warning("TensorBoard events in %s could not be written: %s",
                      os.path.join(self.workdir, "tensorboard"), e)
      _abandon_tensorboard(tb)


def _abandon_tensorboard(tb) -> None:
  """Stop a tensorboardX writer whose file cannot be flushed, so its exit hook and worker
  thread do not fail again (with tracebacks) when the interpreter exits."""
  for file_writer in list((getattr(tb, "all_writers", None) or {}).values()):
    events = getattr(file_writer, "event_writer", None)
    with contextlib.suppress(Exception):  # tensorboardX internals; best effort only
      if events._worker is not None:
        events._worker.stop()
    with contextlib.suppress(Exception):
      events._ev_writer.close()
    with contextlib.suppress(Exception):
      events._closed = True  # its atexit cleanup then does nothing


# --------------------------------------------------------------------------- workdir failures

# errno -> what happened, for failures to write the workdir.
_WRITE_ERRNOS = {
    errno.ENOSPC: "the disk is full (No space left on device)",
    errno.EDQUOT: "the disk quota is exceeded (Disk quota exceeded)",
    errno.EROFS: "the file system is read-only (Read-only file system)",
    errno.EACCES: "permission is denied (Permission denied)",
    errno.EPERM: "the operation is not permitted (Operation not permitted)",
}
# The same failures as message text, for wrappers (orbax, tensorstore) that keep no errno.
_WRITE_MESSAGES = {
    "no space left on device": errno.ENOSPC,
    "disk quota exceeded": errno.EDQUOT,
    "read-only file system": errno.EROFS,
    "permission denied": errno.EACCES,
    "operation not permitted": errno.EPERM,
}


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
  """``exc``, its causes and contexts, and the members of exception groups, each once."""
  seen, todo = set(), [exc]
  while todo:
    e = todo.pop(0)
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    yield e
    todo += [e.__cause__, e.__context__] + list(getattr(e, "exceptions", ()) or ())


def _write_failure(e: BaseException) -> tuple[int, str | None] | None:
  """(errno, path or None) when ``e`` itself is a failure to write, else None."""
  if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS:
    return e.errno, os.fspath(e.filename) if e.filename else None
  text = str(e)
  code = next((c for m, c in _WRITE_MESSAGES.items() if m in text.lower()), None)
  if code is None:
    return None
  m = re.search(r"""["'](/[^"'\s]+)["']""", text)  # tensorstore: local file "/path"
  # an orbax checkpoint is written under STEP.orbax-checkpoint-tmp/...: name the step's folder
  path = re.sub(r"\.orbax-checkpoint-tmp.*$", "", m.group(1)) if m else None
  return code, path


def workdir_write_error(exc: BaseException, workdir: str = "") -> WorkdirWriteError | None:
  """``exc`` as a ``WorkdirWriteError`` when it (or anything in its chain) is a failure to
  write: a read-only file system, no permission, a full disk or quota; else None.

  The chain (``__cause__``, ``__context__``, exception groups) is searched for an ``OSError``
  with one of those errnos or, as orbax and tensorstore keep only text, for their messages
  ('No space left on device', 'Read-only file system', ...). The deepest match, the first
  failure, is reported (later ones are often cleanup failing the same way).

  Args:
    exc: the exception that stopped the run.
    workdir: the run's workdir, named in the message when the failing path is unknown.
  """
  if isinstance(exc, WorkdirWriteError):
    return exc
  found = [f for f in map(_write_failure, _exception_chain(exc)) if f is not None]
  if not found:
    return None
  code, path = found[-1]
  path = path or next((p for _, p in reversed(found) if p), None)
  root = os.path.realpath(workdir) if workdir else ""
  outside = bool(path and root) and not os.path.realpath(path).startswith(root + os.sep) \
      and os.path.realpath(path) != root
  where = f"writing {path}" if path else (
      f"writing to the workdir {workdir}" if workdir else "writing a file")
  happened = _WRITE_ERRNOS[code]
  if code in (errno.ENOSPC, errno.EDQUOT):
    fix = ("Free space (or move the workdir to a larger disk) and rerun the same command to "
           "resume from the last checkpoint; finished stages are kept.")
  elif outside:
    where = f"{'writing' if code == errno.EROFS else 'accessing'} {path} (outside the workdir)"
    fix = ("Make it writable, or point the config value or environment variable that names it "
           "elsewhere, and rerun the same command; finished stages are kept.")
  else:
    fix = ("Choose a writable --workdir (or make this one writable) and rerun the same "
           "command; finished stages in a workdir are kept.")
  err = WorkdirWriteError(f"The run stopped {where}: {happened}. {fix}")
  err.errno, err.path = code, path  # not .filename: str(err) stays the message alone
  return err


# --------------------------------------------------------------------------- the workdir lock

LOCK_FILE = ".lock"
_held: dict[str, list] = {}  # lock path -> [file descriptor, nesting depth]


def _lock_holder(path: str) -> str:
  """Who holds the lock at ``path``, in words, from the file the holder wrote."""
  try:
    with open(path) as f:
      info = json.loads(f.read() or "{}")
  except (OSError, ValueError):
    info = {}
  if not info:
    return "another process (it has not yet written its pid)"
  since = info.get("since")
  since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if since else "?"
  return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, since {since}, "
          f"running {info.get('what', '?')} {info.get('args', '')}".rstrip())


@contextlib.contextmanager
def workdir_lock(workdir: str, what: str = "a run") -> Iterator[None]:
  """Hold ``workdir/.lock`` (``flock``) for the body, so one run at a time uses the workdir.

  Only process 0 of a multi-process run takes it. The holder writes its pid, host, start time
  and command line into the file. A nested acquire of the same workdir by the holding process
  is a no-op (counted). A lock file left by a killed process does not block: the kernel drops
  the lock of a process that dies, and the next run takes it and overwrites the info.

  Args:
    workdir: the folder to lock (created when absent).
    what: what holds it, in words, for the message another process shows.

  Raises:
    WorkdirBusyError: another live process holds the lock (raised at once, no waiting).
    WorkdirWriteError: the lock file cannot be created (read-only workdir, disk full, ...).
  """
  if not is_main_process():
    yield
    return
  path = os.path.join(os.path.realpath(workdir), LOCK_FILE)
  if path in _held:
    _held[path][1] += 1
    try:
      yield
    finally:
      _held[path][1] -= 1
    return
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    err = workdir_write_error(e, workdir)
    if err is None:
      raise
    raise err from e
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise WorkdirBusyError(
          f"The workdir {workdir} is in use by {_lock_holder(path)}. Wait for that run to "
          f"finish (or stop it), or pass another --workdir. (Lock file: {path}.)") from None
    except OSError as e:
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        raise
      logging.warning("the file system of %s cannot lock files (%s); running without the "
                      "workdir lock: do not start a second run in it", workdir, e)
      yield
      return
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
            "what": what, "args": " ".join(sys.argv[1:]), "command": " ".join(sys.argv)}
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, json.dumps(info).encode(), 0)
    except OSError as e:  # a full disk: the lock is held all the same; the info is optional
      logging.warning("could not write the holder's info into %s: %s", path, e)
    _held[path] = [fd, 1]
    try:
      yield
    finally:
      del _held[path]
      fcntl.flock(fd, fcntl.LOCK_UN)
  finally:
    os.close(fd)


# --------------------------------------------------------------------------- a failed start

# What a command writes into its workdir before its first stage does: nothing else in a
# workdir the command created means work was done there, and the workdir is kept.
_BEFORE_ANY_STAGE = ("config.json", LOCK_FILE, os.path.dirname(PROCESS_LOG))
_PROCESS_LOG_NAME = re.compile(r"^process_\d+\.log$")


def _holds_only_startup_files(path: str) -> bool:
  """Whether the folder ``path`` holds nothing but ``_BEFORE_ANY_STAGE`` (logs/ holding
  only process logs)."""
  try:
    names = os.listdir(path)
    logs_dir = os.path.join(path, os.path.dirname(PROCESS_LOG))
    process_logs = os.listdir(logs_dir) if os.path.isdir(logs_dir) else []
  except OSError:
    return False
  if any(n not in _BEFORE_ANY_STAGE for n in names):
    return False
  if os.path.lexists(logs_dir) and not os.path.isdir(logs_dir):
    return False
  return all(_PROCESS_LOG_NAME.match(n) for n in process_logs)


def _is_process_zero() -> bool:
  """Process 0, without starting JAX's backends when no multi-process run was joined."""
  return not jax.distributed.is_initialized() or jax.process_index() == 0


@contextlib.contextmanager
def removed_if_nothing_started(workdir: str) -> Iterator[None]:
  """Remove again a workdir that the body created, when the body fails with a user error
  (``errors.UserError``, Ctrl-C, a failed write) before any stage wrote to it: a config
  that fails validation, absent data, a stop during start-up, a full disk.

  A workdir that existed when the body began is never touched; a new one is removed only
  while it holds nothing but what a command writes before its first stage: config.json, the
  lock file and logs/ with process logs (anything else, e.g. a stage's folder or
  metrics.jsonl, keeps it whole). A bug (any other exception) keeps it for inspection.
  Process 0 alone removes it.

  Args:
    workdir: the command's workdir ('' = none: nothing is done).
  """
  path = os.path.abspath(workdir) if workdir else ""
  existed = not path or os.path.lexists(path)
  try:
    yield
  except BaseException as e:
    user_facing = isinstance(e, (UserError, KeyboardInterrupt)) or (
        isinstance(e, Exception) and workdir_write_error(e) is not None)
    if user_facing and not existed and _is_process_zero() and _holds_only_startup_files(path):
      shutil.rmtree(path, ignore_errors=True)
      if not os.path.exists(path):
        logging.info("removed %s: the run stopped before any stage started", path)
    raise
