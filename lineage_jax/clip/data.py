"""The captioned shapes as CLIP training pairs and zero-shot classes (``data.shapes``).

Classes are the twelve (colour, shape) combinations, named "red circle", …; eight occur in
training, four only in the ``heldout`` split. Batches are a pure function of (seed, step): each
epoch is a permutation drawn from ``default_rng([seed, epoch])``, so a resumed run sees the batches
an uninterrupted one would.
"""
from __future__ import annotations

import itertools

import numpy as np

from lineage_jax.clip.text import WordVocab
from lineage_jax.clip.zeroshot import TEMPLATES, prompts
from lineage_jax.data.shapes import COLOURS, HELD_OUT, SHAPES, SIZES

COMBOS = tuple(itertools.product(COLOURS, SHAPES))           # (colour, shape), colour-major
CLASS_NAMES = tuple(f"{c} {s}" for c, s in COMBOS)
HELD_OUT_CLASSES = tuple(i for i, c in enumerate(COMBOS) if c in HELD_OUT)


def vocabulary(captions=()) -> WordVocab:
    """Every word of the captions' language (sizes, colours, shapes, "a") and of the default templates."""
    language = [f"a {z} {n}" for z in SIZES for n in CLASS_NAMES]
    return WordVocab.build(list(language) + list(captions) + prompts(CLASS_NAMES, TEMPLATES))


def labels(split: dict) -> np.ndarray:
    """[N] class index (into CLASS_NAMES) of each image's true (colour, shape)."""
    colours, shapes = list(COLOURS), list(SHAPES)
    return np.array([CLASS_NAMES.index(f"{colours[c]} {shapes[s]}") for c, s in zip(split["colour"], split["shape"])])


def pairs(split: dict, vocab: WordVocab, context: int, keep=None) -> dict:
    """{"image": uint8 [N, 32, 32, 3], "tokens": int32 [N, context]} (rows where ``keep``, if given)."""
    idx = np.arange(len(split["caption"])) if keep is None else np.flatnonzero(keep)
    return {"image": split["image"][idx], "tokens": vocab.batch(list(split["caption"][idx]), context)}


def batch_at(data: dict, batch_size: int, seed: int, step: int) -> dict:
    """The ``step``-th batch: rows of epoch ``step * batch_size // N``'s permutation (last partial batch dropped)."""
    n = len(data["tokens"])
    per_epoch = n // batch_size
    if per_epoch < 1:
        raise ValueError(f"batch_size={batch_size} exceeds the {n} training pairs")
    epoch, k = divmod(step, per_epoch)
    idx = np.random.default_rng([seed, epoch]).permutation(n)[k * batch_size:(k + 1) * batch_size]
    return {key: v[idx] for key, v in data.items()}
