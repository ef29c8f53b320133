"""The AI feedback model: its loss is torch's binary cross-entropy on each example's own principle, its
preference follows the constitution's priority order, SL-CAI's revision choice keeps clean samples and
otherwise picks the constitution's best, and the judge learns the worked examples of a tiny model."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lineage_jax import models
from lineage_jax.align import constitution as C, dataset, feedback as F
from lineage_jax.config import load_config
from lineage_jax.tokenize import get_tokenizer
from lineage_jax.train.state import TrainState
from parallel import precision

torch = pytest.importorskip("torch")


def test_judge_loss_equals_torch_bce_on_the_own_principle():
    rng = np.random.default_rng(0)
    logits, k, y = rng.normal(size=(16, 3)) * 3, rng.integers(0, 3, 16), rng.integers(0, 2, 16).astype(np.float32)
    loss, acc = F.judge_loss(jnp.asarray(logits), jnp.asarray(k), jnp.asarray(y))
    z = torch.tensor(logits).gather(1, torch.tensor(k)[:, None])[:, 0]
    ref = torch.nn.functional.binary_cross_entropy_with_logits(z, torch.tensor(y, dtype=torch.float64))
    np.testing.assert_allclose(float(loss), float(ref), rtol=1e-5)
    assert float(acc) == np.mean((z.numpy() > 0) == (y > 0.5))


def test_preference_follows_priority_order():
    p = lambda *v: jnp.asarray([v], jnp.float32)   # noqa: E731   P(follows) for correct, brief, polite
    # correct but padded and rude beats wrong but brief and polite: the first principle decides
    a, first = F.preference(p(0.9, 0.1, 0.1), p(0.1, 0.9, 0.9))
    assert bool(a[0]) and int(first[0]) == 0
    a, first = F.preference(p(0.9, 0.9, 0.1), p(0.9, 0.2, 0.9))      # brief outranks polite
    assert bool(a[0]) and int(first[0]) == 1
    a, first = F.preference(p(0.9, 0.9, 0.6), p(0.9, 0.9, 0.95))     # same verdicts: mean P decides
    assert not bool(a[0]) and int(first[0]) == -1
    rng = np.random.default_rng(1)
    x, y = jnp.asarray(rng.uniform(size=(64, 3))), jnp.asarray(rng.uniform(size=(64, 3)))
    assert not np.any(np.asarray(F.preference(x, y)[0] & F.preference(y, x)[0]))   # never both ways


def test_revision_choice_keeps_clean_samples_and_picks_the_best():
    probs = jnp.asarray([[[0.9, 0.9, 0.9], [0.9, 0.2, 0.9], [0.3, 0.9, 0.9]],    # candidate 0: the own sample
                         [[0.2, 0.9, 0.9], [0.9, 0.9, 0.2], [0.2, 0.9, 0.9]],
                         [[0.9, 0.9, 0.8], [0.9, 0.9, 0.9], [0.3, 0.8, 0.8]]], jnp.float32)
    # row 0 breaks nothing (kept); row 1: candidate 2 follows all; row 2: nothing better than the sample
    assert np.asarray(F.revision_choice(probs)).tolist() == [0, 2, 0]


@pytest.fixture(scope="module")
def tiny():
    cfg = load_config("tiny", ["model.layers=1", "model.width=32", "model.heads=4", "model.context=32",
                               "model.attn_chunks=1", "model.vocab_multiple=8"]).model
    model = models.build(cfg)
    lm = nn.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32), jnp.int32))["params"])   # one compile
    return model, lm


def test_judge_reads_the_last_real_token(tiny):
    model, lm = tiny
    params = F.init_judge(jax.random.key(1), lm, 32, 3)
    enc = dataset.encode(get_tokenizer("byte"), ["rev abc="], ["cba"], 32)
    junk = enc["tokens"].copy()
    junk[0, enc["lengths"][0]:] = 77                                  # what follows the row must not matter
    a = F.judge_logits(model, params, jnp.asarray(enc["tokens"]), jnp.asarray(enc["lengths"]))
    b = F.judge_logits(model, params, jnp.asarray(junk), jnp.asarray(enc["lengths"]))
    assert a.shape == (1, 3)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_judge_learns_the_worked_examples(tiny):
    model, lm = tiny
    ex = C.worked_examples(8)
    enc = dataset.encode(get_tokenizer("byte"), [e["prompt"] for e in ex], [e["response"] for e in ex], 32)
    batch = {"tokens": enc["tokens"], "lengths": enc["lengths"], "principle": np.array([e["principle"] for e in ex]),
             "follows": np.array([e["follows"] for e in ex], np.float32)}
    tx = optax.adam(3e-3)
    params = F.init_judge(jax.random.key(1), lm, 32, 3)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       loss_scale=precision.loss_scale_for("fp32", 1.0))
    step = jax.jit(F.make_judge_step(model, tx))
    first = None
    for _ in range(40):
        state, m = step(state, batch)
        first = first if first is not None else float(m["loss"])
    assert float(m["loss"]) < 0.5 * first and float(m["accuracy"]) >= 0.9
