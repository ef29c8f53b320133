"""The clip lesson: its verdict is read off the rows, and ``lineage lesson clip --quick`` writes a result.json
(both models' rows, the filter's numbers) and the similarity, filter and image PNGs."""
import json

import pytest

from lineage_jax import cli
from lineage_jax.lessons import clip as lesson


def row(zs12=0.5, zs4=0.9, p=0.95, r=0.95):
    return {"model": "all pairs", "zero_shot_12": zs12, "zero_shot_4": zs4, "filter_precision": p, "filter_recall": r}


def test_supports_reads_the_rows():
    assert lesson.supports([row(), {"model": "CLIP-filtered", "zero_shot_12": 0.0}])
    assert not lesson.supports([row(zs12=0.2)])          # < 3 x 1/12
    assert not lesson.supports([row(zs4=0.4)])
    assert not lesson.supports([row(p=0.5)])
    assert not lesson.supports([row(r=0.5)])


@pytest.mark.slow   # 16 s; the default siblings: test_supports_reads_the_rows, and tests/commands/test_clip.py
def test_quick_writes_result_json_and_pngs(tmp_path):   # trains, scores and reads a CLIP run through the CLI
    assert cli.main(["lesson", "clip", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    res = json.loads((tmp_path / "result.json").read_text())
    assert [r["model"] for r in res["rows"]] == ["all pairs", "CLIP-filtered"]
    first = res["rows"][0]
    assert res["supported"] == lesson.supports(res["rows"])
    assert 0 <= first["filter_precision"] <= 1 and 0 <= first["filter_recall"] <= 1
    assert res["rows"][1]["train_pairs"] < first["train_pairs"]
    assert len(res["details"]["similarity"]) == 12 and len(res["details"]["similarity"][0]) == 12
    for name in res["figures"]:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(res["figures"]) == {"clip_similarity.png", "clip_filter.png", "clip_images.png"}
