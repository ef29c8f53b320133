"""Continuous batching over a paged KV cache (Yu et al. 2022, Orca's iteration-level scheduling;
Kwon et al. 2023, vLLM §4.5).

A fixed number of decode *slots* run one token per step together. Between steps the scheduler
retires sequences that finished (end-of-sequence or their token budget), frees their blocks,
and admits waiting requests into the free slots, so a long request never holds a batch back and
freed blocks are reused at once. Each admitted request is prefilled alone (its prompt padded to
a power-of-two bucket of at least 16), and its ``n`` samples share the prompt's blocks copy-on-write
(``decode/paged.py``).

Admission reserves each sequence's worst case (its prompt plus its token budget, in blocks), so
a running sequence never finds the pool empty and nothing is ever preempted.

Sampling is per sequence, not per batch: sequence ``sid`` draws its i-th new token with
``fold_in(fold_in(key, sid), i)`` through ``decode.filters.sample`` on its own logits row, which is
what ``generate_cached(prompt, key=fold_in(key, sid))`` draws for a batch of one. So a sequence's
tokens do not depend on which slot it ran in or who ran beside it (``tests/decode/test_batching.py``).

Shapes are static: the decode step is [slots, 1] with tables [slots, nb], nb = ceil(context / bs),
compiled once; prefill compiles once per bucket.
"""
from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from lineage_jax.decode.args import check
from lineage_jax.decode.filters import sample as sample_logits
from lineage_jax.decode.paged import (BlockAllocator, PagedError, SeqBlocks, blocks_for, copy_blocks, init_pool,
                                     paged_forward)

__all__ = ["ContinuousBatcher", "Sequence", "compile_count"]

_TRACES = {"decode": 0, "prefill": 0}


def compile_count() -> dict:
    """Traces (= compiles) of the paged decode step and of prefill so far."""
    return dict(_TRACES)


def _draw(key, seq_ids, steps, logits, temperature, top_k, top_p, vocab_limit):
    """Per-row draws: row r uses fold_in(fold_in(key, seq_ids[r]), steps[r]) on its own [1, V] logits."""
    def one(sid, i, row):
        k = jax.random.fold_in(jax.random.fold_in(key, sid), i)
        return sample_logits(k, row[None].astype(jnp.float32), temperature=temperature, top_k=top_k, top_p=top_p,
                             vocab_limit=vocab_limit)[0]
    return jax.vmap(one)(seq_ids, steps, logits)


_STATIC = ("model", "temperature", "top_k", "top_p", "vocab_limit")


@functools.partial(jax.jit, static_argnames=_STATIC, donate_argnames=("pool",))
def _decode(model, params, pool, tables, tokens, positions, active, seq_ids, steps, key, copy_src, copy_dst, *,
            temperature, top_k, top_p, vocab_limit):
    _TRACES["decode"] += 1
    pool = copy_blocks(pool, copy_src, copy_dst)
    logits, pool = paged_forward(model, params, pool, tables, tokens[:, None], positions[:, None], active[:, None])
    return _draw(key, seq_ids, steps, logits[:, 0], temperature, top_k, top_p, vocab_limit), pool


@functools.partial(jax.jit, static_argnames=_STATIC, donate_argnames=("pool",))
def _prefill(model, params, pool, table, prompt, length, seq_ids, key, *, temperature, top_k, top_p, vocab_limit):
    _TRACES["prefill"] += 1
    T = prompt.shape[1]
    pos = jnp.arange(T, dtype=jnp.int32)[None]
    logits, pool = paged_forward(model, params, pool, table, prompt, pos, pos < length)
    last = jax.lax.dynamic_index_in_dim(logits[0], length - 1, 0, keepdims=False)
    rows = jnp.broadcast_to(last, (seq_ids.shape[0], last.shape[-1]))
    return _draw(key, seq_ids, jnp.zeros_like(seq_ids), rows, temperature, top_k, top_p, vocab_limit), pool


@dataclass
class Sequence:
    """One sample being generated: its tokens, block table and token budget."""
    sid: int
    prompt_len: int
    tokens: list[int]
    max_new: int
    blocks: SeqBlocks | None = None
    reserved: int = 0          # blocks it may still allocate (reserved at admission)
    finished: bool = False

    @property
    def new_tokens(self) -> int:
        return len(self.tokens) - self.prompt_len


@dataclass
class _Request:
    prompt: list[int]
    max_new: int
    sids: list[int]


@dataclass
class Stats:
    steps: int = 0                       # decode steps run
    prefills: int = 0
    max_active: int = 0
    copies: int = 0                      # copy-on-write block copies
    admitted: list[int] = field(default_factory=list)    # sequence ids in admission order
    finished: list[int] = field(default_factory=list)    # sequence ids in finishing order
    allocated_slots: list[int] = field(default_factory=list)   # per decode step: blocks held * bs
    used_slots: list[int] = field(default_factory=list)        # per decode step: slots holding a key/value
    live_seqs: list[int] = field(default_factory=list)         # per decode step: sequences resident


class ContinuousBatcher:
    """Serve requests through ``slots`` decode slots over a pool of ``num_blocks`` blocks.

    ``add(prompt, max_new_tokens, n)`` queues a prompt with n samples and returns their sequence
    ids; ``run(on_finish)`` decodes until every request is done and returns ``{sid: tokens}``
    (prompt + new tokens, ending at ``eos_id`` when drawn). ``temperature`` 0 is greedy; no id >=
    ``vocab_limit`` (the tokenizer's vocabulary size) is drawn. A sequence stops when it fills the
    context (its token budget is capped at C minus its prompt at ``add``).
    """

    def __init__(self, model, params, *, slots: int = 8, block_size: int = 16, num_blocks: int | None = None,
                 key=None, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, eos_id: int | None = None,
                 vocab_limit: int | None = None):
        c = model.cfg
        if slots < 1 or block_size < 1:
            raise PagedError(f"slots={slots}, block_size={block_size}: both must be at least 1")
        self.model, self.params, self.S, self.bs = model, params, int(slots), int(block_size)
        self.C = c.context
        self.nb = blocks_for(self.C, self.bs)                       # table width: one full-context sequence
        # default pool: every slot a full context, plus one context of shared prompt blocks, so any request
        # add() admits (n <= slots samples of a prompt, each up to the context) fits on its own
        self.N = int(num_blocks) if num_blocks is not None else (self.S + 1) * self.nb
        self.alloc = BlockAllocator(self.N)
        self.pool = init_pool(c, self.N, self.bs)
        self.key = jax.random.key(0) if key is None else key
        self.kw = check(temperature=temperature, top_k=top_k, top_p=top_p, vocab_limit=vocab_limit)
        self.eos_id = eos_id
        self.waiting: deque[_Request] = deque()
        self.seqs: dict[int, Sequence] = {}
        self.slot: list[Sequence | None] = [None] * self.S
        self.stats = Stats()
        self._reserved = 0

    # ------------------------------------------------------------------ requests
    def add(self, prompt, max_new_tokens: int, n: int = 1) -> list[int]:
        prompt = [int(t) for t in prompt]
        if not 1 <= len(prompt) <= self.C:
            raise PagedError(f"prompt of {len(prompt)} tokens: must hold 1..context={self.C} tokens")
        if not 1 <= n <= self.S:
            raise PagedError(f"n={n} samples: must be 1..slots={self.S}")
        max_new = max(0, min(int(max_new_tokens), self.C - len(prompt)))
        if self._need(len(prompt), max_new, n) > self.N:
            raise PagedError(f"a request of {len(prompt)}+{max_new} tokens x {n} needs "
                             f"{self._need(len(prompt), max_new, n)} blocks; the pool has {self.N}")
        sids = list(range(len(self.seqs), len(self.seqs) + n))
        for s in sids:
            self.seqs[s] = Sequence(s, len(prompt), list(prompt), max_new)
        self.waiting.append(_Request(prompt, max_new, sids))
        return sids

    def _need(self, P: int, max_new: int, n: int) -> int:
        """Worst-case blocks of a request: its prompt once + each sample's private blocks (COW included)."""
        return blocks_for(P, self.bs) + n * self._private(P, max_new, n)

    def _private(self, P: int, max_new: int, n: int) -> int:
        """Blocks one sample may still allocate: those past its prompt's, plus (n > 1 only: the prompt's
        partly filled last block is shared) that block's copy-on-write. One sample shares nothing."""
        if n == 1:
            return blocks_for(P + max_new, self.bs) - blocks_for(P, self.bs)
        return blocks_for(P + max_new, self.bs) - P // self.bs

    # ------------------------------------------------------------------ scheduling
    def _admit(self, on_finish) -> None:
        while self.waiting:
            req = self.waiting[0]
            free_slots = [i for i, s in enumerate(self.slot) if s is None]
            P, n = len(req.prompt), len(req.sids)
            if len(free_slots) < n or self._need(P, req.max_new, n) > self.alloc.num_free - self._reserved:
                return
            self.waiting.popleft()
            seqs = [self.seqs[s] for s in req.sids]
            if req.max_new == 0:                                   # the prompt fills the context
                for s in seqs:
                    self._finish(s, on_finish)
                continue
            first = SeqBlocks(self.alloc, self.bs)
            first.grow_to(P)
            T = min(max(16, 1 << (P - 1).bit_length()), self.nb * self.bs)    # power-of-two bucket >= 16
            prompt = np.zeros((1, T), np.int32)
            prompt[0, :P] = req.prompt
            sids = np.zeros((self.S,), np.int32)
            sids[:n] = req.sids
            toks, self.pool = _prefill(self.model, self.params, self.pool, jnp.asarray(first.row(self.nb)[None]),
                                       jnp.asarray(prompt), jnp.int32(P), jnp.asarray(sids), self.key, **self.kw)
            toks = np.asarray(toks)
            self.stats.prefills += 1
            tables = [first] + [first.fork() for _ in range(n - 1)]
            for j, (s, t) in enumerate(zip(seqs, tables)):
                s.blocks, s.reserved = t, self._private(P, req.max_new, n)
                self._reserved += s.reserved
                self.stats.admitted.append(s.sid)
                s.tokens.append(int(toks[j]))
                if self._done(s):
                    self._finish(s, on_finish)
                else:
                    self.slot[free_slots.pop(0)] = s

    def _done(self, s: Sequence) -> bool:
        return s.new_tokens >= s.max_new or (self.eos_id is not None and s.tokens[-1] == self.eos_id)

    def _finish(self, s: Sequence, on_finish) -> None:
        s.finished = True
        if s.blocks is not None:
            s.blocks.release()
        self._reserved -= s.reserved
        s.reserved = 0
        self.stats.finished.append(s.sid)
        if on_finish is not None:
            on_finish(s.sid, list(s.tokens))

    def _usage(self) -> tuple[int, int]:
        """(allocated slots, slots holding a key/value), counting shared blocks once."""
        filled = np.zeros((self.N,), np.int64)
        for s in self.seqs.values():
            if s.blocks is None or s.finished:
                continue
            written = len(s.tokens) - 1                     # every token but the last has its key/value stored
            for j, b in enumerate(s.blocks.blocks):
                filled[b] = max(filled[b], min(self.bs, max(0, written - j * self.bs)))
        return self.alloc.num_allocated * self.bs, int(filled.sum())

    def step(self, on_finish=None) -> None:
        """One decode step for every occupied slot: feed its last token, draw the next."""
        S = self.S
        tables = np.full((S, self.nb), -1, np.int32)
        tokens, positions = np.zeros((S,), np.int32), np.zeros((S,), np.int32)
        active, sids, steps = np.zeros((S,), bool), np.zeros((S,), np.int32), np.zeros((S,), np.int32)
        src, dst = np.zeros((S,), np.int32), np.full((S,), self.N, np.int32)   # dst N: no copy
        for i, s in enumerate(self.slot):
            if s is None:
                continue
            pos = len(s.tokens) - 1
            held = len(s.blocks.blocks)
            cow = s.blocks.ensure(pos)
            grew = len(s.blocks.blocks) - held + (1 if cow else 0)
            s.reserved -= grew
            self._reserved -= grew
            if cow:
                src[i], dst[i] = cow
                self.stats.copies += 1
            tables[i] = s.blocks.row(self.nb)
            tokens[i], positions[i], active[i] = s.tokens[-1], pos, True
            sids[i], steps[i] = s.sid, s.new_tokens
        alloc_slots, used = self._usage()
        self.stats.allocated_slots.append(alloc_slots)
        self.stats.used_slots.append(used + int(active.sum()))   # + the slot each live row writes now
        self.stats.live_seqs.append(int(active.sum()))
        nxt, self.pool = _decode(self.model, self.params, self.pool, jnp.asarray(tables), jnp.asarray(tokens),
                                 jnp.asarray(positions), jnp.asarray(active), jnp.asarray(sids), jnp.asarray(steps),
                                 self.key, jnp.asarray(src), jnp.asarray(dst), **self.kw)
        nxt = np.asarray(nxt)
        self.stats.steps += 1
        for i, s in enumerate(self.slot):
            if s is None:
                continue
            s.tokens.append(int(nxt[i]))
            if self._done(s):
                self._finish(s, on_finish)
                self.slot[i] = None

    def run(self, on_finish: Callable[[int, list[int]], None] | None = None) -> dict[int, list[int]]:
        """Decode until no request waits and no slot is busy; ``on_finish(sid, tokens)`` as each ends."""
        while self.waiting or any(s is not None for s in self.slot):
            self._admit(on_finish)
            active = sum(s is not None for s in self.slot)
            self.stats.max_active = max(self.stats.max_active, active)
            if active:
                self.step(on_finish)
            elif self.waiting:   # nothing running and the head request still does not fit
                raise PagedError("the next request does not fit in the free blocks and nothing is running")
        return {sid: list(s.tokens) for sid, s in self.seqs.items()}
