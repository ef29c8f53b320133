"""A model whose ``vocab_size`` is padded past the tokenizer's (300 rows, the byte tokenizer's 257 ids)
never emits an id the tokenizer cannot decode, on any sampling path, even when the padded ids hold
the largest logits: the rigged model below gives every padded id logit 10 and every real id logit 0,
so without the vocabulary limit greedy always picks a padded id and sampling nearly always does."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax import cli
from lineage_jax.config import load_config
from lineage_jax.decode import filters
from lineage_jax.decode.generation import generate_text
from lineage_jax.decode.prompts import sample_prompts, serve_prompts, speculative_prompts
from lineage_jax.models import GPT
from lineage_jax.tokenize import get_tokenizer

CTX, VOCAB = 16, 300
TOK = get_tokenizer("byte")          # 257 ids: 256 bytes + <|endoftext|>


@pytest.fixture(scope="module")
def rigged():
    """(model, params): ln_f outputs e_0 everywhere, and column 0 of the tied embedding is 10 on the
    padded rows, 0 on the real ones -> logits 10 on ids 257..299, 0 on ids 0..256."""
    cfg = load_config("tiny", ["model.layers=1", "model.width=32", "model.heads=2", f"model.context={CTX}",
                               "model.attn_chunks=2", f"model.vocab_size={VOCAB}"]).model
    model = GPT(cfg)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, CTX), jnp.int32))["params"])
    params["ln_f"] = {"scale": jnp.zeros((32,)), "bias": jnp.zeros((32,)).at[0].set(1.0)}
    params["wte"] = params["wte"].at[:, 0].set(jnp.where(jnp.arange(VOCAB) >= TOK.vocab_size, 10.0, 0.0))
    logits = jax.jit(model.apply)({"params": params}, jnp.zeros((1, 4), jnp.int32))
    assert int(jnp.argmax(logits[0, -1])) >= TOK.vocab_size            # the rig: a padded id wins
    return model, params


def _valid(tokens):
    return all(0 <= t < TOK.vocab_size for t in tokens)


def test_filter_chain_masks_ids_past_the_limit():
    logits = jnp.asarray([[0.0, 1.0, 5.0, 9.0]])
    for t in (0.0, 0.7):
        out = filters.filter_logits(logits, temperature=t, vocab_limit=2)
        assert np.all(np.isneginf(np.asarray(out)[0, 2:])) and np.all(np.isfinite(np.asarray(out)[0, :2]))
        draws = filters.sample(jax.random.key(1), jnp.tile(logits, (64, 1)), temperature=t, vocab_limit=2)
        assert np.asarray(draws).max() < 2
    assert np.array_equal(filters.filter_logits(logits, temperature=0.0, vocab_limit=None), logits)
    assert int(filters.sample(jax.random.key(0), logits, temperature=0.0)[0]) == 3     # no limit: unchanged


def test_streamed_text_and_the_after_training_sample_decode(rigged):
    model, params = rigged
    for t in (0.0, 1.0):     # 40 > CTX new tokens: the cached steps and the sliding window both draw
        text = generate_text(model, params, TOK, "ab", 40, temperature=t, seed=3)
        assert text.startswith("ab") and _valid(TOK.encode(text))


@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam"])
def test_sample_prompts_emit_only_tokenizer_ids(rigged, strategy):
    model, params = rigged
    rows = sample_prompts(model, params, TOK, ["ab", "hello"], 20, strategy=strategy, temperature=1.0,
                          num_beams=2, batch_size=2)
    for r in rows:
        assert _valid(r["tokens"]) and r["text"] == TOK.decode(r["tokens"]) and r["new_tokens"] >= 1


@pytest.mark.parametrize("strategy", ["greedy", "sample"])
def test_paged_engine_emits_only_tokenizer_ids(rigged, strategy):
    model, params = rigged
    rows = serve_prompts(model, params, TOK, ["ab", "hello"], 8, strategy=strategy, temperature=1.0, slots=2,
                         block_size=4, num_samples=2 if strategy == "sample" else 1)
    assert rows and all(_valid(r["tokens"]) and r["new_tokens"] >= 1 for r in rows)


@pytest.mark.parametrize("strategy", ["greedy", "sample"])
def test_speculative_emits_only_tokenizer_ids(rigged, strategy):
    model, params = rigged
    [r] = speculative_prompts((model, params), (model, params), TOK, ["ab"], 6, 2, strategy=strategy,
                              temperature=1.0)
    assert _valid(r["tokens"]) and r["new_tokens"] >= 1


TINY = ["model.layers=1", "model.width=32", "model.heads=2", f"model.context={CTX}", "model.attn_chunks=2",
        f"model.vocab_size={VOCAB}", "train.batch_size=8", "train.steps=2", "train.log_every=2",
        "train.eval_every=2", "train.eval_batches=1", "optim.warmup_steps=1"]


@pytest.mark.slow   # ~60 s: a training run and three CLI samples; the default suite has the rigged cases above
def test_padded_vocabulary_trains_samples_after_training_and_from_the_cli(tmp_path, capsys):
    """Barely trained, the 43 padded ids hold ~14% of the probability: 300 sampled characters after
    training would draw one almost surely; with the limit the run exits 0 and every CLI path decodes."""
    run = tmp_path / "run"
    assert cli.main(["train", "--no-progress", *TINY, f"run_dir={run}"]) == 0
    assert "sample (temperature 0.8):" in capsys.readouterr().out
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("ab\ncd\n")
    base = ["sample", "--run-dir", str(run), "--max-new-tokens", "40", "--temperature", "1.5"]
    for extra in ([], ["--json"], ["--json", "--prompts-file", str(prompts), "--no-progress"]):
        assert cli.main([*base, *([] if "--prompts-file" in extra else ["--prompt", "ab"]), *extra]) == 0, extra
        out = capsys.readouterr().out
        for line in out.splitlines() if "--json" in extra else []:
            assert _valid(json.loads(line)["tokens"])
