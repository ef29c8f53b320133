"""The lora lesson: the compiled step's optimiser state for LoRA over full fine-tuning is the ratio of
trainable parameters (within 5%), and its argument memory is what the state sizes say; the synthetic
domains are the chains they claim; ``lineage lesson lora --quick`` writes a verdict that follows its rows."""
import json

import jax
import numpy as np
import pytest

from lineage_jax import cli
from lineage_jax.config import load_config
from lineage_jax.lessons import lora as lesson
from lineage_jax.train.setup import build


# the lesson's tiny Llama, wider and at a small batch under full remat: kernels, not activations, dominate the
# step, the regime where a merged W + ΔW per kernel would cost more temporaries than full fine-tuning
MEMORY = [*lesson.TINY, "train.steps=2", "model.width=128", "train.batch_size=2", "model.remat=full"]


def test_optimiser_state_ratio_is_the_trainable_ratio_in_the_compiled_step():
    """From the compiled train steps (full fine-tuning; LoRA r=2 on the fly): the optimiser state ratio is the
    trainable ratio, the arguments are the state the rows count, and LoRA's temporaries are at most full
    fine-tuning's (no merged kernel, no kernel cotangent in the step)."""
    c = load_config("tiny", MEMORY)
    devices = jax.devices()[:1]
    params = jax.device_get(build(c, compile_steps=False, devices=devices).init_state(jax.random.key(0)).params)
    rows = []
    for method, rank, q in (("full", 0, "none"), ("lora", 2, "none")):
        _, abstract, frozen, compiled = lesson.adapt_setup(c, method, rank, q, params, devices, compile_eval=False)
        rows.append({"model": "tiny", "method": method, "rank": rank,
                     "trainable": sum(x.size for x in jax.tree.leaves(abstract.params)),
                     **lesson.memory_row(compiled, abstract.params, abstract.opt_state, frozen)})
    full, lo = rows
    assert lo["trainable"] / full["trainable"] < 0.05
    assert lesson.opt_ratio_ok(rows, tol=0.05)
    assert not lesson.opt_ratio_ok([full, {**lo, "opt_state_bytes": lo["opt_state_bytes"] * 1.2}], tol=0.05)
    # the compiled program's arguments are the state the rows count (+ the same batch and scalars)
    state = lambda r: r["trained_param_bytes"] + r["frozen_param_bytes"] + r["opt_state_bytes"]  # noqa: E731
    diff = full["argument_bytes"] - lo["argument_bytes"]
    assert abs(diff - (state(full) - state(lo))) <= 64
    assert lo["temp_bytes"] <= full["temp_bytes"]


@pytest.mark.slow   # the default proof of the on-the-fly form's memory: the test above (LoRA <= full)
def test_merged_form_holds_more_temporaries_than_on_the_fly():
    c = load_config("tiny", MEMORY)
    devices = jax.devices()[:1]
    params = jax.device_get(build(c, compile_steps=False, devices=devices).init_state(jax.random.key(0)).params)
    temps = {mode: lesson.adapt_setup(c, "lora", 2, "none", params, devices, mode, compile_eval=False)[3]
             .memory_analysis().temp_size_in_bytes for mode in ("onthefly", "merged")}
    assert temps["merged"] > temps["onthefly"]


def test_domains_are_their_chains():
    nxt, p = lesson.chain(1, 16, fan=3)
    seq = lesson.sample((nxt, p), np.random.default_rng(0), 8, 50)
    for row in seq:
        for a, b in zip(row[:-1], row[1:]):
            assert b in nxt[a]
    other = lesson.chain(2, 16, fan=3)[0]
    assert (nxt != other).any()


@pytest.mark.slow
def test_quick_lesson_writes_a_verdict_from_its_rows(tmp_path):
    assert cli.main(["lesson", "lora", "--quick", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["supported"] == lesson.supports(res["rows"])
    assert {r["method"] for r in res["rows"]} == {"full", "lora", "qlora"}
    assert (tmp_path / "lora.png").is_file()
