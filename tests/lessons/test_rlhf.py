"""The rlhf lesson: ``--quick`` writes a result.json whose verdict follows its rows (SFT, DPO, PPO measured
by the gold function, KL to SFT), and ``supports`` reads the claim off the rows, both ways."""
import json

import pytest

from lineage_jax import cli
from lineage_jax.lessons import rlhf


def _rows(sft, dpo, ppo, kl=1.0):
    base = {"correct": 0, "rude": 0, "proxy": 0, "kl_bound": 5.0, "param": 0.1}
    return [{**base, "policy": "sft", "gold": sft, "kl": 0.0}, {**base, "policy": "dpo", "gold": dpo, "kl": kl},
            {**base, "policy": "ppo", "gold": ppo, "kl": kl}]


def test_supports_reads_the_rows():
    assert rlhf.supports(_rows(0.2, 0.3, 0.4))
    assert not rlhf.supports(_rows(0.2, 0.1, 0.4))
    assert not rlhf.supports(_rows(0.2, 0.3, 0.4, kl=9.0))   # gains past the KL bound do not count


@pytest.mark.slow
def test_quick_writes_a_result(tmp_path, capsys):
    assert cli.main(["lesson", "rlhf", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    res = json.loads((tmp_path / "result.json").read_text())
    assert [r["policy"] for r in res["rows"]] == ["sft", "dpo", "ppo"]
    assert res["supported"] == rlhf.supports(res["rows"])
    assert abs(res["rows"][0]["kl"]) < 1e-3 and all(-3 <= r["gold"] <= 2 for r in res["rows"])
    assert all((tmp_path / f).is_file() for f in res["figures"])
    assert 0 <= res["details"]["rm_test_accuracy"] <= 1
