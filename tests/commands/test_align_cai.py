"""``lineage align judge`` and ``--judge`` (Constitutional AI / RLAIF): bad input is one line before anything
compiles; the judge trains from a run, then feeds SL-CAI (sft) and AI-labelled pairs (rm, dpo)."""
import json

import jax
import numpy as np
import pytest

from lineage_jax import cli
from lineage_jax.align import run as align_run
from tests.commands.test_align import _as_stage, _error, pre, small_data  # noqa: F401  (fixtures)


def test_judge_bad_input_is_one_line_before_compiling(pre, tmp_path, capsys, monkeypatch):  # noqa: F811
    monkeypatch.setattr(align_run.align_setup, "build", lambda *a, **k: pytest.fail("compiled before refusing"))
    out = str(tmp_path / "out")
    assert "is a 'pretrain' run; --judge takes a run of: judge" in _error(
        capsys, ["align", "dpo", "--from", str(pre), "--judge", str(pre), "--run-dir", out])
    other = _as_stage(pre, tmp_path / "judge_other", "judge", sha="0" * 64)
    assert "--judge" in _error(capsys, ["align", "sft", "--from", str(pre), "--judge", str(other),
                                        "--run-dir", out]).split("another tokenizer")[0]
    assert "align.examples=1" in _error(capsys, ["align", "judge", "--from", str(pre), "--run-dir", out,
                                                 "align.examples=1"])
    assert "is a 'judge' run; --from takes" in _error(capsys, ["align", "judge", "--from", str(other),
                                                               "--run-dir", out])
    with pytest.raises(SystemExit):   # argparse: ppo takes no --judge
        cli.main(["align", "ppo", "--policy", str(pre), "--reward", str(pre), "--judge", str(pre), "--run-dir", out])
    assert not (tmp_path / "out").exists()


def _summary(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])   # after TFDS's first-use lines


@pytest.mark.slow
def test_judge_then_slcai_and_rlaif(pre, tmp_path, capsys, small_data):  # noqa: F811
    common = ["--no-progress", "--json", small_data, "align.eval_prompts=4", "train.log_every=1"]
    judge = tmp_path / "judge"
    assert cli.main(["align", "judge", "--from", str(pre), "--run-dir", str(judge), "train.steps=2",
                     "align.examples=4", *common]) == 0
    final = _summary(capsys)["final"]
    assert {"verdict_correct", "verdict_brief", "verdict_polite", "ai_agreement", "human_agreement"} <= set(final)
    assert align_run.stage_of(judge) == "judge"
    assert set(align_run.load_params(judge)[1]) == {"lm", "heads"}
    # the judge's heads are laid out by the same rules: ZeRO-3 over 8 devices = one device
    assert cli.main(["align", "judge", "--from", str(pre), "--run-dir", str(tmp_path / "judge8"), "train.steps=2",
                     "align.examples=4", "mesh.data=1", "mesh.fsdp=8", "parallel.zero_stage=3", *common]) == 0
    capsys.readouterr()
    for a, b in zip(jax.tree.leaves(align_run.load_params(judge)[1]),
                    jax.tree.leaves(align_run.load_params(tmp_path / "judge8")[1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert cli.main(["align", "sft", "--from", str(pre), "--judge", str(judge), "--run-dir", str(tmp_path / "sl"),
                     "train.steps=2", "align.revise_prompts=8", "align.candidates=1", *common]) == 0
    fb = _summary(capsys)["feedback"]
    assert fb["revised_prompts"] == 8 and 0 <= fb["critiqued"] <= 1
    assert cli.main(["align", "dpo", "--from", str(tmp_path / "sl"), "--judge", str(judge), "--run-dir",
                     str(tmp_path / "rlaif"), "train.steps=2", *common]) == 0
    fb = _summary(capsys)["feedback"]
    assert fb["pairs"] == 64 and 0 <= fb["kept_human_order"] <= 1
    rec = json.loads((tmp_path / "rlaif" / "run.json").read_text())["align"]
    assert rec["sources"]["judge"] == str(judge)
