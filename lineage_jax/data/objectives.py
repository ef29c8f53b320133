"""Pre-training objectives as data transforms, in the shapes the models take: BERT's masked LM and T5's
span corruption, each a pure function of (tokens, randomness).

**Masked LM** (Devlin et al. 2019, §3.1, App. A.1): of the positions of a row that are not special and
not padding, k = max(1, round(0.15 · n)) are selected (the count of BERT's
``create_pretraining_data.py``, Python's round); each selected one becomes ``[MASK]`` with probability
0.8, a uniformly random token with 0.1, and stays with 0.1; labels are the original token there and
−100 elsewhere. ``bert_mask`` takes a numpy ``Generator`` (host side, the pipeline's
``lineage_jax.data.pipeline.packing.bert_mask``) or a JAX PRNG key (the same algorithm written in
``jax.numpy``, jittable, so masking can happen on device inside the train step).

**Span corruption** (Raffel et al. 2020, §3.1.4, §3.3.4; the arithmetic of T5's
``random_spans_noise_mask``): a row of L tokens gets round(0.15 · L) noise tokens (clipped to
[1, L − 1]) in round(noise / 3) spans (at least 1), alternating with as many non-noise spans and starting
with a non-noise one. Each noise span becomes one sentinel in the inputs — vocab−1 for the first,
vocab−2 for the next, … — and the targets are each sentinel followed by the span it replaced, then EOS;
the inputs end with EOS too. As in T5's code (``span_corruption``), the last span is always noise, so
there is no closing sentinel after it (the paper's Figure 2 draws one; the pipeline's
``sentinel_span_corrupt`` keeps it and this module drops it). Lengths are then exact:

    inputs  = (L − noise) + spans + 1          targets = noise + spans + 1

and ``t5_raw_length(512)`` = 568 raw tokens give 512 inputs and 114 targets, as T5's
``compute_input_and_target_lengths`` says.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from lineage_jax.data.pipeline import packing

IGNORE = packing.IGNORE


def _is_generator(rng) -> bool:
    return isinstance(rng, np.random.Generator)


def as_generator(rng) -> np.random.Generator:
    """A numpy Generator from a Generator (returned as is) or a JAX PRNG key (seeded by its key data)."""
    if _is_generator(rng):
        return rng
    import jax
    return np.random.default_rng(np.asarray(jax.random.key_data(rng)).reshape(-1).astype(np.uint64))


# ----------------------------------------------------------------------------- BERT

def mask_counts(length: int, mask_prob: float = 0.15) -> np.ndarray:
    """k(n) for n = 0 … length eligible positions: 0 for n = 0, else max(1, round(n · mask_prob))."""
    return np.array([0] + [max(1, int(round(n * mask_prob))) for n in range(1, length + 1)], np.int32)


def bert_mask(tokens, rng, *, vocab_size: int, mask_id: int, special_ids: Sequence[int] = (),
              mask_prob: float = 0.15, valid=None):
    """BERT's masked-LM corruption of ``tokens`` [..., L]: (inputs, labels); labels −100 where not selected.

    ``rng``: a numpy Generator (numpy in, numpy out) or a JAX PRNG key (jax arrays; jittable with
    ``vocab_size``, ``mask_id``, ``special_ids`` static). ``valid`` [..., L] bool: False at padding.
    """
    if _is_generator(rng):
        return packing.bert_mask(tokens, rng, vocab_size=vocab_size, mask_id=mask_id, mask_prob=mask_prob,
                                 special_ids=special_ids, valid=valid)
    import jax
    import jax.numpy as jnp

    tokens = jnp.asarray(tokens)
    eligible = ~jnp.isin(tokens, jnp.asarray(list(special_ids), tokens.dtype))
    if valid is not None:
        eligible &= jnp.asarray(valid, bool)
    k = jnp.asarray(mask_counts(tokens.shape[-1], mask_prob))[eligible.sum(-1)]        # [...]
    k_select, k_action, k_token = jax.random.split(rng, 3)
    order = jnp.where(eligible, jax.random.uniform(k_select, tokens.shape), jnp.inf)    # a random order of eligible slots
    rank = jnp.argsort(jnp.argsort(order, axis=-1), axis=-1)
    selected = rank < k[..., None]
    action = jax.random.uniform(k_action, tokens.shape)                                  # < 0.8 mask, < 0.9 random, else keep
    random_tokens = jax.random.randint(k_token, tokens.shape, 0, vocab_size, tokens.dtype)
    inputs = jnp.where(selected & (action < 0.8), jnp.asarray(mask_id, tokens.dtype),
                       jnp.where(selected & (action < 0.9), random_tokens, tokens))
    return inputs, jnp.where(selected, tokens, IGNORE)


def mlm_loss(logits, labels):
    """Mean cross-entropy over the positions whose label is not −100 (BertForMaskedLM's loss)."""
    import jax
    import jax.numpy as jnp

    labels = jnp.asarray(labels)
    keep = labels != IGNORE
    logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.where(keep, labels, 0)[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(keep, nll, 0.0)) / jnp.maximum(jnp.sum(keep), 1)


# ----------------------------------------------------------------------------- T5

def t5_noise_counts(length: int, noise_density: float = 0.15, mean_span_length: float = 3.0) -> tuple[int, int]:
    """(noise tokens, noise spans) of a row of ``length`` tokens, by T5's ``random_spans_noise_mask`` arithmetic."""
    if not 0.0 < noise_density < 1.0 or mean_span_length < 1.0:
        raise ValueError(f"noise_density={noise_density}, mean_span_length={mean_span_length}: the density must "
                         f"lie in (0, 1) and the mean span length be at least 1")
    num_noise = min(max(int(np.round(length * noise_density)), 1), length - 1)
    return num_noise, max(int(np.round(num_noise / mean_span_length)), 1)


def t5_lengths(length: int, noise_density: float = 0.15, mean_span_length: float = 3.0) -> tuple[int, int]:
    """(inputs, targets) lengths, EOS included, after span corruption of ``length`` raw tokens."""
    noise, spans = t5_noise_counts(length, noise_density, mean_span_length)
    return length - noise + spans + 1, noise + spans + 1


def t5_raw_length(inputs_length: int, noise_density: float = 0.15, mean_span_length: float = 3.0) -> int:
    """The most raw tokens whose corrupted inputs fit in ``inputs_length`` (T5's ``compute_input_and_target_lengths``)."""
    n = inputs_length
    while t5_lengths(n + 1, noise_density, mean_span_length)[0] <= inputs_length:
        n += 1
    return n


def t5_span_corrupt(tokens, rng, *, vocab_size: int, eos_id: int = 1, noise_density: float = 0.15,
                    mean_span_length: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """T5 span corruption of ``tokens`` [L] or [B, L] (every row of length L ≥ 2): (inputs, targets) int64,
    [B, Li] and [B, Lt] with (Li, Lt) = ``t5_lengths(L)``, each row ending in ``eos_id``.

    ``rng``: a numpy Generator or a JAX PRNG key (turned into a Generator: span corruption runs on the
    host, in the input pipeline, as in T5). Tokens must lie below the sentinels (vocab − spans).
    """
    rng = as_generator(rng)
    tokens = np.asarray(tokens, np.int64)
    rows = tokens.reshape(-1, tokens.shape[-1])
    L = rows.shape[1]
    if L < 2:
        raise ValueError(f"length {L}: span corruption needs at least 2 tokens per row")
    noise, spans = t5_noise_counts(L, noise_density, mean_span_length)
    if spans > L - noise:
        raise ValueError(f"noise_density={noise_density}, mean_span_length={mean_span_length}: {spans} noise "
                         f"spans need as many non-noise tokens, a row of {L} has {L - noise}")
    ins, tgts = [], []
    for row in rows:
        mask = packing.random_spans_noise_mask(L, rng, noise_density, mean_span_length)
        x, y = packing.sentinel_span_corrupt(row, rng, vocab_size=vocab_size, noise_mask=mask)
        ins.append(np.append(x, eos_id))
        tgts.append(np.append(y[:-1], eos_id))                          # T5's targets: no closing sentinel
    shape = tokens.shape[:-1]
    return np.stack(ins).reshape(*shape, -1), np.stack(tgts).reshape(*shape, -1)


def t5_reconstruct(inputs, targets, vocab_size: int) -> np.ndarray:
    """The raw tokens [L] from one row of ``t5_span_corrupt``'s (inputs, targets) (EOS stripped)."""
    inputs, targets = np.asarray(inputs, np.int64)[:-1], np.asarray(targets, np.int64)[:-1]
    return packing.sentinel_span_restore(inputs, targets, vocab_size)


def t5_batch(tokens, rng, *, vocab_size: int, eos_id: int = 1, pad_id: int = 0, noise_density: float = 0.15,
             mean_span_length: float = 3.0) -> dict[str, np.ndarray]:
    """A T5 training batch from raw rows [B, L]: ``input_ids`` [B, Li], ``labels`` [B, Lt] and
    ``decoder_input_ids`` = labels shifted right behind ``pad_id`` (T5's decoder start token)."""
    inputs, targets = t5_span_corrupt(tokens, rng, vocab_size=vocab_size, eos_id=eos_id,
                                      noise_density=noise_density, mean_span_length=mean_span_length)
    decoder_inputs = np.concatenate([np.full_like(targets[:, :1], pad_id), targets[:, :-1]], axis=1)
    return {"input_ids": inputs.astype(np.int32), "labels": targets.astype(np.int32),
            "decoder_input_ids": decoder_inputs.astype(np.int32)}


__all__ = ["IGNORE", "as_generator", "bert_mask", "mask_counts", "mlm_loss", "t5_batch", "t5_lengths",
           "t5_noise_counts", "t5_raw_length", "t5_reconstruct", "t5_span_corrupt"]
