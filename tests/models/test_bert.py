"""BERT (Devlin et al. 2019) as a Flax model: logical names on every parameter, padding keys never seen,
segment (token type) embeddings used, the MLM output tied to the word embeddings, config errors in one
line. Equality with transformers' BertForMaskedLM is in tests/interop/test_hf_bert_t5.py."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax.config import BERT_ACTIVATIONS, ConfigError
from lineage_jax.models.bert import ACTIVATIONS, Bert, BertConfig

CFG = BertConfig(vocab_size=77, width=36, heads=3, layers=3, mlp_dim=52, max_positions=24, type_vocab_size=3,
                 init_std=0.3)


def init(cfg=CFG, T=11):
    variables = Bert(cfg).init(jax.random.key(0), np.zeros((2, T), np.int32))
    return variables


def ids(B=2, T=11, seed=0):
    return np.random.default_rng(seed).integers(0, CFG.vocab_size, (B, T)).astype(np.int32)


def test_every_parameter_has_logical_axis_names():
    boxed = init()["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.Partitioned) and len(x.names) == x.value.ndim for x in leaves)
    p = nn.unbox(boxed)
    assert p["layer_0"]["query"]["kernel"].shape == (36, 3, 12)
    assert p["mlm_bias"].shape == (77,) and "mlm_decoder" not in p      # decoder = word embeddings (tied)
    n = sum(x.size for x in jax.tree.leaves(p))
    D, F, V, L = 36, 52, 77, 3
    per_layer = 4 * (D * D + D) + 2 * D * F + F + D + 4 * D
    assert n == V * D + 24 * D + 3 * D + 2 * D + L * per_layer + D * D + D + 2 * D + V


def test_padding_keys_are_never_attended():
    """A padded row's real positions give exactly the logits of the unpadded sequence run alone."""
    p = nn.unbox(init())["params"]
    x = ids()
    mask = np.ones_like(x)
    mask[1, 7:] = 0
    full = Bert(CFG).apply({"params": p}, x, mask)
    alone = Bert(CFG).apply({"params": p}, x[1:, :7])
    np.testing.assert_allclose(full[1, :7], alone[0], atol=2e-5)
    y = x.copy()
    y[1, 7:] = (y[1, 7:] + 5) % CFG.vocab_size                            # other padding tokens: no effect
    np.testing.assert_allclose(Bert(CFG).apply({"params": p}, y, mask)[1, :7], full[1, :7], atol=1e-6)
    assert float(jnp.abs(Bert(CFG).apply({"params": p}, y)[1, :7] - full[1, :7]).max()) > 1e-3   # unmasked: seen


def test_token_types_change_the_logits_and_default_to_zero():
    p = nn.unbox(init())["params"]
    x = ids()
    base = Bert(CFG).apply({"params": p}, x)
    np.testing.assert_array_equal(Bert(CFG).apply({"params": p}, x, None, np.zeros_like(x)), base)
    assert float(jnp.abs(Bert(CFG).apply({"params": p}, x, None, np.ones_like(x)) - base).max()) > 1e-3


def test_mlm_output_is_tied_to_the_word_embeddings():
    """Moving the embedding row of a token that is not in the input moves that token's logit column only."""
    p = nn.unbox(init())["params"]
    x = ids()
    q = dict(p)
    step = jax.random.normal(jax.random.key(2), (CFG.width,))            # not constant: LN outputs sum to ~0
    q["word_embeddings"] = p["word_embeddings"].at[5].add(step)          # token 5 never in the input
    x = np.where(x == 5, 6, x)
    logits, moved = Bert(CFG).apply({"params": p}, x), Bert(CFG).apply({"params": q}, x)
    diff = np.abs(np.asarray(moved - logits)).max(axis=(0, 1))
    assert diff[5] > 1e-3 and np.all(diff[np.arange(77) != 5] < 1e-5)   # only column 5 of the output moved


def test_bf16_compute_tracks_f32_and_dropout_is_off_when_deterministic():
    p = nn.unbox(init())["params"]
    x = ids()
    f32 = Bert(CFG).apply({"params": p}, x)
    bf = Bert(BertConfig(**{**CFG.__dict__, "dtype": "bfloat16"})).apply({"params": p}, x)
    assert bf.dtype == jnp.bfloat16
    assert float(jnp.abs(bf.astype(jnp.float32) - f32).max()) < 0.05 * float(jnp.abs(f32).max())
    drop = Bert(BertConfig(**{**CFG.__dict__, "dropout": 0.5}))
    np.testing.assert_array_equal(drop.apply({"params": p}, x), f32)
    noisy = drop.apply({"params": p}, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
    assert float(jnp.abs(noisy - f32).max()) > 1e-2


@pytest.mark.parametrize("kw, words", [({"width": 35}, "not divisible by heads"),
                                       ({"hidden_act": "swish"}, "hidden_act"),
                                       ({"layers": 0}, "positive integer"),
                                       ({"dtype": "int8"}, "dtype")])
def test_bad_config_is_one_line(kw, words):
    with pytest.raises(ConfigError) as e:
        BertConfig(**{**CFG.__dict__, **kw})
    assert words in str(e.value) and "\n" not in str(e.value)


def test_too_long_input_is_refused():
    p = nn.unbox(init())["params"]
    with pytest.raises(ValueError, match="max_positions=24"):
        Bert(CFG).apply({"params": p}, np.zeros((1, 25), np.int32))


def test_sharded_by_its_logical_names_on_8_devices_equals_one_device():
    """Parameters placed by their logical names (embed -> fsdp, batch -> data) on a 2x4 mesh: same logits."""
    from jax.sharding import AxisType, PartitionSpec as P
    mesh = jax.make_mesh((2, 4), ("data", "fsdp"), axis_types=(AxisType.Auto, AxisType.Auto))
    rules = (("batch", "data"), ("embed", "fsdp"))
    x = ids()
    mask = np.ones_like(x)
    mask[1, 8:] = 0
    boxed = init()["params"]
    p = nn.unbox(boxed)
    want = Bert(CFG).apply({"params": p}, x, mask)
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
    placed = jax.device_put(p, shardings)
    assert placed["word_embeddings"].sharding.spec == P(None, "fsdp")
    assert placed["layer_0"]["out"]["kernel"].sharding.spec == P(None, None, "fsdp")
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        got = jax.jit(lambda p, x, m: Bert(CFG).apply({"params": p}, x, m))(placed, x, mask)
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_every_configurable_activation_has_a_function():
    assert tuple(ACTIVATIONS) == BERT_ACTIVATIONS    # the config's allowed names are the model's functions
