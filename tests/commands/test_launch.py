"""``lineage launch local``: N processes of one lineage command, process 0 streamed, every one logged,
the exit status non-zero when any fails. Commands here import no JAX, so each case takes seconds;
tests/train/test_multihost.py launches real JAX runs."""
import pytest

from lineage_jax import cli
from lineage_jax.commands import launch


def run(tmp_path, *cmd, processes=2):
    return cli.main(["launch", "local", "--processes", str(processes), "--devices-per-process", "2",
                     "--log-dir", str(tmp_path), "--timeout", "120", "--", *cmd])


def test_every_process_runs_the_command_and_process_0_is_streamed(tmp_path, capsys):
    assert run(tmp_path, "train", "--help") == 0                        # argparse's help: no JAX, exit 0
    out = capsys.readouterr().out
    logs = [(tmp_path / f"process-{i}.log").read_text() for i in (0, 1)]
    assert logs[0] == logs[1] != "" and logs[0] in out and "--coordinator" in out   # the help, from each process
    assert out.count(logs[0]) == 1                                      # process 1's only in its log


def test_one_failing_process_fails_the_launch(tmp_path, capsys):
    assert run(tmp_path, "train", "--config", "no-such-preset") == 1
    err = capsys.readouterr().err
    assert "process 0 exited 2, process 1 exited 2" in err and str(tmp_path) in err
    assert "error: " in (tmp_path / "process-1.log").read_text()


@pytest.mark.parametrize("argv, words", [([], "give the command after --"), (["launch", "local"], "not 'launch'")])
def test_a_missing_or_nested_command_is_one_line(tmp_path, capsys, argv, words):
    assert run(tmp_path, *argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: lineage launch local") and words in err and "\n" not in err


def test_every_child_is_stopped_and_reaped(tmp_path):
    procs = launch.start(["train", "--help"], 2, 1, tmp_path)
    launch.stop(procs, term_wait=30)
    assert all(p.returncode is not None for p in procs)                # reaped: no zombie, none left running


@pytest.mark.parametrize("cmd, name", [(["lesson", "dropout", "--quick"], "lesson dropout"), (["align", "dpo"], "align dpo"),
                                       (["clip", "train"], "clip train"), (["bench"], "bench"),
                                       (["finetune", "merge", "--run-dir", "x", "--out", "y"], "finetune merge"),
                                       (["scaling", "fit", "--runs", "x"], "scaling fit")])
def test_a_one_process_command_is_refused_before_any_process_starts(tmp_path, capsys, cmd, name):
    assert run(tmp_path / "logs", *cmd) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {launch.refusal(name)}" and "train, finetune, scaling sweep" in err
    assert not (tmp_path / "logs").exists()                             # no process started, no log written
