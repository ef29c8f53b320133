"""The lesson registry, the harness and ``lineage lesson``: the listing, a run's result.json and
PNGs, user errors in one line before any work, and ``supported`` decided by the measured rows."""
import dataclasses
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from lineage_jax import cli
from lineage_jax.config import ConfigError
from lineage_jax.lessons import harness, registry

REPO = Path(__file__).resolve().parents[2]
RESULT_KEYS = {"lesson", "paper", "claim", "supported", "rows", "figures", "details"}


# --------------------------------------------------------------------------- a fake lesson

@dataclasses.dataclass(frozen=True)
class FakeConfig:
    steps: int = 20
    gain: float = 1.0        # the measured score is steps * gain
    label: str = "fake"
    plot: bool = True

    def __post_init__(self):
        if self.steps < 1:
            raise ConfigError(f"steps={self.steps}: must be at least 1")


def _fake_run(cfg, out_dir=None, progress=True):
    step = lambda state, batch: (state + batch, {"total": state + batch})
    state, history, _ = harness.fit(step, 0.0, lambda s: cfg.gain, cfg.steps, progress=progress)
    rows = [{"step": r["step"], "score": r["total"]} for r in history]
    draw = lambda ax: ax.plot([r["step"] for r in rows], [r["score"] for r in rows])
    figures = [harness.figure(out_dir, "score.png", draw)] if out_dir and cfg.plot else []
    return harness.result("fake", rows, lambda rows: rows[-1]["score"] >= 10, figures, label=cfg.label)


@pytest.fixture
def fake(monkeypatch):
    mod = types.ModuleType("fake_lesson")
    mod.Config, mod.QUICK, mod.run = FakeConfig, {"steps": 5}, _fake_run
    monkeypatch.setitem(sys.modules, "fake_lesson", mod)
    monkeypatch.setitem(registry.LESSONS, "fake", registry.Lesson(
        "fake", "2000", "Nobody 2000", "the score reaches 10", "fake_lesson", flags=("steps",)))
    return mod


def _main(capsys, *argv):
    rc = cli.main(["lesson", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("argv,score,supported", [
    ((), 20.0, True),                                # 20 steps of +1
    (("gain=0.25",), 5.0, False),                    # the measurement falls short of the claim
    (("--quick", "gain=2"), 10.0, True),             # QUICK: 5 steps
    (("--steps", "9", "--quick"), 9.0, False),       # the flag beats QUICK
])
def test_supported_follows_the_measured_rows(fake, tmp_path, capsys, argv, score, supported):
    rc, out, _ = _main(capsys, "fake", *argv, "--out", str(tmp_path), "--json")
    assert rc == 0
    res = json.loads(out)
    assert res == json.loads((tmp_path / "result.json").read_text())
    assert set(res) == RESULT_KEYS and res["lesson"] == "fake" and res["claim"] == "the score reaches 10"
    assert res["rows"][-1]["score"] == score and res["supported"] is supported
    assert res["figures"] == ["score.png"] and (tmp_path / "score.png").read_bytes()[:4] == b"\x89PNG"


def test_text_report_and_typed_overrides(fake, tmp_path, capsys):
    rc, out, _ = _main(capsys, "fake", "label=hello", "plot=false", "--out", str(tmp_path), "--no-progress")
    assert rc == 0 and "NOT supported" not in out and "-> supported" in out
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["details"] == {"label": "hello"} and res["figures"] == [] and not (tmp_path / "score.png").exists()


@pytest.mark.parametrize("argv,message", [
    (("fake", "color=red"), "error: unknown key 'color'; allowed: steps, gain, label, plot"),
    (("fake", "gain"), "error: override 'gain' must look like key=value; allowed keys: steps, gain, label, plot"),
    (("fake", "gain=lots"), "error: gain=lots: expected a number"),
    (("fake", "plot=maybe"), "error: plot=maybe: expected true or false"),
    (("fake", "steps=0"), "error: steps=0: must be at least 1"),
    (("fake", "--steps", "0"), "error: --steps=0: must be at least 1"),
    (("fake", "--task", "dates"), "error: --task: not a flag of lesson fake; use key=value (its flags: --steps)"),
    (("poems",), f"error: lesson 'poems': unknown; known lessons: {', '.join([*registry.LESSONS, 'fake'])}"),
])
def test_user_errors_are_one_line_exit_2(fake, tmp_path, capsys, argv, message):
    rc, out, err = _main(capsys, *argv, "--out", str(tmp_path / "o"))
    assert rc == 2 and err.strip() == message and not out
    assert not (tmp_path / "o").exists()


def test_harness_fit_logs_and_evaluates_like_a_hand_loop():
    seen = []
    step = lambda s, b: (s * 2 + b, {"s": s})
    evaluate = lambda s, t: seen.append((t, s)) or {"value": s}
    state, history, evals = harness.fit(step, 1, lambda t: t, 25, evaluate=evaluate, eval_at={3, 25, 99},
                                        progress=False)
    hand, states = 1, {}
    for t in range(1, 26):
        hand, states[t] = hand * 2 + t, hand
    assert state == hand and [r["step"] for r in history] == [1, 10, 20, 25]
    assert [r["s"] for r in history] == [float(states[t]) for t in (1, 10, 20, 25)]
    assert evals == [{"step": 3, "value": states[4]}, {"step": 25, "value": hand}] and len(seen) == 2


def test_configure_coerces_by_field_type_and_spells_flags():
    cfg = harness.configure(FakeConfig, {"steps": "7", "gain": "1e-3", "plot": "0"}, quick={"label": "q"})
    assert cfg == FakeConfig(steps=7, gain=1e-3, label="q", plot=False)
    with pytest.raises(ConfigError, match=r"^steps=7\.5: expected an integer$"):
        harness.configure(FakeConfig, {"steps": "7.5"})
    with pytest.raises(ConfigError, match=r"^--n-steps=0: must be at least 1$"):
        harness.configure(FakeConfig, {"steps": "0"}, spelling={"steps": "--n-steps"})


# --------------------------------------------------------------------------- the registry and the CLI

def test_the_registry_lists_translate_with_its_metadata():
    t = registry.get("translate")
    assert t.metadata() == {"name": "translate", "era": "2017", "paper": "Vaswani et al. 2017, Attention Is All You "
                            "Need", "claim": t.claim} and "50%" in t.claim
    assert registry.load("translate").__name__ == t.module == "lineage_jax.lessons.translate"
    for lesson in registry.LESSONS.values():   # every flag names a field of its Config
        fields = {f.name for f in dataclasses.fields(registry.load(lesson.name).Config)}
        assert set(lesson.flags) <= fields, lesson.name


def test_listing_is_the_registry_and_imports_no_jax():
    code = ("import sys; from lineage_jax import cli; rc = cli.main(['lesson', '--json']); "
            "assert rc == 0 and 'jax' not in sys.modules, sorted(m for m in sys.modules if 'jax' in m)[:5]")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [lesson.metadata() for lesson in registry.LESSONS.values()]
    assert all(set(row) == {"name", "era", "paper", "claim"} for row in json.loads(r.stdout))


def test_listing_as_text(capsys):
    rc, out, _ = _main(capsys)
    header, *lines = out.splitlines()
    assert rc == 0 and header.split() == ["name", "era", "paper", "claim"] and len(lines) == len(registry.LESSONS)
    names = [line.split()[0] for line in lines]
    assert names == list(registry.LESSONS)                       # in the registry's order: the lineage's
    assert lines[names.index("translate")].split()[1:4] == ["2017", "Vaswani", "et"]


def test_out_that_is_a_file_fails_before_any_work(tmp_path):
    (tmp_path / "f").write_text("x")
    code = ("import sys; from lineage_jax import cli; rc = cli.main(['lesson', 'translate', '--out', sys.argv[1]]); "
            "assert rc == 2 and 'jax' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "f")], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines() == [f"error: --out={tmp_path / 'f'}: is a file; give a directory "
                                             "(it holds result.json and the PNGs)"]


def test_translate_quick_writes_result_json_and_its_png(tmp_path, capsys):
    rc, out, _ = _main(capsys, "translate", "--quick", "--out", str(tmp_path), "--no-progress")
    assert rc == 0
    res = json.loads((tmp_path / "result.json").read_text())
    assert set(res) == RESULT_KEYS and res["lesson"] == "translate" and res["paper"].startswith("Vaswani")
    assert res["details"]["config"]["steps"] == 300 and res["details"]["task"] == "dates"
    assert res["rows"][-1]["step"] == 300 and res["rows"][-1]["accuracy"] == res["details"]["accuracy"]
    assert res["supported"] is (res["details"]["accuracy"] >= 0.5)
    # the lesson's proof (its in-process twin, tests/lessons/test_translate.py::test_a_short_run_learns_to_
    # translate_dates, trains the same config and runs with -m slow): held-out exact match >= 50% (chance:
    # 1 in 73,049), cross-entropy down by more than 90%, the smoothed loss above the NLL
    s = res["details"]
    assert s["chance"] < 1e-4 and s["accuracy"] >= 0.5 and res["supported"], s["accuracy"]
    assert res["rows"][-1] == {"step": 300, "accuracy": s["accuracy"], "n": 200}
    assert s["final_nll"] < 0.1 * s["first_nll"] and s["final_loss"] > s["final_nll"], (s["first_nll"], s["final_nll"])
    assert sum(e["prediction"] == e["target"] for e in s["examples"]) >= 1
    assert res["figures"] == ["translate.png"] and (tmp_path / "translate.png").read_bytes()[:4] == b"\x89PNG"
    assert "held-out exact match" in out and ("-> supported" in out) is res["supported"]
