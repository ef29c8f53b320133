"""``lineage finetune`` as one program over real processes on localhost: 2 processes × 4 CPU devices
(``lineage launch local``, JAX's distributed runtime, gloo collectives) LoRA-fine-tune what 1 process ×
8 devices fine-tunes: the same losses, gradient norms, eval loss and adapters. Process 0 alone clears
the run directory (``--overwrite``) and writes its files; each process reads only its rows.

The launcher runs in this process (``cli.main``); its children are killed by their pid in its
``finally`` and the coordinator's port is picked free. tests/commands/test_devices.py is the
cheap default check that the flags reach the runtime.
"""
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from lineage_jax import cli
from lineage_jax.config import load_config
from lineage_jax.decode.load import load_adapted
from lineage_jax.train.loop import train

BASE = ["model.layers=2", "model.width=32", "model.heads=2", "model.context=32", "model.attn_chunks=2",
        "train.batch_size=8", "train.steps=2", "train.eval_every=0", "optim.warmup_steps=0"]
STEPS = 4
FT = ["--lora-rank", "2", "--no-progress", f"train.steps={STEPS}", "train.batch_size=8", "optim.warmup_steps=0",
      "optim.min_lr_ratio=1.0", "optim.lr=3e-3", "train.log_every=1", f"train.eval_every={STEPS}",
      "train.eval_batches=2", f"train.ckpt_every={STEPS}"]


def metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def max_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-step base run; its fine-tune by 2 × 4 (through the launcher, into a directory holding a stale
    metrics file that --overwrite must clear) and by 1 × 8 in this process."""
    tmp = tmp_path_factory.mktemp("ft_multihost")
    train(load_config("tiny", [*BASE, f"run_dir={tmp / 'base'}"]), progress=False)
    (tmp / "two").mkdir()
    (tmp / "two" / "metrics.jsonl").write_text('{"step": 99, "loss": 1.0}\n')   # refused without --overwrite
    code = cli.main(["launch", "local", "--processes", "2", "--devices-per-process", "4", "--log-dir",
                     str(tmp / "logs"), "--timeout", "400", "--heartbeat-timeout", "10", "--",
                     "finetune", "--from", str(tmp / "base"), "--run-dir", str(tmp / "two"), "--overwrite", *FT])
    logs = {i: (tmp / "logs" / f"process-{i}.log").read_text(errors="replace") for i in (0, 1)}
    assert code == 0, logs
    assert cli.main(["finetune", "--from", str(tmp / "base"), "--run-dir", str(tmp / "one"), *FT]) == 0
    return tmp, logs


@pytest.mark.slow
def test_two_processes_finetune_what_one_process_finetunes(runs):
    tmp, _ = runs
    two, one = metrics(tmp / "two"), metrics(tmp / "one")
    assert [r["step"] for r in two] == [r["step"] for r in one] == list(range(1, STEPS + 1))   # stale row cleared
    loss = max(abs(a["loss"] - b["loss"]) for a, b in zip(two, one))
    norm = max(abs(a["grad_norm"] - b["grad_norm"]) / b["grad_norm"] for a, b in zip(two, one))
    evals = abs(two[-1]["eval_loss"] - one[-1]["eval_loss"])
    *_, a, _ = load_adapted(tmp / "two")   # the 2 × 4 checkpoint, restored in this one process
    *_, b, _ = load_adapted(tmp / "one")
    trained = max(float(np.abs(x).max()) for path, x in jax.tree_util.tree_flatten_with_path(b)[0]
                  if "lora_b" in jax.tree_util.keystr(path))      # B starts at zero: its size is what training did
    print(f"\nLoRA finetune 2x4 vs 1x8 over {STEPS} steps: loss {loss:.2e}, grad norm (relative) {norm:.2e}, "
          f"eval {evals:.2e}, adapters {max_diff(a, b):.2e} (largest |lora_b| {trained:.2e})")
    assert loss <= 1e-6 and norm <= 1e-6 and evals <= 1e-6        # the tolerances of tests/train/test_multihost.py
    assert max_diff(a, b) <= 1e-5 and trained > 1e-4


@pytest.mark.slow
def test_each_finetune_process_reads_its_rows_and_only_process_0_writes(runs):
    tmp, logs = runs
    rows = f"read {STEPS * 4} train and 8 eval rows"
    assert f"process 0 of 2: held rows 0..3 of every batch of 8; {rows}" in logs[0]
    assert f"process 1 of 2: held rows 4..7 of every batch of 8; {rows}" in logs[1]
    assert all(f"done: {STEPS} steps" in log and "sample (temperature" not in log for log in logs.values())
    assert len(metrics(tmp / "two")) == STEPS                     # one writer
    assert json.loads((tmp / "two" / "adapter.json").read_text())["base"] == str(tmp / "base")
    for i in (0, 1):                                              # Orbax: each process wrote its shards
        assert (tmp / "two" / "checkpoints" / str(STEPS) / "state" / f"ocdbt.process_{i}").is_dir()
