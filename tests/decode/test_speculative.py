"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): greedy output equals the
target's greedy output; sampled tokens follow the target's distribution (chi-square); an exact
draft is always accepted; tokens per target call match (1 - alpha^(gamma+1)) / (1 - alpha)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import chisquare

from lineage_jax.decode.speculative import (acceptance_rate, expected_tokens_per_call, speculative_generate,
                                            speculative_step)

V = 8


def _chain(rng, conc=1.0):
    """A random Markov chain over V tokens: row s is the next-token distribution after token s."""
    return rng.dirichlet(np.full(V, conc), size=V).astype(np.float32)


def _fns(P, Q, gamma):
    draft_fn = lambda toks: Q[toks[-1]]
    target_fn = lambda toks: P[toks][-(gamma + 1):]       # after each of the last gamma+1 prefixes
    return draft_fn, target_fn


def _greedy(P, prompt, n):
    out = list(prompt)
    for _ in range(n):
        out.append(int(np.argmax(P[out[-1]])))
    return out


@pytest.mark.parametrize("gamma", [1, 3, 5])
def test_greedy_equals_the_targets_greedy_decoding(gamma):
    rng = np.random.default_rng(gamma)
    P, Q = _chain(rng, 0.5), _chain(rng, 0.5)
    Q = 0.5 * Q + 0.5 * P            # a draft that agrees sometimes
    draft_fn, target_fn = _fns(P, Q, gamma)
    for prompt in ([0], [3, 5, 1]):
        toks, c = speculative_generate(jax.random.key(0), draft_fn, target_fn, prompt, 25, gamma, temperature=0.0)
        assert toks.tolist() == _greedy(P, prompt, 25)
        assert c["draft_tokens_proposed"] == gamma * c["target_calls"]
        assert 0 <= c["draft_tokens_accepted"] <= c["draft_tokens_proposed"]


def test_step_emits_the_target_distribution():
    """One verification step, vmapped: the first emitted token is distributed as p_1, whatever q is."""
    rng = np.random.default_rng(1)
    gamma, N = 3, 20000
    q = jnp.asarray(rng.dirichlet(np.ones(V), size=gamma), jnp.float32)
    p = jnp.asarray(rng.dirichlet(np.ones(V), size=gamma + 1), jnp.float32)

    def one(key):
        kd, ks = jax.random.split(key)
        x = jax.random.categorical(kd, jnp.log(q), axis=-1)
        toks, n = speculative_step(ks, q, x, p)
        return toks[0], n
    first, n = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(7), N))
    counts = np.bincount(np.asarray(first), minlength=V)
    assert chisquare(counts, np.asarray(p[0], np.float64) * N).pvalue > 0.01
    # the acceptance rate of the first draft token is alpha = sum min(p_1, q_1)
    alpha = float(acceptance_rate(p[0], q[0]))
    assert abs(float((np.asarray(n) >= 1).mean()) - alpha) < 0.02


def test_sampled_tokens_follow_the_target_distribution():
    rng = np.random.default_rng(2)
    P, Q = _chain(rng, 2.0), _chain(rng, 2.0)
    gamma, N, s = 3, 2000, 4
    draft_fn, target_fn = _fns(P, Q, gamma)
    key = jax.random.key(11)
    firsts, seconds = [], []
    for i in range(N):
        toks, _ = speculative_generate(jax.random.fold_in(key, i), draft_fn, target_fn, [s], 2, gamma)
        firsts.append(toks[1])
        seconds.append(toks[2])
    p1 = P[s].astype(np.float64)
    p2 = p1 @ P.astype(np.float64)                         # marginal of the second token
    assert chisquare(np.bincount(firsts, minlength=V), p1 / p1.sum() * N).pvalue > 0.01
    assert chisquare(np.bincount(seconds, minlength=V), p2 / p2.sum() * N).pvalue > 0.01


def test_an_exact_draft_is_always_accepted():
    rng = np.random.default_rng(3)
    P = _chain(rng)
    for gamma in (2, 4):
        draft_fn, target_fn = _fns(P, P, gamma)
        toks, c = speculative_generate(jax.random.key(1), draft_fn, target_fn, [0], 20, gamma)
        assert c["draft_tokens_accepted"] == c["draft_tokens_proposed"]
        assert c["target_calls"] == -(-20 // (gamma + 1))   # gamma+1 tokens per target call
        assert len(toks) == 21


def test_tokens_per_target_call_match_the_expectation():
    """Draft q = lam*p + (1-lam)*r with r on the complement of p's support: sum min(p, q) = lam
    after every token, so acceptances are i.i.d. with alpha = lam and eq. 1 of Leviathan et al. holds."""
    rng = np.random.default_rng(4)
    lam, gamma = 0.6, 4
    P, Q = np.zeros((V, V), np.float32), np.zeros((V, V), np.float32)
    for s in range(V):
        perm = rng.permutation(V)
        P[s, perm[:4]] = rng.dirichlet(np.ones(4))
        R = np.zeros(V)
        R[perm[4:]] = rng.dirichlet(np.ones(4))
        Q[s] = lam * P[s] + (1 - lam) * R
    alpha = np.asarray(acceptance_rate(jnp.asarray(P), jnp.asarray(Q)))
    np.testing.assert_allclose(alpha, lam, atol=1e-5)       # the same after every token
    draft_fn, target_fn = _fns(P, Q, gamma)
    _, c = speculative_generate(jax.random.key(5), draft_fn, target_fn, [0], 4000, gamma)   # ~1700 calls: the standard error is ~1.5% of the mean
    measured = (c["draft_tokens_accepted"] + c["target_calls"]) / c["target_calls"]
    expected = float(expected_tokens_per_call(lam, gamma))
    assert abs(measured - expected) / expected < 0.10, (measured, expected)
    assert float(expected_tokens_per_call(1.0, gamma)) == gamma + 1


def test_step_shapes_padding_and_greedy_rules():
    p = jnp.eye(V)[jnp.array([2, 5, 7])]          # the target is certain: 2, then 5, then 7
    q = jnp.full((2, V), 1.0 / V)
    toks, n = speculative_step(jax.random.key(0), q, jnp.array([2, 4]), p, greedy=True)
    assert int(n) == 1 and toks.tolist() == [2, 5, -1]
    toks, n = speculative_step(jax.random.key(0), q, jnp.array([2, 5]), p, greedy=True)
    assert int(n) == 2 and toks.tolist() == [2, 5, 7]
    toks, n = speculative_step(jax.random.key(0), q, jnp.array([3, 5]), p)   # p(3) = 0: always rejected
    assert int(n) == 0 and toks.tolist() == [2, -1, -1]                      # residual = p_1 - q_1 > 0 only at 2
