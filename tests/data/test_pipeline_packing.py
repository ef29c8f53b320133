"""Packing with segment ids and restarting positions (T5-style packing): a packed row computes
what its documents compute alone; BERT masking (Devlin et al. 2019); T5 span corruption
(Raffel et al. 2020, §3.1.4)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lineage_jax.attention.mha import attention, causal_mask, segment_mask
from lineage_jax.data.pipeline.packing import (IGNORE, bert_mask, pack, packed_targets, random_spans_noise_mask,
                                               sentinel_span_corrupt, sentinel_span_restore, tokenize_and_pack)
from lineage_jax.tokenize import ByteTokenizer
from lineage_jax.train.step import cross_entropy

EOS, PAD = 99, 0


def _check_packing(docs, seq_len, packed, eos_id):
    tokens, seg, pos, doc_of = (packed[k] for k in ("tokens", "segment_ids", "positions", "document"))
    assert tokens.shape == seg.shape == pos.shape == doc_of.shape and tokens.shape[1] == seq_len
    assert ((seg == 0) == (doc_of == -1)).all() and (tokens[seg == 0] == PAD).all() and (pos[seg == 0] == 0).all()
    for d, doc in enumerate(docs):           # every token of every document exactly once, in order
        want = list(doc) + ([eos_id] if eos_id is not None else [])
        offsets = packed["offset"][doc_of == d]
        assert sorted(offsets.tolist()) == list(range(len(want)))
        assert tokens[doc_of == d][np.argsort(offsets)].tolist() == want
    for r in range(tokens.shape[0]):
        s = seg[r][seg[r] > 0]
        assert (np.diff(s) >= 0).all() and (np.unique(s) == np.arange(1, s.max() + 1)).all()   # 1, 2, … per row
        assert (seg[r][: s.size] > 0).all()                                                     # padding at the end
        for k in np.unique(s):
            here = seg[r] == k
            assert (pos[r][here] == np.arange(here.sum())).all() and len(np.unique(doc_of[r][here])) == 1
            assert (np.diff(packed["offset"][r][here]) == 1).all()                               # a contiguous piece


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(1, 50), max_size=20), max_size=12), st.integers(1, 16),
       st.sampled_from(["first_fit", "sequential"]), st.booleans())
def test_every_token_once_in_order_with_segments_and_positions(docs, seq_len, strategy, with_eos):
    eos = EOS if with_eos else None
    packed = pack(docs, seq_len, PAD, eos_id=eos, strategy=strategy)
    _check_packing(docs, seq_len, packed, eos)
    if strategy == "sequential":          # rows read in document order
        firsts = [d for d in packed["document"].reshape(-1) if d >= 0]
        assert firsts == sorted(firsts)


def test_first_fit_fills_earlier_rows_and_long_documents_split():
    packed = pack([[1] * 5, [2] * 5, [3] * 2, [4] * 13], 7, PAD, strategy="first_fit")
    assert packed["tokens"].tolist() == [[1, 1, 1, 1, 1, 3, 3], [2, 2, 2, 2, 2, 0, 0],
                                         [4] * 7, [4] * 6 + [0]]
    assert packed["segment_ids"].tolist() == [[1] * 5 + [2] * 2, [1] * 5 + [0] * 2, [1] * 7, [1] * 6 + [0]]
    seq = pack([[1] * 5, [2] * 5, [3] * 2], 7, PAD, strategy="sequential")
    assert seq["tokens"].tolist() == [[1] * 5 + [0] * 2, [2] * 5 + [3] * 2]


def test_tokenize_and_pack_with_the_byte_tokenizer():
    tok = ByteTokenizer()
    docs = ["hello", "packed world", "x"]
    packed = tokenize_and_pack(docs, tok, 16)
    _check_packing([tok.encode(d) for d in docs], 16, {**packed, "tokens": np.where(
        packed["segment_ids"] == 0, PAD, packed["tokens"])}, tok.eos_id)


def _tiny_model(seed=0, vocab=32, dim=16, heads=2, max_pos=32):
    """One causal self-attention layer with a residual, random weights: logits(tokens, positions, segment_ids)."""
    rng = np.random.default_rng(seed)
    p = {"tok": rng.normal(size=(vocab, dim)), "pos": rng.normal(size=(max_pos, dim)),
         **{n: rng.normal(size=(dim, dim)) / 4 for n in "qkv"}, "out": rng.normal(size=(dim, vocab)) / 4}
    p = {k: jnp.asarray(v, jnp.float32) for k, v in p.items()}

    def logits(tokens, positions, segment_ids):
        B, T = tokens.shape
        x = p["tok"][tokens] + p["pos"][positions]
        q, k, v = ((x @ p[n]).reshape(B, T, heads, dim // heads) for n in "qkv")
        mask = causal_mask(T) & segment_mask(segment_ids)
        return (x + attention(q, k, v, mask=mask).reshape(B, T, dim)) @ p["out"]
    return logits


def test_loss_with_packing_equals_the_loss_of_each_document_alone():
    rng = np.random.default_rng(0)
    docs = [rng.integers(1, 31, n).tolist() for n in (5, 9, 3, 12, 7, 2, 10)]
    packed = pack(docs, 16, PAD, eos_id=31)
    model = _tiny_model()

    @jax.jit
    def packed_token_losses(tokens, positions, segment_ids, targets, weights):
        z = model(tokens, positions, segment_ids)        # per-token cross-entropy, masked
        return (jax.nn.logsumexp(z, -1) - jnp.take_along_axis(z, targets[..., None], -1)[..., 0]) * weights

    @jax.jit
    def alone_loss(doc):                                   # one document, no packing: [1, T]
        T = doc.shape[1]
        z = model(doc, jnp.arange(T)[None], jnp.ones((1, T), jnp.int32))
        return cross_entropy(z[:, :-1], doc[:, 1:])

    targets, weights = packed_targets(packed)
    assert (weights[packed["segment_ids"] == 0] == 0).all()
    per_token = np.asarray(packed_token_losses(packed["tokens"], packed["positions"], packed["segment_ids"],
                                               targets, weights))
    assert packed["tokens"].shape[0] < len(docs)           # documents really share rows
    for d, doc in enumerate(docs):
        in_doc = packed["document"] == d
        assert weights[in_doc].sum() == len(doc)           # every next-token prediction, none across documents
        packed_loss = per_token[in_doc].sum() / weights[in_doc].sum()
        np.testing.assert_allclose(packed_loss, float(alone_loss(jnp.asarray([doc + [31]]))), atol=1e-5, rtol=1e-5)


def test_bert_masking_statistics():
    rng = np.random.default_rng(0)
    vocab, mask_id, special = 30000, 103, (0, 101, 102)
    tokens = rng.integers(1000, vocab, size=(2000, 128))
    tokens[:, 0], tokens[:, -1] = 101, 102
    inputs, labels = bert_mask(tokens, rng, vocab_size=vocab, mask_id=mask_id, special_ids=special)
    selected = labels != IGNORE
    assert (labels[selected] == tokens[selected]).all() and (inputs[~selected] == tokens[~selected]).all()
    assert not selected[:, [0, -1]].any()                                   # specials never selected
    assert (selected.sum(1) == round(0.15 * 126)).all()                     # 15 % of the 126 eligible per row
    masked = (inputs == mask_id) & selected
    kept = (inputs == tokens) & selected
    randomised = selected & ~masked & ~kept
    n = selected.sum()
    assert abs(masked.sum() / n - 0.8) < 0.01
    assert abs(randomised.sum() / n - 0.1) < 0.01 and abs(kept.sum() / n - 0.1) < 0.01
    assert ((inputs[randomised] >= 0) & (inputs[randomised] < vocab)).all()


def test_t5_span_corruption_statistics_sentinels_and_reconstruction():
    rng = np.random.default_rng(0)
    vocab, L = 32000, 512
    noise, spans = [], []
    for _ in range(300):
        x = rng.integers(0, vocab - 200, L)
        mask = random_spans_noise_mask(L, rng)
        noise.append(mask.mean())
        edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
        spans += (edges[1::2] - edges[::2]).tolist()
        assert not mask[0]                                               # a non-noise span first
        inputs, targets = sentinel_span_corrupt(x, rng, vocab_size=vocab, noise_mask=mask)
        k = len(edges) // 2
        sentinels = vocab - 1 - np.arange(k + 1)
        assert inputs[inputs >= vocab - 200].tolist() == sentinels[:k].tolist()
        assert targets[targets >= vocab - 200].tolist() == sentinels.tolist() and targets[0] == vocab - 1
        assert inputs.size + targets.size == L + 2 * k + 1                # each span: one sentinel in each, +1 closing
        np.testing.assert_array_equal(sentinel_span_restore(inputs, targets, vocab), x)
    assert abs(np.mean(noise) - 0.15) < 0.005
    assert abs(np.mean(spans) - 3.0) < 0.1


@settings(max_examples=80, deadline=None)
@given(st.integers(2, 60), st.integers(0, 2**32 - 1))
def test_t5_span_corruption_round_trips(length, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 900, length)
    inputs, targets = sentinel_span_corrupt(x, rng, vocab_size=1000)
    np.testing.assert_array_equal(sentinel_span_restore(inputs, targets, 1000), x)


def test_t5_rejects_tokens_that_collide_with_sentinels():
    with pytest.raises(ValueError):
        sentinel_span_corrupt(np.full(20, 999), np.random.default_rng(0), vocab_size=1000)
