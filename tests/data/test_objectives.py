"""Pre-training objectives: BERT's masking selects round(0.15·n) of the eligible positions per row and
splits them 80/10/10 (binomial tolerance, both the numpy and the jitted JAX path); T5's span corruption
has exactly the noise and span counts of T5's ``random_spans_noise_mask`` arithmetic, the published
512 ← 568 → 114 lengths, sentinels counting down from vocab − 1, and inputs + targets give back the text."""
import jax
import numpy as np
import pytest

from lineage_jax.data import objectives as ob
from lineage_jax.data.pipeline.packing import random_spans_noise_mask

V, MASK, SPECIAL = 1000, 103, (0, 101, 102, 103)      # pad, [CLS], [SEP], [MASK]


def bert_rows(B=3000, L=64, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(104, V, (B, L))
    tokens[:, 0] = 101
    lengths = rng.integers(20, L + 1, B)
    valid = np.arange(L)[None, :] < lengths[:, None]
    tokens[np.arange(B), lengths - 1] = 102                              # [SEP] at the end of each row
    tokens[~valid] = 0
    return tokens, valid


def _sigma(p, n):
    return np.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_bert_masking_selects_15_percent_split_80_10_10(backend):
    tokens, valid = bert_rows()
    if backend == "numpy":
        inputs, labels = ob.bert_mask(tokens, np.random.default_rng(1), vocab_size=V, mask_id=MASK,
                                      special_ids=SPECIAL, valid=valid)
    else:
        fn = jax.jit(lambda t, k, v: ob.bert_mask(t, k, vocab_size=V, mask_id=MASK, special_ids=SPECIAL, valid=v))
        inputs, labels = map(np.asarray, fn(tokens, jax.random.key(1), valid))
        again = np.asarray(fn(tokens, jax.random.key(1), valid)[0])
        np.testing.assert_array_equal(again, inputs)                    # a pure function of the key
        assert (np.asarray(fn(tokens, jax.random.key(2), valid)[0]) != inputs).any()
    selected = labels != ob.IGNORE
    eligible = valid & ~np.isin(tokens, SPECIAL)
    assert not (selected & ~eligible).any()                              # never special, never padding
    np.testing.assert_array_equal(labels[selected], tokens[selected])
    np.testing.assert_array_equal(inputs[~selected], tokens[~selected])
    n = eligible.sum(1)
    np.testing.assert_array_equal(selected.sum(1), [max(1, round(0.15 * m)) for m in n])   # BERT's count, per row
    assert abs(selected.sum() / eligible.sum() - 0.15) < 0.005
    S = int(selected.sum())
    got, orig = inputs[selected], tokens[selected]
    p_mask, p_same = 0.8 + 0.1 / V, 0.1 + 0.1 / V                       # a random token may hit [MASK] or itself
    p_other = 1 - p_mask - p_same
    for frac, p in (((got == MASK).mean(), p_mask), ((got == orig).mean(), p_same),
                    (((got != MASK) & (got != orig)).mean(), p_other)):
        assert abs(frac - p) < 5 * _sigma(p, S), (frac, p, S)
    rand = got[(got != MASK) & (got != orig)]                            # uniform over the vocabulary
    assert rand.min() >= 0 and rand.max() < V
    assert abs(rand.mean() - (V - 1) / 2) < 5 * np.sqrt((V * V - 1) / 12 / rand.size)


def test_mlm_loss_equals_torch_cross_entropy_ignoring_minus_100():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 7, 11)).astype(np.float32) * 3
    labels = rng.integers(0, 11, (3, 7))
    labels[rng.random((3, 7)) < 0.6] = -100
    want = torch.nn.CrossEntropyLoss(ignore_index=-100)(torch.tensor(logits).view(-1, 11),
                                                        torch.tensor(labels).view(-1)).item()
    assert abs(float(ob.mlm_loss(logits, labels)) - want) < 1e-5


def test_t5_noise_and_span_counts_follow_t5_arithmetic():
    rng = np.random.default_rng(0)
    for L in range(2, 400):
        noise, spans = ob.t5_noise_counts(L)
        assert noise == min(max(round(L * 0.15), 1), L - 1) and spans == max(round(noise / 3), 1)
        mask = random_spans_noise_mask(L, rng)
        starts = np.flatnonzero(mask & ~np.concatenate([[False], mask[:-1]]))
        assert mask.sum() == noise and starts.size == spans
        assert not mask[0] and mask[-1]                                  # non-noise first, noise last
    # L = 512: 77 noise tokens in 26 spans, mean span length 77/26 in every sample
    lengths = []
    for _ in range(200):
        mask = random_spans_noise_mask(512, rng).astype(np.int8)
        edges = np.flatnonzero(np.diff(np.concatenate([[0], mask, [0]])))
        lengths.append(edges[1::2] - edges[::2])
    assert all(s.size == 26 and s.sum() == 77 for s in lengths)
    spans = np.concatenate(lengths)
    assert spans.min() == 1 and spans.max() > 6                          # random lengths, not all 3


def test_t5_lengths_match_t5_compute_input_and_target_lengths():
    assert ob.t5_raw_length(512) == 568 and ob.t5_lengths(568) == (512, 114)     # as T5 / HF run_t5_mlm_flax
    assert ob.t5_raw_length(128) == 141 and ob.t5_lengths(141) == (128, 29)      # 21 noise in 7 spans, by hand
    assert ob.t5_lengths(142)[0] == 129


@pytest.mark.parametrize("rng", [np.random.default_rng(3), jax.random.key(3)], ids=["numpy", "jax"])
def test_t5_span_corruption_shapes_sentinels_and_reconstruction(rng):
    B, L, vocab, eos = 300, 101, 32100, 1
    raw = np.random.default_rng(7).integers(2, 32000, (B, L))
    inputs, targets = ob.t5_span_corrupt(raw, rng, vocab_size=vocab, eos_id=eos)
    noise, spans = ob.t5_noise_counts(L)
    assert inputs.shape == (B, ob.t5_lengths(L)[0]) and targets.shape == (B, ob.t5_lengths(L)[1])
    sentinels = vocab - 1 - np.arange(spans)                             # vocab-1, vocab-2, ...
    for x, y, r in zip(inputs, targets, raw):
        assert x[-1] == eos and y[-1] == eos
        np.testing.assert_array_equal(x[x >= 32000], sentinels)
        np.testing.assert_array_equal(y[y >= 32000], sentinels)
        assert y[0] == vocab - 1                                         # targets open with the first sentinel
        np.testing.assert_array_equal(ob.t5_reconstruct(x, y, vocab), r)
    assert len({tuple(x) for x in inputs}) > B // 2                      # spans vary from row to row
    if not isinstance(rng, np.random.Generator):
        again = ob.t5_span_corrupt(raw, jax.random.key(3), vocab_size=vocab, eos_id=eos)
        np.testing.assert_array_equal(again[0], inputs)


def test_t5_batch_decoder_inputs_are_labels_shifted_right():
    raw = np.random.default_rng(0).integers(2, 90, (4, 30))
    batch = ob.t5_batch(raw, np.random.default_rng(1), vocab_size=100)
    assert batch["input_ids"].shape == (4, ob.t5_lengths(30)[0])
    np.testing.assert_array_equal(batch["decoder_input_ids"][:, 0], 0)
    np.testing.assert_array_equal(batch["decoder_input_ids"][:, 1:], batch["labels"][:, :-1])


def test_t5_bad_inputs_are_one_line():
    for call, words in ((lambda: ob.t5_span_corrupt(np.full((2, 20), 99), np.random.default_rng(0), vocab_size=100),
                         "collides with the sentinels"),
                        (lambda: ob.t5_span_corrupt(np.ones((2, 1)), np.random.default_rng(0), vocab_size=100),
                         "at least 2 tokens"),
                        (lambda: ob.t5_lengths(100, noise_density=1.5), "noise_density=1.5")):
        with pytest.raises(ValueError) as e:
            call()
        assert words in str(e.value) and "\n" not in str(e.value)


def _train(model, params, batches, loss_fn, steps=60, lr=1e-2):
    import optax
    tx = optax.adam(lr)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, batch, key):
        loss, g = jax.value_and_grad(loss_fn)(params, batch, key)
        upd, opt = tx.update(g, opt)
        return optax.apply_updates(params, upd), opt, loss

    losses = []
    for i in range(steps):
        params, opt, loss = step(params, opt, batches(i), jax.random.key(i))
        losses.append(float(loss))
    return losses


def _params(model, *args, std=0.05):
    """Initial parameters drawn in numpy (compiling an init's many RNG calls is slow on a busy CPU):
    normal(0, std) weights, LayerNorm scales 1 and biases 0."""
    import flax.linen as nn
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), *args))["params"]
    rng = np.random.default_rng(0)

    def fill(path, s):
        name = jax.tree_util.keystr(path)
        if name.endswith("['scale']"):
            return np.ones(s.shape, np.float32)
        if name.endswith("['bias']") and "relative" not in name:
            return np.zeros(s.shape, np.float32)
        return (std * rng.standard_normal(s.shape)).astype(np.float32)
    return jax.tree_util.tree_map_with_path(fill, shapes)


def _constant_rows(B, L, lo, hi, seed):
    """Rows each repeating one random id: a corrupted token is read off any other token of its row."""
    return np.repeat(np.random.default_rng(seed).integers(lo, hi, (B, 1)), L, axis=1)


def test_bert_learns_from_on_device_masking():
    """Masking inside the jitted step (a JAX key per step) feeds Bert; the masked-LM loss falls."""
    from lineage_jax.models.bert import Bert, BertConfig
    cfg = BertConfig(vocab_size=40, width=32, heads=2, layers=2, mlp_dim=64, max_positions=16)
    model = Bert(cfg)
    params = _params(model, np.zeros((1, 16), np.int32))

    def loss_fn(p, tokens, key):
        inputs, labels = ob.bert_mask(tokens, key, vocab_size=40, mask_id=3, special_ids=(0, 1, 2, 3))
        return ob.mlm_loss(model.apply({"params": p}, inputs), labels)

    losses = _train(model, params, lambda i: _constant_rows(32, 16, 4, 40, i), loss_fn)
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses


def test_t5_learns_from_span_corruption():
    """t5_batch feeds T5 (decoder inputs = labels shifted right); the loss on the dropped spans falls."""
    from lineage_jax.models.t5 import T5, T5Config
    cfg = T5Config(vocab_size=48, d_model=32, d_kv=8, d_ff=64, num_heads=4, num_layers=2,
                   relative_attention_num_buckets=8, relative_attention_max_distance=16)
    model = T5(cfg)
    first = ob.t5_batch(_constant_rows(16, 30, 2, 36, 0), np.random.default_rng(0), vocab_size=48)
    params = _params(model, first["input_ids"], first["decoder_input_ids"], std=0.2)
    rng = np.random.default_rng(1)

    def loss_fn(p, batch, key):
        logits = model.apply({"params": p}, batch["input_ids"], batch["decoder_input_ids"])
        return ob.mlm_loss(logits, batch["labels"])

    batches = lambda i: ob.t5_batch(_constant_rows(16, 30, 2, 36, i), rng, vocab_size=48)
    losses = _train(model, params, batches, loss_fn)
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
