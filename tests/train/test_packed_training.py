"""Training on packed rows (``lineage data prepare`` → ``lineage train``).

A packed row (several documents, segment ids, positions restarting per document) computes
what each of its documents computes alone: logits and the weighted loss, for GPT-2 and Llama
and every attention kernel. The packed train step is one function: the same losses and
parameters on one device, under GSPMD (DP × ZeRO-3 × TP+SP, with gradient accumulation) and
in the explicit shard_map form, because the loss is normalised by the *global* count of
counted targets, not per device or micro-batch.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax import models
from lineage_jax.config import load_config
from lineage_jax.data import PackedSampler
from lineage_jax.data.pipeline.packing import pack
from lineage_jax.train.setup import build
from lineage_jax.train.step import make_loss_fn, token_nll
from tests.parallel.test_parallel_gspmd import rel_err, without_key_bias

EOS, L = 256, 32
MODEL = ["model.layers=2", "model.width=32", "model.heads=4", "model.context=32", "model.vocab_multiple=8",
         "train.batch_size=8", "optim.warmup_steps=1", "optim.lr=3e-3"]


def documents(n=24, seed=0):
    """Random byte documents, each followed by eos, every one shorter than a row."""
    rng = np.random.default_rng(seed)
    return [list(rng.integers(0, 256, rng.integers(2, 20))) + [EOS] for _ in range(n)]


def packed_rows(docs):
    return pack(docs, L, EOS)   # tokens, segment_ids, positions, document: [rows, L]


def alone(docs):
    """Each document as its own row from position 0, padded after its end ([n, L]; causal
    attention never reads the padding of its own row)."""
    out = np.full((len(docs), L), EOS, np.int32)
    for i, d in enumerate(docs):
        out[i, :len(d)] = d
    return out


def config(extra):
    return load_config("tiny", MODEL + list(extra))


@pytest.mark.parametrize("arch,impl", [("gpt2", "chunks"), ("gpt2", "flash"), ("gpt2", "naive"), ("gpt2", "xla"),
                                       ("llama", "chunks"), ("llama", "flash")])
def test_a_packed_row_computes_each_document_alone(arch, impl):
    extra = [f"model.attn_impl={impl}", "model.attn_chunks=2"]
    if arch == "llama":
        extra += ["model.arch=llama", "model.kv_heads=2"]
    cfg = config(extra)
    model = models.build(cfg.model)
    docs = documents()
    rows = packed_rows(docs)
    assert (rows["segment_ids"].max(axis=1) >= 2).all()          # every row really holds several documents
    params = jax.jit(model.init)(jax.random.key(1), jnp.zeros((1, L), jnp.int32))["params"]
    apply = jax.jit(model.apply)        # jitted: one compile per shape, not an eager dispatch per op
    packed = apply({"params": params}, rows["tokens"], segment_ids=rows["segment_ids"], positions=rows["positions"])
    single = apply({"params": params}, alone(docs))
    for r in range(rows["tokens"].shape[0]):
        for s in range(1, rows["segment_ids"][r].max() + 1):
            idx = np.flatnonzero(rows["segment_ids"][r] == s)
            d = rows["document"][r, idx[0]]
            np.testing.assert_allclose(packed[r, idx, :257], single[d, :len(idx), :257], atol=2e-5, rtol=2e-5)
    unmasked = apply({"params": params}, rows["tokens"])   # without segments: documents see each other
    r, idx = 0, np.flatnonzero(rows["segment_ids"][0] == 2)
    assert np.abs(unmasked[r, idx] - packed[r, idx]).max() > 1e-2


def test_the_packed_loss_is_the_loss_of_the_documents_run_separately():
    cfg = config([])
    model = models.build(cfg.model)
    docs = documents(seed=3)
    rows = packed_rows(docs)
    params = jax.jit(model.init)(jax.random.key(2), jnp.zeros((1, L), jnp.int32))["params"]
    batch = PackedSampler(rows, seed=0, eos_id=EOS).batch_with_segments(0, rows["tokens"].shape[0])
    loss = float(jax.jit(make_loss_fn(model, dropout=False))(params, batch, None)[1][0])
    single = alone(docs)
    nll = jax.jit(lambda p, t: token_nll(model.apply({"params": p}, t[:, :-1]), t[:, 1:]))(params, single)
    per_doc = [float(jnp.sum(nll[i, :len(d) - 1])) for i, d in enumerate(docs)]   # targets inside the document
    count = sum(len(d) - 1 for d in docs)
    assert batch["weights"].sum() == count
    assert loss == pytest.approx(sum(per_doc) / count, rel=1e-5)


STRATEGIES = {
    "one": ["mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1"],
    "gspmd": ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", "parallel.zero_stage=3",
              "parallel.sequence_parallel=true", "train.grad_accum=2"],
    "shard_map": ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", "parallel.zero_stage=3",
                  "parallel.sequence_parallel=true", "train.grad_accum=2", "parallel.form=shard_map"],
}


def train_packed(name, steps=3):
    return train_packed_with(STRATEGIES[name], 1 if name == "one" else len(jax.devices()), steps)


def train_packed_with(overrides, devices, steps=3):
    """Losses, final parameters and last batch of ``steps`` packed steps under ``overrides`` on ``devices``."""
    cfg = config(overrides)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, prepared_dir="packed"))  # batches carry segments
    setup = build(cfg, devices=jax.devices()[:devices])
    assert setup.packed and set(setup.abstract_batch()) == {"tokens", "segment_ids", "positions", "weights"}
    sampler = PackedSampler(packed_rows(documents(48, seed=5)), seed=0, eos_id=EOS)
    state = setup.init_state(jax.random.key(0))
    losses = []
    for step in range(steps):
        batch = sampler.batch_with_segments(step * 8, 8)
        state, m = setup.train_step(state, setup.put_batch(batch))
        losses.append(float(m["loss"]))
    return np.array(losses), jax.device_get(state.params), batch


@pytest.fixture(scope="module")
def reference():
    return train_packed("one")


@pytest.mark.parametrize("name", [pytest.param("gspmd", marks=pytest.mark.slow), "shard_map"])
def test_packed_training_is_the_same_function_sharded(reference, name):
    losses, params, batch = train_packed(name)
    counts = batch["weights"].sum(axis=1)
    assert counts.min() < counts.max()          # rows count different targets: local means would differ
    np.testing.assert_allclose(losses, reference[0], rtol=2e-5)
    assert rel_err(without_key_bias(params), without_key_bias(reference[1])) < 2e-4   # key bias: zero gradient
