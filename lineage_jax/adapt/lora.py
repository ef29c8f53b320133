"""LoRA (Hu et al. 2021) as pure functions on the parameter pytree: no model knows about adapters.

A chosen kernel W (our ``Dense`` layout [*lead, *in, *out]; ``lead`` is the scanned ``layers``
axis, if any) gets two factors

    lora_a [*lead, *in, r]   (the paper's A ∈ R^{r×in}, stored transposed like the kernel)
    lora_b [*lead, r, *out]  (the paper's B ∈ R^{out×r}, likewise)

and the adapted layer computes with W + ΔW, ΔW = (α/r)·lora_a·lora_b (= the paper's (α/r)·(BA)ᵀ).
A is drawn at random and B is zero (§4.1), so the adapted model starts as the base model exactly.

The design: adaptation is a *parameter transform*. ``merge(base, adapters, cfg)`` returns an ordinary
parameter tree, so every model, every parallel form and the sampler work unchanged; applied once and kept,
it is the merged model, and ``unmerge`` subtracts ΔW again. Inside a training step the adapters are applied on
the fly instead (``onthefly.py``: ((x·A)·B)·α/r added at each adapted ``Dense`` call through
``flax.linen.intercept_methods``), because merging there makes W + ΔW of every adapted kernel, and its
cotangent, temporaries of the step; ``train/finetune.py`` keeps the merged form selectable as the reference.

Adapters follow their kernel's logical axes (``logical_specs``): ``lora_a`` keeps the kernel's
lead and input names, ``lora_b`` its lead and output names, the rank axis is unnamed (replicated),
so FSDP and tensor parallelism shard each adapter as they shard its kernel and ΔW lands in the
kernel's own layout with no resharding.

A quantised base (``adapt.quant``: NF4 or int8 kernels, QLoRA) is dequantised inside ``merge``.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from lineage_jax.adapt import quant
from lineage_jax.config.errors import ConfigError

# --lora-targets names -> the module path (below the layer) whose ``kernel`` is adapted
TARGETS = {"q": r"attn/query", "k": r"attn/key", "v": r"attn/value", "o": r"attn/out",
           "mlp": r"mlp/(fc|proj|gate|up|down)"}
LEAD_AXES = ("layers",)   # stacked (scanned) axes: a batch of independent kernels


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """rank r, alpha α (ΔW is scaled by α/r, §4.1) and which kernels: ``TARGETS`` names."""
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q", "k", "v", "o", "mlp")

    def __post_init__(self):
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"lora rank={self.rank}: must be a positive integer")
        if not self.alpha > 0:
            raise ConfigError(f"lora alpha={self.alpha}: must be positive")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets:
            raise ConfigError(f"lora targets '{','.join(self.targets)}': allowed a comma list of "
                              f"{', '.join(TARGETS)}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def matches(self, path: tuple[str, ...]) -> bool:
        """Whether the kernel at ``path`` (keys down to ``kernel``) is adapted."""
        if not path or path[-1] != "kernel":
            return False
        module = "/".join(path[:-1])
        return any(re.search(rf"(^|/){TARGETS[t]}$", module) for t in self.targets)


def parse_targets(text: str) -> tuple[str, ...]:
    """``q,k,v,o,mlp`` -> a tuple, each name checked (one line naming the bad one)."""
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    LoraConfig(targets=names)
    return names


def _keys(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", k)) for k in path)


def _leaves(tree, is_leaf=None):
    return [(_keys(p), x) for p, x in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]]


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def _is_spec(x) -> bool:
    return isinstance(x, P)


def split_axes(axes: tuple) -> tuple[int, int]:
    """(lead, n_in) of a kernel from its logical names: leading ``layers`` axes are a stack; after
    them a kernel whose first name is ``embed`` reads one input axis (q/k/v, fc, gate/up), any other
    writes its last axis (out [heads, kv, embed], proj/down [mlp, embed]) and reads the rest."""
    axes = tuple(axes)
    lead = 0
    while lead < len(axes) and axes[lead] in LEAD_AXES:
        lead += 1
    body = axes[lead:]
    if len(body) < 2:
        raise ValueError(f"kernel axes {axes}: need an input and an output axis")
    return lead, (1 if body[0] == "embed" else len(body) - 1)


def targets(params, specs, cfg: LoraConfig) -> dict[tuple[str, ...], tuple[tuple[int, ...], tuple]]:
    """{kernel path: (shape, logical axes)} of every kernel ``cfg`` adapts (a quantised kernel
    reports its original shape). None adapted is an error naming what the tree holds."""
    shapes = dict(_leaves(jax.tree.map(lambda x: tuple(x.shape), params, is_leaf=quant.is_quantized),
                          is_leaf=lambda x: isinstance(x, tuple) and all(isinstance(i, int) for i in x)))
    axes = dict(_leaves(specs, is_leaf=_is_spec))
    found = {p: (s, tuple(axes[p])) for p, s in shapes.items() if cfg.matches(p)}
    if not found:
        kernels = sorted({"/".join(p[-3:-1]) for p in shapes if p[-1] == "kernel"})
        raise ConfigError(f"lora targets {','.join(cfg.targets)} match no kernel; this model's kernels: "
                          f"{', '.join(kernels)}")
    return found


def adapter_shapes(shape, axes, rank: int):
    """(lora_a shape, lora_b shape, lora_a axes, lora_b axes) for a kernel of ``shape`` / ``axes``."""
    lead, n_in = split_axes(axes)
    s, a = tuple(shape), tuple(axes)
    return ((*s[:lead + n_in], rank), (*s[:lead], rank, *s[lead + n_in:]),
            P(*a[:lead + n_in], None), P(*a[:lead], None, *a[lead + n_in:]))


def init(key, params, specs, cfg: LoraConfig, dtype=jnp.float32) -> dict:
    """Adapters for ``params``: ``lora_a`` ~ N(0, 1/fan_in) (random, as §4.1 says; the fan-in
    scale keeps x·A of unit size), ``lora_b`` = 0, so ΔW = 0 and the adapted model is the base.
    The tree mirrors ``params``: {…: {"query": {"lora_a", "lora_b"}}} beside each kernel's path."""
    out: dict = {}
    for i, (path, (shape, axes)) in enumerate(sorted(targets(params, specs, cfg).items())):
        sa, sb, _, _ = adapter_shapes(shape, axes, cfg.rank)
        fan_in = math.prod(sa[:-1][split_axes(axes)[0]:])
        a = jax.random.normal(jax.random.fold_in(key, i), sa, jnp.float32) / math.sqrt(fan_in)
        _set(out, path[:-1], {"lora_a": a.astype(dtype), "lora_b": jnp.zeros(sb, dtype)})
    return out


def logical_specs(params, specs, cfg: LoraConfig) -> dict:
    """The adapters' logical PartitionSpecs: each follows its kernel (``adapter_shapes``)."""
    out: dict = {}
    for path, (shape, axes) in targets(params, specs, cfg).items():
        _, _, pa, pb = adapter_shapes(shape, axes, cfg.rank)
        _set(out, path[:-1], {"lora_a": pa, "lora_b": pb})
    return out


def delta(a: jax.Array, b: jax.Array, kernel_shape, scale: float, dtype=None) -> jax.Array:
    """ΔW = scale · a·b in the kernel's layout [*lead, *in, *out] (contracting the rank axis)."""
    r = a.shape[-1]
    lead = a.ndim - 1 + b.ndim - 1 - len(kernel_shape)
    ls = a.shape[:lead]
    a2 = a.reshape(*ls, -1, r)
    b2 = b.reshape(*ls, r, -1)
    dtype = dtype or jnp.result_type(a, b)
    d = jnp.matmul(a2.astype(dtype), b2.astype(dtype), precision=jax.lax.Precision.HIGHEST)
    return (d * jnp.asarray(scale, dtype)).reshape(kernel_shape)


def _walk(base, adapters, fn: Callable) -> Any:
    """``base`` with every adapted kernel replaced by ``fn(kernel, lora_a, lora_b)``."""
    def go(node, ad):
        if ad is None:
            return node
        if isinstance(ad, dict) and "lora_a" in ad:
            return {**node, "kernel": fn(node["kernel"], ad["lora_a"], ad["lora_b"])}
        extra = set(ad) - set(node)
        if extra:
            raise ValueError(f"adapters name {sorted(extra)}, which the parameters lack")
        return {k: go(v, ad.get(k)) for k, v in node.items()}
    return go(base, adapters)


def merge(base, adapters, cfg: LoraConfig, dtype=None):
    """W + ΔW for every adapted kernel (a quantised one dequantised first, to ``dtype`` or f32):
    the adapted model's parameters, usable by ``model.apply`` as they are."""
    def fn(w, a, b):
        if quant.is_quantized(w):
            w = quant.dequantize(w, dtype or jnp.float32)
        return (w + delta(a, b, w.shape, cfg.scale, w.dtype)).astype(w.dtype)
    return _walk(base, adapters, fn)


def unmerge(merged, adapters, cfg: LoraConfig):
    """W + ΔW − ΔW: the base again (exact where the sum was, else within a rounding of |ΔW|)."""
    return _walk(merged, adapters, lambda w, a, b: (w - delta(a, b, w.shape, cfg.scale, w.dtype)).astype(w.dtype))


def count(tree) -> int:
    """Number of scalars in a tree (a quantised kernel counts its original shape)."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree, is_leaf=quant.is_quantized))


def freeze_base(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """For a combined tree {"base": …, "lora": …}: ``tx`` on the adapters, nothing (no state, zero
    updates) on the base — optax.multi_transform with the base labelled frozen."""
    labels = lambda tree: {k: jax.tree.map(lambda _: "train" if k == "lora" else "frozen", v)  # noqa: E731
                           for k, v in tree.items()}
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
