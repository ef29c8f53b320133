"""How big a model is and what training it costs, in the terms the scaling papers use.

- total: every parameter (all experts; vocabulary padding left out).
- non_embedding: Kaplan et al. (2020)'s N, "excluding vocabulary and positional embeddings": the
  token table, the position table and an untied output head are left out (tied, the head *is*
  the token table). Their laws are in this N.
- active: total with each MoE layer's experts counted k/E (what one token meets).
- matmul: the bench's N of 6N (``lineage_jax.models.count.matmul_params``): active parameters a
  token multiplies, the head included, lookup tables excluded. Hoffmann et al. (2022) count
  parameters with embeddings; for C ≈ 6·N·D this is the N whose FLOPs are real.

Training FLOPs per token: 6N (forward 2N, backward 4N: Kaplan §2.1) and the PaLM form
6N + 12·L·H·Q·T, which adds attention's QKᵀ and AV (Chowdhery et al. 2022, App. B).
"""
from __future__ import annotations

import dataclasses

from lineage_jax.config import ModelConfig
from lineage_jax.models.count import Leaf, is_untied, leaves, matmul_params


@dataclasses.dataclass(frozen=True)
class Counts:
    total: int
    non_embedding: int
    active: int
    matmul: int
    flops_per_token_6n: float        # 6 · matmul
    flops_per_token_palm: float      # 6 · matmul + 12·L·H·Q·T

    def training_flops(self, tokens: float, form: str = "6n") -> float:
        """C for ``tokens`` training tokens: 6·N·D (``form="6n"``) or the PaLM form (``"palm"``)."""
        per = {"6n": self.flops_per_token_6n, "palm": self.flops_per_token_palm}[form]
        return per * tokens

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _embedding(leaf: Leaf, untied: bool) -> bool:
    return "position" in leaf.axes or leaf.name == "wte" or (untied and leaf.name == "lm_head")


def count(m: ModelConfig) -> Counts:
    """Every count of ``m`` from one abstract trace of its parameter tree."""
    ls = leaves(m)
    untied = is_untied(ls)
    total = sum(leaf.size for leaf in ls)
    non_emb = sum(leaf.size for leaf in ls if not _embedding(leaf, untied))
    share = m.moe_k / m.experts
    active = int(round(sum(leaf.size * (share if "expert" in leaf.axes else 1) for leaf in ls)))
    n = matmul_params(m, ls)
    attention = 12.0 * m.layers * m.heads * (m.width // m.heads) * m.context
    return Counts(total, non_emb, active, n, 6.0 * n, 6.0 * n + attention)
