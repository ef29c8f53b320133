"""Sutskever et al. 2014's encoder–decoder: reading the source reversed (a masked reverse scan) is reading the
reversed sentence, padding changes nothing, each decoder layer starts from its encoder layer's final state,
and the greedy tokens are what teacher forcing on them predicts."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax.foundations import lstm, seq2seq

V, PAD = 9, 0


@pytest.fixture(scope="module")
def setup():
    p = seq2seq.init(jax.random.key(0), V, 6, 8, layers=2)
    lengths = np.array([5, 3, 7])
    src = np.zeros((3, 9), np.int32)
    rng = np.random.default_rng(0)
    for r, n in enumerate(lengths):
        src[r, :n] = rng.integers(1, V, n)
    return p, jnp.asarray(src), jnp.asarray(src != PAD)


def test_reverse_reading_is_the_reversed_sentence_and_padding_is_skipped(setup):
    p, src, mask = setup
    flipped = np.asarray(src).copy()
    for r in range(flipped.shape[0]):
        n = int(mask[r].sum())
        flipped[r, :n] = flipped[r, :n][::-1]           # the real tokens reversed, padding left at the end
    rev = seq2seq.encode(p, src, mask, reverse=True)
    fwd_of_flipped = seq2seq.encode(p, jnp.asarray(flipped), mask, reverse=False)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), rev, fwd_of_flipped)
    more_pad = jnp.pad(src, ((0, 0), (0, 4)))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 seq2seq.encode(p, more_pad, more_pad != PAD, reverse=True), rev)
    # reversing changes what the encoder ends on (a model where order matters)
    assert not np.allclose(rev[-1][0], seq2seq.encode(p, src, mask, reverse=False)[-1][0])
    # layer 0 is one masked scan of the embeddings; layer 1 reads layer 0's states
    (h0, c0), hs0 = lstm.scan(p["enc"][0], p["embed"][src], mask=mask, reverse=True)
    np.testing.assert_allclose(rev[0][0], h0, rtol=1e-6)
    np.testing.assert_allclose(rev[1][0], lstm.scan(p["enc"][1], hs0, mask=mask, reverse=True)[0][0], rtol=1e-6)


def test_greedy_tokens_are_what_teacher_forcing_on_them_predicts_and_decoder_starts_from_the_encoder(setup):
    p, src, mask = setup
    T, BOS = 6, 1
    for reverse in (False, True):
        ys = seq2seq.greedy(p, src, mask, T, BOS, reverse)
        tgt_in = jnp.concatenate([jnp.full((src.shape[0], 1), BOS, jnp.int32), ys[:, :-1]], 1)
        logits = seq2seq.forward(p, src, mask, tgt_in, reverse)
        np.testing.assert_array_equal(logits.argmax(-1), ys)
    carries = seq2seq.encode(p, src, mask, reverse=True)
    out, first = seq2seq.decode_step(p, carries, jnp.full((3,), BOS, jnp.int32))
    h = lstm.cell(p["dec"][1], carries[1], lstm.cell(p["dec"][0], carries[0], p["embed"][jnp.full((3,), BOS)])[0])[0]
    np.testing.assert_allclose(first, h @ p["out"]["w"] + p["out"]["b"], rtol=1e-5, atol=1e-6)
    total, count = seq2seq.token_nll(logits, ys, PAD)
    assert float(count) == ys.size and float(total) > 0
    with pytest.raises(ValueError, match="layers=0"):
        seq2seq.init(jax.random.key(0), V, 6, 8, layers=0)
