"""``lineage sample`` with speculative decoding and the paged engine: a draft equal to the target
has every proposal accepted (gamma + 1 tokens per target call) and, greedy, gives the same text
as the target alone; ``--prompts-file`` through continuous batching equals one prompt at a time;
bad flags are one line (exit 2) before JAX loads."""
import json
import math

import pytest

from lineage_jax import cli

TINY = ["model.layers=1", "model.width=32", "model.heads=2", "model.context=32", "model.attn_chunks=2",
        "train.batch_size=8", "train.steps=3", "train.log_every=3", "train.eval_every=3", "train.eval_batches=1",
        "optim.warmup_steps=1"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("spec") / "run"
    assert cli.main(["train", "--no-progress", "--no-sample", *TINY, f"run_dir={run}"]) == 0
    return run


def _lineage(capsys, *args):
    """``lineage ARGS`` in this process (a subprocess would pay JAX's start-up again); its JSON lines."""
    capsys.readouterr()
    assert cli.main(list(args)) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_draft_equal_to_target_accepts_every_proposal_and_keeps_the_greedy_text(run_dir, capsys):
    gamma, new = 3, 12
    base = ["sample", "--run-dir", str(run_dir), "--prompt", "def f", "--max-new-tokens", str(new), "--json",
            "--strategy", "greedy"]
    [spec] = _lineage(capsys, *base, "--draft-run-dir", str(run_dir), "--gamma", str(gamma))
    [plain] = _lineage(capsys, *base)
    assert spec["text"] == plain["text"] and spec["tokens"] == plain["tokens"]
    assert spec["draft_tokens_accepted"] == spec["draft_tokens_proposed"] == gamma * spec["target_calls"]
    n_new = len(spec["tokens"]) - len("def f")
    assert spec["new_tokens"] == n_new and spec["target_calls"] == math.ceil(n_new / (gamma + 1))
    if n_new == new:                                  # no EOS: exactly ceil(12 / 4) = 3 target calls
        assert spec["target_calls"] == 3


def test_sampled_speculative_with_the_same_draft_accepts_everything(run_dir, capsys):
    capsys.readouterr()
    assert cli.main(["sample", "--run-dir", str(run_dir), "--prompt", "import", "--max-new-tokens", "10", "--json",
                     "--draft-run-dir", str(run_dir), "--gamma", "4", "--temperature", "1.0", "--seed", "3"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["text"].startswith("import") and r["draft_tokens_accepted"] == r["draft_tokens_proposed"]
    assert r["target_calls"] == math.ceil(r["new_tokens"] / 5) and r["draft_tokens_proposed"] == 4 * r["target_calls"]


def test_prompts_file_through_the_paged_engine(run_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    lines = ["a", "import os", "def main():", "x = 1", "class A:"]
    prompts.write_text("\n".join(lines) + "\n")
    base = ["sample", "--run-dir", str(run_dir), "--max-new-tokens", "7", "--json", "--no-progress"]
    capsys.readouterr()
    assert cli.main([*base, "--prompts-file", str(prompts), "--strategy", "greedy", "--batch-size", "2",
                     "--block-size", "4"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in rows] == lines
    for r in rows[:2]:                                # each equals the prompt decoded alone (contiguous cache)
        assert cli.main([*base, "--prompt", r["prompt"], "--strategy", "greedy"]) == 0
        assert json.loads(capsys.readouterr().out)["tokens"] == r["tokens"]
    assert cli.main([*base, "--prompt", "def", "--num-samples", "3", "--temperature", "1.0"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["sample"] for r in rows] == [0, 1, 2] and all(r["text"].startswith("def") for r in rows)


def test_bad_speculative_flags_are_one_line(run_dir, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    text = (run_dir / "config.yaml").read_text()
    assert "vocab_size: 257" in text
    (other / "config.yaml").write_text(text.replace("vocab_size: 257", "vocab_size: 300"))
    run = str(run_dir)
    cases = [(["--draft-run-dir", run, "--gamma", "0"], "--gamma=0: must be at least 1"),
             (["--gamma", "3"], "only with --draft-run-dir"),
             (["--draft-run-dir", str(tmp_path / "missing")], "no such directory"),
             (["--draft-run-dir", str(tmp_path)], "no config.yaml"),
             (["--draft-run-dir", str(other)], "vocabulary 300 (byte) differs from the target's 257"),
             (["--draft-run-dir", run, "--strategy", "beam", "--num-beams", "2"], "not beam"),
             (["--num-samples", "2", "--strategy", "greedy"], "--num-samples=2: only with --strategy sample"),
             (["--block-size", "0"], "--block-size=0")]
    for extra, message in cases:
        assert cli.main(["sample", "--run-dir", run, "--prompt", "a", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_json_says_why_it_stopped_and_what_it_kept_of_a_long_prompt(run_dir, tmp_path, capsys):
    """Context 32, a 50-character prompt, 40 new tokens: --json (greedy, beam) slides the window and
    gives all 40; the paged engine (--prompts-file) stops at the context and says "context"."""
    long = "x = [1, 2, 3]\nfor i in range(10):\n    print(i)  # ok"[:50]
    base = ["sample", "--run-dir", str(run_dir), "--max-new-tokens", "40", "--json", "--no-progress"]
    prompts = tmp_path / "long.txt"
    prompts.write_text(long.replace("\n", " ") + "\n")
    for extra in (["--prompt", long, "--strategy", "greedy"], ["--prompt", long, "--strategy", "beam"],
                  ["--prompts-file", str(prompts), "--strategy", "greedy"]):
        capsys.readouterr()
        assert cli.main([*base, *extra]) == 0
        [r] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert (r["prompt_tokens"], r["prompt_tokens_kept"]) == (50, 31), extra
        assert r["stop_reason"] in ("eos", "max_new_tokens", "context") and len(r["tokens"]) == 31 + r["new_tokens"]
        if "--prompts-file" in extra:
            assert r["stop_reason"] in ("eos", "context") and r["new_tokens"] == 1
        elif r["stop_reason"] == "max_new_tokens":
            assert r["new_tokens"] == 40
        else:
            assert r["stop_reason"] == "eos" and r["tokens"][-1] == 256
