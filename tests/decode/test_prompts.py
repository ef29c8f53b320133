"""Every prompts path says why it stopped and how much of the prompt it kept: ``sample_prompts``
(greedy, sample, beam) slides the window past the context and gives every token asked for (greedy:
the same tokens as the streaming ``generate``); the paged engine and speculative decoding, on
fixed-size caches, stop at the context with ``stop_reason`` "context"; a drawn end-of-text token is
"eos". A tiny random model with a 16-token context and a 40-token prompt."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from lineage_jax.config import load_config
from lineage_jax.decode.generation import generate, stop_reason
from lineage_jax.decode.prompts import sample_prompts, serve_prompts, speculative_prompts
from lineage_jax.models import GPT
from lineage_jax.tokenize import get_tokenizer

CTX, NEW = 16, 30
TOK = get_tokenizer("byte")
LONG = "the quick brown fox jumps over a lazy dog"[:40]          # 40 byte tokens > CTX
FIELDS = ("prompt", "text", "tokens", "new_tokens", "prompt_tokens", "prompt_tokens_kept", "stop_reason")


def _rig(params, eos_logit: float):
    """ln_f's output is 1 on dimension 0 at every position (scale 0, bias 1 there), and the end-of-text
    row of the tied embedding is ``eos_logit`` on that dimension and 0 elsewhere: its logit is always
    ``eos_logit``; every other logit is the random model's."""
    ln = params["ln_f"]
    wte = params["wte"].at[TOK.eos_id].set(jnp.zeros((32,)).at[0].set(eos_logit))
    return {**params, "wte": wte, "ln_f": {"scale": ln["scale"].at[0].set(0.0), "bias": ln["bias"].at[0].set(1.0)}}


@pytest.fixture(scope="module")
def gpt():
    """A random model that never draws the end-of-text token (its logit is -100)."""
    cfg = load_config("tiny", ["model.layers=1", "model.width=32", "model.heads=2", f"model.context={CTX}",
                               "model.attn_chunks=2"]).model
    model = GPT(cfg)
    return model, _rig(nn.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, CTX), jnp.int32))["params"]), -100.0)


@pytest.fixture(scope="module")
def eos_first(gpt):
    """The same model, with the end-of-text token's logit 100: it is always drawn first."""
    return gpt[0], _rig(gpt[1], 100.0)


def _check(r, *, kept, new, reason, prompt_tokens=len(LONG)):
    assert set(FIELDS) <= set(r), r.keys()
    assert (r["prompt_tokens"], r["prompt_tokens_kept"], r["new_tokens"], r["stop_reason"]) == \
        (prompt_tokens, kept, new, reason)
    assert len(r["tokens"]) == kept + new and r["text"] == TOK.decode(r["tokens"])
    assert r["tokens"][:kept] == TOK.encode(r["prompt"])[-kept:]


def test_stop_reason():
    assert stop_reason(3, 256, 3, 256) == "eos" and stop_reason(3, 5, 3, 256) == "max_new_tokens"
    assert stop_reason(2, 5, 3, 256) == "context" and stop_reason(2, 5, 3, None) == "context"
    assert stop_reason(0, 256, 3, 256) == "context"         # the prompt's own end-of-text is not a stop


@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam"])
def test_sample_prompts_slide_past_the_context(gpt, strategy):
    model, params = gpt
    rows = sample_prompts(model, params, TOK, [LONG, "ab"], NEW, strategy=strategy, temperature=1.0,
                          num_beams=1, batch_size=2)
    _check(rows[0], kept=CTX - 1, new=NEW, reason="max_new_tokens")
    _check(rows[1], kept=2, new=NEW, reason="max_new_tokens", prompt_tokens=2)
    if strategy != "sample":          # greedy and one beam: the streaming path's tokens exactly
        for r in rows:
            kept = r["tokens"][:r["prompt_tokens_kept"]]
            assert r["tokens"] == generate(model, params, kept, NEW, temperature=0.0, vocab_limit=TOK.vocab_size)


def test_paged_engine_reports_the_full_context(gpt):
    model, params = gpt
    long, short = serve_prompts(model, params, TOK, [LONG, "ab"], NEW, strategy="greedy", slots=2, block_size=4)
    _check(long, kept=CTX - 1, new=1, reason="context")
    _check(short, kept=2, new=CTX - 2, reason="context", prompt_tokens=2)
    [done] = serve_prompts(model, params, TOK, ["ab"], 5, strategy="greedy", slots=2, block_size=4)
    _check(done, kept=2, new=5, reason="max_new_tokens", prompt_tokens=2)


def test_speculative_reports_the_full_context(gpt):
    model, params = gpt
    gamma = 2
    [r] = speculative_prompts((model, params), (model, params), TOK, [LONG], NEW, gamma, strategy="greedy")
    kept = CTX - gamma - 1
    _check(r, kept=kept, new=CTX - gamma - kept + 1, reason="context")
    assert r["target_calls"] >= 1
    [r] = speculative_prompts((model, params), (model, params), TOK, ["ab"], 3, gamma, strategy="greedy")
    _check(r, kept=2, new=3, reason="max_new_tokens", prompt_tokens=2)


def test_every_path_reports_eos(eos_first):
    model, params = eos_first
    rows = [*sample_prompts(model, params, TOK, [LONG], NEW, strategy="greedy"),
            *sample_prompts(model, params, TOK, [LONG], NEW, strategy="beam", num_beams=2),
            *serve_prompts(model, params, TOK, [LONG], NEW, strategy="greedy", slots=1, block_size=4),
            *speculative_prompts((model, params), (model, params), TOK, ["ab"], NEW, 2, strategy="greedy")]
    for r in rows:
        assert r["stop_reason"] == "eos" and r["tokens"][-1] == TOK.eos_id and r["new_tokens"] == 1, r
