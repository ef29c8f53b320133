"""Continuous batching over the paged cache (Orca, Yu et al. 2022; vLLM, Kwon et al. 2023): every
sequence gets the tokens the contiguous cache gives it alone (``generate_cached``), greedy and
sampled, with more requests than slots (admitted as others finish, their blocks freed and
reused mid-batch), with n samples sharing their prompt's blocks copy-on-write, and with EOS;
the decode step compiles once; at most one partly used block per sequence."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax.config import load_config
from lineage_jax.decode import batching as bt
from lineage_jax.decode import kv_cache as kc
from lineage_jax.decode.paged import PagedError
from lineage_jax.models import GPT

CTX = 32


@pytest.fixture(scope="module")
def gpt():
    cfg = load_config("tiny", ["model.layers=2", "model.width=32", "model.heads=2", f"model.context={CTX}",
                               "model.attn_chunks=2"]).model
    model = GPT(cfg)
    return model, jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, CTX), jnp.int32))["params"]


def _prompts(seed, lengths):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=n).tolist() for n in lengths]


def _alone(model, params, prompt, max_new, key, temperature, eos_id=None):
    padded = np.zeros((1, CTX), np.int32)                  # one shape for every prompt: one compile
    padded[0, :len(prompt)] = prompt
    out, n = kc.generate_cached(model, params, padded, np.asarray([len(prompt)]), max_new, key=key,
                                temperature=temperature, eos_id=eos_id)
    return np.asarray(out)[0, :int(n[0])].tolist()


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_continuous_batching_equals_the_contiguous_cache(gpt, temperature):
    model, params = gpt
    key = jax.random.key(5)
    prompts = _prompts(1, [5, 13, 3, 9, 7, 2])
    budgets = [4, 12, 20, 6, 9, 11]                 # ragged: short ones finish and make room early
    eng = bt.ContinuousBatcher(model, params, slots=3, block_size=4, num_blocks=20, key=key,
                               temperature=temperature)
    sids = [eng.add(p, m)[0] for p, m in zip(prompts, budgets)]
    done = []
    out = eng.run(on_finish=lambda sid, toks: done.append(sid))
    for sid, p, m in zip(sids, prompts, budgets):
        assert out[sid] == _alone(model, params, p, m, jax.random.fold_in(key, sid), temperature)
        assert len(out[sid]) == len(p) + min(m, CTX - len(p))
    assert sorted(done) == sids and eng.stats.max_active == 3        # never more than the slots
    assert eng.stats.admitted != eng.stats.finished                   # finishing order is not arrival order
    allocs = eng.alloc.allocations
    assert len(allocs) > len(set(allocs)) and len(set(allocs)) <= 20  # freed blocks were handed out again
    assert eng.alloc.num_free == 20 and not eng.alloc.refcount.any()   # everything returned at the end


def test_reuse_happens_while_other_sequences_run(gpt):
    """A block freed by a finished sequence is reallocated while a long sequence is still decoding."""
    model, params = gpt
    key = jax.random.key(2)
    prompts, budgets = _prompts(3, [6, 4, 5, 4]), [25, 2, 3, 5]
    eng = bt.ContinuousBatcher(model, params, slots=2, block_size=4, num_blocks=14, key=key)
    sids = [eng.add(p, m)[0] for p, m in zip(prompts, budgets)]
    reused = False
    seen = set()
    while eng.waiting or any(eng.slot):
        eng._admit(None)
        n0 = len(eng.alloc.allocations)
        eng.step(None)
        for b in eng.alloc.allocations[n0:]:
            reused |= b in seen and not eng.seqs[sids[0]].finished
        seen.update(eng.alloc.allocations)
    assert reused
    for sid, p, m in zip(sids, prompts, budgets):
        assert eng.seqs[sid].tokens == _alone(model, params, p, m, jax.random.fold_in(key, sid), 0.0)


def test_n_samples_share_prompt_blocks_copy_on_write(gpt):
    model, params = gpt
    key = jax.random.key(9)
    prompt = _prompts(4, [10])[0]                     # 10 tokens at block size 4: the third block is half full
    eng = bt.ContinuousBatcher(model, params, slots=4, block_size=4, key=key, temperature=1.0)
    sids = eng.add(prompt, 8, n=4)
    eng._admit(None)
    shared = eng.seqs[sids[0]].blocks.blocks
    assert all(eng.seqs[s].blocks.blocks == shared for s in sids) and eng.alloc.num_allocated == 3
    assert eng.alloc.refcount[shared].tolist() == [4, 4, 4]
    eng.step(None)                                   # each sample writes position 10: into the shared half block
    assert eng.stats.copies == 3                     # three copies; the last holder writes in place
    assert all(eng.seqs[s].blocks.blocks[:2] == shared[:2] for s in sids)   # full prompt blocks stay shared
    out = eng.run()
    assert eng.stats.prefills == 1                   # one prefill for the four samples
    for s in sids:
        assert out[s] == _alone(model, params, prompt, 8, jax.random.fold_in(key, s), 1.0)
    assert len({tuple(out[s]) for s in sids}) > 1    # the samples differ


def test_eos_stops_a_sequence_and_frees_its_blocks(gpt):
    model, params = gpt
    key = jax.random.key(4)
    prompts = _prompts(6, [4, 7, 5])
    free = [_alone(model, params, p, 12, jax.random.fold_in(key, i), 1.0) for i, p in enumerate(prompts)]
    eos = free[1][7 + 3]                              # the 4th new token of sequence 1 becomes "EOS"
    eng = bt.ContinuousBatcher(model, params, slots=2, block_size=4, key=key, temperature=1.0, eos_id=eos)
    for p in prompts:
        eng.add(p, 12)
    out = eng.run()
    for i, p in enumerate(prompts):
        assert out[i] == _alone(model, params, p, 12, jax.random.fold_in(key, i), 1.0, eos_id=eos)
    assert len(out[1]) <= 7 + 4 and out[1][-1] == eos
    assert eng.alloc.num_free == eng.alloc.num_blocks


def test_one_compile_and_at_most_one_partial_block_per_sequence(gpt):
    model, params = gpt
    eng = bt.ContinuousBatcher(model, params, slots=3, block_size=4, key=jax.random.key(0))
    for p in _prompts(7, [3, 8, 5]):
        eng.add(p, 6)
    eng.run()
    before = bt.compile_count()["decode"]
    eng2 = bt.ContinuousBatcher(model, params, slots=3, block_size=4, key=jax.random.key(1))
    for p in _prompts(8, [6, 2, 7, 4, 3]):
        eng2.add(p, 9)
    eng2.run()
    assert bt.compile_count()["decode"] == before     # new requests, lengths and steps: no retrace
    s = eng2.stats
    for alloc, used, live in zip(s.allocated_slots, s.used_slots, s.live_seqs):
        assert 0 <= alloc - used < live * 4           # unused slots: fewer than a block per sequence


def test_requests_that_cannot_be_served_are_refused(gpt):
    model, params = gpt
    eng = bt.ContinuousBatcher(model, params, slots=2, block_size=4, num_blocks=3)
    with pytest.raises(PagedError, match="context"):
        eng.add(list(range(CTX + 1)), 1)
    with pytest.raises(PagedError, match="slots"):
        eng.add([1, 2], 1, n=3)
    with pytest.raises(PagedError, match="needs .* blocks; the pool has 3"):
        eng.add([1, 2, 3], 20)


def test_one_slot_serves_a_prompt_filling_the_context(gpt):
    """One sample shares no block, so it reserves no copy-on-write block: a single slot's default
    pool (one full context) holds a prompt of C - 1 tokens (before: refused, one block short)."""
    model, params = gpt
    eng = bt.ContinuousBatcher(model, params, slots=1, block_size=4)
    prompt = _prompts(9, [CTX - 1])[0]
    [sid] = eng.add(prompt, 5)
    toks = eng.run()[sid]
    assert toks[:CTX - 1] == prompt and len(toks) == CTX     # capped at the context: one new token
    assert eng.alloc.num_free == eng.N and eng._reserved == 0


def test_the_default_pool_serves_as_many_samples_as_slots(gpt):
    """n = slots samples of a short prompt, each to the full context: their private blocks fill a context
    each and the shared prompt needs one more (the default pool was one block short: a PagedError)."""
    model, params = gpt
    eng = bt.ContinuousBatcher(model, params, slots=2, block_size=4, temperature=1.0, key=jax.random.key(3))
    sids = eng.add([1, 2], CTX, n=2)
    out = eng.run()
    assert sorted(out) == sids and all(len(out[s]) == CTX for s in sids)
    assert eng.alloc.num_free == eng.N
