"""Mesh, shardings and multi-host helpers.

One mesh axis, "data": the batch is sharded over it and parameters are replicated. Train steps
are plain ``jax.jit`` functions with explicit in/out shardings (no pmap), so XLA inserts the
collectives the pairwise GME term needs, and BatchNorm statistics are over the global batch:
one device and eight devices compute the same numbers.

Multi-process runs (TPU pods, multi-node GPU, ``launch/local.sh``): ``distributed_settings``
reads ``--coordinator_address`` / ``--num_processes`` / ``--process_id`` /
``--distributed_init_timeout`` / ``--heartbeat_timeout`` or their ``GPE_JAX_*`` environment
variables (``ENV_VARS``), ``initialize`` joins the run (``jax.distributed.initialize``), and
``PeerWatch`` ends every process (exit status 1, one paragraph) when one of them dies or stops
on an error, instead of leaving the others waiting in a collective.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import socket
import sys
import threading
import time
from typing import Iterator

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P


from gpe_jax.errors import ConfigError, DistributedError, UserError  # noqa: F401  (re-exported)


# --------------------------------------------------------------------------- multi-process start

# The multi-process settings, from flags or (where a flag is not given) these environment
# variables; a flag given on the command line wins.
ENV_VARS = {
    "coordinator_address": "GPE_JAX_COORDINATOR_ADDRESS",
    "num_processes": "GPE_JAX_NUM_PROCESSES",
    "process_id": "GPE_JAX_PROCESS_ID",
    "distributed_init_timeout": "GPE_JAX_DISTRIBUTED_INIT_TIMEOUT",
    "heartbeat_timeout": "GPE_JAX_HEARTBEAT_TIMEOUT",
}
# The port of the processes' own link (``PeerWatch``); 0 turns it off. Default: the
# coordinator's port + 1.
WATCHDOG_PORT_ENV = "GPE_JAX_WATCHDOG_PORT"
DEFAULT_INIT_TIMEOUT = 300       # s; cold starts of large slices can need more
DEFAULT_HEARTBEAT_TIMEOUT = 100  # s; jax's default
EXIT_PEER_LOST = 1
_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9_.-]*):([0-9]{1,5})$")
_LOCAL_HOSTS = ("127.0.0.1", "localhost")


@dataclasses.dataclass(frozen=True)
class Distributed:
  """How this process joins a multi-process run.

  Attributes:
    coordinator_address: '' (one process), 'auto' (jax's cluster detection: Cloud TPU pods,
      SLURM under srun, Open MPI) or 'host:port' of process 0.
    num_processes, process_id: None where jax detects them ('auto').
    init_timeout: seconds to wait for every process to join.
    heartbeat_timeout: seconds after which a silent process counts as dead.
    detected: the cluster found in the environment when no address was given ('' none).
  """
  coordinator_address: str = ""
  num_processes: int | None = None
  process_id: int | None = None
  init_timeout: int = DEFAULT_INIT_TIMEOUT
  heartbeat_timeout: int = DEFAULT_HEARTBEAT_TIMEOUT
  detected: str = ""


def detect_cluster(environ=None) -> str:
  """The multi-process cluster this process was started in ('' when none): 'SLURM' (a job
  step of several tasks, i.e. under ``srun``), 'Open MPI' (``mpirun -n N``, N > 1) or 'Cloud
  TPU pod' (several TPU workers). Read from the environment only (no network)."""
  env = os.environ if environ is None else environ

  def count(name: str) -> int:
    try:
      return int(env.get(name, "") or 0)
    except ValueError:
      return 0
  if "SLURM_JOB_ID" in env and "SLURM_PROCID" in env and count("SLURM_STEP_NUM_TASKS") > 1:
    return "SLURM"
  if count("OMPI_COMM_WORLD_SIZE") > 1:
    return "Open MPI"
  if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]) > 1:
    return "Cloud TPU pod"
  return ""


def parse_address(address: str, where: str = "--coordinator_address") -> tuple[str, int]:
  """(host, port) of 'host:port' ('[v6]:port' for IPv6); ConfigError when malformed."""
  m = _ADDRESS.match(address)
  if not m or not 1 <= int(m.group(2)) <= 65535:
    raise ConfigError(
        f"{where}={address!r} is not host:port of process 0 (e.g. 10.0.0.1:8476, or "
        "127.0.0.1:8476 for processes on this machine; a port in 1-65535), nor 'auto' "
        "(jax's own detection on Cloud TPU pods, SLURM under srun and Open MPI), nor '' (one "
        "process).")
  return m.group(1).strip("[]"), int(m.group(2))


def _setting(name: str, given: dict, env, kind):
  """The value of setting ``name``: the flag if given, else its environment variable, else
  None; ``kind`` int or str."""
  if name in given and given[name] is not None:
    return kind(given[name]), f"--{name}"
  var = ENV_VARS[name]
  raw = env.get(var, "")
  if raw.strip() == "":
    return None, var
  if kind is str:
    return raw.strip(), var
  try:
    return int(raw), var
  except ValueError:
    raise ConfigError(f"The environment variable {var}={raw!r} is not an integer; set it "
                      f"to a whole number or unset it (or pass --{name}).") from None


def distributed_settings(given: dict, environ=None) -> Distributed:
  """The multi-process settings from the flags given on the command line (``given``: flag
  name -> value, only those given) and the ``GPE_JAX_*`` environment variables (``ENV_VARS``).

  Raises:
    ConfigError: a malformed address, a process id outside [0, num_processes), a count or
      timeout below 1, a non-integer environment variable, or an address without the
      process count and id it needs.
  """
  env = os.environ if environ is None else environ
  address, where_a = _setting("coordinator_address", given, env, str)
  nproc, where_n = _setting("num_processes", given, env, int)
  pid, where_p = _setting("process_id", given, env, int)
  init_timeout, where_i = _setting("distributed_init_timeout", given, env, int)
  heartbeat, where_h = _setting("heartbeat_timeout", given, env, int)
  for value, where in ((init_timeout, where_i), (heartbeat, where_h)):
    if value is not None and value < 1:
      raise ConfigError(f"{where}={value} must be a number of seconds >= 1.")
  if nproc is not None and nproc < 1:
    raise ConfigError(f"{where_n}={nproc} must be >= 1 (the number of processes of the run).")
  if pid is not None and pid < 0:
    raise ConfigError(f"{where_p}={pid} must be >= 0 (this process's index).")
  if nproc is not None and pid is not None and pid >= nproc:
    raise ConfigError(
        f"{where_p}={pid} is not below {where_n}={nproc}: the processes of a run are "
        f"numbered 0 to {nproc - 1}. Give each process its own index in that range (process "
        "0 runs the coordinator).")
  address = address or ""
  detected = ""
  if not address:
    detected = detect_cluster(env)
    if detected:
      address = "auto"
    elif (nproc or 1) > 1:
      raise ConfigError(
          f"{where_n}={nproc} needs --coordinator_address (host:port of process 0, e.g. "
          f"127.0.0.1:8476 on one machine, or 'auto' on Cloud TPU pods, SLURM and Open MPI); "
          "launch/local.sh starts several local processes with all three set.")
  elif address != "auto":
    parse_address(address, where_a)
    missing = [w for v, w in ((nproc, "--num_processes"), (pid, "--process_id")) if v is None]
    if missing:
      raise ConfigError(
          f"{where_a}={address} needs {' and '.join(missing)} as well (or "
          f"{', '.join(ENV_VARS[m[2:]] for m in missing)}): every process is told the number "
          "of processes and its own index. On Cloud TPU pods, SLURM (srun) and Open MPI pass "
          "--coordinator_address=auto to have them detected.")
  return Distributed(address, nproc, pid, init_timeout or DEFAULT_INIT_TIMEOUT,
                     heartbeat or DEFAULT_HEARTBEAT_TIMEOUT, detected)


def _join_error(settings: Distributed, exc: BaseException) -> UserError:
  """The paragraph for a failed ``jax.distributed.initialize``."""
  first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
  if settings.coordinator_address == "auto":
    return ConfigError(
        f"--coordinator_address=auto: jax could not work out this process's place in a "
        f"cluster ({first}). 'auto' works on Cloud TPU pods, under srun on SLURM and under "
        "mpirun with Open MPI; elsewhere pass host:port of process 0 with --num_processes and "
        "--process_id (launch/local.sh does so for local processes).")
  text = str(exc).lower()
  if "address already in use" in text or "failed to add port" in text or "bind" in text:
    return DistributedError(
        f"Process 0 could not start the coordinator on {settings.coordinator_address}: the "
        f"port is in use or the address is not this machine's ({first}). Choose a free port "
        "(launch/local.sh picks one) and pass the same --coordinator_address to every "
        "process.")
  return DistributedError(
      f"Process {settings.process_id} of {settings.num_processes} could not join the run "
      f"coordinated at {settings.coordinator_address} within {settings.init_timeout} s "
      f"({first}). Start all {settings.num_processes} processes (ids 0 to "
      f"{settings.num_processes - 1}, each once) with the same --coordinator_address and "
      "--num_processes, check that process 0's host and port are reachable from every "
      "process, or raise --distributed_init_timeout for slow starts.")


def initialize(settings: Distributed) -> bool:
  """Join the multi-process run that ``settings`` describe (``jax.distributed.initialize``,
  before any other JAX call); returns whether it is one. With an explicit host:port and more
  than one process, also start ``PeerWatch``, so a process that dies or stops with an error
  ends the others at once (exit status 1).

  Raises:
    ConfigError: 'auto' found no cluster.
    DistributedError: the processes could not join within ``init_timeout``, or process 0
      could not bind the coordinator's port.
  """
  if not settings.coordinator_address:
    return False
  kwargs = dict(initialization_timeout=int(settings.init_timeout),
                heartbeat_timeout_seconds=int(settings.heartbeat_timeout),
                num_processes=settings.num_processes, process_id=settings.process_id)
  host = port = None
  if settings.coordinator_address != "auto":
    host, port = parse_address(settings.coordinator_address)
    kwargs["coordinator_address"] = settings.coordinator_address
    if host in _LOCAL_HOSTS:   # local processes only: do not listen on every interface
      kwargs["coordinator_bind_address"] = f"127.0.0.1:{port}"
  elif settings.detected:
    logging.info("distributed: %s detected; joining with jax's cluster detection",
                 settings.detected)
  try:
    jax.distributed.initialize(**kwargs)
  except RuntimeError as e:
    if "must be called before" in str(e) or "only be called once" in str(e):
      raise   # a bug: JAX was used before the command line set it up
    raise _join_error(settings, e) from e
  except (ValueError, TypeError) as e:
    raise _join_error(settings, e) from e
  except Exception as e:  # jaxlib's XlaRuntimeError and kin (deadline exceeded, unavailable)
    raise _join_error(settings, e) from e
  logging.info("distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  if host is not None and jax.process_count() > 1:
    _start_peer_watch(host, port, settings)
  return True


def maybe_initialize_distributed(coordinator_address: str = "", num_processes: int | None = None,
                                 process_id: int | None = None,
                                 init_timeout: int | None = None,
                                 heartbeat_timeout: int | None = None) -> bool:
  """``initialize`` from explicit values (None or '' = not given: the ``GPE_JAX_*``
  environment variables, then the defaults, apply)."""
  given = {"coordinator_address": coordinator_address or None, "num_processes": num_processes,
           "process_id": process_id, "distributed_init_timeout": init_timeout,
           "heartbeat_timeout": heartbeat_timeout}
  return initialize(distributed_settings({k: v for k, v in given.items() if v is not None}))


def sync_processes(tag: str) -> None:
  """A barrier of all processes (no-op with one): after process 0 has written a record the
  others read, e.g. a stage's done record and manifest."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(tag)


# --------------------------------------------------------------------------- the peer watch


class PeerWatch:
  """The processes' own link, beside jax's: process 0 listens, every other process connects.

  A process that ends without saying goodbye (killed, crashed) closes its connection, which
  its peer sees at once, even while its main thread waits in a collective that would never
  return; a process that stops with an error says so. Either way the peers print one
  paragraph and exit with status 1 (``EXIT_PEER_LOST``) instead of failing in a collective
  and then waiting in jax's shutdown barrier until its heartbeat timeout aborts them. Process
  0 relays: when a peer is lost it stops, and the others see it stop.

  A peer that says nothing for 80% of the heartbeat timeout (it is stopped or hung, or its host
  is unreachable) counts as lost too, shortly before jax's own heartbeat would abort this
  process with a stack dump.

  Messages are text lines: 'hello I' (process I connected), 'ping' (every second), 'bye'
  (finished normally), 'fail' (stopping on an error), 'lost J' (process 0 relays that process
  J was lost). On process 0, which commits checkpoints, a lost peer waits for a checkpoint
  write in progress (``guard``), for at most half the heartbeat timeout (before jax's own
  heartbeat ends the process), so a checkpoint that every process wrote is committed.

  When process 0 itself dies, jax also ends the other processes at once (its coordination
  service lives in process 0): whichever notices first reports, this paragraph or jax's
  fatal log line; either way they stop within about a second.
  """

  def __init__(self, host: str, port: int, process_id: int, num_processes: int,
               connect_timeout: float, heartbeat_timeout: float):
    self.host, self.port = host, port
    self.process_id, self.num_processes = process_id, num_processes
    self.connect_timeout, self.heartbeat_timeout = connect_timeout, heartbeat_timeout
    self.log_hint = ""      # the processes' log file, '{i}' for the index, for the message
    self._conns: dict[int, socket.socket] = {}
    self._finished: set[int] = set()
    self._lock = threading.Lock()
    self._leaving = False   # this process is stopping (its own error, or a lost peer)
    self._guards = 0
    self._guard_cv = threading.Condition()
    self._server: socket.socket | None = None
    self._seen: dict[int, float] = {}   # peer -> when it was last heard from (monotonic)
    self._own_error = threading.Event()   # set when this process stops on its own error
    # A peer silent this long is taken as stuck (stopped, hung, its host unreachable): a
    # little before jax's own heartbeat would abort this process with a stack dump.
    self.silence = max(5.0, 0.8 * heartbeat_timeout)

  # -- set-up
  def start(self) -> None:
    if self.process_id == 0:
      self._server = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET,
                                   socket.SOCK_STREAM)
      self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
      self._server.bind(("127.0.0.1" if self.host in _LOCAL_HOSTS else "", self.port))
      self._server.listen(self.num_processes)
      threading.Thread(target=self._accept, name="gpe_jax-peer-watch", daemon=True).start()
    else:
      threading.Thread(target=self._connect, name="gpe_jax-peer-watch", daemon=True).start()
    threading.Thread(target=self._ping, name="gpe_jax-peer-ping", daemon=True).start()

  def _ping(self) -> None:
    """Every second: tell the peers this process is alive, and look for silent peers."""
    while True:
      time.sleep(1.0)
      self._send_all("ping")
      now = time.monotonic()
      with self._lock:
        silent = [(now - t, p) for p, t in self._seen.items()
                  if p in self._conns and p not in self._finished and now - t > self.silence]
      if silent:
        seconds, peer = max(silent)
        self._lost(peer, failed=False, silent=seconds)
        return

  def _accept(self) -> None:
    while len(self._conns) + len(self._finished) < self.num_processes - 1:
      try:
        conn, _ = self._server.accept()
      except OSError:
        return
      try:
        conn.settimeout(self.connect_timeout)
        line = b""
        while not line.endswith(b"\n") and len(line) < 64:   # unbuffered: nothing more is read
          byte = conn.recv(1)
          if not byte:
            break
          line += byte
        conn.settimeout(None)
        words = line.decode(errors="replace").split()
        peer = int(words[1]) if len(words) == 2 and words[0] == "hello" else -1
      except (OSError, ValueError):
        peer = -1
      if not 0 < peer < self.num_processes:
        conn.close()
        continue
      with self._lock:
        self._conns[peer] = conn
        self._seen[peer] = time.monotonic()
      threading.Thread(target=self._listen, args=(peer, conn), daemon=True).start()

  def _connect(self) -> None:
    deadline = time.monotonic() + self.connect_timeout
    while True:
      try:
        conn = socket.create_connection((self.host, self.port), timeout=5)
        conn.settimeout(None)
        conn.sendall(f"hello {self.process_id}\n".encode())
        break
      except OSError as e:
        if time.monotonic() > deadline:
          logging.warning("peer watch: cannot reach process 0 at %s:%d (%s); a lost peer is "
                          "then noticed by jax's heartbeat only", self.host, self.port, e)
          return
        time.sleep(0.2)
    with self._lock:
      self._conns[0] = conn
      self._seen[0] = time.monotonic()
    self._listen(0, conn)

  def _listen(self, peer: int, conn: socket.socket) -> None:
    failed, who = False, peer
    try:
      for raw in conn.makefile("rb"):
        msg = raw.decode(errors="replace").strip()
        with self._lock:
          self._seen[peer] = time.monotonic()
        if msg == "bye":
          with self._lock:
            self._finished.add(peer)
        elif msg == "fail":
          failed = True
          break
        elif msg.startswith("lost "):   # process 0 relays the loss of another process
          with contextlib.suppress(ValueError, IndexError):
            who = int(msg.split()[1])
          break
    except OSError:
      pass
    with self._lock:
      self._conns.pop(peer, None)
      if peer in self._finished and not failed and who == peer:
        return
    self._lost(who, failed)

  # -- endings
  def _send_all(self, msg: str) -> None:
    with self._lock:
      conns = list(self._conns.values())
    for conn in conns:
      with contextlib.suppress(OSError):
        conn.sendall(f"{msg}\n".encode())

  def finished(self) -> None:
    """This process finished its work: its peers no longer expect anything of it."""
    self._send_all("bye")

  def failing(self, linger: float = 3.0) -> None:
    """This process stops on an error it reports itself: its peers stop too. Process 0 then
    waits (``linger`` s at most) for them to go, so each can report an error of its own
    before the coordination service, which lives in process 0, ends (jax aborts the
    processes that outlive it)."""
    self._own_error.set()
    self._leaving = True
    self._send_all("fail")
    deadline = time.monotonic() + linger
    while self.process_id == 0 and self._conns and time.monotonic() < deadline:
      time.sleep(0.05)

  @contextlib.contextmanager
  def guard(self) -> Iterator[None]:
    """Hold back an exit for a lost peer while the body (a checkpoint write) runs."""
    with self._guard_cv:
      self._guards += 1
    try:
      yield
    finally:
      with self._guard_cv:
        self._guards -= 1
        self._guard_cv.notify_all()

  def _lost(self, peer: int, failed: bool, silent: float = 0.0) -> None:
    with self._lock:
      if self._leaving:
        return
      self._leaving = True   # one report, even when several peers are lost at once
    if failed and self._own_error.wait(2.0):
      return   # this process hit an error of its own (most often the same one): it reports it
    if self.process_id == 0:   # the primary commits checkpoints: let one in progress finish
      with self._guard_cv:     # (half the heartbeat timeout at most)
        self._guard_cv.wait_for(lambda: self._guards == 0, timeout=self.heartbeat_timeout / 2)
    me, n = self.process_id, self.num_processes
    hint = f" (see its log, {self.log_hint.replace('{i}', str(peer))})" if self.log_hint else ""
    relayed = peer
    if failed:
      what = f"process {peer} of {n} stopped on an error{hint}"
      fix = "Fix what its message says, then rerun the same command on every process"
    elif peer == me:   # process 0 relayed that it lost this very process
      what = (f"process 0 of {n} stopped the run: it had no word from this process (process "
              f"{me}) for too long (was it stopped or hung?)")
      fix = "Rerun the same command on every process"
    elif silent:
      what = (f"process {peer} of {n} has not responded for {silent:.0f} s: it is stopped or "
              f"hung, or its host is unreachable{hint}")
      fix = ("Stop what is left of the run, then rerun the same command on every process "
             "(raise --heartbeat_timeout if a process is only slow)")
    else:
      what = (f"process {peer} of {n} ended without finishing: it was killed, crashed or lost "
              f"its host{hint}")
      fix = "Rerun the same command on every process"
    message = (f"{what}, so process {me} stops too instead of waiting for it in a collective. "
               f"{fix}: each training stage resumes from its last checkpoint and finished "
               "stages are kept.")
    self._send_all("fail" if failed else f"lost {relayed}")
    with contextlib.suppress(Exception):
      sys.stdout.flush()
      print(f"\ngpe_jax error (PeerLost): {message}", file=sys.stderr, flush=True)
      from gpe_jax import logs
      logs.to_log_files(f"gpe_jax error (PeerLost): {message}")
    os._exit(EXIT_PEER_LOST)


_peer_watch: PeerWatch | None = None


def _start_peer_watch(host: str, port: int, settings: Distributed) -> None:
  global _peer_watch
  raw = os.environ.get(WATCHDOG_PORT_ENV, "").strip()
  try:
    watch_port = int(raw) if raw else port + 1
  except ValueError:
    raise ConfigError(f"{WATCHDOG_PORT_ENV}={raw!r} is not a port number (0 turns the peer "
                      "watch off).") from None
  if watch_port <= 0:
    return
  watch = PeerWatch(host, watch_port, jax.process_index(), jax.process_count(),
                    connect_timeout=settings.init_timeout,
                    heartbeat_timeout=settings.heartbeat_timeout)
  try:
    watch.start()
  except OSError as e:
    logging.warning("peer watch: cannot listen on port %d (%s; set %s to a free port); a lost "
                    "peer is then noticed by jax's heartbeat only (%d s)", watch_port, e,
                    WATCHDOG_PORT_ENV, settings.heartbeat_timeout)
    return
  _peer_watch = watch


def peer_watch() -> PeerWatch | None:
  """The running ``PeerWatch`` (None in a single-process run or when it is off)."""
  return _peer_watch


def process_finished() -> None:
  """Tell the other processes that this one finished its work normally."""
  if _peer_watch is not None:
    _peer_watch.finished()


def process_failing() -> None:
  """Tell the other processes that this one stops on an error (they stop too)."""
  if _peer_watch is not None:
    _peer_watch.failing()


@contextlib.contextmanager
def checkpoint_guard() -> Iterator[None]:
  """Around a checkpoint write: a lost peer ends this process only after the body (waiting
  at most half the heartbeat timeout), so a checkpoint every process wrote is committed."""
  if _peer_watch is None:
    yield
    return
  with _peer_watch.guard():
    yield


def make_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D ("data",) mesh over the first ``num_devices`` devices (0 = all).

  Auto axis types: the compiler propagates shardings (JAX 0.10 defaults to Explicit).
  """
  devices = jax.devices()
  n = len(devices) if num_devices <= 0 else num_devices
  if n > len(devices):
    raise ConfigError(f"config.num_devices={num_devices} but only {len(devices)} devices are "
                      f"visible ({devices[0].platform}); lower --config.num_devices or set 0 "
                      "to use all of them.")
  if n < len(devices) and jax.process_count() > 1:
    raise ConfigError(f"config.num_devices={num_devices} in a run of {jax.process_count()} "
                      f"processes: a multi-process run uses all {len(devices)} devices (each "
                      "process feeds its own); set --config.num_devices=0.")
  return Mesh(np.asarray(devices[:n]), ("data",), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "config.data.batch_size") -> None:
  """The global batch must split evenly over the mesh and over the processes."""
  n = mesh.devices.size
  if batch_size % n:
    raise ConfigError(f"{what}={batch_size} is not divisible by the {n} devices of the mesh; "
                      f"choose a multiple of {n} (e.g. --config.data.batch_size="
                      f"{max(n, batch_size // n * n)}) or run on fewer devices with "
                      f"--config.num_devices.")


def to_global(batch: dict, mesh: Mesh) -> dict:
  """Host arrays holding this process's slice of a batch -> global arrays sharded on "data"."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}

