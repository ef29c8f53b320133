"""LoRA on the fly: y = x·W + ((x·A)·B)·α/r with W frozen, no merged kernel ever built.

``merge`` (``lora.py``) forms W + ΔW for every adapted kernel of every layer before the model runs, so under
training the merged kernels and their cotangents are step temporaries the size of the adapted weights — more
than full fine-tuning needs. Here the adapter is applied *at the call*: each adapted ``nn.linear.Dense``
computes its own frozen product and adds the two thin matmuls through rank r, so the only adapter temporaries
are activations of width r, and the frozen kernels never receive a cotangent.

No model is edited. ``apply`` places each adapter beside its kernel in the parameter tree (``…/query/kernel``,
``…/query/lora_a``, ``…/query/lora_b``), so a scanned stack slices adapters with their kernels (they share the
``layers`` lead axis), and runs ``model.apply`` inside ``flax.linen.intercept_methods``: the interceptor
recognises an adapted ``Dense`` by the adapter in its own parameters and wraps its ``__call__``.

QLoRA: a quantised kernel (``quant.Quantized``) is computed by ``quant.qmatmul`` (dequantised on the fly to
the layer's compute dtype, one layer at a time), the bias and ``CollectiveHooks`` as ``Dense`` applies them.
Double-quantised constants are expanded to float32 before the model runs (0.5 bits per weight, one
temporary) so every array of a ``Quantized`` carries the stacked ``layers`` axis a scan slices.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from lineage_jax.adapt import nf4, quant
from lineage_jax.nn.hooks import hooks
from lineage_jax.nn.linear import Dense, linear

MODES = ("onthefly", "merged")


def lora_term(x: jax.Array, a: jax.Array, b: jax.Array, n_in: int, scale: float, dtype) -> jax.Array:
    """((x·A)·B)·scale: x [*lead, *in] contracting its last ``n_in`` axes with A [*in, r], then B [r, *out]."""
    r = a.shape[-1]
    lead = x.shape[:x.ndim - n_in]
    # ``linear``: the hand-written VJP whose weight gradient contracts the token axes directly (autodiff's
    # transposes the activations first, and XLA:CPU keeps those copies: +18% temporaries measured)
    h = linear(x.astype(dtype).reshape(*lead, -1), a.astype(dtype).reshape(-1, r))            # [*lead, r]
    y = linear(h * jnp.asarray(scale, dtype), b.astype(dtype).reshape(r, -1))                 # [*lead, prod(out)]
    return y.reshape(*lead, *b.shape[1:])


def _frozen(module: Dense, x: jax.Array) -> jax.Array:
    """``Dense.__call__`` over a quantised kernel: qmatmul in the compute dtype, hooks and bias as Dense."""
    h = hooks()
    if module.hook_input:
        x = h.dense_in(x, module.kernel_axes, module.in_axes)
    q = module.get_variable("params", "kernel")
    ndim = module.in_axes + len(tuple(module.features))
    q = dataclasses.replace(q, shape=tuple(q.shape[len(q.shape) - ndim:]))     # a scanned layer's slice
    y = h.dense_out(quant.qmatmul(x, q, n_in=module.in_axes, dtype=module.dtype), module.kernel_axes,
                    module.in_axes)
    if module.use_bias:
        y = y + module.get_variable("params", "bias").astype(module.dtype)
    return y


def interceptor(scale: float):
    """A ``flax.linen.intercept_methods`` interceptor adding the LoRA term to every adapted ``Dense``."""
    def intercept(next_fun, args, kwargs, context):
        m = context.module
        if not (isinstance(m, Dense) and context.method_name == "__call__" and m.has_variable("params", "lora_a")):
            return next_fun(*args, **kwargs)
        (x,) = args
        kernel = m.get_variable("params", "kernel")
        y = _frozen(m, x) if quant.is_quantized(kernel) else next_fun(*args, **kwargs)
        a, b = m.get_variable("params", "lora_a"), m.get_variable("params", "lora_b")
        return y + lora_term(x, a, b, m.in_axes, scale, m.dtype).astype(y.dtype)
    return intercept


def expand(q: quant.Quantized) -> quant.Quantized:
    """A double-quantised kernel with its absmax constants back in float32 (every array keeps the kernel's
    leading axes, so a scan can slice it); others unchanged."""
    if not quant.is_quantized(q) or q.scale2 is None:
        return q
    return dataclasses.replace(q, absmax=nf4.double_dequantize(q.absmax, q.scale2, q.mean2), scale2=None, mean2=None)


def inject(base, adapters):
    """``base`` with each adapter's ``lora_a`` / ``lora_b`` beside its kernel (a quantised kernel expanded)."""
    def go(node, ad):
        if ad is None:
            return node
        if "lora_a" in ad:
            return {**node, "kernel": expand(node["kernel"]), "lora_a": ad["lora_a"], "lora_b": ad["lora_b"]}
        extra = set(ad) - set(node)
        if extra:
            raise ValueError(f"adapters name {sorted(extra)}, which the parameters lack")
        return {k: go(v, ad.get(k)) for k, v in node.items()}
    return go(base, adapters)


def apply(model, base, adapters, scale: float, *args, **kw):
    """``model.apply`` of base + adapters computed on the fly (``scale`` = α/r); the base is not differentiated."""
    params = inject(jax.lax.stop_gradient(base), adapters)
    with nn.intercept_methods(interceptor(scale)):
        return model.apply({"params": params}, *args, **kw)
