"""kill -9 at random moments never costs a run anything (issue 15, acceptance): a short run is killed again
and again (mid-step, mid-checkpoint, mid-append, during start-up), each time resumed by the same
command, and ends with the metrics and parameters of a run that was never interrupted: every step's row
exactly once, in order, with bit-identical values (``tokens_per_s``, a timing, aside).

The default case kills 3 times; the slow one is the acceptance test's 20 kills (asynchronous
checkpointing, 2 devices, ZeRO-1).
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN = ["model.layers=1", "model.width=64", "model.heads=2", "model.context=64", "model.attn_chunks=2",
       "train.batch_size=8", "train.log_every=1", "train.eval_every=10", "train.eval_batches=1",
       "train.ckpt_every=5", "train.keep_checkpoints=2", "optim.warmup_steps=10"]
TIMING = {"tokens_per_s"}


def _command(run_dir: Path, steps: int, devices: int, extra: list[str]) -> list[str]:
    mesh = [f"mesh.data={devices}"]
    return [sys.executable, "-m", "lineage_jax", "train", "--no-progress", "--no-sample", "--devices", str(devices),
            *RUN, *mesh, *extra, f"train.steps={steps}", f"run_dir={run_dir}"]


def _env(cache: Path) -> dict:
    """The suite's environment (its XLA_FLAGS too: LLVM opt level 0, tests/conftest.py; ``--devices`` replaces
    the device count in them) with a compilation cache of this test's own."""
    env = dict(os.environ)
    env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


def _rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _count_rows(run_dir: Path) -> int:
    try:
        return (run_dir / "metrics.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def kill_loop(run_dir: Path, steps: int, kills: int, *, seed: int, devices: int, extra: list[str], env: dict) -> int:
    """Run to completion, SIGKILLing the run ``kills`` times: each time once it has logged a new row since it
    started, after a further random 0-0.4 s. Returns the number of kills that hit a live process."""
    rng, landed, command = random.Random(seed), 0, _command(run_dir, steps, devices, extra)
    for _ in range(kills * 4):
        before = _count_rows(run_dir)
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
        try:
            while proc.poll() is None and _count_rows(run_dir) <= before:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.4))
            if proc.poll() is None and landed < kills:
                proc.send_signal(signal.SIGKILL)
                landed += 1
            rc = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        assert rc in (0, -signal.SIGKILL), f"rc {rc}: {err[-2000:]}"
        if rc == 0:
            return landed
    raise AssertionError(f"no run finished after {kills * 4} starts")


def _final_params(run_dir: Path):
    from lineage_jax.decode import load_for_inference
    return load_for_inference(run_dir)[2]


def _check(tmp_path: Path, steps: int, kills: int, devices: int, extra: list[str], seed: int) -> None:
    env = _env(tmp_path / "xla-cache")
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    done = subprocess.run(_command(clean, steps, devices, extra), env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    landed = kill_loop(killed, steps, kills, seed=seed, devices=devices, extra=extra, env=env)
    assert landed == kills, f"only {landed} of {kills} kills hit a running process (raise train.steps)"

    want, got = _rows(clean), _rows(killed)
    assert [r["step"] for r in got] == list(range(1, steps + 1))          # no gap, no duplicate, in order
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]   # noqa: E731
    assert strip(got) == strip(want)                                       # bit-identical values
    import jax
    import numpy as np
    a, b = _final_params(clean), _final_params(killed)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_three_kills_resume_to_the_uninterrupted_run(tmp_path):
    _check(tmp_path, steps=60, kills=3, devices=1, extra=["train.async_checkpointing=false"], seed=0)


@pytest.mark.slow
def test_twenty_kills_with_async_checkpoints_and_zero(tmp_path):
    _check(tmp_path, steps=240, kills=20, devices=2, extra=["parallel.zero_stage=1"], seed=1)
