"""In-context learning and induction heads (Olsson et al. 2022; Elhage et al. 2021): data and measurements.

An induction head completes ``[A][B] … [A] -> [B]``: a previous-token head in layer 1 writes "the token
before me" into each position, and a head in layer 2 matches the current token against it (prefix matching)
and copies what it finds (copying). Here:

    repeated_spans     random-token sequences in which a span of random length reappears at a random offset
                       (so no fixed relative position can do the head's job); ``repeats=False``: none reappears
    icl_losses         loss on tokens of the *second* occurrence (predictable in context) vs the first (not):
                       Olsson et al.'s in-context-learning score is their difference
    prefix_matching    per head: mean attention from a repeated token to the token after its earlier occurrence,
                       on a random sequence repeated twice (their §"Measuring induction heads")
    copying            per head: the OV circuit M = W_E·W_V·W_O·W_U's eigenvalues, Σ Re λ / Σ |λ| (1: the head
                       raises the logit of the token it attends to), on the attention-only model without norms
    lookup_prompts     few-shot prompts ``k1 l1 … kk lk q`` for a per-sequence key -> label map (Brown et al. 2020's
                       k-shot setting, with no gradient step)
"""
from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp

from lineage_jax.reasoning.tiny import TinyLM, attention_patterns


def repeated_spans(rng: np.random.Generator, batch: int, length: int, vocab: int, *, min_span: int | None = None,
                   max_span: int | None = None, repeats: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """tokens [B, T] in [1, vocab), and masks ``late`` / ``early`` [B, T-1] over next-token targets: ``late``
    marks the targets inside the span's second occurrence after its first token (copyable from context),
    ``early`` the same offsets in the first occurrence (not predictable). Span lengths are drawn from
    [min_span, max_span] (default T/8 … T/2) and the gap between the occurrences at random, so no fixed
    relative position can copy. Without ``repeats`` the second occurrence is fresh random tokens (the control:
    the same masks, nothing to copy)."""
    min_span = min_span or max(2, length // 8)
    max_span = max_span or length // 2
    if not 2 <= min_span <= max_span or 2 * max_span > length:
        raise ValueError(f"spans {min_span}…{max_span}: need 2 <= min <= max and two spans within length={length}")
    tokens = rng.integers(1, vocab, size=(batch, length)).astype(np.int32)
    late = np.zeros((batch, length - 1), np.float32)
    early = np.zeros((batch, length - 1), np.float32)
    for b in range(batch):
        span = int(rng.integers(min_span, max_span + 1))
        first = int(rng.integers(0, length - 2 * span + 1))
        second = int(rng.integers(first + span, length - span + 1))
        if repeats:
            tokens[b, second:second + span] = tokens[b, first:first + span]
        # target index j predicts tokens[j + 1]: span tokens 1 … span-1 of each occurrence
        early[b, first:first + span - 1] = 1.0
        late[b, second:second + span - 1] = 1.0
    return tokens, late, early


def icl_losses(logits: jax.Array, tokens: jax.Array, late: jax.Array, early: jax.Array) -> dict[str, jax.Array]:
    """Mean next-token loss on the ``late`` and ``early`` targets, and the in-context score early − late."""
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    mean = lambda m: (nll * m).sum() / jnp.maximum(m.sum(), 1.0)
    lo, eo = mean(late), mean(early)
    return {"late_loss": lo, "early_loss": eo, "icl_score": eo - lo}


def repeated_random(rng: np.random.Generator, batch: int, half: int, vocab: int) -> np.ndarray:
    """[B, 2·half]: a random sequence, then itself again (the test sequence of the prefix-matching score)."""
    x = rng.integers(1, vocab, size=(batch, half)).astype(np.int32)
    return np.concatenate([x, x], axis=1)


def prefix_matching(model: TinyLM, params, tokens: jax.Array) -> np.ndarray:
    """Per layer and head [L, H]: mean attention from position t of the second half to t − half + 1 (the token
    after the current token's earlier occurrence), over t and the batch. ``tokens`` from ``repeated_random``."""
    half = tokens.shape[1] // 2
    t = np.arange(half, 2 * half)
    scores = [np.asarray(a[:, :, t, t - half + 1].mean(axis=(0, 2))) for a in attention_patterns(model, params, tokens)]
    return np.stack(scores)


def previous_token(model: TinyLM, params, tokens: jax.Array) -> np.ndarray:
    """Per layer and head [L, H]: mean attention from position t to t − 1 (the previous-token head's signature)."""
    t = np.arange(1, tokens.shape[1])
    return np.stack([np.asarray(a[:, :, t, t - 1].mean(axis=(0, 2))) for a in attention_patterns(model, params, tokens)])


def ov_circuits(params, layer: int) -> np.ndarray:
    """[H, V, V]: W_E · W_V^h · W_O^h · W_U for each head of ``layer`` (what attending to a token adds to the
    logits). Exact for the attention-only model without norms; the direct path of a model with them."""
    p = params[f"layer_{layer}"]
    we, wu = np.asarray(params["wte"], np.float64), np.asarray(params["unembed"], np.float64)
    wv, wo = np.asarray(p["wv"], np.float64), np.asarray(p["wo"], np.float64)
    return np.einsum("vd,dhk,hke,eu->hvu", we, wv, wo, wu)


def copying(params, layer: int) -> np.ndarray:
    """Per head [H]: Σ Re λ / Σ |λ| over the eigenvalues λ of the OV circuit, in [−1, 1] (Olsson et al. 2022,
    "copying score": positive when the head increases the logit of the token it attends to)."""
    out = []
    for m in ov_circuits(params, layer):
        lam = np.linalg.eigvals(m[1:, 1:])              # token 0 (padding) never appears
        out.append(float(lam.real.sum() / np.abs(lam).sum()))
    return np.array(out)


def lookup_prompts(rng: np.random.Generator, batch: int, k: int, vocab: int, pool: int = 4
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Few-shot prompts [B, 2k+1]: ``pool`` random keys each get a random label (a fresh map per row); k
    (key, label) examples drawn from the pool, then a query key from the pool. Returns prompts, the query's
    label [B], and whether the query appeared among the examples [B] (the best any copying can do)."""
    prompts = np.zeros((batch, 2 * k + 1), np.int32)
    answers, seen = np.zeros(batch, np.int32), np.zeros(batch, bool)
    for b in range(batch):
        keys = rng.choice(np.arange(1, vocab), size=pool, replace=False)
        labels = rng.integers(1, vocab, size=pool)
        shown = rng.integers(0, pool, size=k)
        prompts[b, 0:2 * k:2], prompts[b, 1:2 * k:2] = keys[shown], labels[shown]
        q = int(rng.integers(pool))
        prompts[b, -1], answers[b], seen[b] = keys[q], labels[q], q in set(shown.tolist())
    return prompts, answers, seen
