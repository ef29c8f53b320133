"""Our LoRA equals peft's: a converted tiny Hugging Face GPT-2 / Llama / Mixtral (attention) with the same adapter weights gives
the same logits (≤ 1e-5, f32) in both directions of the adapter format, and an export reads back as it was."""
import functools

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from lineage_jax.adapt import lora  # noqa: E402
from lineage_jax.interop import hf, peft as ours_peft  # noqa: E402

T = 12
SHAPES = {   # odd shapes the other tests do not use
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_embd=24, n_head=3, n_layer=2, vocab_size=37, n_positions=T,
                                                   activation_function="gelu_new")),
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(hidden_size=24, num_attention_heads=3, num_key_value_heads=1,
                                                      intermediate_size=40, vocab_size=37, num_hidden_layers=2,
                                                      max_position_embeddings=T, tie_word_embeddings=False)),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(hidden_size=24, num_attention_heads=3, num_key_value_heads=1,
                                                          intermediate_size=40, vocab_size=37, num_hidden_layers=2,
                                                          max_position_embeddings=T, num_local_experts=3,
                                                          num_experts_per_tok=2, tie_word_embeddings=False)),
}
TARGETS = {"gpt2": ("q", "v", "o", "mlp"), "llama": ("q", "k", "v", "o", "mlp"), "mixtral": ("q", "k", "v", "o")}


def hf_model(arch, path):
    torch.manual_seed(0)
    conf, cls, shape = SHAPES[arch]
    model = getattr(transformers, cls)(getattr(transformers, conf)(**shape, attn_implementation="eager")).eval()
    model.save_pretrained(path, safe_serialization=True)
    return model


def specs_of(model):
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, T), np.int32)))
    return nn.get_partition_spec(boxed)["params"]


def logits_ours(model, params):
    ids = np.random.default_rng(1).integers(0, 37, (2, T)).astype(np.int32)
    return np.asarray(jax.jit(model.apply)({"params": params}, ids)), ids


def logits_peft(pmodel, ids):
    with torch.no_grad():
        return pmodel(torch.from_numpy(ids).long()).logits.numpy()


@pytest.mark.parametrize("arch", ["gpt2", pytest.param("llama", marks=pytest.mark.slow), "mixtral"])
def test_export_equals_peft_and_reads_back(arch, tmp_path):
    base = hf_model(arch, tmp_path / "hf")
    model, params = hf.load(tmp_path / "hf", scan_layers=arch == "llama")
    cfg = lora.LoraConfig(rank=3, alpha=5.0, targets=TARGETS[arch])
    ad = lora.init(jax.random.key(1), params, specs_of(model), cfg)
    ad = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(jax.random.key(2), x.shape), ad)   # B ≠ 0
    want, ids = logits_ours(model, lora.merge(params, ad, cfg))
    base_logits, _ = logits_ours(model, params)
    assert np.abs(want - base_logits).max() > 1e-2                  # the adapters matter
    ours_peft.save(model, ad, cfg, tmp_path / "adapter")
    got = logits_peft(peft.PeftModel.from_pretrained(base, tmp_path / "adapter"), ids)
    assert np.abs(got - want).max() <= 1e-5
    back, cfg2 = ours_peft.load(tmp_path / "adapter", model, params, specs_of(model))
    assert (cfg2.rank, cfg2.alpha, set(cfg2.targets)) == (3, 5.0, set(TARGETS[arch]) | ({"k"} if arch == "gpt2" else set()))
    for x, y in zip(jax.tree.leaves(lora.merge(params, back, cfg2)), jax.tree.leaves(lora.merge(params, ad, cfg))):
        np.testing.assert_allclose(x, y, atol=1e-6)


# Mixtral's import under -m slow: the default sibling is its export-and-read-back case above
@pytest.mark.parametrize("arch", ["gpt2", "llama", pytest.param("mixtral", marks=pytest.mark.slow)])
def test_a_peft_trained_adapter_imports_equal(arch, tmp_path):
    base = hf_model(arch, tmp_path / "hf")
    mods = {"gpt2": ["c_attn", "c_fc"], "llama": ["q_proj", "o_proj", "down_proj"],
            "mixtral": ["q_proj", "v_proj", "o_proj"]}[arch]
    pconf = peft.LoraConfig(r=4, lora_alpha=7, target_modules=mods, init_lora_weights=False,
                            fan_in_fan_out=arch == "gpt2", rank_pattern={mods[-1]: 2}, alpha_pattern={mods[-1]: 3})
    pmodel = peft.get_peft_model(base, pconf).eval()              # random A and B
    pmodel.save_pretrained(tmp_path / "adapter")
    model, params = hf.load(tmp_path / "hf", scan_layers=False)
    ad, cfg = ours_peft.load(tmp_path / "adapter", model, params, specs_of(model))
    got, ids = logits_ours(model, lora.merge(params, ad, cfg))
    want = logits_peft(pmodel, ids)
    assert np.abs(got - want).max() <= 1e-5
