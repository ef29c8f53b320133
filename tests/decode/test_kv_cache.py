"""The KV cache: prefill + decode equals the full forward; cached generation equals recomputing the
prefix (greedy and sampled, scan and unrolled, ragged batches); EOS; one compile; ``lineage sample`` flags."""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax import cli
from lineage_jax.config import load_config
from lineage_jax.decode import kv_cache as kc
from lineage_jax.models import GPT
from lineage_jax.decode.generation import generate_recompute

SMALL = ["model.layers=2", "model.width=32", "model.heads=2", "model.context=24", "model.attn_chunks=2"]
LENGTHS = np.array([5, 9, 2], np.int32)   # right-padded prompts of different lengths


@functools.cache
def _model(scan):
    """The model, its parameters (a jitted init) and tokens, made once per layout for the whole file."""
    cfg = load_config("tiny", [*SMALL, f"model.scan_layers={str(scan).lower()}"])
    model = GPT(cfg.model)
    toks = jax.random.randint(jax.random.key(1), (3, cfg.model.context), 0, cfg.model.vocab_size)
    params = jax.jit(model.init)(jax.random.key(0), toks)["params"]
    return model, params, toks


def _prompts(toks):
    P = int(LENGTHS.max())
    return np.where(np.arange(P)[None] < LENGTHS[:, None], np.asarray(toks[:, :P]), 0).astype(np.int32)


@pytest.mark.parametrize("scan", [False, True])
def test_prefill_then_decode_equals_full_forward(scan):
    model, params, toks = _model(scan)
    full = jax.jit(model.apply)({"params": params}, toks)
    prefill, decode_step = (jax.jit(f, static_argnums=0) for f in (kc.prefill, kc.decode_step))
    logits, cache = prefill(model, params, kc.init_cache(model.cfg, 3), jnp.asarray(_prompts(toks)), LENGTHS)
    for b, n in enumerate(LENGTHS):
        np.testing.assert_allclose(logits[b, :n], full[b, :n], atol=1e-5)
    rows = jnp.arange(3)
    while int(cache.lengths.min()) < model.cfg.context:   # every remaining position, one token per call
        pos = cache.lengths
        step, cache = decode_step(model, params, cache, toks[rows, pos])
        np.testing.assert_allclose(step, full[rows, pos], atol=1e-5)


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cached_generation_equals_recompute(scan, temperature):
    model, params, toks = _model(scan)
    prompts, key = _prompts(toks), jax.random.key(7)
    out, lens = kc.generate_cached(model, params, prompts, LENGTHS, 12, key=key, temperature=temperature)
    ref, ref_lens = generate_recompute(model, params, prompts, LENGTHS, 12, key=key, temperature=temperature)
    np.testing.assert_array_equal(np.asarray(lens), LENGTHS + 12)
    np.testing.assert_array_equal(np.asarray(lens), ref_lens)
    np.testing.assert_array_equal(np.asarray(out), ref)
    np.testing.assert_array_equal(np.asarray(out)[:, :2], prompts[:, :2])   # the prompts are kept


def test_eos_and_context_limit():
    model, params, toks = _model(False)
    prompts, key = _prompts(toks), jax.random.key(3)
    free, _ = kc.generate_cached(model, params, prompts, LENGTHS, 10, key=key, temperature=1.0)
    b = 1
    eos = int(np.asarray(free)[b, LENGTHS[b] + 3])   # the 4th new token of row 1 becomes "EOS"
    out, lens = kc.generate_cached(model, params, prompts, LENGTHS, 10, key=key, temperature=1.0, eos_id=eos)
    out, lens = np.asarray(out), np.asarray(lens)
    for r in range(3):
        new = out[r, LENGTHS[r]:lens[r]]
        hit = np.flatnonzero(new == eos)
        assert len(new) == (hit[0] + 1 if len(hit) else 10)        # stops right after the first EOS
        assert (out[r, lens[r]:] == 0).all()                        # finished rows stop changing
    assert lens[b] <= LENGTHS[b] + 4
    _, lens = kc.generate_cached(model, params, prompts, LENGTHS, 100, key=key)
    np.testing.assert_array_equal(np.asarray(lens), model.cfg.context)   # the context is the limit


def test_one_compile_for_the_decode_loop():
    model, params, toks = _model(True)
    prompts = _prompts(toks)
    kc.generate_cached(model, params, prompts, LENGTHS, 5, key=jax.random.key(0))
    before = kc.compile_count()
    out5, _ = kc.generate_cached(model, params, prompts, LENGTHS, 5, key=jax.random.key(0))
    out20, lens = kc.generate_cached(model, params, prompts, LENGTHS, 20, key=jax.random.key(0))
    assert kc.compile_count() == before                  # 5 then 20 new tokens: no new trace
    assert kc._generate._cache_size() >= 1
    np.testing.assert_array_equal(np.asarray(out20)[0, :LENGTHS[0] + 5], np.asarray(out5)[0, :LENGTHS[0] + 5])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("kv") / "run"
    tiny = ["model.layers=1", "model.width=32", "model.heads=2", "model.context=32", "model.attn_chunks=2",
            "train.batch_size=8", "train.steps=3", "train.log_every=3", "train.eval_every=3", "train.eval_batches=1",
            "optim.warmup_steps=1"]
    assert cli.main(["train", "--no-progress", "--no-sample", *tiny, f"run_dir={run}"]) == 0
    return run


def test_cli_sample_strategies(run_dir, tmp_path, capsys):
    capsys.readouterr()
    base = ["sample", "--run-dir", str(run_dir), "--max-new-tokens", "6", "--json"]
    assert cli.main([*base, "--prompt", "def f", "--strategy", "beam", "--num-beams", "3"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["text"].startswith("def f") and r["tokens"][:5] == list(b"def f") and len(r["tokens"]) > 5
    assert cli.main([*base, "--prompt", "class", "--top-k", "5", "--top-p", "0.9", "--seed", "1"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["text"].startswith("class") and len(r["tokens"]) == len("class") + 6
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a\nimport os\n\nreturn x\n")
    assert cli.main([*base, "--prompts-file", str(prompts), "--strategy", "greedy", "--no-progress"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in rows] == ["a", "import os", "return x"]
    assert all(r["text"].startswith(r["prompt"]) and r["new_tokens"] == 6 for r in rows)


def test_cli_sample_bad_flags_are_one_line(tmp_path, capsys):
    cases = [(["--top-p", "0"], "--top-p=0.0: must be in (0, 1]"), (["--top-p", "1.5"], "--top-p=1.5"),
             (["--strategy", "beam", "--num-beams", "0"], "--num-beams=0: must be at least 1"),
             (["--strategy", "beam", "--top-k", "5"], "only with --strategy sample"),
             (["--num-beams", "2"], "only with --strategy beam"), (["--top-k", "-1"], "--top-k=-1"),
             (["--prompts-file", str(tmp_path / "missing.txt")], "--prompts-file=")]
    for extra, message in cases:
        assert cli.main(["sample", "--run-dir", str(tmp_path / "nothing"), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
