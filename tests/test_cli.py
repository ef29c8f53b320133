"""CLI smoke tests: train -> sample on the same run_dir; bench --json; python -m entry point."""
import json
import subprocess
import sys

from lineage_jax import cli

TINY = ["model.layers=1", "model.width=32", "model.heads=2", "model.context=32", "model.attn_chunks=2",
        "train.batch_size=8", "train.steps=6", "train.log_every=3", "train.eval_every=3", "train.eval_batches=1",
        "optim.warmup_steps=1"]


def test_train_then_sample(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--no-progress", "--no-sample", *TINY, f"run_dir={run}"]) == 0
    out = capsys.readouterr().out
    assert "done: 6 steps" in out and (run / "metrics.jsonl").is_file()
    assert cli.main(["sample", "--run-dir", str(run), "--prompt", "def f", "--max-new-tokens", "8", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["text"].startswith("def f") and len(result["text"]) > len("def f")
    assert cli.main(["sample", "--run-dir", str(run), "--prompt", "x", "--max-new-tokens", "4",
                     "--strategy", "greedy"]) == 0
    assert capsys.readouterr().out.startswith("x")


def test_sample_bad_input_is_one_line(tmp_path, capsys):
    cases = [(["--prompt", "a"], "nothing: no such directory"), (["--temperature", "-1"], "--temperature=-1.0: must be >= 0"),
             (["--prompt", ""], "--prompt is empty"), (["--max-new-tokens", "0"], "--max-new-tokens=0"),
             (["--temperature", "nan"], "--temperature=nan: must be >= 0 and finite"),
             (["--temperature", "inf"], "--temperature=inf: must be >= 0 and finite")]
    for extra, message in cases:
        assert cli.main(["sample", "--run-dir", str(tmp_path / "nothing"), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_bench_json(capsys):
    args = ["bench", "--json", "--steps", "2", "--no-torch", "--no-depth", "model.layers=1", "model.width=32",
            "model.heads=2", "model.context=32", "model.attn_chunks=2", "train.batch_size=2"]
    assert cli.main(args) == 0
    r = json.loads(capsys.readouterr().out)
    for variant in ("unrolled", "scan"):
        assert r[variant]["tokens_per_s"] > 0 and 0 < r[variant]["mfu"] < 1
        assert r[variant]["compile_s"] > 0 and r[variant]["cost_analysis_flops"] > 0
    assert 0.5 < r["unrolled"]["cost_over_formula"] < 2.0 and r["scan"]["cost_over_formula"] is None
    assert r["flops_per_token"] == 6 * r["matmul_params"] + 12 * 1 * 2 * 16 * 32


def test_bench_out_is_checked_before_any_work(tmp_path):
    """``bench TARGET --out``: a directory, a missing parent or a non-PNG name is one line (exit 2)
    before JAX is even imported, for every target (the plot is written after minutes of measuring)."""
    cases = [(str(tmp_path), "is a directory"), (str(tmp_path / "no" / "p.png"), "does not exist"),
             (str(tmp_path / "plot.txt"), "ending in .png")]
    script = ("import sys; from lineage_jax import cli; rc = cli.main(sys.argv[1:]); "
              "print(rc, 'jax' in sys.modules)")
    for target in ("gemm", "attention", "train"):
        for out, message in cases:
            r = subprocess.run([sys.executable, "-c", script, "bench", target, "--quick", "--out", out],
                               capture_output=True, text=True)
            assert r.stdout.split() == ["2", "False"], (target, out, r.stdout, r.stderr)
            err = r.stderr.strip().splitlines()
            assert len(err) == 1 and f"--out={out}" in err[0] and message in err[0], err


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "lineage_jax", "--help"], capture_output=True, text=True, check=True)
    assert "train" in out.stdout and "sample" in out.stdout and "bench" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "lineage_jax", "train", "train.stpes=3"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: unknown key 'train.stpes'")


def test_overrides_may_follow_flags():
    """``lineage train train.steps=2 --no-progress run_dir=x``: every override is taken, in order."""
    parser = cli.build_parser()
    args = cli.parse_args(parser, ["train", "train.steps=2", "--no-progress", "run_dir=x", "train.steps=3"])
    assert args.overrides == ["train.steps=2", "run_dir=x", "train.steps=3"] and args.no_progress
    try:
        cli.parse_args(parser, ["train", "--no-progress", "--bogus"])
    except SystemExit as e:
        assert e.code == 2
    else:
        raise AssertionError("an unknown flag must still be refused")


def test_every_user_error_kind_is_one_line_and_a_bug_stays_a_traceback(monkeypatch, capsys):
    """One exception type for what a user can fix (``UserError``): the CLI prints it in one line,
    exit 2; any other exception, a builtin FileNotFoundError or ValueError included, is a bug."""
    import pytest

    from lineage_jax.attention.backend import AttentionBackendError
    from lineage_jax.config import ConfigError, MissingFileError, MissingPackageError, UserError
    from lineage_jax.decode.args import SamplingError
    from lineage_jax.interop import InteropError
    from lineage_jax.runs.checkpoint import CheckpointError
    from lineage_jax.runs.lock import RunDirBusyError
    from lineage_jax.tokenize import TokenizerError
    from lineage_jax.train.loop import NonFiniteError, RunDirError
    kinds = [ConfigError, MissingFileError, SamplingError, InteropError, CheckpointError, RunDirError,
             AttentionBackendError, TokenizerError, MissingPackageError, RunDirBusyError, NonFiniteError]
    for kind in kinds:
        assert issubclass(kind, UserError), kind

    def raising(exc):
        def cmd(args):
            raise exc
        monkeypatch.setattr(cli, "cmd_train", cmd)
        return cli.main(["train"])

    for kind in kinds:
        exc = kind("top_p", 0.0, "must be in (0, 1]") if kind is SamplingError else kind("top_p=0.0: must be in (0, 1]")
        assert raising(exc) == 2
        assert capsys.readouterr().err == "error: top_p=0.0: must be in (0, 1]\n"
    for bug in (FileNotFoundError("internal path"), ValueError("a bug"), KeyError("x")):
        with pytest.raises(type(bug)):
            raising(bug)
