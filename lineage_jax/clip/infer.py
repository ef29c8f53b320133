"""A trained CLIP as plain functions: images or texts -> unit embeddings, and the pair scorer that
CLIP-score filtering (and a data-preparation pipeline) calls one document at a time.

``Encoder`` jits each tower once and feeds it fixed-size chunks (the last one padded), so scoring a
data set of any size compiles two programs. ``Scorer(encoder)(image, text)`` is the cosine of one
pair; ``keep(document, threshold)`` is the filter stage on a {"image", "caption"} document.
"""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from lineage_jax.clip.filter import pair_scores
from lineage_jax.clip.model import CLIP, CLIPConfig
from lineage_jax.clip.text import WordVocab
from lineage_jax.clip.train import to_unit_range


class Encoder:
    def __init__(self, cfg: CLIPConfig, params, vocab: WordVocab, chunk: int = 256):
        self.cfg, self.params, self.vocab, self.chunk = cfg, params, vocab, chunk
        model = CLIP(cfg)
        self._image = jax.jit(lambda p, x: model.apply({"params": p}, to_unit_range(x), method=CLIP.encode_image))
        self._text = jax.jit(lambda p, t: model.apply({"params": p}, t, method=CLIP.encode_text))

    def _chunks(self, fn, x: np.ndarray) -> np.ndarray:
        n = len(x)
        size = min(self.chunk, max(n, 1))
        out = []
        for i in range(0, n, size):
            part = x[i:i + size]
            pad = size - len(part)
            if pad:
                part = np.concatenate([part, np.repeat(part[-1:], pad, axis=0)])
            out.append(np.asarray(fn(self.params, part))[:size - pad])
        return np.concatenate(out) if out else np.zeros((0, self.cfg.embed_dim), np.float32)

    def images(self, images) -> np.ndarray:
        """uint8 [N, H, W, C] (or one [H, W, C]) -> [N, E] unit vectors."""
        x = np.asarray(images)
        return self._chunks(self._image, x[None] if x.ndim == 3 else x)

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        """N strings -> [N, E] unit vectors (words outside the vocabulary read as <unk>)."""
        return self._chunks(self._text, self.vocab.batch(list(texts), self.cfg.context))


class Scorer:
    """(image, text) -> CLIP cosine similarity; ``keep(document, threshold)``: the LAION filter stage."""

    def __init__(self, encoder: Encoder):
        self.encoder = encoder

    def __call__(self, image, text: str) -> float:
        return float(self.batch(np.asarray(image)[None], [text])[0])

    def batch(self, images, texts: Sequence[str]) -> np.ndarray:
        return pair_scores(self.encoder.images(images), self.encoder.texts(texts))

    def keep(self, document: dict, threshold: float) -> bool:
        return self(document["image"], document["caption"]) >= threshold
