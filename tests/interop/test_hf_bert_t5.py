"""Hugging Face BERT and T5 interop: tiny random transformers models of odd shapes (hidden 36, 3 heads,
intermediate 52, vocab 77; T5 with d_kv = 10 ≠ 36/3, 8 buckets, max distance 20, relu and gated-gelu,
tied and untied heads) load through ``lineage_jax.interop.hf.load`` with logits equal to transformers'
(eager attention) within 1e-4 under padding masks; ours load back into transformers with no missing or
unexpected keys and the same logits; unsupported checkpoints are refused in one line."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from lineage_jax.interop import hf, hf_bert, hf_t5  # noqa: E402
from lineage_jax.models.bert import Bert  # noqa: E402
from lineage_jax.models.t5 import T5  # noqa: E402

TOL = 1e-4
V = 77


def _jitter_norms(model):
    with torch.no_grad():   # norms away from (1, 0) so their mapping is exercised too
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name:
                p.add_(0.1 * torch.randn_like(p))


def bert_torch(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=V, hidden_size=36, num_attention_heads=3, intermediate_size=52,
                                  num_hidden_layers=3, max_position_embeddings=24, type_vocab_size=3,
                                  initializer_range=0.3, attn_implementation="eager", **kw)
    model = transformers.BertForMaskedLM(cfg).eval()
    _jitter_norms(model)
    with torch.no_grad():
        model.cls.predictions.bias.normal_()
    return model


def bert_inputs(seed=0, B=3, T=13):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, (B, T))
    mask = np.ones((B, T), np.int64)
    mask[1, 9:] = 0
    mask[2, 4:] = 0
    return ids, mask, rng.integers(0, 3, (B, T))


def bert_logits_torch(model, ids, mask, types):
    with torch.no_grad():
        return model(torch.tensor(ids), attention_mask=torch.tensor(mask),
                     token_type_ids=torch.tensor(types)).logits.numpy()


def assert_close_where(ours, want, mask):
    """Equal within TOL; with ``mask`` only at real positions (transformers computes padded queries too)."""
    ours, want = np.asarray(ours), np.asarray(want)
    assert ours.shape == want.shape
    sel = np.ones(ours.shape[:2], bool) if mask is None else mask.astype(bool)
    diff = float(np.abs(ours[sel] - want[sel]).max())
    assert diff <= TOL, diff
    assert float(np.abs(want).max()) > 1.0        # not trivially small logits


@pytest.mark.parametrize("act", ["gelu", "gelu_new"])
def test_bert_logits_equal_transformers_both_ways(act, tmp_path):
    theirs = bert_torch(hidden_act=act)
    theirs.save_pretrained(tmp_path / "hf")
    model, params = hf.load(tmp_path / "hf")
    c = model.cfg
    assert isinstance(model, Bert) and (c.width, c.heads, c.layers, c.mlp_dim, c.vocab_size, c.hidden_act) == (
        36, 3, 3, 52, V, act)
    ids, mask, types = bert_inputs()
    want = bert_logits_torch(theirs, ids, mask, types)
    ours = model.apply({"params": params}, ids, mask, types)
    np.testing.assert_allclose(ours, want, atol=TOL)            # every position, padded queries included
    assert_close_where(ours, want, mask)

    hf_bert.save(model, params, tmp_path / "ours")
    back, info = transformers.BertForMaskedLM.from_pretrained(tmp_path / "ours", output_loading_info=True,
                                                              attn_implementation="eager")
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    np.testing.assert_allclose(bert_logits_torch(back.eval(), ids, mask, types), ours, atol=TOL)


def test_bert_for_pretraining_checkpoint_loads_its_mlm_head(tmp_path):
    """BertForPreTraining (how bert-base-* ship): the pooler and next-sentence head are skipped, the MLM
    logits are its prediction_logits."""
    torch.manual_seed(1)
    theirs = transformers.BertForPreTraining(bert_torch().config).eval()
    _jitter_norms(theirs)
    theirs.save_pretrained(tmp_path / "hf")
    model, params = hf.load(tmp_path / "hf")
    ids, mask, types = bert_inputs(seed=2)
    with torch.no_grad():
        want = theirs(torch.tensor(ids), attention_mask=torch.tensor(mask),
                      token_type_ids=torch.tensor(types)).prediction_logits.numpy()
    assert_close_where(model.apply({"params": params}, ids, mask, types), want, mask)


def _rewrite_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (path / "config.json").write_text(json.dumps(cfg))


def _one_line(excinfo, *words):
    msg = str(excinfo.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_bert_refusals_are_one_line(tmp_path):
    theirs = bert_torch()
    d = tmp_path / "hf"
    theirs.save_pretrained(d)
    for key, value in (("position_embedding_type", "relative_key"), ("is_decoder", True),
                       ("hidden_act", "mish"), ("tie_word_embeddings", False)):
        _rewrite_config(d, **{key: value})
        with pytest.raises(hf.InteropError) as e:
            hf.load(d)
        _one_line(e, key)
        _rewrite_config(d, **{key: None})
    model, params = hf.load(d, dtype="bfloat16", param_dtype="bfloat16")   # the restored config loads; overrides
    assert model.cfg.dtype == "bfloat16" and params["word_embeddings"].dtype == "bfloat16"
    with pytest.raises(hf.InteropError) as e:
        hf.load(d, scan_layers=True)
    _one_line(e, "override 'scan_layers' is not a BertConfig field")
    base = tmp_path / "base"                                                 # encoder only: no MLM head
    theirs.bert.save_pretrained(base)
    with pytest.raises(hf.InteropError) as e:
        hf.load(base)
    _one_line(e, "no masked-LM head", "BertForMaskedLM")
    _rewrite_config(d, num_hidden_layers=2)
    with pytest.raises(hf.InteropError) as e:
        hf.load(d)
    _one_line(e, "unexpected tensor", "bert.encoder.layer.2")


def t5_torch(ff, tied, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.T5Config(vocab_size=V, d_model=36, d_kv=10, d_ff=52, num_layers=3, num_decoder_layers=2,
                                num_heads=3, relative_attention_num_buckets=8, relative_attention_max_distance=20,
                                feed_forward_proj=ff, tie_word_embeddings=tied, attn_implementation="eager")
    model = transformers.T5ForConditionalGeneration(cfg).eval()
    if not tied:    # transformers 5 ties lm_head at construction; a separate head is a new parameter
        model.lm_head.weight = torch.nn.Parameter(0.3 * torch.randn(V, 36))
    _jitter_norms(model)
    return model


def t5_inputs(seed=0, B=3, Ts=23, Td=9):
    rng = np.random.default_rng(seed)        # Ts = 23 > max_distance: the far (shared) buckets are reached
    src, tgt = rng.integers(0, V, (B, Ts)), rng.integers(0, V, (B, Td))
    src_mask, tgt_mask = np.ones((B, Ts), np.int64), np.ones((B, Td), np.int64)
    src_mask[1, 15:] = 0
    src_mask[2, 5:] = 0
    tgt_mask[0, 6:] = 0
    return src, tgt, src_mask, tgt_mask


def t5_logits_torch(model, src, tgt, src_mask, tgt_mask):
    with torch.no_grad():
        return model(input_ids=torch.tensor(src), attention_mask=torch.tensor(src_mask),
                     decoder_input_ids=torch.tensor(tgt), decoder_attention_mask=torch.tensor(tgt_mask)).logits.numpy()


@pytest.mark.parametrize("ff, tied", [("relu", True), ("relu", False), ("gated-gelu", True), ("gated-gelu", False)])
def test_t5_logits_equal_transformers_both_ways(ff, tied, tmp_path):
    theirs = t5_torch(ff, tied)
    theirs.save_pretrained(tmp_path / "hf")
    model, params = hf.load(tmp_path / "hf")
    c = model.cfg
    assert isinstance(model, T5)
    assert (c.d_kv, c.num_layers, c.decoder_layers, c.feed_forward_proj) == (10, 3, 2, ff)
    assert (c.tie_word_embeddings, c.scale_decoder_outputs) == (tied, tied)
    assert ("lm_head" in params) == (not tied)
    src, tgt, src_mask, tgt_mask = inputs = t5_inputs()
    want = t5_logits_torch(theirs, *inputs)
    ours = model.apply({"params": params}, src, tgt, src_mask, tgt_mask)
    np.testing.assert_allclose(ours, want, atol=TOL)
    assert_close_where(ours, want, None)
    no_mask = t5_logits_torch(theirs, src, tgt, np.ones_like(src_mask), np.ones_like(tgt_mask))
    np.testing.assert_allclose(model.apply({"params": params}, src, tgt), no_mask, atol=TOL)

    hf_t5.save(model, params, tmp_path / "ours")
    back, info = transformers.T5ForConditionalGeneration.from_pretrained(
        tmp_path / "ours", output_loading_info=True, attn_implementation="eager")
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    np.testing.assert_allclose(t5_logits_torch(back.eval(), *inputs), ours, atol=TOL)
    if not tied:    # a transformers 4 style v1.1 config says "untied and unscaled" with tie_word_embeddings alone
        _rewrite_config(tmp_path / "ours", tie_word_embeddings=False, scale_decoder_outputs=None)
        assert hf.load(tmp_path / "ours")[0].cfg == c


def test_t5_refusals_are_one_line(tmp_path):
    theirs = t5_torch("relu", True)
    d = tmp_path / "hf"
    theirs.save_pretrained(d)
    for key, value in (("feed_forward_proj", "gated-silu"), ("is_decoder", True), ("is_encoder_decoder", False)):
        _rewrite_config(d, **{key: value})
        with pytest.raises(hf.InteropError) as e:
            hf.load(d)
        _one_line(e, key)
        _rewrite_config(d, **{key: None} if key == "is_decoder" else {key: "relu" if key[0] == "f" else True})
    hf.load(d)
    with pytest.raises(hf.InteropError) as e:
        hf.load(d, attn_chunks=2)
    _one_line(e, "override 'attn_chunks' is not a T5Config field")
    _rewrite_config(d, feed_forward_proj="gated-gelu")                   # weights say relu (wi, not wi_0/wi_1)
    with pytest.raises(hf.InteropError) as e:
        hf.load(d)
    _one_line(e, "missing", "wi_0")
    _rewrite_config(d, feed_forward_proj="relu", d_kv=12)
    with pytest.raises(hf.InteropError) as e:
        hf.load(d)
    _one_line(e, "has shape", "(30, 36)")
    enc = tmp_path / "encoder_only"
    transformers.T5EncoderModel(theirs.config).save_pretrained(enc)
    with pytest.raises(hf.InteropError) as e:
        hf.load(enc)
    _one_line(e, "no decoder", "T5ForConditionalGeneration")


def test_save_dispatches_to_the_family_writer(tmp_path):
    pytest.importorskip("lineage_jax.interop.hf_llama")     # hf.save imports every family module in turn
    model, params = hf.load(_saved(bert_torch(), tmp_path / "bert"))
    hf.save(model, params, tmp_path / "bert_ours")
    assert json.loads((tmp_path / "bert_ours" / "config.json").read_text())["model_type"] == "bert"
    model, params = hf.load(_saved(t5_torch("relu", True), tmp_path / "t5"))
    hf.save(model, params, tmp_path / "t5_ours")
    assert json.loads((tmp_path / "t5_ours" / "config.json").read_text())["model_type"] == "t5"


def _saved(model, path):
    model.save_pretrained(path)
    return path
