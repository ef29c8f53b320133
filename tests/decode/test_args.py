"""One rule per sampling argument (``decode/args.py``): every bad value gets the same one-line message
from the CLI (exit 2, before JAX loads a run), the API functions and ``filters.sample``."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax import cli
from lineage_jax.config import ModelConfig
from lineage_jax.decode import (CachedLM, SamplingError, batching, generate, generate_beam, kv_cache, sample,
                                sample_prompts, serve_prompts, speculative_sample)
from lineage_jax.decode.args import RULES, check
from lineage_jax.models import GPT
from lineage_jax.tokenize import get_tokenizer

BAD = [("temperature", -1.0, "must be >= 0 and finite (0 = greedy)"), ("temperature", math.nan, "must be >= 0"),
       ("temperature", math.inf, "must be >= 0"), ("top_k", -1, "must be an integer >= 0 (0 = off)"),
       ("top_k", 2.5, "must be an integer"), ("top_p", 0.0, "must be in (0, 1] (1 = off)"),
       ("top_p", 1.5, "must be in (0, 1]"), ("top_p", math.nan, "must be in (0, 1]"),
       ("max_new_tokens", 0, "must be at least 1"), ("num_beams", 0, "must be at least 1"),
       ("num_samples", 0, "must be at least 1"), ("batch_size", 0, "must be at least 1"),
       ("block_size", 0, "must be at least 1"), ("gamma", 0, "must be at least 1 (draft tokens proposed")]
FILTER_ARGS = {"temperature", "top_k", "top_p"}


def message(fn):
    with pytest.raises(SamplingError) as e:
        fn()
    return str(e.value)


@pytest.mark.parametrize("name, value, rule", BAD)
def test_each_bad_value_has_one_message(name, value, rule):
    text = message(lambda: check(**{name: value}))
    assert text == f"{name}={value}: {RULES[name][2]}" and rule in text and "\n" not in text
    if name in FILTER_ARGS:    # the filters refuse exactly what the API refuses, with the same words
        logits = jnp.zeros((2, 5))
        assert message(lambda: sample(jax.random.key(0), logits, **{name: value})) == text


def test_good_values_are_normalised():
    assert check(temperature=0, top_k=np.int64(3), top_p=1, gamma=2) == dict(temperature=0.0, top_k=3, top_p=1.0,
                                                                               gamma=2)
    assert type(check(top_k=np.int64(3))["top_k"]) is int


@pytest.fixture(scope="module")
def gpt():
    model = GPT(ModelConfig(vocab_size=257, context=16, layers=1, width=16, heads=2, attn_chunks=1))
    return model, jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))["params"]


def test_every_api_entry_point_gives_the_rule_message(gpt):
    model, params = gpt
    tok = get_tokenizer("byte")
    calls = {   # argument -> API calls taking it
        "temperature": [lambda v: generate(model, params, [1], 2, temperature=v),
                        lambda v: kv_cache.generate_cached(model, params, [[1]], [1], 2, key=jax.random.key(0),
                                                           temperature=v),
                        lambda v: batching.ContinuousBatcher(model, params, temperature=v),
                        lambda v: CachedLM(model, params, temperature=v),
                        lambda v: sample_prompts(model, params, tok, ["a"], 2, temperature=v),
                        lambda v: serve_prompts(model, params, tok, ["a"], 2, temperature=v)],
        "top_p": [lambda v: generate(model, params, [1], 2, top_p=v),
                  lambda v: CachedLM(model, params, top_p=v)],
        "max_new_tokens": [lambda v: generate(model, params, [1], v), lambda v: generate_beam(model, params, [1], v,
                                                                                             num_beams=2)],
        "num_beams": [lambda v: generate_beam(model, params, [1], 2, num_beams=v)],
        "gamma": [lambda v: speculative_sample(gpt, gpt, [1], 2, v)],
    }
    for name, fns in calls.items():
        value = {"temperature": math.nan, "top_p": 0.0}.get(name, 0)
        for fn in fns:
            assert message(lambda: fn(value)) == f"{name}={value}: {RULES[name][2]}"


def test_cli_gives_the_same_message_as_the_api(tmp_path, capsys):
    """Flags are checked before the run is read: a missing run dir is not what the user hears about."""
    flags = {"temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p", "max_new_tokens":
             "--max-new-tokens", "num_beams": "--num-beams", "num_samples": "--num-samples",
             "batch_size": "--batch-size", "block_size": "--block-size", "gamma": "--gamma"}
    extra = {"num_beams": ["--strategy", "beam"], "gamma": ["--draft-run-dir", str(tmp_path)]}
    for name, value, _ in BAD:
        if name == "top_k" and value == 2.5:
            continue                                  # argparse's type=int refuses it first
        api = message(lambda: check(**{name: float(value) if name in ("temperature", "top_p") else value}))
        argv = ["sample", "--run-dir", str(tmp_path / "nothing"), flags[name], str(value), *extra.get(name, [])]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: {flags[name]}{api[len(name):]}"], (err, api)
