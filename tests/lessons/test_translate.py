"""The translation lesson: the paper's recipe (label smoothing ε = 0.1, §5.4; the inverse-square-root
warmup, §5.3) proved against optax and hand values; the synthetic tasks; a short run that learns;
``lineage lesson translate`` end to end."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.core import meta

from lineage_jax.config import ConfigError
from lineage_jax.lessons import translate as tr

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- the tasks

def test_number_words_by_hand():
    cases = {0: "zero", 7: "seven", 13: "thirteen", 20: "twenty", 42: "forty-two", 100: "one hundred",
             101: "one hundred and one", 342: "three hundred and forty-two", 1000: "one thousand",
             1005: "one thousand and five", 1342: "one thousand three hundred and forty-two",
             21000: "twenty-one thousand", 999999: "nine hundred and ninety-nine thousand nine hundred and ninety-nine"}
    for n, words in cases.items():
        assert tr.number_words(n) == words
    with pytest.raises(ValueError, match="outside"):
        tr.number_words(10 ** 6)


def test_dates_and_the_split():
    assert tr.written_date("2024-03-07") == "7 March 2024"
    assert tr.written_date("1999-12-31") == "31 December 1999"
    pairs = tr.task_pairs("dates")
    assert len(pairs) == 73049 and pairs[0] == ("1900-01-01", "1 January 1900") and len(set(pairs)) == len(pairs)
    train, test = tr.split(pairs, 1000, seed=0)
    assert len(test) == 1000 and len(train) == len(pairs) - 1000 and not set(train) & set(test)
    assert tr.split(pairs, 1000, seed=0)[1] == test          # deterministic from the seed
    assert tr.split(pairs, 1000, seed=1)[1] != test
    with pytest.raises(ConfigError, match="unknown; allowed: numbers, dates"):
        tr.task_pairs("poems")


def test_vocab_teacher_forcing_arrays():
    v = tr.Vocab()
    a = v.arrays([("forty-two", "42"), ("one", "1")], S=10, T=4)
    assert a["src"].shape == (2, 10) and v.decode(a["src"][0]) == "forty-two" and a["src"][1, 3:].tolist() == [v.PAD] * 7
    d4, d2, d1 = (v.index[c] for c in "421")
    assert a["tgt_in"].tolist() == [[v.BOS, d4, d2, v.PAD], [v.BOS, d1, v.PAD, v.PAD]]      # BOS y
    assert a["tgt_out"].tolist() == [[d4, d2, v.EOS, v.PAD], [d1, v.EOS, v.PAD, v.PAD]]     # y EOS
    assert v.decode([d4, d2, v.EOS, d1]) == "42"


# --------------------------------------------------------------------------- the recipe

def test_label_smoothing_equals_optax():
    """(1 − ε)·NLL + ε·mean(−log p) is the cross-entropy against optax.smooth_labels(onehot, ε)."""
    V = 11
    logits = jax.random.normal(jax.random.key(0), (3, 5, V)) * 3
    targets = jax.random.randint(jax.random.key(1), (3, 5), 0, V)
    mask = jnp.asarray(np.random.default_rng(0).random((3, 5)) < 0.7)
    for eps in (0.1, 0.0, 0.4):
        loss, nll = tr.label_smoothed_cross_entropy(logits, targets, mask, eps)
        per_token = optax.softmax_cross_entropy(logits, optax.smooth_labels(jax.nn.one_hot(targets, V), eps))
        np.testing.assert_allclose(loss, (per_token * mask).sum() / mask.sum(), rtol=1e-6)
        plain = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        np.testing.assert_allclose(nll, (plain * mask).sum() / mask.sum(), rtol=1e-6)
    # its floor: the entropy of q, reached when p = q
    eps, y = 0.1, jnp.array([[2]])
    q = optax.smooth_labels(jax.nn.one_hot(y, V), eps)
    floor, _ = tr.label_smoothed_cross_entropy(jnp.log(q), y, jnp.ones((1, 1)), eps)
    np.testing.assert_allclose(floor, -(q * jnp.log(q)).sum(), rtol=1e-6)


def test_inverse_sqrt_schedule_hand_values_and_optax():
    """lrate = d^−0.5 · min(step^−0.5, step · warmup^−1.5), step = optax count + 1."""
    base = tr.inverse_sqrt_schedule(512, 4000)          # the paper's base model
    hand = {1: 1.746928e-7,      # 512^-0.5 · 1 · 4000^-1.5 = 0.0441942 · 3.952847e-6
            1000: 1.746928e-4,   # linear warmup: 1000× the first step
            4000: 6.987712e-4,   # the peak: 512^-0.5 · 4000^-0.5 = 0.0441942 · 0.0158114
            16000: 3.493856e-4,  # 4× the warmup: half the peak (1/√4)
            100000: 1.397542e-4}
    for step, lr in hand.items():
        np.testing.assert_allclose(base(step - 1), lr, rtol=1e-5)
    lesson = tr.inverse_sqrt_schedule(64, 200)          # the lesson's default: peak 0.125 · 200^-0.5
    np.testing.assert_allclose([lesson(199), lesson(799)], [8.838835e-3, 4.419417e-3], rtol=1e-5)
    # the same schedule composed from optax pieces: linear warmup joined to a 1/√step decay
    for d, w in ((512, 4000), (64, 200), (128, 7)):
        peak = d ** -0.5 * w ** -0.5
        composed = optax.join_schedules(
            [optax.linear_schedule(d ** -0.5 * w ** -1.5, peak, transition_steps=w - 1),
             lambda c, d=d, w=w: d ** -0.5 * (c + w) ** -0.5], boundaries=[w - 1])
        counts = jnp.arange(0, 12 * w)   # (optax's warmup, (init − end)·frac + end in float32, cancels: atol)
        np.testing.assert_allclose(jax.vmap(tr.inverse_sqrt_schedule(d, w))(counts), jax.vmap(composed)(counts),
                                   rtol=1e-5, atol=1e-6 * peak)
    with pytest.raises(ConfigError, match="warmup=0"):
        tr.inverse_sqrt_schedule(64, 0)


def test_paper_adam_is_optax_adam_with_the_papers_betas():
    sched = tr.inverse_sqrt_schedule(64, 10)
    params = {"w": jnp.arange(4.0)}
    grads = {"w": jnp.array([0.5, -1.0, 2.0, 0.0])}
    ours, ref = tr.paper_adam(sched), optax.adam(sched, b1=0.9, b2=0.98, eps=1e-9)
    s1, s2 = ours.init(params), ref.init(params)
    for _ in range(3):
        u1, s1 = ours.update(grads, s1, params)
        u2, s2 = ref.update(grads, s2, params)
        np.testing.assert_array_equal(u1["w"], u2["w"])
    # Adam's first step moves each weight by lr·sign(g) (ĝ/√v̂ = ±1 up to ε): lr = sched(0)
    u, _ = ours.update(grads, ours.init(params), params)
    np.testing.assert_allclose(u["w"][:3], -sched(0) * np.sign(grads["w"][:3]), rtol=1e-4)


TINY = dict(task="dates", d_model=32, heads=4, d_ff=128, layers=1, warmup=100, batch=32, n_test=200,
            evals=0, eval_subset=200)


def test_train_step_is_pure():
    """Same state and batch in, same state and metrics out; the input state is left as it was."""
    cfg = tr.Config(**TINY)
    v = tr.Vocab()
    pairs = tr.task_pairs("dates")[:64]
    batch = {k: jnp.asarray(a) for k, a in v.arrays(pairs, 10, 18).items()}
    model = tr.Transformer(tr.TransformerConfig(vocab_size=len(v), d_model=32, heads=4, d_ff=128, encoder_layers=1,
                                                decoder_layers=1, max_len=18))
    params = jax.jit(model.init)(jax.random.key(0), batch["src"], batch["tgt_in"])["params"]
    params = meta.unbox(params)
    tx = tr.paper_adam(tr.inverse_sqrt_schedule(cfg.d_model, cfg.warmup))
    state = tr.LessonState(step=jnp.int32(0), params=params, opt_state=tx.init(params), key=jax.random.key(1))
    step = tr.make_train_step(model, tx)
    snapshot = lambda st: jax.tree.map(np.asarray, (st.step, st.params, st.opt_state, jax.random.key_data(st.key)))
    before = snapshot(state)
    (s1, m1), (s2, m2) = step(state, batch), step(state, batch)
    jax.tree.map(np.testing.assert_array_equal, (s1.params, m1), (s2.params, m2))
    jax.tree.map(np.testing.assert_array_equal, snapshot(state), before)
    assert int(s1.step) == 1 and np.isfinite(m1["grad_norm"])


@pytest.mark.slow   # the same 300 steps (QUICK trains this config) run in the default suite through the CLI:
# tests/lessons/test_lessons.py::test_translate_quick_writes_result_json_and_its_png asserts all of this too
def test_a_short_run_learns_to_translate_dates():
    """300 steps of a 32-wide, 1+1-layer Transformer: held-out exact match ≥ 50% (chance: 1 in 73,049),
    cross-entropy down by more than 90%."""
    res = tr.run(tr.Config(steps=300, **TINY), out_dir=None, progress=False)
    s = res.details
    assert s["chance"] < 1e-4
    assert s["accuracy"] >= 0.5, s["accuracy"]
    assert res.supported and res.rows[-1] == {"step": 300, "accuracy": s["accuracy"], "n": 200}
    assert s["final_nll"] < 0.1 * s["first_nll"], (s["first_nll"], s["final_nll"])
    assert s["final_loss"] > s["final_nll"]   # smoothing keeps the smoothed loss above the NLL
    assert sum(e["prediction"] == e["target"] for e in s["examples"]) >= 1


def _lineage(*args, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "lineage_jax", "lesson", "translate", *args],
                          capture_output=True, text=True, env=env, cwd=tmp_path)


@pytest.mark.slow   # a subprocess; tests/lessons/test_lessons.py runs the lesson through the CLI in-process
def test_cli_prints_json_with_accuracy_and_writes_the_plot(tmp_path):
    out = tmp_path / "run"
    r = _lineage("--task", "dates", "--steps", "40", "--d-model", "16", "--layers", "1", "--json",
                 "--out", str(out), tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)["details"]
    assert s["task"] == "dates" and s["steps"] == 40 and 0.0 <= s["accuracy"] <= 1.0 and s["n_test"] == 1000
    assert s["final_loss"] < s["first_loss"] and len(s["examples"]) >= 5
    assert (out / "translate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "result.json").read_text())["details"]["accuracy"] == s["accuracy"]


@pytest.mark.parametrize("args,message", [
    (("--task", "poems"), "error: --task=poems: unknown; allowed: numbers, dates"),
    (("--steps", "0"), "error: --steps=0: must be at least 1"),
    (("--layers", "0"), "error: --layers=0: must be at least 1"),
])
def test_cli_bad_input_is_one_line(args, message, tmp_path):
    r = _lineage(*args, tmp_path=tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == message and "Traceback" not in r.stderr


def test_the_command_module_does_not_import_jax():
    code = "import sys, lineage_jax.commands.lesson; assert 'jax' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
