"""The diffusion lesson: its verdict follows the measured rows (each of the three claims can fail it alone), a
bad knob is one line, and ``lineage lesson diffusion --quick`` writes a result.json and both figures."""
import json

import pytest

from lineage_jax import cli
from lineage_jax.config import ConfigError, UserError
from lineage_jax.data import digits
from lineage_jax.lessons import diffusion as lesson


def rows(ddim_acc=0.9, ddim_fid=1.2, acc_w=(0.1, 0.7, 0.8, 0.9), flops=(100.0, 30.0)):
    ws = (0.0, 1.0, 2.0, 3.0)
    return ([{"part": "real", "accuracy": 0.98, "fid": 0.3},
             {"part": "sampler", "sampler": "ddpm", "steps": 1000, "accuracy": 0.9, "fid": 1.0},
             {"part": "sampler", "sampler": "ddim", "steps": 50, "accuracy": ddim_acc, "fid": ddim_fid}]
            + [{"part": "guidance", "guidance": w, "accuracy": a, "fid": 1.0} for w, a in zip(ws, acc_w)]
            + [{"part": "cost", "space": s, "flops_per_step": f} for s, f in zip(("pixel", "latent"), flops)])


@pytest.mark.parametrize("kw, supported", [
    ({}, True),
    (dict(ddim_acc=0.75), False),                       # DDIM far below DDPM in class accuracy
    (dict(ddim_fid=1.6), False),                        # ... or in FID
    (dict(acc_w=(0.1, 0.9, 0.9, 0.85)), False),         # guidance w = 3 does not beat w = 1
    (dict(acc_w=(0.7, 0.8, 0.8, 0.9)), False),          # ... nor the unconditional model by 0.3
    (dict(flops=(100.0, 60.0)), False),                 # the latent step is not half as cheap
])
def test_verdict_follows_each_measurement(kw, supported):
    assert lesson.supports(rows(**kw)) is supported


@pytest.mark.parametrize("kw, msg", [(dict(guidances="1,3"), r"^guidances=1,3: comma-separated scales >= 0 that "
                                                            r"include 0"),
                                     (dict(guidances="0,1,x"), r"^guidances=0,1,x"),
                                     (dict(ddim_steps=2000), r"^ddim_steps=2000: must be <= timesteps=1000"),
                                     (dict(samples=5), r"^samples=5, ddpm_samples=100: need >= 10")])
def test_bad_knobs_are_one_line(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        lesson.Config(**kw)


@pytest.mark.slow
def test_quick_writes_result_json_and_figures(tmp_path):
    try:
        digits.digits_csv()
    except UserError:
        pytest.skip("scikit-learn (its bundled digits file) is not installed")
    rc = cli.main(["lesson", "diffusion", "--quick", "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 0
    res = json.loads((tmp_path / "o" / "result.json").read_text())
    parts = {r["part"] for r in res["rows"]}
    assert parts == {"real", "snapshot", "sampler", "guidance", "cost", "ablation"}
    ddim, abl = (next(r for r in res["rows"] if r["part"] == p and r["sampler"] == "ddim") for p in ("sampler", "ablation"))
    assert ddim["recompute_eps"] is True and abl["recompute_eps"] is False
    assert res["supported"] is lesson.supports(res["rows"]) and res["details"]["flops_ratio"] > 2
    assert 0 <= min(r["accuracy"] for r in res["rows"]) and max(r["accuracy"] for r in res["rows"]) <= 1
    for name in res["figures"]:
        assert (tmp_path / "o" / name).read_bytes()[:4] == b"\x89PNG"
