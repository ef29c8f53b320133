"""How commands start JAX (``lineage_jax.commands.devices``), without starting a runtime: the commands that
train as several processes take the distributed flags (or the launcher's environment) and hand them to
``parallel.distributed``; every other command, started as one of several, refuses in one line before
any JAX call. tests/train/test_multihost.py and tests/commands/test_finetune_multihost.py run real
processes."""
import pytest

from lineage_jax import cli
from lineage_jax.commands import devices
from lineage_jax.config import ConfigError
from parallel import distributed

ENV = ("LINEAGE_COORDINATOR", "LINEAGE_NUM_PROCESSES", "LINEAGE_PROCESS_ID", "LINEAGE_LOCAL_DEVICES")


@pytest.fixture
def reached(monkeypatch):
    """``parallel.distributed.initialize`` replaced: it records the Cluster and stops the command there."""
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    seen = []

    def initialize(cluster):
        seen.append(cluster)
        raise ConfigError("stopped before the runtime")
    monkeypatch.setattr(distributed, "initialize", initialize)
    return seen


@pytest.mark.parametrize("argv", [
    ["train"],
    ["finetune", "--from", "{base}", "--run-dir", "{out}"],
    ["scaling", "sweep", "--out", "{out}"],
])
def test_the_training_commands_start_the_runtime_from_their_flags(tmp_path, capsys, reached, argv):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.yaml").write_text("{}\n")   # a run directory, as far as the flags' checks go
    argv = [a.format(base=tmp_path / "base", out=tmp_path / "out") for a in argv]
    flags = ["--coordinator", "10.0.0.1:1234", "--num-processes", "2", "--process-id", "1", "--devices", "4"]
    assert cli.main([*argv, *flags]) == 2
    assert "stopped before the runtime" in capsys.readouterr().err
    assert reached == [distributed.Cluster("10.0.0.1:1234", 2, 1, 4)]


def test_the_launchers_environment_reaches_the_runtime_too(capsys, reached, monkeypatch):
    monkeypatch.setenv("LINEAGE_COORDINATOR", "127.0.0.1:5555")
    monkeypatch.setenv("LINEAGE_NUM_PROCESSES", "2")
    monkeypatch.setenv("LINEAGE_PROCESS_ID", "0")
    monkeypatch.setenv("LINEAGE_LOCAL_DEVICES", "4")
    assert cli.main(["scaling", "sweep", "--out", "unused"]) == 2
    assert reached == [distributed.Cluster("127.0.0.1:5555", 2, 0, 4)]


def test_a_bad_distributed_flag_is_one_line_before_jax(capsys, reached):
    assert cli.main(["scaling", "sweep", "--out", "y", "--num-processes", "2", "--process-id", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "need --coordinator" in err and "\n" not in err and not reached


@pytest.mark.parametrize("argv, name", [(["lesson"], "lesson"), (["align", "dpo", "--from", "x", "--run-dir", "y"], "align dpo"),
                                        (["diffusion", "train", "--run-dir", "x"], "diffusion train"),
                                        (["bench", "moe"], "bench"), (["sample", "--run-dir", "x"], "sample")])
def test_a_one_process_command_started_as_one_of_several_refuses_in_one_line(capsys, reached, monkeypatch, argv, name):
    monkeypatch.setenv("LINEAGE_COORDINATOR", "127.0.0.1:5555")
    monkeypatch.setenv("LINEAGE_NUM_PROCESSES", "2")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {devices.refusal(name)}" and not reached


def test_one_process_of_one_is_not_refused(capsys, reached, monkeypatch):
    monkeypatch.setenv("LINEAGE_COORDINATOR", "127.0.0.1:5555")
    monkeypatch.setenv("LINEAGE_NUM_PROCESSES", "1")
    assert cli.main(["lesson"]) == 0                                   # the listing
    assert "dropout" in capsys.readouterr().out


def test_finetune_from_a_hugging_face_checkpoint_across_processes_asks_for_a_converted_base(tmp_path, capsys, reached):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}\n")
    assert cli.main(["finetune", "--from", str(tmp_path / "hf"), "--run-dir", str(tmp_path / "ft"), "--coordinator",
                     "h:1", "--num-processes", "2", "--process-id", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "convert it first: lineage convert --from-hf" in err and "\n" not in err and not reached


def test_finetune_merge_is_one_process_even_with_the_flags(capsys, reached):
    assert cli.main(["finetune", "merge", "--run-dir", "x", "--out", "y", "--coordinator", "h:1",
                     "--num-processes", "2", "--process-id", "0"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {devices.refusal('finetune merge')}" and not reached


def test_which_commands_run_as_several_processes():
    several = [("train", None), ("finetune", None), ("finetune", "--from"), ("scaling", "sweep")]
    one = [("scaling", "fit"), ("scaling", None), ("finetune", "merge"), ("finetune", "export-peft"), ("align", "sft"),
           ("clip", "train"), ("diffusion", "train"), ("lesson", None), ("bench", None), ("sample", None)]
    assert all(devices.supports_several(c, s) for c, s in several)
    assert not any(devices.supports_several(c, s) for c, s in one)
    assert devices.MULTI_PROCESS_NAMES == ", ".join(
        " ".join([c, *subs]) for c, subs in devices.MULTI_PROCESS.items())   # the refusal names them all
