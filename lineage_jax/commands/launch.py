"""``lineage launch local --processes N --devices-per-process K -- <lineage command and its arguments>``.

Starts N processes of the same ``lineage`` command on this machine, each with K emulated CPU
devices, joined through JAX's distributed runtime: a free port for the coordinator (process 0),
and ``LINEAGE_COORDINATOR`` / ``LINEAGE_NUM_PROCESSES`` / ``LINEAGE_PROCESS_ID`` /
``LINEAGE_LOCAL_DEVICES`` in each one's environment (``parallel.distributed`` reads them).
Process 0's output is streamed here; every process's output goes to its own log file
``<log-dir>/process-<i>.log``. The exit status is 0 only if every process exits 0; when one fails
the others get ``--grace`` seconds to notice (the runtime's heartbeat) before they are killed,
and on ``--timeout``, Ctrl-C or any error every child still running is killed by its pid.
Only the commands that run as several processes (``commands.devices.MULTI_PROCESS``: train,
finetune, scaling sweep) are launched; any other is refused in one line before a process starts.
No JAX here: the children import it.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from lineage_jax.commands.devices import refusal, supports_several
from lineage_jax.config import ConfigError


def register(subparsers) -> None:
    p = subparsers.add_parser("launch", help="run a lineage command as several processes (multi-host, emulated)")
    sub = p.add_subparsers(dest="launch_command", required=True)
    q = sub.add_parser("local", help="N processes on this machine, K CPU devices each, one JAX distributed run")
    q.add_argument("--processes", type=int, default=2, metavar="N", help="processes to start (2)")
    q.add_argument("--devices-per-process", type=int, default=4, metavar="K", help="CPU devices of each (4)")
    q.add_argument("--log-dir", default=None, metavar="DIR", help="where process-<i>.log go (default: a new temp dir)")
    q.add_argument("--timeout", type=float, default=0, metavar="S", help="kill every process after S seconds (0: none)")
    q.add_argument("--heartbeat-timeout", type=int, default=20, metavar="S",
                   help="seconds without a heartbeat before the runtime declares a process dead (20)")
    q.add_argument("--grace", type=float, default=60, metavar="S",
                   help="after one process fails, seconds the others get to exit before being killed (60)")
    q.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="the lineage command, e.g. train ...")
    q.set_defaults(func=cmd_local)


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(index: int, count: int, coordinator: str, devices: int, heartbeat: int = 20,
                base: dict | None = None) -> dict:
    """The environment of process ``index`` of ``count``: the LINEAGE_* variables, CPU devices only."""
    env = dict(os.environ if base is None else base)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env.update(LINEAGE_COORDINATOR=coordinator, LINEAGE_NUM_PROCESSES=str(count), LINEAGE_PROCESS_ID=str(index),
               LINEAGE_LOCAL_DEVICES=str(devices), LINEAGE_HEARTBEAT_TIMEOUT=str(heartbeat),
               JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags + [f"--xla_force_host_platform_device_count={devices}"]),
               PYTHONUNBUFFERED="1")
    return env


def start(cmd: list[str], count: int, devices: int, log_dir: Path, *, heartbeat: int = 20,
          stream=None) -> list[subprocess.Popen]:
    """Start ``python -m lineage_jax <cmd>`` ``count`` times; process 0's output also goes to ``stream``
    (a text file such as sys.stdout; None: its log only). Returns the children (kill them: ``stop``)."""
    coordinator = f"127.0.0.1:{free_port()}"
    log_dir.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []
    try:
        for i in range(count):
            log = open(log_dir / f"process-{i}.log", "wb")   # noqa: SIM115 - closed when the child is reaped
            out = subprocess.PIPE if (i == 0 and stream is not None) else log
            p = subprocess.Popen([sys.executable, "-m", "lineage_jax", *cmd], stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=process_env(i, count, coordinator, devices, heartbeat))
            p.log, p.tee = log, None
            procs.append(p)
            if out is subprocess.PIPE:
                p.tee = threading.Thread(target=_tee, args=(p.stdout, log, stream), daemon=True)
                p.tee.start()
    except BaseException:
        stop(procs)
        raise
    return procs


def _tee(pipe, log, stream) -> None:
    for chunk in iter(lambda: pipe.read1(4096), b""):
        log.write(chunk)
        log.flush()
        stream.write(chunk.decode(errors="replace"))
        stream.flush()


def stop(procs: list[subprocess.Popen], term_wait: float = 5.0) -> None:
    """Kill every child still running, by its pid: SIGTERM, then SIGKILL after ``term_wait`` s; reap all."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + term_wait
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        if getattr(p, "tee", None) is not None:
            p.tee.join(5)
        if getattr(p, "log", None) is not None:
            p.log.close()


def wait(procs: list[subprocess.Popen], *, timeout: float = 0, grace: float = 60) -> list[int | None]:
    """Return codes once every child has exited; ``None`` for a child killed at ``timeout`` (0: none) or
    one still running ``grace`` s after another failed (it is killed then)."""
    t0, failed_at = time.monotonic(), None
    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            return codes
        now = time.monotonic()
        if failed_at is None and any(c not in (None, 0) for c in codes):
            failed_at = now
        if (timeout and now - t0 > timeout) or (failed_at is not None and now - failed_at > grace):
            stop(procs)
            return codes
        time.sleep(0.2)


def _terminated(signum, frame):
    raise SystemExit(128 + signum)


def cmd_local(args) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise ConfigError("lineage launch local: give the command after --, e.g. -- train --config tiny")
    if cmd[0] in ("launch", "lineage"):
        raise ConfigError(f"lineage launch local: give the lineage subcommand itself (e.g. train), not '{cmd[0]}'")
    sub = cmd[1] if len(cmd) > 1 and not cmd[1].startswith("-") and "=" not in cmd[1] else None
    if not supports_several(cmd[0], sub):   # refused here, before any process starts (each child refuses too)
        raise ConfigError(refusal(" ".join(cmd[:2] if sub else cmd[:1])))
    if args.processes < 1 or args.devices_per_process < 1:
        raise ConfigError(f"--processes={args.processes}, --devices-per-process={args.devices_per_process}: "
                          "each must be at least 1")
    if args.timeout < 0 or args.grace < 0 or args.heartbeat_timeout < 1:
        raise ConfigError("--timeout and --grace must be >= 0 and --heartbeat-timeout >= 1")
    log_dir = Path(args.log_dir) if args.log_dir else Path(tempfile.mkdtemp(prefix="lineage-launch-"))
    print(f"launch: {args.processes} processes × {args.devices_per_process} CPU devices; logs in "
          f"{log_dir}/process-<i>.log", file=sys.stderr, flush=True)
    previous = signal.signal(signal.SIGTERM, _terminated)   # a terminated launcher still kills its children
    procs: list[subprocess.Popen] = []
    try:
        procs = start(cmd, args.processes, args.devices_per_process, log_dir, heartbeat=args.heartbeat_timeout,
                      stream=sys.stdout)
        codes = wait(procs, timeout=args.timeout, grace=args.grace)
    finally:
        stop(procs)
        signal.signal(signal.SIGTERM, previous)
    bad = [(i, c) for i, c in enumerate(codes) if c != 0]
    if not bad:
        return 0
    print("launch: " + ", ".join(f"process {i} " + ("was killed (timeout or grace)" if c is None else f"exited {c}")
                                 for i, c in bad) + f"; see {log_dir}", file=sys.stderr)
    return 124 if all(c is None for _, c in bad) else 1
