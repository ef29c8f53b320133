"""Multi-host, proved with real processes on localhost: 2 processes × 4 CPU devices (JAX's distributed
runtime, gloo collectives) train what 1 process × 8 devices trains, each process reads only its own
rows, their checkpoint restores onto other topologies and resumes there, and a killed process makes
the other exit instead of hanging.

Every child is started by this test process (``lineage launch local`` runs in-process through
``cli.main``) and killed by its pid in a ``finally``; ports are picked free.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import chex
import jax
import numpy as np
import pytest

from lineage_jax import cli
from lineage_jax.commands import launch
from lineage_jax.config import load_config
from lineage_jax.runs import checkpoint as ckpt
from lineage_jax.train.loop import train
from lineage_jax.train.setup import build

# A constant learning rate (no warmup, no decay), so train.steps may change between invocations
# without changing the schedule: a resumed run with more steps continues the same trajectory.
SMALL = ["model.layers=2", "model.width=32", "model.heads=2", "model.context=32", "model.attn_chunks=2",
         "train.batch_size=8", "train.log_every=1", "train.eval_every=4", "train.eval_batches=2",
         "optim.warmup_steps=0", "optim.min_lr_ratio=1.0", "optim.lr=3e-3", "train.ckpt_every=2"]
STEPS = 4


def cfg_for(run_dir, *extra):
    return load_config("tiny", SMALL + [f"train.steps={STEPS}", f"run_dir={run_dir}", *extra])


def metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def restored(run_dir, cfg, devices=None, step=None):
    setup = build(cfg, compile_steps=False, devices=devices)
    with ckpt.manager(run_dir, create=False, async_save=False) as mngr:
        state, meta = ckpt.restore(mngr, step or mngr.latest_step(), setup.abstract_state())
    return jax.device_get(state), meta


def max_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def launch_train(run_dir, log_dir, *extra, processes=2, devices=4):
    """``lineage launch local`` in this process (its children are ours, stopped in its finally)."""
    return cli.main(["launch", "local", "--processes", str(processes), "--devices-per-process", str(devices),
                     "--log-dir", str(log_dir), "--timeout", "400", "--heartbeat-timeout", "10", "--",
                     "train", "--no-progress", "--no-sample", *SMALL, f"train.steps={STEPS}", f"run_dir={run_dir}",
                     *extra])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The 2 × 4 run of STEPS steps (through the launcher), and in this process on 8 devices the same
    run continued to STEPS + 2 (its checkpoints at every 2 steps kept)."""
    base = tmp_path_factory.mktemp("multihost")
    code = launch_train(base / "two", base / "logs")
    logs = {i: (base / "logs" / f"process-{i}.log").read_text(errors="replace") for i in (0, 1)}
    assert code == 0, logs
    train(cfg_for(base / "one", f"train.steps={STEPS + 2}", "train.keep_checkpoints=10"), progress=False)
    return base, logs


def test_two_processes_train_what_one_process_trains(runs):
    """Same losses, gradient norms and eval loss to 1e-6 at every step. The parameters agree to 1e-5, not
    bitwise: gloo sums the 8 gradient pieces in another order than the in-process all-reduce, and Adam's
    m/(√v + ε) turns the last-bit differences of near-zero (cancelling) gradient entries into updates up to
    lr apart in the worst entries (measured here: 3.8e-6 in one MLP kernel entry, 1e-8 typical)."""
    base, _ = runs
    two, one = metrics(base / "two"), metrics(base / "one")[:STEPS]
    assert [r["step"] for r in two] == [r["step"] for r in one] == list(range(1, STEPS + 1))
    loss_diff = max(abs(a["loss"] - b["loss"]) for a, b in zip(two, one))
    norm_diff = max(abs(a["grad_norm"] - b["grad_norm"]) / b["grad_norm"] for a, b in zip(two, one))
    assert loss_diff <= 1e-6 and norm_diff <= 1e-6 and abs(two[-1]["eval_loss"] - one[-1]["eval_loss"]) <= 1e-6
    cfg = cfg_for(base / "one")
    (a, meta_a), (b, meta_b) = restored(base / "two", cfg), restored(base / "one", cfg, step=STEPS)   # 2×4's on 1×8
    print(f"\n2x4 vs 1x8 after {STEPS} steps: loss {loss_diff:.2e}, grad norm (relative) {norm_diff:.2e}, "
          f"params {max_diff(a.params, b.params):.2e}, opt_state {max_diff(a.opt_state, b.opt_state):.2e}")
    assert max_diff(a.params, b.params) <= 1e-5 and max_diff(a.opt_state, b.opt_state) <= 1e-5
    assert int(a.step) == STEPS and meta_a["data_position"] == meta_b["data_position"] == STEPS * 8


def test_each_process_reads_only_its_rows_and_only_process_0_writes(runs):
    base, logs = runs
    assert "held rows 0..3 of every batch of 8; read 16 train and 8 eval rows" in logs[0]
    assert "held rows 4..7 of every batch of 8; read 16 train and 8 eval rows" in logs[1]   # 4 steps × 4 rows
    lines = (base / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == STEPS                                    # one writer: no row twice
    assert (base / "two" / "loss.png").is_file() and (base / "two" / "config.yaml").is_file()


def test_a_checkpoint_of_two_processes_restores_bit_exact_on_other_topologies(runs):
    """Saved by 2 processes × 4 devices; restored by 1 × 8 (data=8), 1 × 8 as ZeRO-3 (fsdp=8: every
    parameter and moment sharded) and 1 × 1: bit-identical, and identical to what the two processes
    digested (the per-shard digest, runs/digest.py) when they saved it."""
    base, _ = runs
    step = base / "two" / "checkpoints" / str(STEPS)
    for i in (0, 1):                                       # each process wrote its own shards ...
        assert any((step / "state" / f"ocdbt.process_{i}" / "d").iterdir())
    assert (step / "commit_success.txt").is_file()         # ... and the step was committed once
    cfg = cfg_for(base / "one")
    states = [restored(base / "two", cfg),
              restored(base / "two", cfg_for(base / "one", "mesh.data=1", "mesh.fsdp=-1", "parallel.zero_stage=3")),
              restored(base / "two", cfg, devices=jax.devices()[:1])]
    for state, meta in states:
        chex.assert_trees_all_equal(state, states[0][0])
        assert ckpt.digest(state) == meta["digest"]


def test_a_checkpoint_of_two_processes_resumes_on_eight_devices(runs):
    base, _ = runs
    cfg = cfg_for(base / "one")
    shutil.copytree(base / "two", base / "resumed")
    train(cfg_for(base / "resumed", f"train.steps={STEPS + 2}"), progress=False)   # resumes at STEPS on 1 × 8
    r, _ = restored(base / "resumed", cfg)
    s, _ = restored(base / "one", cfg)                                            # 1 × 8 throughout
    print(f"\nsaved 2x4 at {STEPS}, resumed 1x8 to {STEPS + 2} vs straight 1x8: params {max_diff(r.params, s.params):.2e}")
    assert int(r.step) == STEPS + 2                       # the 1e-5 of the first 4 steps carried on (see above)
    assert max_diff(r.params, s.params) <= 1e-5 and max_diff(r.opt_state, s.opt_state) <= 1e-5
    assert [m["step"] for m in metrics(base / "resumed")] == list(range(1, STEPS + 3))


def test_a_killed_process_stops_the_other_and_the_run_resumes(tmp_path):
    run = tmp_path / "run"
    cmd = ["train", "--no-progress", "--no-sample", *SMALL, "train.steps=100000", "train.eval_every=0", f"run_dir={run}"]
    procs = launch.start(cmd, 2, 4, tmp_path / "logs", heartbeat=5)
    try:
        deadline = time.monotonic() + 240
        rows = run / "metrics.jsonl"
        while not rows.is_file() or len(rows.read_text().splitlines()) < 5:   # checkpoint 2 committed by then
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [p.poll() for p in procs]
            time.sleep(0.5)
        os.kill(procs[1].pid, signal.SIGKILL)                      # mid-run, no warning
        codes = launch.wait(procs, grace=90)                       # the survivor gets 90 s to notice
    finally:
        launch.stop(procs)
    survivor = (tmp_path / "logs" / "process-0.log").read_text(errors="replace")
    assert codes[1] == -signal.SIGKILL
    assert codes[0] not in (None, 0), survivor[-2000:]           # exited by itself, with an error
    # the survivor learns of the death one of three ways, whichever comes first: the coordination
    # service's missed heartbeats, its fatal-error broadcast, or the collective in flight losing its peer
    signs = ("stopped sending heartbeats", "distributed service detected fatal errors", "Connection reset by peer")
    assert any(sign in survivor for sign in signs), survivor[-2000:]
    last = ckpt.latest_step(run)
    assert last is not None and last >= 2
    summary = train(cfg_for(run, f"train.steps={last + 1}", "train.eval_every=0"), progress=False)   # 1 × 8
    assert summary["steps"] == last + 1
    assert [m["step"] for m in metrics(run)] == list(range(1, last + 2))


def test_a_tensor_group_across_processes_is_refused_in_one_line(tmp_path, capsys):
    code = launch_train(tmp_path / "run", tmp_path / "logs", "mesh.data=1", "mesh.tensor=8")
    log = (tmp_path / "logs" / "process-1.log").read_text(errors="replace")
    assert code == 1
    assert "error: mesh: a tensor=8 group spans processes [0, 1]; with 4 devices per process" in log
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
@pytest.mark.parametrize("strategy", [["mesh.data=1", "mesh.fsdp=-1", "parallel.zero_stage=3"],   # ZeRO-3 over 8
                                      ["mesh.data=-1", "mesh.tensor=2", "model.vocab_multiple=8"]])   # DP 4 × TP 2
def test_two_processes_match_one_under_zero3_and_tensor_parallel(tmp_path, strategy):
    assert launch_train(tmp_path / "two", tmp_path / "logs", *strategy) == 0
    train(cfg_for(tmp_path / "one", *strategy), progress=False)
    two, one = metrics(tmp_path / "two"), metrics(tmp_path / "one")
    loss_diff = max(abs(a["loss"] - b["loss"]) for a, b in zip(two, one))
    cfg = cfg_for(tmp_path / "one", *strategy)
    a, _ = restored(tmp_path / "two", cfg)
    b, _ = restored(tmp_path / "one", cfg)
    print(f"\n{' '.join(strategy)}: 2x4 vs 1x8 loss {loss_diff:.2e}, params {max_diff(a.params, b.params):.2e}, "
          f"opt_state {max_diff(a.opt_state, b.opt_state):.2e}")
    assert len(two) == len(one) == STEPS and loss_diff <= 1e-6
    assert max_diff(a.params, b.params) <= 1e-5 and max_diff(a.opt_state, b.opt_state) <= 1e-5


@pytest.mark.slow
def test_a_checkpoint_of_two_processes_resumes_on_four_processes(runs):
    """Saved by 2 × 4 (data=8), resumed by 4 processes × 2 devices to STEPS + 2: the 1 × 8 run's state."""
    base, _ = runs
    shutil.copytree(base / "two", base / "four")
    assert launch_train(base / "four", base / "logs4", f"train.steps={STEPS + 2}", processes=4, devices=2) == 0
    cfg = cfg_for(base / "one")
    r, meta = restored(base / "four", cfg)
    s, _ = restored(base / "one", cfg)
    print(f"\nsaved 2x4 at {STEPS}, resumed 4x2 to {STEPS + 2} vs 1x8 throughout: params {max_diff(r.params, s.params):.2e}")
    assert int(r.step) == STEPS + 2 and meta["data_position"] == (STEPS + 2) * 8
    assert max_diff(r.params, s.params) <= 1e-5 and max_diff(r.opt_state, s.opt_state) <= 1e-5
    assert [m["step"] for m in metrics(base / "four")] == list(range(1, STEPS + 3))
    logs = [(base / "logs4" / f"process-{i}.log").read_text(errors="replace") for i in range(4)]
    assert all(f"held rows {2 * i}..{2 * i + 1} of every batch of 8; read 4 train" in log for i, log in enumerate(logs))


INJECT = """import os, sys
from lineage_jax.train import loop
if os.environ["LINEAGE_PROCESS_ID"] == "1":      # process 1 fails in Python at its 3rd step
    real, calls = loop._finite, []
    def failing(metrics):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("injected failure in process 1")
        return real(metrics)
    loop._finite = failing
from lineage_jax.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow   # the default suite's "one stops the other": test_a_killed_process_stops_the_other_...
def test_a_process_failing_with_an_error_mid_run_stops_the_other(tmp_path):
    """Process 1 raises in Python mid-run (injected): it prints its traceback and leaves at once, and
    process 0 stops within the heartbeat, instead of both waiting out JAX's shutdown barrier (5 min:
    a normal interpreter exit waits there while process 0 waits in its next collective)."""
    (tmp_path / "inject.py").write_text(INJECT)
    coordinator = f"127.0.0.1:{launch.free_port()}"
    cmd = ["train", "--no-progress", "--no-sample", *SMALL, "train.steps=1000", f"run_dir={tmp_path / 'run'}"]
    procs = []
    try:
        for i in (0, 1):
            env = launch.process_env(i, 2, coordinator, 4, heartbeat=5)
            env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[2]), env.get("PYTHONPATH", "")])
            log = open(tmp_path / f"process-{i}.log", "wb")   # noqa: SIM115 - closed by launch.stop
            procs.append(subprocess.Popen([sys.executable, str(tmp_path / "inject.py"), *cmd], stdout=log,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env))
            procs[-1].log = log
        codes = launch.wait(procs, grace=90, timeout=240)
    finally:
        launch.stop(procs)
    logs = [(tmp_path / f"process-{i}.log").read_text(errors="replace") for i in (0, 1)]
    assert codes[1] == 1 and "RuntimeError: injected failure in process 1" in logs[1], logs[1][-2000:]
    assert codes[0] not in (None, 0), logs[0][-2000:]            # stopped by itself, not killed at grace


@pytest.mark.slow   # one process's fallback stays default: tests/reliability/test_checkpoint_damage.py
def test_a_damaged_checkpoint_falls_back_on_every_process(runs, tmp_path):
    """Step 4 of the 2 × 4 run replaced by step 2's state under step 4's meta (only the digest can tell):
    both processes take the same verdict (the digest is a collective), process 0 alone moves step 4
    aside, and the run resumes from step 2 to the end."""
    base, _ = runs
    run = tmp_path / "run"
    shutil.copytree(base / "two", run)
    shutil.rmtree(run / "checkpoints" / "4" / "state")
    shutil.copytree(run / "checkpoints" / "2" / "state", run / "checkpoints" / "4" / "state")
    assert launch_train(run, tmp_path / "logs") == 0
    log0 = (tmp_path / "logs" / "process-0.log").read_text(errors="replace")
    assert "step 4" in log0 and "digest mismatch" in log0 and "falling back to step 2" in log0
    assert [p.name for p in (run / "checkpoints-corrupt").iterdir()] == ["4-digest-mismatch"]
    assert [r["step"] for r in metrics(run)] == [1, 2, 3, 4]
    np.testing.assert_array_equal([r["loss"] for r in metrics(run)], [r["loss"] for r in metrics(base / "two")])


def test_a_run_dir_process_0_refuses_ends_every_process_in_one_line(tmp_path):
    """Process 0 holds the lock and checks run_dir; its refusal (a user's own file there) reaches the other
    process, which ends too (exit 2) instead of waiting at a barrier for the heartbeat to time out."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    t0 = time.perf_counter()
    assert launch_train(run, tmp_path / "logs") != 0
    assert time.perf_counter() - t0 < 60
    logs = [(tmp_path / "logs" / f"process-{i}.log").read_text(errors="replace") for i in (0, 1)]
    assert "notes.txt" in logs[0] and "process 0 refused it" in logs[1]
    assert (run / "notes.txt").read_text() == "mine" and sorted(p.name for p in run.iterdir()) == ["notes.txt"]
