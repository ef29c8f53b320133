"""Counts read off the parameter tree equal hand counts from each architecture (GPT-2, Llama GQA +
SwiGLU, MoE active experts) and the published GPT-2 small size."""
import pytest

from lineage_jax.config import ffn_dim, load_config
from lineage_jax.scaling.count import count


def gpt2_block(D, F):   # q,k,v,out D×D + biases; fc D×F + F; proj F×D + D; two LayerNorms
    return 4 * D * D + 4 * D + 2 * D * F + F + D + 4 * D


def test_gpt2_small_preset_is_124m():
    m = load_config("gpt2_small").model
    c = count(m)
    D, V, T, L = 768, 50257, 1024, 12
    non_emb = L * gpt2_block(D, 4 * D) + 2 * D              # blocks + final LayerNorm
    assert c.total == 124_439_808 == V * D + T * D + non_emb
    assert c.non_embedding == non_emb == 85_056_000        # Kaplan's N: no token or position table
    assert c.matmul == non_emb + V * D                     # the tied table is the head's matrix
    assert c.active == c.total
    assert c.flops_per_token_6n == 6 * c.matmul
    assert c.flops_per_token_palm == 6 * c.matmul + 12 * L * 12 * 64 * T


def test_llama_gqa_swiglu_untied():
    m = load_config("bench", ["model.arch=llama", "model.kv_heads=2", "model.tied=false", "model.layers=3"]).model
    D, F, K, V, L = m.width, ffn_dim(m), m.width // m.heads, m.vocab_size, m.layers
    block = 2 * D * D + 2 * D * 2 * K + 3 * D * F + 2 * D   # q, out D×D; k, v D×(2·K); gate/up/down; 2 RMSNorms
    c = count(m)
    assert c.non_embedding == L * block + D                 # no table, no head (untied head is an unembedding)
    assert c.total == c.non_embedding + 2 * V * D
    assert c.matmul == c.non_embedding + V * D              # the head multiplies, the table is looked up


@pytest.mark.parametrize("k", [1, 2])
def test_moe_counts_all_experts_in_total_and_k_of_e_active(k):
    m = load_config("bench", ["model.moe_every=2", "model.experts=4", f"model.moe_k={k}", "model.layers=2"]).model
    D, F, E, V, T = m.width, ffn_dim(m), m.experts, m.vocab_size, m.context
    dense, moe_block = gpt2_block(D, F), gpt2_block(D, F) - (2 * D * F + F + D) + D * E   # MLP -> router (no biases)
    c = count(m)
    assert c.total == V * D + T * D + dense + moe_block + E * 2 * D * F + 2 * D
    assert c.active == c.total - (E - k) * 2 * D * F
    assert c.matmul == c.active - T * D


def test_training_flops_forms():
    c = count(load_config("tiny").model)
    assert c.training_flops(1e6) == 6 * c.matmul * 1e6
    assert c.training_flops(1e6, "palm") > c.training_flops(1e6)
