"""One run per run directory, and nothing in it clobbered (issue 15, causes 3 and 4).

The lock is held by a real second process; refusals are one line, exit 2, and leave every file
as it was; ``--overwrite`` clears only the run's own files."""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lineage_jax import cli
from lineage_jax.config import load_config
from lineage_jax.runs import lock

ROOT = Path(__file__).resolve().parents[2]
TINY = ["model.layers=1", "model.width=32", "model.heads=2", "model.context=32", "model.attn_chunks=2",
        "train.batch_size=8", "train.steps=2", "train.log_every=1", "train.eval_every=0",
        "optim.warmup_steps=0", "train.async_checkpointing=false"]
HOLD = ("import sys, time; from pathlib import Path; from lineage_jax.runs import lock\n"
        "with lock.hold(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(120)\n")


def train(run, *extra, flags=()):
    return cli.main(["train", "--no-progress", "--no-sample", *flags, *TINY, *extra, f"run_dir={run}"])


def one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), captured.err
    return err[0]


def snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture()
def holder(tmp_path):
    """A real process holding ``tmp_path/run``'s lock."""
    run = tmp_path / "run"
    run.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout.readline().strip() == "held"
    yield run, p
    if p.poll() is None:
        p.kill()
    p.wait()


def test_a_second_run_is_refused_in_one_line_naming_the_holder(holder, capsys):
    run, p = holder
    assert train(run) == 2
    line = one_line_error(capsys)
    assert f"run_dir {run} is in use by another run (pid {p.pid}" in line and "lock.hold" not in line, line
    assert [x.name for x in run.iterdir()] == ["run.lock"]          # nothing written, nothing compiled


def test_after_kill_9_of_the_holder_a_new_run_proceeds(holder, capsys):
    run, p = holder
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert json.loads((run / "run.lock").read_text())["pid"] == p.pid      # the stale file is left behind ...
    assert train(run) == 0                                                 # ... and blocks nothing
    assert not (run / "run.lock").exists() and (run / "checkpoints" / "2").is_dir()


def test_the_lock_is_released_on_exceptions_and_ctrl_c(tmp_path):
    for exc in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(exc):
            with lock.hold(tmp_path):
                with pytest.raises(lock.RunDirBusyError, match=f"run_dir {tmp_path} is in use .*pid {os.getpid()}"):
                    with lock.hold(tmp_path):
                        pass
                raise exc
        assert not (tmp_path / "run.lock").exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "run.lock").write_text(json.dumps({"pid": dead.pid, "command": "lineage train"}))
    with lock.hold(tmp_path):                                  # a lock file of a dead pid: taken over
        assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()


def test_a_file_or_an_uncreatable_path_is_one_line_naming_run_dir(tmp_path, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    assert train(f) == 2
    assert one_line_error(capsys) == f"error: run_dir {f}: is a file, not a directory; give a directory path"
    assert f.read_text() == "mine"
    assert train("/proc/x/run") == 2
    line = one_line_error(capsys)
    assert line.startswith("error: run_dir /proc/x/run: cannot create it (") and "No such file" in line, line


def test_foreign_files_are_refused_and_overwrite_keeps_them(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    (run / "config.yaml").write_text("apiVersion: v1\nkind: Pod\n")     # a user's own config.yaml
    before = snapshot(run)
    assert train(run) == 2
    line = one_line_error(capsys)
    assert f"run_dir {run} holds files that are not a run's own (notes.txt)" in line and "--overwrite" in line
    (run / "notes.txt").unlink()
    assert train(run) == 2
    assert "has a config.yaml that is not a lineage run's" in one_line_error(capsys)
    (run / "notes.txt").write_text("mine")
    assert snapshot(run) == before
    assert train(run, flags=["--overwrite"]) == 0
    assert (run / "notes.txt").read_text() == "mine"
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["width"] == 32


def test_another_models_config_is_refused_without_a_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    other = load_config("tiny", TINY + ["model.width=64", f"run_dir={run}"]).to_dict()
    (run / "config.yaml").write_text(yaml.safe_dump(other, sort_keys=False))
    before = snapshot(run)
    assert train(run) == 2
    line = one_line_error(capsys)
    assert "holds a run of another model (model.width: 64 there, 32 here)" in line and "--overwrite" in line, line
    assert snapshot(run) == before


def test_metrics_without_checkpoints_are_not_dropped(tmp_path, capsys):
    """Deleting checkpoints/ and rerunning used to restart silently and delete metrics.jsonl."""
    run = tmp_path / "run"
    assert train(run, "optim.warmup_steps=50") == 0             # warmup 50 > 2 steps: clamped, with a note
    assert "note: optim.warmup_steps=50 is more than train.steps=2" in capsys.readouterr().err
    shutil.rmtree(run / "checkpoints")
    before = snapshot(run)
    assert train(run, "train.steps=3") == 2
    line = one_line_error(capsys)
    assert "has metrics.jsonl but no checkpoints/" in line and "--overwrite to start afresh" in line, line
    assert snapshot(run) == before
    assert train(run, "train.steps=3", flags=["--overwrite"]) == 0
    assert [json.loads(r)["step"] for r in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_a_changed_tokenizer_is_refused_on_resume_and_on_sample(tmp_path, capsys):
    """Retraining the tokenizer in place used to let its runs resume and sample, decoding ids as other text."""
    from lineage_jax.decode import load_for_inference
    from lineage_jax.runs.rundir import RunDirError
    from lineage_jax.tokenize.bpe_train import train_bpe
    lines = (ROOT / "scripts" / "langid_text" / "en.txt").read_text(encoding="utf-8").splitlines()
    text = tmp_path / "text.txt"
    text.write_text("\n".join(lines[:80]), encoding="utf-8")
    tok, run = tmp_path / "tok", tmp_path / "run"
    train_bpe([text.read_text(encoding="utf-8")], 300).save(str(tok))
    data = [f"data.tokenizer={tok}", f"data.text_files=[{text}]", "data.eval_fraction=0.5", "model.vocab_size=300"]
    assert train(run, *data) == 0
    load_for_inference(run)                                          # the same tokenizer loads
    train_bpe([text.read_text(encoding="utf-8")], 290).save(str(tok))   # retrained in place
    capsys.readouterr()
    assert train(run, *data, "train.steps=3") == 2
    line = one_line_error(capsys)
    assert f"run_dir {run} was trained with another tokenizer (data.tokenizer={tok}" in line, line
    assert cli.main(["sample", "--run-dir", str(run), "--prompt", "PROMPT"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "another tokenizer" in captured.err       # nothing printed before the error
    (run / "run.json").unlink()                                      # the checkpoint's meta records it too
    with pytest.raises(RunDirError, match="checkpoint step 2 was trained with another tokenizer"):
        load_for_inference(run)


def test_sample_without_config_yaml_says_so_and_prints_nothing(tmp_path, capsys):
    (tmp_path / "checkpoints").mkdir()
    for run, said in ((tmp_path, "no config.yaml there (not a run directory)"), (tmp_path / "nope", "no such directory")):
        assert cli.main(["sample", "--run-dir", str(run), "--prompt", "PROMPT"]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and f"run_dir {run}: {said}" in captured.err, captured.err


@pytest.mark.slow
def test_two_real_training_runs_into_one_run_dir(tmp_path, capsys):
    """The issue's case: a second `lineage train` while the first trains is refused (it used to interleave
    metrics); once the first is killed -9, the same command resumes it."""
    import time
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}     # the suite's XLA_FLAGS: 8 devices, LLVM opt level 0
    first = subprocess.Popen([sys.executable, "-m", "lineage_jax", "train", "--no-progress", "--no-sample", *TINY,
                              "train.steps=100000", "train.ckpt_every=5", f"run_dir={run}"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (run / "checkpoints" / "5").is_dir():
            assert time.time() < deadline and first.poll() is None
            time.sleep(0.2)
        assert train(run, "train.steps=3") == 2                       # (the old code resumed it at once)
        line = one_line_error(capsys)
        assert f"run_dir {run} is in use by another run (pid {first.pid}" in line and "python -m lineage_jax train" in line, line
        assert line.endswith(f"run_dir={run}); wait for it to end, stop it, or give this run another run_dir"), line
    finally:
        first.kill()
        first.wait()
    steps = [json.loads(r)["step"] for r in (run / "metrics.jsonl").read_text().splitlines() if r.endswith("}")]
    assert steps == sorted(set(steps))                       # one writer: no step twice, none out of order
    from lineage_jax.runs.checkpoint import latest_step
    end = latest_step(run) + 2
    assert train(run, f"train.steps={end}") == 0                       # the stale run.lock blocks nothing
    assert [json.loads(r)["step"] for r in (run / "metrics.jsonl").read_text().splitlines()] == list(range(1, end + 1))


def test_overwrite_clears_files_before_checkpoints(tmp_path, monkeypatch):
    """A kill midway through --overwrite's clearing leaves checkpoints without metrics (resumable), never
    metrics without checkpoints (which a plain rerun would refuse)."""
    import shutil
    from lineage_jax.runs import rundir
    (tmp_path / "checkpoints" / "5").mkdir(parents=True)
    for name in ("metrics.jsonl", "config.yaml", "run.json", "loss.png"):
        (tmp_path / name).write_text("x")

    def killed(path, *a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        rundir.clear(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]
