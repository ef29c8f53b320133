"""Parameter counts read off a model's (abstract) parameter tree by logical axis names.

One tree walk serves the bench's model FLOPs (``matmul_params``) and the scaling chapter's
counts (``lineage_jax.scaling.count``): every leaf is named by its path's last key, its logical
axes and its shape, so a count is a filter over ``leaves(m)`` and never a second formula that
could drift from the model code.
"""
from __future__ import annotations

import dataclasses
import math

from lineage_jax.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Leaf:
    name: str                  # the last key of its path: "kernel", "wte", "w_in", ...
    axes: tuple[str, ...]      # logical axis names (lineage_jax.nn.hooks)
    shape: tuple[int, ...]
    size: int                  # parameters, vocabulary padding (vocab_multiple) left out


def leaves(m: ModelConfig) -> list[Leaf]:
    """Every parameter of ``build(m)``, traced abstractly (``jax.eval_shape``: no memory, no compile)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from lineage_jax.models import build
    boxed = jax.eval_shape(lambda: build(m).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    flat = jax.tree_util.tree_flatten_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
    out = []
    for path, leaf in flat:
        axes, shape = tuple(leaf.names), tuple(nn.unbox(leaf).shape)
        size = math.prod(shape)
        if "vocab" in axes:   # padded vocab rows are computed but are not the model's
            size = size // shape[axes.index("vocab")] * m.vocab_size
        out.append(Leaf(str(getattr(path[-1], "key", "")), axes, shape, size))
    return out


def is_untied(ls: list[Leaf]) -> bool:
    return any(leaf.name == "lm_head" for leaf in ls)


def matmul_params(m: ModelConfig, ls: list[Leaf] | None = None) -> int:
    """N of the 6N term: the parameters one token's forward multiplies.

    Lookup tables are not multiplied: the position table, and the token table when the head
    is untied (tied, it is the head's matrix and counts once). Norm scales and biases count,
    as in PaLM's N. In MoE layers a token meets ``moe_k`` of the E experts, so expert weights
    (the leaves with an ``expert`` axis; the router's is ``route``) count k/E: N is the active
    parameters. Vocabulary padding (``vocab_multiple``) is left out: those rows are work, not model.
    """
    ls = leaves(m) if ls is None else ls
    untied = is_untied(ls)
    n = 0.0
    for leaf in ls:
        if "position" in leaf.axes or (leaf.name == "wte" and untied):
            continue
        n += leaf.size * (m.moe_k / m.experts if "expert" in leaf.axes else 1)
    return int(round(n))
