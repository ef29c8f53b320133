"""Beam search with a length penalty, as a pure function over fixed-shape arrays.

Beam search keeps the W best partial hypotheses by summed log-probability and extends each by every
token (Graves 2012; Sutskever, Vinyals & Le 2014 for neural sequence models). Summed log-probs
favour short outputs, so finished hypotheses are ranked by a length-normalised score; Wu et al. 2016
(GNMT, eq. 14) use lp(Y) = ((5 + |Y|) / 6)^alpha. This module uses the Hugging Face convention

    score(Y) = sum_t log p(y_t | y_<t, x) / |Y|^alpha          (alpha = ``length_penalty``)

where |Y| counts the generated tokens (EOS included, prompt excluded): alpha > 0 favours longer
outputs, alpha < 0 shorter, alpha = 0 is the raw log-probability. With the same bookkeeping as
``transformers``' (>= 4.50) vectorised beam search, the best sequences equal
``model.generate(num_beams=W, length_penalty=alpha, do_sample=False, early_stopping=...)`` for
``early_stopping`` in {True, False, "never"} (``tests/decode/test_beam.py``):

* each step takes the top 2W continuations of all W beams (so W of them can go on even if the
  rest end in EOS); a continuation is *done* if its token is EOS or the length reaches
  ``prompt_len + max_new_tokens``; the best W not-done ones are the next beams;
* done continuations among the top W of the 2W enter the finished pool (W slots) with their
  normalised score, unless the pool is closed: pool full and ``early_stopping is True``, or the
  improvement heuristic below says no running beam can beat the worst finished one;
* heuristic: the best running beam's summed log-prob divided by |Y|^alpha at the current length
  (``early_stopping=False`` or alpha <= 0), or at the maximum length (``"never"`` with alpha > 0),
  is compared with the worst finished score;
* the search ends when no batch row can improve, or every pool is full under
  ``early_stopping=True``, or every continuation is done (the maximum length).

Masking uses a large finite negative (-1e9) rather than -inf so the sums never produce NaN.
The step function is any callable ``tokens [N, t] -> logits or log-probs [N, V]`` for the next
token (a model without a KV cache reruns the prefix); the update per step is one jitted function.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["BeamState", "beam_init", "beam_step", "beam_search"]

NEG = -1.0e9


class BeamState(NamedTuple):
    alive_seq: jax.Array     # [B, W, L] int32 running hypotheses (prompt + generated, padded)
    alive_score: jax.Array   # [B, W] summed log-probs (NEG for the W-1 copies at the start)
    fin_seq: jax.Array       # [B, W, L] finished hypotheses, best first
    fin_score: jax.Array     # [B, W] length-normalised scores (about NEG where a slot is empty)
    fin_len: jax.Array       # [B, W] lengths of the finished hypotheses (prompt included)
    fin_flag: jax.Array      # [B, W] bool: slot holds a real finished hypothesis
    improvable: jax.Array    # [B] bool: the running beams may still beat the finished ones
    all_done: jax.Array      # [] bool: every continuation of the last step was done


def beam_init(prompt: jax.Array, num_beams: int, max_len: int, pad_id: int) -> BeamState:
    """prompt [B, P] int -> the initial state (beam 0 live, the other W-1 copies masked)."""
    B, P = prompt.shape
    seq = jnp.full((B, num_beams, max_len), pad_id, jnp.int32)
    seq = seq.at[:, :, :P].set(jnp.asarray(prompt, jnp.int32)[:, None, :])
    alive_score = jnp.zeros((B, num_beams), jnp.float32).at[:, 1:].set(NEG)
    return BeamState(seq, alive_score, seq, jnp.full((B, num_beams), NEG, jnp.float32),
                     jnp.full((B, num_beams), P, jnp.int32), jnp.zeros((B, num_beams), bool),
                     jnp.ones((B,), bool), jnp.asarray(False))


def _gather(x, idx):
    """x [B, K, ...], idx [B, J] -> x[b, idx[b, j], ...]."""
    return jax.vmap(lambda xb, ib: xb[ib])(x, idx)


def beam_step(state: BeamState, logprobs: jax.Array, cur_len, *, prompt_len: int, max_len: int,
              eos_id: int | None, length_penalty, early_stopping: bool | str) -> BeamState:
    """One step: ``logprobs`` [B, W, V] for the next token of each running beam of length ``cur_len``."""
    B, W, V = logprobs.shape
    K = 2 * W
    cand = (state.alive_score[:, :, None] + logprobs.astype(jnp.float32)).reshape(B, W * V)
    top_score, top_idx = jax.lax.top_k(cand, K)                            # [B, 2W], best first
    beam, tok = top_idx // V, (top_idx % V).astype(jnp.int32)
    top_seq = _gather(state.alive_seq, beam).at[:, :, cur_len].set(tok)    # [B, 2W, L]
    done = jnp.broadcast_to(cur_len + 1 >= max_len, tok.shape)
    if eos_id is not None:
        done = done | (tok == eos_id)

    # The next running beams: the best W continuations that are not done.
    running = top_score + done * NEG
    _, keep = jax.lax.top_k(running, W)
    alive_seq, alive_score = _gather(top_seq, keep), _gather(running, keep)

    # The finished pool: done continuations among the top W join, scored with the length penalty.
    just_done = done & (jnp.arange(K) < W)[None, :]
    norm = top_score / (cur_len + 1 - prompt_len).astype(jnp.float32) ** length_penalty
    if early_stopping is True:
        norm = norm + (state.fin_flag.all(-1, keepdims=True)) * NEG
    norm = norm + (~state.improvable[:, None]) * NEG
    norm = norm + (~just_done) * NEG
    m_seq = jnp.concatenate([state.fin_seq, top_seq], axis=1)
    m_score = jnp.concatenate([state.fin_score, norm], axis=1)
    m_len = jnp.concatenate([state.fin_len, jnp.full((B, K), cur_len + 1, jnp.int32)], axis=1)
    m_flag = jnp.concatenate([state.fin_flag, just_done], axis=1)
    _, best = jax.lax.top_k(m_score, W)
    fin_seq, fin_score = _gather(m_seq, best), _gather(m_score, best)
    fin_len, fin_flag = _gather(m_len, best), _gather(m_flag, best)

    # Can a running beam still beat the worst finished one?
    hyp_len = cur_len + 1 - prompt_len
    if early_stopping == "never":
        hyp_len = jnp.where(length_penalty > 0.0, max_len - prompt_len, hyp_len)
    best_running = alive_score[:, :1] / jnp.asarray(hyp_len, jnp.float32) ** length_penalty
    worst_fin = jnp.where(fin_flag, fin_score.min(-1, keepdims=True), NEG)
    improvable = state.improvable & (best_running > worst_fin).any(-1)
    return BeamState(alive_seq, alive_score, fin_seq, fin_score, fin_len, fin_flag, improvable, done.all())


_beam_step_jit = jax.jit(beam_step, static_argnames=("prompt_len", "max_len", "eos_id", "early_stopping"))


def _finished(state: BeamState, early_stopping) -> bool:
    if not bool(state.improvable.any()):
        return True
    if early_stopping is True and bool(state.fin_flag.all()):
        return True
    return bool(state.all_done)


def beam_search(step_fn: Callable, prompt, *, num_beams: int, max_new_tokens: int,
                eos_id: int | None = None, pad_id: int | None = None, length_penalty: float = 1.0,
                early_stopping: bool | str = False):
    """Beam search over ``step_fn(tokens [B*W, t]) -> next-token logits/log-probs [B*W, V]``.

    prompt [B, P] ints. Returns ``(sequences [B, W, P + max_new_tokens], scores [B, W],
    lengths [B, W])``, best first per row; positions past a hypothesis' length hold ``pad_id``
    (default: ``eos_id``, else -1, as in HF).
    """
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping={early_stopping!r}: True, False or 'never'")
    prompt = np.asarray(prompt, np.int32)
    if prompt.ndim == 1:
        prompt = prompt[None]
    B, P = prompt.shape
    W, L = num_beams, P + max_new_tokens
    if pad_id is None:
        pad_id = eos_id if eos_id is not None else -1
    kw = dict(prompt_len=P, max_len=L, eos_id=eos_id, length_penalty=jnp.float32(length_penalty),
              early_stopping=early_stopping)
    state = beam_init(jnp.asarray(prompt), W, L, pad_id)
    for cur_len in range(P, L):
        prefix = np.asarray(state.alive_seq[:, :, :cur_len]).reshape(B * W, cur_len)
        logprobs = jax.nn.log_softmax(jnp.asarray(step_fn(prefix), jnp.float32), axis=-1)
        state = _beam_step_jit(state, logprobs.reshape(B, W, -1), jnp.int32(cur_len), **kw)
        if _finished(state, early_stopping):
            break
    return state.fin_seq, state.fin_score, state.fin_len
