"""T5 (Raffel et al. 2020) as a Flax model: one relative-bias table per stack (shared by its layers),
the simplified LayerNorm, a causal decoder, encoder padding never seen, heads of width d_kv ≠ D/H,
tied (scaled) and untied heads. Equality with transformers' T5ForConditionalGeneration is in
tests/interop/test_hf_bert_t5.py."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax.config import ConfigError
from lineage_jax.models.t5 import T5, T5Config, T5LayerNorm, shift_right

CFG = T5Config(vocab_size=77, d_model=36, d_kv=10, d_ff=52, num_heads=3, num_layers=2, num_decoder_layers=3,
               relative_attention_num_buckets=8, relative_attention_max_distance=20, feed_forward_proj="gated-gelu")


def setup(cfg=CFG, seed=0):
    """Parameters of T5(cfg) drawn in numpy (compiling the init's many RNG calls is slow on a busy CPU)."""
    x = np.zeros((2, 9), np.int32)
    shapes = nn.unbox(jax.eval_shape(T5(cfg).init, jax.random.key(0), x, x[:, :5]))["params"]
    rng = np.random.default_rng(seed)
    fill = lambda kp, s: (1.0 + 0.1 * rng.standard_normal(s.shape) if "scale" in jax.tree_util.keystr(kp)
                          else 0.3 * rng.standard_normal(s.shape))
    return jax.tree.map(jnp.asarray, jax.tree_util.tree_map_with_path(fill, shapes))


def ids(T, seed, B=2):
    return np.random.default_rng(seed).integers(2, CFG.vocab_size, (B, T)).astype(np.int32)


def test_parameters_named_and_one_bias_table_per_stack():
    boxed = jax.eval_shape(T5(CFG).init, jax.random.key(0), ids(9, 0), ids(5, 1))["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.Partitioned) and len(x.names) == x.value.ndim for x in leaves)
    p = nn.unbox(boxed)
    paths = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(p)]
    assert [q for q in paths if "relative_attention_bias" in q] == ["['decoder']['relative_attention_bias']",
                                                                   "['encoder']['relative_attention_bias']"]
    assert p["encoder"]["layer_0"]["self_attn"]["query"]["kernel"].shape == (36, 3, 10)    # d_kv = 10 ≠ 36/3
    assert p["encoder"]["layer_0"]["self_attn"]["out"]["kernel"].shape == (3, 10, 36)
    assert set(p["decoder"]) == {"relative_attention_bias", "final_ln", "layer_0", "layer_1", "layer_2"}
    assert not any("bias'" in q and "relative" not in q for q in paths)                     # no dense biases
    assert "lm_head" not in p and set(p["decoder"]["layer_0"]) == {"self_attn", "self_ln", "cross_attn", "cross_ln",
                                                                    "ffn", "ffn_ln"}
    assert set(p["encoder"]["layer_0"]["ffn"]) == {"wi_0", "wi_1", "wo"}


def test_layer_norm_is_rms_without_mean_or_bias():
    x = jax.random.normal(jax.random.key(3), (2, 5, 36)) + 3.0                              # a large mean, kept
    norm = T5LayerNorm(1e-6)
    v = norm.init(jax.random.key(0), x)
    assert set(nn.unbox(v)["params"]) == {"scale"}
    want = np.asarray(x) / np.sqrt((np.asarray(x) ** 2).mean(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(norm.apply(v, x), want, rtol=1e-5, atol=1e-6)


def test_decoder_is_causal_and_encoder_padding_is_unseen():
    p = setup()
    model = T5(CFG)
    fwd = jax.jit(lambda p, src, tgt, mask=None: model.apply({"params": p}, src, tgt, mask))   # one compile per shape
    src, tgt = ids(9, 0), ids(6, 1)
    base = fwd(p, src, tgt)
    later = tgt.copy()
    later[:, 4:] = (later[:, 4:] + 7) % CFG.vocab_size
    moved = fwd(p, src, later)
    np.testing.assert_allclose(moved[:, :4], base[:, :4], atol=1e-6)                        # the past is blind to the future
    assert float(jnp.abs(moved[:, 4:] - base[:, 4:]).max()) > 1e-3
    mask = np.ones_like(src)
    mask[1, 6:] = 0
    padded = fwd(p, src, tgt, mask)
    alone = fwd(p, src[1:, :6], tgt[1:])
    np.testing.assert_allclose(padded[1], alone[0], atol=2e-5)


def test_tied_head_is_scaled_untied_is_not():
    p = setup()
    src, tgt = ids(9, 0), ids(5, 1)
    model = T5(CFG)
    enc = model.apply({"params": p}, src, method=T5.encode)
    tied = model.apply({"params": p}, tgt, enc, method=T5.decode)
    unscaled = T5(T5Config(**{**CFG.__dict__, "scale_decoder_outputs": False}))
    np.testing.assert_allclose(unscaled.apply({"params": p}, src, tgt) * 36 ** -0.5, tied, rtol=1e-5, atol=1e-6)
    untied_cfg = T5Config(**{**CFG.__dict__, "tie_word_embeddings": False, "scale_decoder_outputs": False})
    q = dict(p, lm_head=p["shared"].T)                                               # an untied head equal to E
    np.testing.assert_allclose(T5(untied_cfg).apply({"params": q}, src, tgt), tied * 36 ** 0.5, rtol=1e-5, atol=1e-5)
    assert setup(untied_cfg)["lm_head"].shape == (36, 77)


def test_shift_right_starts_with_pad_and_reads_ignored_labels_as_padding():
    labels = np.array([[5, 6, 7, -100], [8, -100, -100, -100]])
    np.testing.assert_array_equal(shift_right(labels), [[0, 5, 6, 7], [0, 8, 0, 0]])


def test_relu_variant_has_wi_and_trains():
    cfg = T5Config(**{**CFG.__dict__, "feed_forward_proj": "relu"})
    p = setup(cfg)
    assert set(p["encoder"]["layer_0"]["ffn"]) == {"wi", "wo"}
    src, tgt = ids(9, 0), ids(5, 1)

    def loss(params):
        logits = T5(cfg).apply({"params": params}, src, shift_right(tgt))
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tgt[..., None], -1))

    g = jax.jit(jax.grad(loss))(p)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(g))
    assert float(jnp.abs(g["decoder"]["relative_attention_bias"]).max()) > 0               # the bias is learned


@pytest.mark.parametrize("kw, words", [({"feed_forward_proj": "gated-silu"}, "feed_forward_proj"),
                                       ({"d_kv": 0}, "positive integer"),
                                       ({"relative_attention_num_buckets": 2}, "at least 4"),
                                       ({"dropout": 1.0}, "dropout")])
def test_bad_config_is_one_line(kw, words):
    with pytest.raises(ConfigError) as e:
        T5Config(**{**CFG.__dict__, **kw})
    assert words in str(e.value) and "\n" not in str(e.value)


def test_sharded_by_its_logical_names_on_8_devices_equals_one_device():
    """Parameters placed by their logical names (embed -> fsdp, batch -> data) on a 2x4 mesh: same logits."""
    from jax.sharding import AxisType, PartitionSpec as P
    mesh = jax.make_mesh((2, 4), ("data", "fsdp"), axis_types=(AxisType.Auto, AxisType.Auto))
    rules = (("batch", "data"), ("embed", "fsdp"))
    src, tgt = ids(9, 0), ids(5, 1)
    p = setup()
    want = T5(CFG).apply({"params": p}, src, tgt)
    specs = nn.get_partition_spec(jax.eval_shape(T5(CFG).init, jax.random.key(0), src, tgt))["params"]
    placed = jax.device_put(p, nn.logical_to_mesh_sharding(specs, mesh, rules))
    assert placed["shared"].sharding.spec == P(None, "fsdp")
    assert placed["decoder"]["layer_0"]["cross_attn"]["query"]["kernel"].sharding.spec == P("fsdp", None, None)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        got = jax.jit(lambda p, s, t: T5(CFG).apply({"params": p}, s, t))(placed, src, tgt)
    np.testing.assert_allclose(got, want, atol=2e-5)
