"""Top-k / top-p (Fan et al. 2018; Holtzman et al. 2020) equal Hugging Face's logits warpers,
ties included, and every filter keeps at least one token."""
import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax.decode import greedy, sample, temperature, top_k_filter, top_p_filter

torch = pytest.importorskip("torch")
lp = pytest.importorskip("transformers.generation.logits_process")

SHAPES = [(1, 7), (4, 16), (3, 2, 50)]


def _logits(rng, shape, ties):
    if ties:   # a small integer set: many exact ties
        return rng.integers(-3, 3, size=shape).astype(np.float32)
    return rng.normal(size=shape).astype(np.float32) * 2


def _hf(warper, x):
    flat = torch.from_numpy(x.reshape(-1, x.shape[-1]).copy())
    return warper(None, flat).numpy().reshape(x.shape)


@contextlib.contextmanager
def _stable_torch_sort():
    """HF's TopP sorts with ``torch.sort``, which is not stable: tie order is arbitrary. Run HF's
    own code with a stable sort to pin the tie order and compare positions exactly."""
    original = torch.sort

    def stable(x, *a, **kw):
        kw.setdefault("stable", True)
        return original(x, *a, **kw)
    torch.sort = stable
    try:
        yield
    finally:
        torch.sort = original


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("k", [1, 2, 5, 7, 100])
def test_top_k_equals_hf(shape, ties, k):
    rng = np.random.default_rng(hash((shape, ties, k)) % 2**32)
    x = _logits(rng, shape, ties)
    ours = np.asarray(jax.jit(top_k_filter)(x, k))
    ref = _hf(lp.TopKLogitsWarper(top_k=k), x)
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(ref))
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("p", [0.0, 1e-9, 0.05, 0.3, 0.5, 0.77, 0.95, 1.0])
def test_top_p_equals_hf(shape, ties, p):
    rng = np.random.default_rng(hash((shape, ties, p)) % 2**32)
    x = _logits(rng, shape, ties)
    ours = np.asarray(jax.jit(top_p_filter)(x, p))
    with _stable_torch_sort():
        ref = _hf(lp.TopPLogitsWarper(top_p=p), x)
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(ref))
    np.testing.assert_array_equal(ours, ref)
    # Against HF's unstable sort: within a tie group the choice may differ, but each row keeps
    # the same number of tokens and the same multiset of logit values.
    ref_unstable = _hf(lp.TopPLogitsWarper(top_p=p), x)
    kept, kept_ref = ~np.isneginf(ours), ~np.isneginf(ref_unstable)
    np.testing.assert_array_equal(kept.sum(-1), kept_ref.sum(-1))
    np.testing.assert_array_equal(np.sort(np.where(kept, x, -np.inf), -1),
                                  np.sort(np.where(kept_ref, x, -np.inf), -1))


def test_top_p_is_the_smallest_set_reaching_p():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], np.float32))
    for p, n in [(0.0, 1), (0.4, 1), (0.49, 1), (0.6, 2), (0.79, 2), (0.81, 3), (0.96, 4), (1.0, 4)]:  # off the float-rounding boundaries
        kept = ~np.isneginf(np.asarray(top_p_filter(logits, p)))
        assert kept.sum() == n and kept[0, :n].all(), (p, kept)


def test_filters_keep_at_least_one_token_and_keep_kept_logits():
    x = jnp.array([[-jnp.inf, 1.0, 1.0, 0.5], [3.0, -1.0, 2.0, 2.0]])
    assert (~jnp.isneginf(top_k_filter(x, 0))).sum(-1).min() >= 1
    assert (~jnp.isneginf(top_p_filter(x, 0.0))).sum(-1).tolist() == [1, 1]
    kept = ~jnp.isneginf(top_k_filter(x, 1))
    assert kept.tolist() == [[False, True, True, False], [True, False, False, False]]   # ties kept
    assert jnp.array_equal(jnp.where(kept, top_k_filter(x, 1), 0), jnp.where(kept, x, 0))


def test_greedy_temperature_and_sample():
    x = jnp.array([[0.1, 2.0, -1.0], [5.0, 5.0, 0.0]])
    assert greedy(x).tolist() == [1, 0]
    assert jnp.allclose(temperature(x, 2.0), x / 2)
    key = jax.random.key(0)
    assert sample(key, x, temperature=0.0).tolist() == [1, 0]
    assert sample(key, x, top_k=1).tolist()[0] == 1
    # top_k=1 on a batch: always the argmax; top_p tiny: always the argmax.
    big = jax.random.normal(jax.random.key(1), (64, 30))
    keys = jax.random.split(key, 8)
    by_k = jax.vmap(lambda kk: sample(kk, big, top_k=1))(keys)
    by_p = jax.vmap(lambda kk: sample(kk, big, top_p=1e-6))(keys)
    assert (by_k == greedy(big)).all() and (by_p == greedy(big)).all()
    # the filters never let a removed token be drawn
    f = jax.jit(lambda k: sample(k, big, temperature=0.7, top_k=5, top_p=0.9))
    draws = jax.vmap(f)(jax.random.split(key, 200))                  # [200, 64]
    allowed = ~jnp.isneginf(top_p_filter(top_k_filter(big / 0.7, 5), 0.9))
    assert jnp.take_along_axis(allowed[None].repeat(200, 0), draws[..., None], -1).all()


def test_sample_frequencies_match_the_filtered_distribution():
    logits = jnp.log(jnp.array([0.4, 0.3, 0.2, 0.1]))
    draws = jax.vmap(lambda k: sample(k, logits, top_p=0.75))(jax.random.split(jax.random.key(3), 20000))
    freq = np.bincount(np.asarray(draws), minlength=4) / 20000
    np.testing.assert_allclose(freq, [4 / 9, 3 / 9, 2 / 9, 0], atol=0.015)
