"""A damaged checkpoint never restores as garbage (issue 15, cause 1): each kind of damage to the newest
step is named in one line, set aside, and the run resumes from the step before; with every step damaged
the run refuses in one line; inference falls back the same way."""
import json
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lineage_jax import cli
from lineage_jax.decode import load_for_inference

TINY = ["model.layers=1", "model.width=32", "model.heads=2", "model.context=32", "model.attn_chunks=2",
        "train.batch_size=8", "train.log_every=1", "train.eval_every=0", "train.ckpt_every=1",
        "train.keep_checkpoints=20", "optim.warmup_steps=0", "train.async_checkpointing=false"]


def train(run, steps):
    return cli.main(["train", "--no-progress", "--no-sample", *TINY, f"train.steps={steps}", f"run_dir={run}"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("damage") / "run"
    assert train(run, 3) == 0
    return run


def data_files(step_dir):
    """Every array data file of the step (OCDBT's ``d/`` folders; which of them the manifest
    references varies from save to save, so every one is damaged)."""
    return [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]


def flip(step_dir):
    for path in data_files(step_dir):
        data = bytearray(path.read_bytes())
        for at in range(len(data) // 16, len(data), len(data) // 8):      # 8 places in each file
            data[at:at + 64] = bytes(b ^ 0xFF for b in data[at:at + 64])
        path.write_bytes(bytes(data))


def truncate(step_dir):
    for path in data_files(step_dir):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def empty_dir(step_dir):
    for p in step_dir.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def other_state(step_dir):
    """Step 2's state under step 3's meta: every file reads, every value is finite, only the digest can tell."""
    shutil.rmtree(step_dir / "state")
    shutil.copytree(step_dir.parent / "2" / "state", step_dir / "state")


DAMAGE = {"flip": flip, "truncate": truncate,
          "empty_metadata": lambda d: (d / "state" / "_METADATA").write_text(""),
          "garbled_meta": lambda d: (d / "meta" / "metadata").write_text('{"data_position": 2'),
          "no_state": lambda d: shutil.rmtree(d / "state"), "empty_step": empty_dir,
          "other_state": other_state}


def params(run, step):
    tree = ocp.StandardCheckpointer().restore(run / "checkpoints" / str(step) / "state")
    return [np.asarray(x) for x in jax.tree.leaves(tree["params"])]


@pytest.mark.parametrize("kind", DAMAGE)
def test_resume_falls_back_to_the_newest_good_step(trained, tmp_path, capsys, kind):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    DAMAGE[kind](run / "checkpoints" / "3")
    capsys.readouterr()
    assert train(run, 5) == 0
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if "checkpoint step 3" in line]
    assert len(said) == 1 and "is damaged (" in said[0] and "moved to" in said[0], err
    assert kind != "other_state" or "(digest mismatch: other, params, opt_state)" in said[0], err
    assert "falling back to step 2, the newest good checkpoint" in err, err
    assert [p.name.split("-")[0] for p in (run / "checkpoints-corrupt").iterdir()] == ["3"]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]                          # rows after the fallback step logged again
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == [1, 2, 3, 4, 5]
    assert all(np.isfinite(x).all() for x in params(run, 5))


def test_every_step_damaged_refuses_in_one_line(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    for step, kind in zip((1, 2, 3), ("flip", "garbled_meta", "no_state")):
        DAMAGE[kind](run / "checkpoints" / str(step))
    capsys.readouterr()
    assert train(run, 5) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no usable checkpoint in" in err and "move" in err, err
    assert all(f"step {s}:" in err for s in (1, 2, 3)), err
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == ["1", "2", "3"]


def test_inference_falls_back_and_moves_nothing(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    other_state(run / "checkpoints" / "3")               # params-only restores check the params digest
    capsys.readouterr()
    _, _, loaded, _ = load_for_inference(run)
    err = capsys.readouterr().err
    assert "checkpoint step 3" in err and "(digest mismatch: params)" in err, err
    for ours, saved in zip(jax.tree.leaves(loaded), params(run, 2)):
        np.testing.assert_array_equal(np.asarray(ours), saved)
    assert (run / "checkpoints" / "3").is_dir() and not (run / "checkpoints-corrupt").exists()


def test_stale_tmp_directories_are_removed_when_a_run_starts(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "checkpoints" / "4.orbax-checkpoint-tmp-123" / "state").mkdir(parents=True)
    assert train(run, 4) == 0
    assert not list((run / "checkpoints").glob("*.orbax-checkpoint-tmp-*"))


def test_a_checkpoint_without_digest_is_still_checked_for_finiteness():
    """Checkpoints saved before digests existed: non-finite params or optimiser state are refused."""
    from lineage_jax.runs.checkpoint import _problem, digest
    good = {"params": {"w": np.ones(3, np.float32)}, "opt_state": ({"mu": np.zeros(3, np.float32)},), "step": 1}
    assert _problem(good, {}) is None and _problem(good, {"digest": digest(good)}) is None
    for item in ("params", "opt_state"):
        bad = jax.tree.map(np.array, good)                  # a copy
        leaf = bad["params"]["w"] if item == "params" else bad["opt_state"][0]["mu"]
        leaf[1] = np.inf if item == "params" else np.nan
        assert _problem(bad, {}) == f"{item} not finite"
        assert _problem(bad, {"digest": digest(good)}) == f"digest mismatch: {item}"
