"""One run per run directory: an exclusive lock held for the whole training run (issue 15, cause 3).

Two ``lineage train`` into one ``run_dir`` would interleave their metrics and race on the same
checkpoints. ``hold`` takes ``fcntl.flock`` on ``run_dir/run.lock`` and writes the holder's pid,
host, start time and command into it, so a second run is refused in one line that names them.
The kernel drops a flock when its process dies, however it dies (kill -9 included), so a lock
file left behind never blocks: its stale pid is simply overwritten by the next run. On exit
(normal, exception, Ctrl-C) the file is removed while still locked; a run that opened the old
file in between sees that it was removed and opens the new one (the inode check below).

Where the file system has no flock (some network mounts), the recorded pid decides: a live
process on this host holds the directory; a dead one does not.

Several processes (issue 16): process 0 holds ``run.lock``; every other process ``i`` holds its own
``run.<i>.lock`` (taken once process 0 has accepted the directory), so no process of a run is
unguarded. A rerun's process 0, holding ``run.lock``, then tries every ``run.<i>.lock`` it finds,
whatever the process count of the run that left them: one still held (a survivor of a killed run,
still saving its shards) refuses the rerun in one line naming it; free ones are stale and removed.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shlex
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lineage_jax.config.errors import UserError

LOCK_NAME = "run.lock"
_PROCESS_LOCK = re.compile(r"run\.([1-9][0-9]*)\.lock")


def lock_name(process: int = 0) -> str:
    """The lock file of process ``process`` of a run: ``run.lock`` for process 0, ``run.<i>.lock`` else."""
    return LOCK_NAME if process == 0 else f"run.{process}.lock"


def is_lock_name(name: str) -> bool:
    """Whether ``name`` is a run's lock file (any process's)."""
    return name == LOCK_NAME or _PROCESS_LOCK.fullmatch(name) is not None


class RunDirBusyError(UserError, RuntimeError):
    """Another live run holds the run directory."""


def _command() -> str:
    """This process's command line as a user typed it (``lineage train …``, ``python -m lineage_jax train …``);
    a long one keeps its start and its end (where ``run_dir=`` usually is)."""
    prog = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("python")
    head = ["python", "-m", prog.parent.name] if prog.name == "__main__.py" else [prog.name]
    line = shlex.join([*head, *sys.argv[1:]])
    return line if len(line) <= 400 else f"{line[:190]} … {line[-190:]}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:        # exists, owned by someone else
        return True
    return True


def _record(fd: int) -> dict:
    try:
        data = os.pread(fd, 4096, 0).decode("utf-8", errors="replace")
        rec = json.loads(data) if data.strip() else {}
    except (OSError, ValueError):
        return {}
    return rec if isinstance(rec, dict) else {}


def describe(rec: dict) -> str:
    """``pid 123 on host h since 04:20:00 UTC: lineage train ...``, or what is known of it."""
    if not rec.get("pid"):
        return "holder unknown"
    since = time.strftime(" since %H:%M:%S UTC", time.gmtime(rec["since"])) if rec.get("since") else ""
    host = rec.get("host")
    where = f" on host {host}" if host and host != socket.gethostname() else ""
    gone = "" if where or _alive(int(rec["pid"])) else " (no longer running; a child process of it still holds the lock)"
    which = f" (process {rec['process']} of its run)" if rec.get("process") else ""
    return f"pid {rec['pid']}{which}{where}{since}{gone}: {rec.get('command', '?')}"


def _write(fd: int, process: int) -> None:
    rec = {"pid": os.getpid(), "host": socket.gethostname(), "since": int(time.time()), "command": _command(),
           "process": process}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(rec) + "\n").encode("utf-8"), 0)


def _busy(run_dir: Path, rec: dict) -> RunDirBusyError:
    return RunDirBusyError(f"run_dir {run_dir} is in use by another run ({describe(rec)}); wait for it to end, "
                           f"stop it, or give this run another run_dir")


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    return (st.st_ino, st.st_dev) == (os.fstat(fd).st_ino, os.fstat(fd).st_dev)


def _try(fd: int) -> dict | None:
    """Take ``fd``'s flock without waiting: None when taken, else the holder's record. Where flock is not
    supported, a live pid recorded on this host (not ours) counts as a holder."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return _record(fd)
    except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        rec = _record(fd)
        if rec.get("pid") and rec.get("host") == socket.gethostname() and rec["pid"] != os.getpid() \
                and _alive(int(rec["pid"])):
            return rec
    return None


def _acquire(run_dir: Path, path: Path) -> int:
    """An open fd of ``path`` holding its lock (the file opened anew if its holder removed it meanwhile)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            holder = _try(fd)
        except OSError:
            os.close(fd)
            raise
        if holder is not None:
            os.close(fd)
            raise _busy(run_dir, holder)
        if _same_file(fd, path):
            return fd
        os.close(fd)                    # removed by its finishing holder after we opened it: open anew


def _check_process_locks(run_dir: Path) -> None:
    """Process 0, holding ``run.lock``: refuse if any ``run.<i>.lock`` is held (a process of an earlier run
    still alive), remove the stale ones."""
    for path in sorted(p for p in run_dir.iterdir() if _PROCESS_LOCK.fullmatch(p.name)):
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            holder = _try(fd)
            if holder is not None:
                raise _busy(run_dir, holder)
            if _same_file(fd, path):
                path.unlink()
        finally:
            os.close(fd)


@contextmanager
def hold(run_dir: str | Path, process: int = 0) -> Iterator[Path]:
    """Hold ``run_dir``'s lock (the directory must exist) until the block ends; a ``RunDirBusyError``
    (one line: the run dir, the holder's pid and command) if a live run holds it. ``process``: this
    process's index in a multi-process run. Process 0 takes ``run.lock`` and checks that no process
    of another run holds a ``run.<i>.lock``; process ``i`` takes ``run.<i>.lock`` (after process 0
    accepted the directory)."""
    run_dir = Path(run_dir)
    path = run_dir / lock_name(process)
    fd = _acquire(run_dir, path)
    try:
        if process == 0:
            _check_process_locks(run_dir)
        _write(fd, process)
        yield path
    finally:
        try:
            if _same_file(fd, path):
                path.unlink()
        finally:
            os.close(fd)
