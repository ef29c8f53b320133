"""The sampler and the scorers: sampling stops after the end token, the mask marks exactly the generated
tokens, the log-probabilities are the model's, each row of a ragged batch decodes as if alone; pass@k and
the majority vote follow their definitions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax.reasoning import arith, evaluate, grpo, sample, tiny


@pytest.fixture(scope="module")
def lm():
    model, params = tiny.init(tiny.TinyConfig(vocab=arith.VOCAB.size, context=16, d=32, heads=2, layers=1),
                              jax.random.key(0))
    return (lambda p, t: model.apply({"params": p}, t)), params


def test_ragged_batch_rows_decode_as_if_alone_and_masks_match(lm):
    apply, params = lm
    prompts = ["1+2=", "33+44=", "7="]
    tokens, lengths = arith.encode_prompts(prompts, 16)
    together = sample.sample(apply, params, tokens, lengths, jax.random.key(0), max_new=8, end_id=3, greedy=True)
    for i in range(3):
        alone = sample.sample(apply, params, tokens[i:i + 1], lengths[i:i + 1], jax.random.key(0), max_new=8,
                              end_id=3, greedy=True)
        np.testing.assert_array_equal(np.asarray(alone["tokens"][0]), np.asarray(together["tokens"][i]))
    toks, mask, n = map(np.asarray, (together["tokens"], together["mask"], together["lengths"]))
    for i in range(3):
        gen = np.flatnonzero(mask[i]) + 1                     # positions of the generated tokens
        np.testing.assert_array_equal(gen, np.arange(lengths[i], lengths[i] + n[i]))
        ends = np.flatnonzero(toks[i, lengths[i]:lengths[i] + n[i]] == 3)
        assert n[i] == 8 or (len(ends) == 1 and ends[0] == n[i] - 1)   # stops right after the end token
        assert (toks[i, lengths[i] + n[i]:] == 0).all()


def test_sampled_logprobs_are_the_models(lm):
    apply, params = lm
    tokens, lengths = arith.encode_prompts(["12+3=", "4+5="], 16)
    out = sample.sample(apply, params, tokens, lengths, jax.random.key(3), max_new=6, end_id=arith.VOCAB.end_id)
    again = grpo.sequence_logprobs(apply, params, out["tokens"])
    m = np.asarray(out["mask"]) > 0
    np.testing.assert_allclose(np.asarray(out["logprobs"])[m], np.asarray(again)[m], rtol=1e-4, atol=1e-5)


def test_pass_at_k_and_votes():
    assert evaluate.pass_at_k(10, 0, 5) == 0.0 and evaluate.pass_at_k(10, 10, 1) == 1.0
    assert evaluate.pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert evaluate.pass_at_k(4, 1, 2) == pytest.approx(0.5)          # 1 − C(3,2)/C(4,2)
    assert evaluate.pass_at_k(5, 2, 4) == 1.0                         # n − c < k
    with pytest.raises(ValueError):
        evaluate.pass_at_k(3, 4, 1)
    p = [arith.Problem("1+2=", 3, (), "add", 1), arith.Problem("5+5=", 10, (), "add", 1)]
    comps = [[">3.", ">4.", ">3."], [">9.", "junk", ">9."]]
    np.testing.assert_array_equal(evaluate.vote_correct(p, comps), [True, False])
    np.testing.assert_array_equal(evaluate.correct(p, comps), [[True, False, True], [False, False, False]])
    assert evaluate.by_size(p, np.array([1.0, 0.0])) == {1: 0.5}


def test_solve_returns_samples_per_problem(lm):
    apply, params = lm
    probs = arith.problems("add", 5, (1,), 0)
    out = evaluate.solve(apply, params, probs, window=16, max_new=6, key=jax.random.key(0), samples=3, greedy=False,
                         chunk=8)
    assert len(out) == 5 and all(len(c) == 3 for c in out)
