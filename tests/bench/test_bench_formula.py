"""The bench's 6N + 12LHQT model FLOPs for every architecture, and its PyTorch twin only where it is one.

N is read off the parameter tree (``lineage_jax.bench.matmul_params``); here it is set against
counts written out by hand from each paper's architecture, and the formula against XLA's own
cost analysis of the compiled step.
"""
import pytest

from lineage_jax.bench import _cost_flops, _jax_step, matmul_params, palm_flops_per_token, run_bench
from lineage_jax.config import ffn_dim, load_config

SMALL = ["model.layers=2", "model.width=64", "model.heads=4", "model.context=64", "model.attn_chunks=2",
         "train.batch_size=4", "model.scan_layers=false"]


def gpt2_n(m):   # tied wte counts once (it is the head); no position table; biases and LayerNorms count
    D, F = m.width, ffn_dim(m)
    return m.vocab_size * D + m.layers * (4 * D * D + 4 * D + 2 * D * F + F + D + 4 * D) + 2 * D


def llama_n(m):  # no biases; q, out D×D; k, v D×(kv_heads·K); SwiGLU 3·D·F; two RMSNorms per block + final
    D, F, K = m.width, ffn_dim(m), m.width // m.heads
    return m.vocab_size * D + m.layers * (2 * D * D + 2 * D * m.kv_heads * K + 3 * D * F + 2 * D) + D


@pytest.mark.parametrize("overrides,count", [
    ([], gpt2_n),
    (["model.vocab_multiple=64"], gpt2_n),                              # padding rows are not the model's
    (["model.arch=llama", "model.kv_heads=2"], llama_n),
    (["model.arch=llama", "model.kv_heads=2", "model.tied=false"], llama_n),   # the table is a lookup; the head counts
])
def test_matmul_params_is_the_hand_count(overrides, count):
    m = load_config("bench", overrides).model
    assert matmul_params(m) == count(m)


def test_moe_counts_the_active_experts():
    dense = load_config("bench", []).model
    moe = load_config("bench", ["model.moe_every=2", "model.experts=8", "model.moe_k=2"]).model
    D, F = moe.width, ffn_dim(moe)
    # each MoE layer swaps its MLP (2DF + F + D) for a router D·E and k of E experts (no biases)
    per_moe_layer = D * moe.experts + moe.moe_k * 2 * D * F - (2 * D * F + F + D)
    assert matmul_params(moe) == gpt2_n(dense) + (moe.layers // moe.moe_every) * per_moe_layer


@pytest.mark.parametrize("overrides", [[], ["model.arch=llama", "model.kv_heads=2"]])
def test_formula_is_xla_cost_analysis(overrides):
    cfg = load_config("bench", SMALL + overrides)
    cost = _cost_flops(_jax_step(cfg)[2])
    formula = palm_flops_per_token(cfg.model, matmul_params(cfg.model)) * cfg.train.batch_size * cfg.model.context
    assert 0.9 < cost / formula < 1.05, cost / formula


def test_torch_twin_only_for_dense_gpt2():
    cfg = load_config("bench", SMALL + ["model.arch=llama", "model.kv_heads=2", "model.layers=1"])
    r = run_bench(cfg, steps=1, rounds=1, warmup=1, torch_peer=True, depth_check=False)
    assert r["torch_eager"] is None and "llama" in r["torch_skipped"] and "vs_torch" not in r["unrolled"]
    assert r["config"]["arch"] == "llama"
