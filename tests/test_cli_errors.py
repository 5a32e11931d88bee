"""Failures a user can fix are one paragraph, exit 2 (130 when interrupted), no traceback: bad
command lines and configs, busy / read-only / full workdirs, Ctrl-C and SIGTERM; and the record
files and the workdir lock of ``gpe_jax.logs`` behind them."""
import contextlib
import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, cli_env, run_cli

from gpe_jax import cli, errors, logs

SMOKE = "--config=configs/default.py:smoke"


def run_module(module, *args, timeout=300):
  """Run ``python -m module ARGS`` from the repo root; returns CompletedProcess."""
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=cli_env(),
                        capture_output=True, text=True, timeout=timeout)


def paragraph(res, code, *words):
  """The one error paragraph of a finished command, checked: exit status ``code``, no
  traceback, exactly one 'gpe_jax error' paragraph at the end of stderr (no blank line in it),
  containing every one of ``words`` (case-insensitive)."""
  err = res.stderr
  assert res.returncode == code, (res.returncode, err[-3000:])
  assert "Traceback" not in err, err[-3000:]
  assert err.count("gpe_jax error (") == 1, err[-3000:]
  text = err[err.index("gpe_jax error ("):].strip()
  assert "\n\n" not in text, text
  for word in words:
    assert word.lower() in text.lower(), (word, text)
  return text


# --------------------------------------------------------------------------- bad command lines


@pytest.mark.parametrize("args, words", [
    ([SMOKE, "--config.data.bacth_size=8"],
     ["ConfigError", "bacth_size", 'Did you mean "batch_size"']),
    (["--config=configs/nope.py"], ["ConfigError", "configs/nope.py", "No such file"]),
    (["--config=configs/default.py:smok"],
     ["ConfigError", "'smok'", "configs/NAME.py:smoke"]),
    ([SMOKE, "--config.data.batch_size=abc"], ["ConfigError", "batch_size=abc", "int"]),
    ([SMOKE, "--config.encoder.lr=-1"], ["ConfigError", "config.encoder.lr=-1.0", "> 0"]),
], ids=["mistyped_key", "missing_config_file", "bad_config_argument", "bad_value_type",
        "invalid_value"])
def test_bad_config_is_one_paragraph(tmp_path, args, words):
  wd = tmp_path / "wd"
  paragraph(run_cli(*args, f"--workdir={wd}", timeout=120), 2, *words)
  assert not wd.exists()  # failed before anything was written


def test_missing_config_flag_is_one_usage_line(tmp_path):
  res = run_cli(f"--workdir={tmp_path / 'wd'}", timeout=120)
  text = paragraph(res, 2, "--config is required", "usage", "--config=configs/NAME.py")
  assert len(res.stderr.strip().splitlines()) == 1, res.stderr
  assert "\n" not in text


def test_verbose_shows_the_traceback_too(tmp_path):
  res = run_cli("--config=configs/default.py:smok", "--verbose", f"--workdir={tmp_path}",
                timeout=120)
  assert res.returncode == 2
  assert "Traceback" in res.stderr and "gpe_jax error (ConfigError)" in res.stderr


def test_experiment_bad_probe_letters_and_missing_workdir(tmp_path):
  module = "gpe_jax.experiments.probes"
  wd = tmp_path / "probes"
  res = run_module(module, SMOKE, f"--workdir={wd}", "--config.probes.which=xyz", timeout=200)
  paragraph(res, 2, "ConfigError", "probes.which", "xyz", "abcde")
  res = run_module(module, SMOKE, timeout=200)
  paragraph(res, 2, "--workdir is required", module)


# --------------------------------------------------------------------------- record files


def _write_rows(path, rows, tail=""):
  with open(path, "w") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")
    f.write(tail)


def test_torn_last_metrics_line_is_dropped_and_cut_before_the_next_append(tmp_path, caplog):
  path = tmp_path / "metrics.jsonl"
  rows = [{"stage": "encoder", "step": 1, "loss": 1.0}, {"stage": "encoder", "step": 2}]
  _write_rows(path, rows, tail='{"stage": "encoder", "st')  # killed mid-append
  with caplog.at_level(logging.WARNING):
    assert logs.read_metrics(str(tmp_path)) == rows
  assert any("torn" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)
  writer = logs.MetricsWriter(str(tmp_path))
  try:
    writer.write("encoder", 3, {"loss": 0.5})
  finally:
    writer.close()
  lines = path.read_text().splitlines()
  appended = json.loads(lines[-1])
  assert isinstance(appended.pop("time"), float) and appended.pop("elapsed_s") >= 0
  assert [json.loads(line) for line in lines[:-1]] + [appended] == rows + [
      {"stage": "encoder", "step": 3, "loss": 0.5}]
  # a complete last row without its newline is kept and gets one before the next append
  _write_rows(path, rows[:1], tail=json.dumps(rows[1]))
  assert logs.read_metrics(str(tmp_path)) == rows
  logs.MetricsWriter(str(tmp_path)).close()
  assert path.read_text().endswith("}\n") and logs.read_metrics(str(tmp_path)) == rows


def test_corrupt_middle_metrics_line_is_a_record_error(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"stage": "encoder", "step": 1}\n{"stage": garbage\n{"step": 3}\n')
  with pytest.raises(errors.RecordError) as info:
    logs.read_metrics(str(tmp_path))
  msg = str(info.value)
  assert str(path) in msg and "line 2" in msg and "rerun" in msg
  with pytest.raises(errors.RecordError):
    logs.MetricsWriter(str(tmp_path))  # never appends to a damaged file


@pytest.mark.parametrize("content, what", [("", "is empty"), ("   \n", "is empty"),
                                           ('{"steps": 4, "stopp', "not valid JSON"),
                                           ("\x00\x00\x00", "not valid JSON")])
def test_empty_or_garbage_json_is_a_record_error(tmp_path, content, what):
  path = tmp_path / "done.json"
  path.write_text(content)
  with pytest.raises(errors.RecordError) as info:
    logs.read_json(str(path), {})
  msg = str(info.value)
  assert str(path) in msg and what in msg and "Delete it and rerun" in msg
  assert logs.read_json(str(tmp_path / "absent.json"), {"d": 1}) == {"d": 1}


def test_write_json_is_atomic(tmp_path, monkeypatch):
  path = str(tmp_path / "summary.json")
  logs.write_json(path, {"a": 1})
  # the data is on disk (fsync) before the rename makes it the file
  calls = []
  real_fsync, real_replace = os.fsync, os.replace
  monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
  monkeypatch.setattr(os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1])
  logs.write_json(path, {"a": 2})
  assert calls == ["fsync", "replace"] and logs.read_json(path) == {"a": 2}
  # a disk that fills up during the write leaves the old file intact and no temp file, and
  # the error names the file
  def full(fd):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(os, "fsync", full)
  with pytest.raises(OSError) as info:
    logs.write_json(path, {"a": 3})
  assert info.value.filename == path
  assert logs.read_json(path) == {"a": 2} and os.listdir(tmp_path) == ["summary.json"]
  assert "summary.json" in str(cli.user_error(info.value))


# --------------------------------------------------------------------------- what is a user error


def test_write_failures_are_found_through_wrapper_chains():
  def chained(outer, inner):
    try:
      raise inner
    except BaseException as e:  # noqa: B036
      try:
        raise outer from e
      except BaseException as o:  # noqa: B036
        return o
  full = chained(ValueError("orbax: save failed"), OSError(errno.ENOSPC, "No space left on "
                                                           "device", "/w/encoder/ckpt/x"))
  err = cli.user_error(full, "/w")
  assert isinstance(err, errors.WorkdirWriteError) and "/w/encoder/ckpt/x" in str(err)
  assert "Free space" in str(err) and "rerun the same command" in str(err)
  # tensorstore keeps only the text
  ts = chained(RuntimeError("commit failed"), ValueError("INTERNAL: Error writing local file "
                                                         "\"/w/x\": [OS error: Read-only file "
                                                         "system]"))
  err = cli.user_error(ts, "/w")
  assert isinstance(err, errors.WorkdirWriteError) and "writable --workdir" in str(err)
  assert isinstance(cli.user_error(PermissionError(errno.EACCES, "no", "/w/x")),
                    errors.WorkdirWriteError)
  elsewhere = str(cli.user_error(PermissionError(errno.EACCES, "no", "/data/x"), "/w"))
  assert "/data/x (outside the workdir)" in elsewhere and "--workdir" not in elsewhere
  assert cli.user_error(ValueError("a bug")) is None           # bugs keep their traceback
  assert cli.user_error(FileNotFoundError(errno.ENOENT, "x")) is None
  assert cli.user_error(SystemExit(0)) is None
  assert isinstance(cli.user_error(KeyboardInterrupt()), errors.Interrupted)
  stop = errors.Interrupted("Interrupted at step 5 of stage 'encoder'", "encoder", 5, 4)
  assert cli.user_error(stop) is stop and cli.print_error(stop) == 130
  assert cli.print_error(errors.ConfigError("x")) == 2


# --------------------------------------------------------------------------- the workdir lock


def _start_holder(workdir):
  """A process holding ``workdir_lock(workdir)`` until killed; returns it once it holds it."""
  code = ("import sys, time\nfrom gpe_jax import logs\n"
          "with logs.workdir_lock(sys.argv[1], what='a test holder'):\n"
          "  print('locked', flush=True)\n  time.sleep(600)\n")
  proc = subprocess.Popen([sys.executable, "-c", code, workdir], cwd=REPO, env=cli_env(),
                          stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "locked"
  return proc


def test_lock_is_reentrant_and_records_its_holder(tmp_path):
  wd = str(tmp_path / "wd")
  with logs.workdir_lock(wd, what="outer"):
    with logs.workdir_lock(wd, what="inner"):  # the same process: counted, not refused
      pass
    info = json.loads((tmp_path / "wd" / ".lock").read_text())
    assert info["pid"] == os.getpid() and info["what"] == "outer" and info["host"]
  with logs.workdir_lock(wd):  # released
    pass


def test_busy_workdir_fails_at_once_and_a_killed_holder_does_not_block(tmp_path):
  wd = str(tmp_path / "wd")
  holder = _start_holder(wd)
  try:
    with pytest.raises(errors.WorkdirBusyError) as info:
      with logs.workdir_lock(wd):
        pass
    assert f"pid {holder.pid}" in str(info.value) and "a test holder" in str(info.value)
    t0 = time.perf_counter()
    res = run_cli(SMOKE, f"--workdir={wd}", timeout=120)
    assert time.perf_counter() - t0 < 60  # no waiting for the holder
    import socket
    paragraph(res, 2, "WorkdirBusyError", f"pid {holder.pid}", socket.gethostname(),
              "another --workdir")
    assert not os.path.exists(os.path.join(wd, "encoder"))
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
  # the killed holder's lock file is still there, but its lock died with it
  assert os.path.exists(os.path.join(wd, ".lock"))
  with logs.workdir_lock(wd, what="after the kill"):
    info = json.loads(open(os.path.join(wd, ".lock")).read())
    assert info["pid"] == os.getpid() and info["what"] == "after the kill"


# --------------------------------------------------------------------------- unwritable workdirs


@contextlib.contextmanager
def tmpfs(path, options):
  """A tmpfs mounted at ``path`` (skips the test where mounting is not permitted)."""
  os.makedirs(path, exist_ok=True)
  res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                       capture_output=True, text=True)
  if res.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or res.returncode}); "
                "needs root in a container that allows mount")
  try:
    yield str(path)
  finally:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_read_only_workdir_is_one_paragraph(tmp_path):
  with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
    with pytest.raises(errors.WorkdirWriteError, match="read-only"):
      with logs.workdir_lock(ro):
        pass
    res = run_cli(SMOKE, f"--workdir={ro}/run", timeout=120)
    paragraph(res, 2, "WorkdirWriteError", f"{ro}/run", "read-only", "writable --workdir")


def test_full_disk_is_one_paragraph_and_the_rerun_resumes(tmp_path):
  args = [SMOKE, "--config.stages=('encoder',)"]
  with tmpfs(tmp_path / "full", "size=1m") as full:  # too small for one checkpoint
    res = run_cli(*args, f"--workdir={full}", timeout=300)
    # which file hits the full disk first depends on timing; the paragraph names one inside
    paragraph(res, 2, "WorkdirWriteError", "No space left on device", f"writing {full}/",
              "free space", "rerun the same command to resume")
    # space freed: the same command finishes the stage
    subprocess.run(["mount", "-o", "remount,size=64m", full], check=True)
    res = run_cli(*args, f"--workdir={full}", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert os.path.exists(os.path.join(full, "encoder", "done.json"))


# --------------------------------------------------------------------------- Ctrl-C, SIGTERM


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_is_exit_130_and_says_how_to_resume(tmp_path, sig):
  wd = tmp_path / "wd"
  ckpts = wd / "encoder" / "checkpoints"
  proc = subprocess.Popen(
      [sys.executable, "-m", "gpe_jax.main", SMOKE, f"--workdir={wd}",
       "--config.encoder.num_steps=100000", "--config.encoder.checkpoint_every=2"],
      cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 240
    while not (ckpts.is_dir() and any(n.isdigit() for n in os.listdir(ckpts))):
      assert proc.poll() is None, proc.communicate()[1][-3000:]
      assert time.time() < deadline, "the encoder never checkpointed"
      time.sleep(0.2)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.communicate()
  res = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
  text = paragraph(res, 130, "Interrupted", "rerun the same command")
  if "of stage" in text:  # the train loop names the stage, step and checkpoint
    assert "'encoder'" in text and "last checkpoint: step" in text, text


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_sent_to_another_thread_waits_for_the_save(sig):
  """A signal to the process can land on any thread that does not block it (orbax's, XLA's):
  the checkpoint save must still not be interrupted, and the interrupt comes right after."""
  import threading

  from gpe_jax import train_loop

  def interrupt(signum, frame):
    raise KeyboardInterrupt

  old = signal.signal(sig, interrupt)
  done = []
  try:
    with pytest.raises(KeyboardInterrupt):
      with train_loop._interrupts_deferred():  # pylint: disable=protected-access
        sender = threading.Thread(target=os.kill, args=(os.getpid(), sig))
        sender.start()
        sender.join()
        for _ in range(50):   # bytecode boundaries where Python runs its signal handlers
          time.sleep(0.002)
        done.append("save")
    assert done == ["save"]
  finally:
    signal.signal(sig, old)
