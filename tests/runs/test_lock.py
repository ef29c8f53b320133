"""Every process of a run holds a lock (issue 16): a rerun is refused in one line while any process of
the earlier run lives, whatever its process count, and proceeds once they are all gone."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lineage_jax import cli
from lineage_jax.runs import lock, rundir

ROOT = Path(__file__).resolve().parents[2]
HOLD = ("import sys, time; from pathlib import Path; from lineage_jax.runs import lock\n"
        "with lock.hold(Path(sys.argv[1]), process=int(sys.argv[2])):\n    print('held', flush=True); time.sleep(120)\n")


def test_a_live_process_of_an_earlier_run_refuses_a_rerun_in_one_line(tmp_path, capsys):
    """The fake survivor: process 3 of an earlier run, holding its own lock in this very process (flock is
    per open file, so a second open of it conflicts like another process would)."""
    run = tmp_path / "run"
    run.mkdir()
    with lock.hold(run, process=3) as path:
        assert path.name == "run.3.lock" and json.loads(path.read_text())["process"] == 3
        assert cli.main(["train", "--no-progress", "--no-sample", "model.layers=1", "model.width=32",
                         "model.heads=2", "model.context=32", "train.steps=1", "optim.warmup_steps=0",
                         f"run_dir={run}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: run_dir {run} is in use by another run "
                                                   f"(pid {os.getpid()} (process 3 of its run)"), err
        assert sorted(p.name for p in run.iterdir()) == ["run.3.lock"]       # nothing written, its lock kept
        with pytest.raises(lock.RunDirBusyError, match="process 3 of its run"):
            with lock.hold(run):
                pass
    assert not (run / "run.3.lock").exists()                                 # removed by its holder on exit
    with lock.hold(run):
        pass


def test_stale_process_locks_never_block_and_are_removed_by_process_0(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for i in (1, 7):                     # left by an 8-process run killed -9: files, no flock
        (tmp_path / f"run.{i}.lock").write_text(json.dumps({"pid": dead.pid, "process": i}))
    assert all(rundir.is_own(n) for n in ("run.lock", "run.1.lock", "run.7.lock"))
    assert not any(rundir.is_own(n) for n in ("run.0.lock", "run.x.lock", "run.lock.1"))
    with lock.hold(tmp_path):
        assert sorted(p.name for p in tmp_path.iterdir()) == ["run.lock"]
        with lock.hold(tmp_path, process=1):                 # this run's process 1, after the verdict
            rundir.clear(tmp_path)                           # --overwrite clears neither lock
            assert sorted(p.name for p in tmp_path.iterdir()) == ["run.1.lock", "run.lock"]


def test_a_survivor_killed_9_frees_the_run_dir(tmp_path):
    """A real process holding ``run.1.lock`` (the survivor of a run whose process 0 died): refused while
    it lives, taken over once it is killed -9 (the kernel drops its flock)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), "1"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(lock.RunDirBusyError, match=f"pid {p.pid} \\(process 1 of its run\\)"):
            with lock.hold(tmp_path):
                pass
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        with lock.hold(tmp_path):
            assert not (tmp_path / "run.1.lock").exists()
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
