"""Packing tokenised documents into fixed-length rows, and two pre-training corruptions.

Packing (as in T5, Raffel et al. 2020, and the packed sequences of Krell et al. 2021):
documents, each followed by ``eos`` if given, are laid into rows of ``seq_len`` tokens.
Every token carries a **segment id** (1, 2, … per document within its row; 0 = padding) and
a **position** that restarts at 0 at each document. With ``segment_mask`` (attention only
within a segment, ``lineage_jax.attention.mha``) and a causal mask, position embeddings
indexed by these positions, and the loss weighted by ``packed_targets``, a packed row
computes exactly what each of its documents would compute alone.

Placement (``strategy``): ``'first_fit'`` (default) puts each piece, in document order, into
the first row with room (greedy first-fit bin packing; less padding, order within a row
kept); ``'sequential'`` fills rows in order and opens a new row when the next piece does not
fit (rows read as a contiguous stretch of the corpus). A document longer than ``seq_len`` is
split into ``seq_len``-long pieces (the last one shorter); each piece is its own segment and
its positions restart at 0, since a row cannot attend to another row.

Masked language modelling (BERT; Devlin et al. 2019, §3.1 and App. A.1): 15 % of the
(non-special) positions of a row are selected (round(0.15·n), at least one, as in BERT's
``create_pretraining_data.py``); of those 80 % become ``[MASK]``, 10 % a uniformly random
token, 10 % stay; labels are the original token at selected positions, −100 elsewhere.

Span corruption (T5; Raffel et al. 2020, §3.1.4 and §3.3.4): round(length · 0.15) noise
tokens in round(noise / 3) spans (mean span length 3), alternating with non-noise spans and
starting with a non-noise one (T5's ``random_spans_noise_mask``). Each noise span is
replaced in the inputs by one sentinel — vocab−1 for the first, vocab−2 for the next, … —
and the targets are each sentinel followed by the span it replaced, then one closing
sentinel. ``sentinel_span_restore`` inverts it exactly.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

IGNORE = -100


# ----------------------------------------------------------------------------- packing

def _pieces(token_lists: Sequence[Sequence[int]], seq_len: int, eos_id: int | None
            ) -> list[tuple[int, int, np.ndarray]]:
    out = []
    for d, toks in enumerate(token_lists):
        toks = np.asarray(toks, np.int64).reshape(-1)
        if eos_id is not None:
            toks = np.append(toks, eos_id)
        for start in range(0, toks.size, seq_len):
            out.append((d, start, toks[start:start + seq_len]))
    return out


def pack(token_lists: Sequence[Sequence[int]], seq_len: int, pad_id: int, *, eos_id: int | None = None,
         strategy: str = "first_fit") -> dict[str, np.ndarray]:
    """Pack documents (lists of token ids) into rows of ``seq_len``.

    Returns int32 arrays [N, seq_len]: ``tokens`` (``pad_id`` in padding), ``segment_ids``
    (1-based per piece within its row, 0 = padding), ``positions`` (0, 1, … restarting at
    each piece; 0 in padding), ``document`` (index into ``token_lists``, −1 in padding) and
    ``offset`` (the token's index within its document's tokens, −1 in padding: first-fit may
    put a later piece of a split document in an earlier row).
    Empty documents (without eos) take no room.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len={seq_len}: must be at least 1")
    if strategy not in ("first_fit", "sequential"):
        raise ValueError(f"strategy={strategy!r}: 'first_fit' or 'sequential'")
    rows: list[list[tuple[int, int, np.ndarray]]] = []
    free: list[int] = []
    for d, start, piece in _pieces(token_lists, seq_len, eos_id):
        if piece.size == 0:
            continue
        if strategy == "first_fit":
            r = next((i for i, f in enumerate(free) if f >= piece.size), None)
        else:
            r = len(rows) - 1 if rows and free[-1] >= piece.size else None
        if r is None:
            rows.append([])
            free.append(seq_len)
            r = len(rows) - 1
        rows[r].append((d, start, piece))
        free[r] -= piece.size
    n = len(rows)
    out = {"tokens": np.full((n, seq_len), pad_id, np.int32), "segment_ids": np.zeros((n, seq_len), np.int32),
           "positions": np.zeros((n, seq_len), np.int32), "document": np.full((n, seq_len), -1, np.int32), "offset": np.full((n, seq_len), -1, np.int32)}
    for r, row in enumerate(rows):
        at = 0
        for seg, (d, start, piece) in enumerate(row, start=1):
            sl = slice(at, at + piece.size)
            out["tokens"][r, sl] = piece
            out["segment_ids"][r, sl] = seg
            out["positions"][r, sl] = np.arange(piece.size)
            out["document"][r, sl] = d
            out["offset"][r, sl] = start + np.arange(piece.size)
            at += piece.size
    return out


def tokenize_and_pack(docs: Sequence[str], tokenizer, seq_len: int, *, pad_id: int | None = None,
                      strategy: str = "first_fit") -> dict[str, np.ndarray]:
    """``pack`` of ``tokenizer.encode(doc)`` for each document, ``tokenizer.eos_id`` after each;
    padding defaults to ``eos_id`` (its segment id 0 marks it either way)."""
    eos = tokenizer.eos_id
    return pack([tokenizer.encode(d) for d in docs], seq_len, eos if pad_id is None else pad_id,
                 eos_id=eos, strategy=strategy)


def packed_targets(packed: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Next-token targets of a packed batch: (targets [N, L], weights [N, L] float32).

    Position t predicts token t+1 if both are in the same (non-padding) segment; the last
    token of each segment, padding and the row's last position get weight 0.
    """
    tokens, seg = packed["tokens"], packed["segment_ids"]
    targets = np.zeros_like(tokens)
    targets[:, :-1] = tokens[:, 1:]
    weights = np.zeros(tokens.shape, np.float32)
    weights[:, :-1] = (seg[:, :-1] != 0) & (seg[:, 1:] == seg[:, :-1])
    return targets, weights


# ----------------------------------------------------------------------------- BERT

def bert_mask(tokens: np.ndarray, rng: np.random.Generator, *, vocab_size: int, mask_id: int,
              mask_prob: float = 0.15, special_ids: Sequence[int] = (), valid: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """BERT's masked-LM corruption of ``tokens`` [..., L]: (inputs, labels), labels −100 where
    not selected. Positions that are special or not ``valid`` are never selected."""
    tokens = np.asarray(tokens)
    flat = tokens.reshape(-1, tokens.shape[-1])
    eligible = ~np.isin(flat, np.asarray(special_ids, flat.dtype))
    if valid is not None:
        eligible &= np.asarray(valid, bool).reshape(flat.shape)
    n_eligible = eligible.sum(axis=1)
    k = np.where(n_eligible > 0, np.maximum(1, np.round(n_eligible * mask_prob)), 0).astype(np.int64)
    keys = np.where(eligible, rng.random(flat.shape), np.inf)           # random order of eligible slots
    rank = np.argsort(np.argsort(keys, axis=1), axis=1)
    selected = rank < k[:, None]
    action = rng.random(flat.shape)                                      # < 0.8 mask, < 0.9 random, else keep
    inputs = flat.copy()
    inputs[selected & (action < 0.8)] = mask_id
    rand = selected & (action >= 0.8) & (action < 0.9)
    inputs[rand] = rng.integers(0, vocab_size, size=int(rand.sum()))
    labels = np.where(selected, flat, IGNORE)
    return inputs.reshape(tokens.shape), labels.reshape(tokens.shape)


# ----------------------------------------------------------------------------- T5

def _random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Lengths of ``num_segments`` non-empty parts of ``num_items`` items, uniformly at random."""
    cuts = np.zeros(num_items - 1, bool)
    cuts[:num_segments - 1] = True
    rng.shuffle(cuts)
    segment_id = np.concatenate([[0], np.cumsum(cuts)])
    return np.bincount(segment_id, minlength=num_segments)


def random_spans_noise_mask(length: int, rng: np.random.Generator, noise_density: float = 0.15,
                            mean_span_length: float = 3.0) -> np.ndarray:
    """bool [length]: True at noise tokens; round(length·density) of them (at least 1, at most
    length − 1) in round(noise / mean_span_length) (≥ 1) spans, a non-noise span first."""
    if length < 2:
        raise ValueError(f"length={length}: span corruption needs at least 2 tokens")
    num_noise = int(min(max(round(length * noise_density), 1), length - 1))
    num_spans = int(max(round(num_noise / mean_span_length), 1))
    num_spans = min(num_spans, num_noise, length - num_noise)
    noise_lens = _random_segmentation(num_noise, num_spans, rng)
    keep_lens = _random_segmentation(length - num_noise, num_spans, rng)
    interleaved = np.stack([keep_lens, noise_lens], axis=1).reshape(-1)  # keep, noise, keep, noise, …
    flags = np.tile([False, True], num_spans)
    return np.repeat(flags, interleaved)


def sentinel_span_corrupt(tokens: np.ndarray, rng: np.random.Generator, *, vocab_size: int,
                          noise_density: float = 0.15, mean_span_length: float = 3.0,
                          noise_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Span corruption of one 1-D row as the paper's Figure 2 draws it (Raffel et al. 2020): (inputs,
    targets), int64, with a closing sentinel and no EOS (T5's own format, EOS and no closing sentinel, is
    ``lineage_jax.data.objectives.t5_span_corrupt``).

    inputs: the tokens with each noise span replaced by its sentinel (vocab−1, vocab−2, …);
    targets: sentinel₁ span₁ sentinel₂ span₂ … sentinel_{k+1}. Tokens must lie below
    ``vocab_size − (number of spans + 1)`` so that sentinels are unambiguous.
    """
    tokens = np.asarray(tokens, np.int64).reshape(-1)
    mask = (random_spans_noise_mask(tokens.size, rng, noise_density, mean_span_length)
            if noise_mask is None else np.asarray(noise_mask, bool))
    starts = mask & ~np.concatenate([[False], mask[:-1]])                # first token of each span
    span_no = np.cumsum(starts)                                          # 1-based span index at noise
    sentinels = vocab_size - np.arange(1, int(starts.sum()) + 2)
    if tokens.size and tokens.max() >= sentinels[-1]:
        raise ValueError(f"token {tokens.max()} collides with the sentinels from {sentinels[-1]} up")
    inputs = np.where(starts, vocab_size - span_no, tokens)[~mask | starts]
    span_offsets = np.flatnonzero(starts[mask])                          # where each span begins among the noise
    targets = np.insert(tokens[mask], span_offsets, sentinels[:-1])
    return inputs, np.append(targets, sentinels[-1])


def sentinel_span_restore(inputs: np.ndarray, targets: np.ndarray, vocab_size: int) -> np.ndarray:
    """The original sequence from ``sentinel_span_corrupt``'s (inputs, targets)."""
    spans: dict[int, list[int]] = {}
    expect = vocab_size - 1                                              # the next sentinel in order
    for t in np.asarray(targets, np.int64).tolist():
        if t == expect:
            spans[t] = []
            expect -= 1
        else:
            spans[expect + 1].append(t)
    out: list[int] = []
    for t in np.asarray(inputs, np.int64).tolist():
        out.extend(spans[t] if t in spans else [t])
    return np.asarray(out, np.int64)
