"""The seq2seq_attention lesson: each variant's scores are the paper's formula, alignments are distributions
that ignore padding, teacher forcing and greedy decoding are one computation, the held-out split is stratified
by length, and ``lineage lesson seq2seq_attention --quick`` writes a result.json whose verdict follows its rows."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lineage_jax import cli
from lineage_jax.config import ConfigError
from lineage_jax.foundations import lstm
from lineage_jax.lessons import seq2seq_attention as lesson
from lineage_jax.lessons.translate import Vocab, task_pairs

V, E, H = len(Vocab()), 8, 12


def _src(S=9):
    src = np.array([[5, 6, 7, 8, 9, 0, 0, 0, 0], [10, 11, 12, 13, 14, 15, 16, 17, 18]], np.int32)
    return jnp.asarray(np.pad(src, ((0, 0), (0, S - 9))))


@pytest.mark.parametrize("variant", lesson.VARIANTS)
def test_teacher_forcing_on_the_greedy_tokens_reproduces_them_and_padding_changes_nothing(variant):
    p = lesson.init(jax.random.key(1), variant, V, E, H)
    ys, alpha = lesson.greedy(p, variant, _src(), 5)
    tgt_in = jnp.concatenate([jnp.full((2, 1), Vocab.BOS, jnp.int32), ys[:, :-1]], 1)
    logits, alpha_tf = lesson.forward(p, variant, _src(), tgt_in)
    np.testing.assert_array_equal(logits.argmax(-1), ys)
    np.testing.assert_allclose(alpha_tf, alpha, atol=1e-6)
    padded, _ = lesson.forward(p, variant, _src(S=14), tgt_in)           # five more PAD columns
    np.testing.assert_allclose(padded, logits, rtol=1e-5, atol=1e-5)
    if variant != "none":
        np.testing.assert_allclose(alpha.sum(-1), 1.0, rtol=1e-5)
        np.testing.assert_array_equal(alpha[0, :, 5:], 0.0)              # no weight on the padding


def test_scores_are_the_papers_formulas():
    q, ann = jax.random.normal(jax.random.key(0), (2, H)), jax.random.normal(jax.random.key(1), (2, 4, H))
    p = lesson.init(jax.random.key(2), "general", V, E, H)
    np.testing.assert_allclose(lesson._score(p, "dot", q, ann, None), [[a @ q[b] for a in ann[b]] for b in range(2)],
                               rtol=1e-5)
    W = p["W_a"]["w"]     # h_tᵀ W_a h̄_s with W_a applied as q @ w
    np.testing.assert_allclose(lesson._score(p, "general", q, ann, None),
                               [[q[b] @ W @ a for a in ann[b]] for b in range(2)], rtol=1e-4, atol=1e-5)
    pc = lesson.init(jax.random.key(3), "concat", V, E, H)
    expect = [[float(jnp.tanh(jnp.concatenate([q[b], a]) @ pc["W_a"]["w"] + pc["W_a"]["b"]) @ pc["v"]["w"][:, 0])
               for a in ann[b]] for b in range(2)]
    np.testing.assert_allclose(lesson._score(pc, "concat", q, ann, None), expect, rtol=1e-4, atol=1e-5)
    pb = lesson.init(jax.random.key(4), "bahdanau", V, E, H)
    ann2 = jnp.concatenate([ann, ann[..., ::-1]], -1)                    # annotations are 2H wide
    proj = ann2 @ pb["U"]["w"] + pb["U"]["b"]
    expect = [[float(jnp.tanh(q[b] @ pb["W"]["w"] + pj) @ pb["v"]["w"][:, 0]) for pj in proj[b]] for b in range(2)]
    np.testing.assert_allclose(lesson._score(pb, "bahdanau", q, ann2, proj), expect, rtol=1e-4, atol=1e-5)


def test_bahdanau_encodes_both_directions_and_starts_from_the_backward_state():
    p = lesson.init(jax.random.key(5), "bahdanau", V, E, H)
    ann, mask, (s0, c0) = lesson.encode(p, "bahdanau", _src())
    x = p["embed"][_src()[:1, :5]]
    (hb, _), yb = lstm.scan(p["enc_back"], x, reverse=True)
    _, yf = lstm.scan(p["enc"], x)
    np.testing.assert_allclose(ann[0, :5], np.concatenate([yf[0], yb[0]], -1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s0[0], jnp.tanh(hb[0] @ p["init"]["w"] + p["init"]["b"]), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(c0, 0.0)
    np.testing.assert_array_equal(mask[0], [1] * 5 + [0] * 4)


def test_the_train_step_is_pure_and_lowers_the_loss():
    pairs = task_pairs("numbers", 300)[:16]
    arrays = {k: jnp.asarray(v) for k, v in Vocab().arrays(pairs, 30, 5).items()}
    tx = optax.adam(1e-2)
    p = lesson.init(jax.random.key(0), "dot", V, E, H)
    step = lesson.make_train_step("dot", tx)
    (s1, m1), (s2, m2) = step((p, tx.init(p)), arrays), step((p, tx.init(p)), arrays)
    jax.tree.map(np.testing.assert_array_equal, (s1, m1), (s2, m2))
    state, first = s1, float(m1["loss"])
    for _ in range(30):
        state, m = step(state, arrays)
    assert float(m["loss"]) < 0.7 * first


def test_the_held_out_split_is_stratified_by_length_and_disjoint():
    pairs = task_pairs("numbers", 2000)
    train, test, buckets = lesson.stratified_split(pairs, 25, seed=3)
    assert len(train) + len(test) == len(pairs) and not set(train) & set(test)
    lengths = np.searchsorted(lesson.EDGES, [len(x) for x, _ in test], side="right")
    np.testing.assert_array_equal(lengths, buckets)
    counts = np.bincount(buckets, minlength=len(lesson.EDGES) + 1)
    assert counts.max() == 25 and (counts[:4] > 0).all()
    order = lesson.balanced_batches(train, 200, 32, seed=0)
    drawn = np.bincount(np.searchsorted(lesson.EDGES, [len(train[i][0]) for i in order.ravel()], side="right"))
    present = drawn[drawn > 0]
    assert present.min() > 0.6 * present.max()                          # buckets drawn about equally often


def test_supports_reads_the_rows_and_config_refuses_bad_variants():
    rows = lambda none_long, att_long: [
        {"variant": v, "bucket": b, "bucket_index": i, "accuracy": a, "n": 10}
        for v, accs in (("none", (0.9, none_long)), ("dot", (0.9, att_long))) for i, (b, a) in enumerate(
            zip(("<20", ">=50"), accs))]
    assert lesson.supports(rows(0.3, 0.85))
    assert not lesson.supports(rows(0.3, 0.2))          # attention falls further
    assert not lesson.supports(rows(0.88, 0.9))         # no fall without attention
    scarce = [{**r, "bucket_index": r["bucket_index"] + 1} for r in rows(0.7, 0.9)]
    scarce += [{"variant": v, "bucket": "<10", "bucket_index": 0, "accuracy": 0.5, "n": 10} for v in ("none", "dot")]
    assert lesson.drops(scarce) == pytest.approx({"none": 0.2, "dot": 0.0})   # from the best bucket, not the first
    assert lesson.supports(scarce)
    for bad in ("dot,general", "none", "none,luong", "none,dot,dot"):
        with pytest.raises(ConfigError, match="variants="):
            lesson.Config(variants=bad)


def test_quick_writes_result_json_and_pngs(tmp_path):
    rc = cli.main(["lesson", "seq2seq_attention", "--quick", "--out", str(tmp_path), "--no-progress",
                   "--variants", "none,dot", "--steps", "60", "max_number=1000", "per_bucket=20"])
    assert rc == 0
    res = json.loads((tmp_path / "result.json").read_text())
    assert {r["variant"] for r in res["rows"]} == {"none", "dot"}
    assert {r["bucket"] for r in res["rows"]} == {"<20", "20-29", "30-39"} and all(r["n"] == 20 for r in res["rows"])
    assert res["supported"] is lesson.supports(res["rows"])
    assert res["figures"] == ["seq2seq_attention.png", "alignment.png"]
    for f in res["figures"]:
        assert (tmp_path / f).read_bytes()[:4] == b"\x89PNG"
