"""metrics.jsonl survives what a killed or interrupted run leaves (issue 15, causes 5 and 6)."""
import json

import pytest

from lineage_jax.runs import atomic
from lineage_jax.train.loop import RunDirError, truncate_metrics, read_metrics


def test_a_torn_last_line_is_dropped_with_a_note(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    notes = []
    truncate_metrics(path, 2, note=notes.append)
    assert read_metrics(path) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    assert len(notes) == 1 and "torn last line" in notes[0]


def test_a_damaged_line_before_the_last_is_one_line_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(RunDirError, match=r"line 2 is not JSON"):
        read_metrics(path)


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("old: 1\n")
    with pytest.raises(RuntimeError):
        with atomic.replacing(path) as tmp:
            tmp.write_text("new: half")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old: 1\n" and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]
    atomic.write_text(path, "new: 2\n")
    assert path.read_text() == "new: 2\n" and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_interrupted_run_writes_the_row_of_the_step_it_saves(tmp_path, monkeypatch, capsys):
    """Ctrl-C after step 5 of a run logging every 4: step 5 is saved, and so is its metrics row."""
    from lineage_jax import cli
    from lineage_jax.train import loop
    real_draw, calls = loop.draw, []

    def draw(sampler, position, batch_size):
        calls.append(position)
        if len(calls) == 6 and batch_size == 8:   # the 6th training batch: interrupt before step 6
            raise KeyboardInterrupt
        return real_draw(sampler, position, batch_size)

    monkeypatch.setattr(loop, "draw", draw)
    run = tmp_path / "run"
    args = ["train", "--no-progress", "--no-sample", "model.layers=1", "model.width=32", "model.heads=2",
            "model.context=32", "model.attn_chunks=2", "train.batch_size=8", "train.steps=12", "train.log_every=4",
            "train.eval_every=0", "train.ckpt_every=100", "optim.warmup_steps=0", "train.async_checkpointing=false",
            f"run_dir={run}"]
    assert cli.main(args) == 130
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 4, 5]
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == [5]


def test_atomic_files_get_ordinary_permissions(tmp_path):
    """mkstemp makes 0600 files; an atomic write gives a new file 0666 less the umask and keeps an old one's mode."""
    import os
    umask = os.umask(0o022)
    try:
        atomic.write_text(tmp_path / "new.yaml", "a: 1\n")
        assert (tmp_path / "new.yaml").stat().st_mode & 0o777 == 0o644
        old = tmp_path / "shared.json"
        old.write_text("{}")
        old.chmod(0o664)
        atomic.write_bytes(old, b"[]")
        assert old.stat().st_mode & 0o777 == 0o664 and old.read_bytes() == b"[]"
    finally:
        os.umask(umask)
