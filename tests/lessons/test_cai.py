"""The cai lesson: ``--quick`` writes a result.json whose verdict follows its rows (labellers' agreement with
gold; SFT, SL-CAI, RLHF, RLAIF and the CAI chain measured by the gold function), and ``supports`` reads the
claim off the rows, both ways."""
import json

import pytest

from lineage_jax import cli
from lineage_jax.lessons import cai


def _rows(sft=0.2, sl=0.3, rlhf=0.5, rlaif=0.45, chain=0.5, human=0.85, ai=0.82):
    base = {"correct": 0, "rude": 0, "length": 3, "kl": 1.0, "tolerance": 0.1}
    return [{**base, "policy": "sft", "labels": "-", "agreement": None, "gold": sft},
            {**base, "policy": "sl-cai", "labels": "ai critique", "agreement": None, "gold": sl},
            {**base, "policy": "rlhf", "labels": "human", "agreement": human, "gold": rlhf},
            {**base, "policy": "rlaif", "labels": "ai", "agreement": ai, "gold": rlaif},
            {**base, "policy": "cai", "labels": "ai", "agreement": ai, "gold": chain}]


def test_supports_reads_the_rows():
    assert cai.supports(_rows())
    assert not cai.supports(_rows(ai=0.7))                 # AI labels much worse than the human's
    assert not cai.supports(_rows(rlaif=0.35))             # RLAIF more than the tolerance below RLHF
    assert not cai.supports(_rows(sl=0.1))                 # SL-CAI no better than SFT
    assert not cai.supports(_rows(chain=0.2))


@pytest.mark.slow
def test_quick_writes_a_result(tmp_path):
    assert cli.main(["lesson", "cai", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    res = json.loads((tmp_path / "result.json").read_text())
    assert [r["policy"] for r in res["rows"]] == ["sft", "sl-cai", "rlhf", "rlaif", "cai"]
    assert res["supported"] == cai.supports(res["rows"])
    assert abs(res["rows"][0]["kl"]) < 1e-3 and all(-3 <= r["gold"] <= 2 for r in res["rows"])
    assert all(0 <= r["agreement"] <= 1 for r in res["rows"][2:])
    assert all((tmp_path / f).is_file() for f in res["figures"])
    assert set(res["details"]["judge_accuracy"]) == {"correct", "brief", "polite"}
