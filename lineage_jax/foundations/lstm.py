"""The long short-term memory cell (Hochreiter & Schmidhuber 1997; with the forget gate of Gers et al. 2000)
as a pure function, and a sequence as a ``lax.scan`` over time.

    i = σ(x W_i + h U_i + b_i)     f = σ(x W_f + h U_f + b_f)
    g = tanh(x W_g + h U_g + b_g)  o = σ(x W_o + h U_o + b_o)
    c' = f ⊙ c + i ⊙ g             h' = o ⊙ tanh(c')

Parameters are a dict ``{"w_ih": [in, 4H], "w_hh": [H, 4H], "b": [4H]}`` whose four column blocks are in
``torch.nn.LSTM``'s gate order i, f, g, o; torch keeps two biases (b_ih + b_hh) and transposed matrices, which
``from_torch`` folds in. ``scan`` takes a mask: at a padded step the carry passes through unchanged, so the
final state of a padded sequence is the state after its last real token, in either direction.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def init(key: jax.Array, inputs: int, hidden: int, forget_bias: float = 0.0) -> dict:
    """Uniform(−1/√H, 1/√H) like torch; ``forget_bias`` added to f's bias (Jozefowicz et al. 2015 use 1)."""
    k1, k2, k3 = jax.random.split(key, 3)
    s = hidden ** -0.5
    b = jax.random.uniform(k3, (4 * hidden,), minval=-s, maxval=s)
    return {"w_ih": jax.random.uniform(k1, (inputs, 4 * hidden), minval=-s, maxval=s),
            "w_hh": jax.random.uniform(k2, (hidden, 4 * hidden), minval=-s, maxval=s),
            "b": b.at[hidden:2 * hidden].add(forget_bias)}


def from_torch(weight_ih, weight_hh, bias_ih, bias_hh) -> dict:
    """One layer of ``torch.nn.LSTM`` (``weight_ih_l0`` [4H, in] …, as arrays) in this module's layout."""
    return {"w_ih": jnp.asarray(weight_ih).T, "w_hh": jnp.asarray(weight_hh).T,
            "b": jnp.asarray(bias_ih) + jnp.asarray(bias_hh)}


def zeros(batch: int, hidden: int) -> tuple[jax.Array, jax.Array]:
    return jnp.zeros((batch, hidden)), jnp.zeros((batch, hidden))


def cell(params: dict, carry: tuple[jax.Array, jax.Array], x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One step: (h, c) ``[B, H]`` and x ``[B, in]`` -> (h', c')."""
    h, c = carry
    z = x @ params["w_ih"] + h @ params["w_hh"] + params["b"]
    i, f, g, o = jnp.split(z, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jax.nn.sigmoid(o) * jnp.tanh(c), c


def scan(params: dict, xs: jax.Array, carry=None, mask: jax.Array | None = None, reverse: bool = False):
    """The sequence xs ``[B, T, in]`` -> (final (h, c), hs ``[B, T, H]``) as one ``lax.scan`` over time.

    ``mask`` ``[B, T]`` (1 = real token): a masked step keeps the carry and outputs zeros. ``reverse`` reads
    the sequence from its end (the backward half of a bidirectional encoder); hs stays in input order.
    """
    B, T, _ = xs.shape
    H = params["w_hh"].shape[0]
    carry = zeros(B, H) if carry is None else carry
    mask = jnp.ones((B, T), xs.dtype) if mask is None else mask.astype(xs.dtype)

    def step(carry, inputs):
        x, m = inputs
        h, c = cell(params, carry, x)
        keep = m[:, None] > 0
        h, c = jnp.where(keep, h, carry[0]), jnp.where(keep, c, carry[1])
        return (h, c), h * m[:, None]

    carry, hs = jax.lax.scan(step, carry, (xs.swapaxes(0, 1), mask.T), reverse=reverse)
    return carry, hs.swapaxes(0, 1)


def bidirectional(forward: dict, backward: dict, xs: jax.Array, mask: jax.Array | None = None):
    """Bahdanau et al. 2015 §3.2: annotations ``h_j = [h→_j; h←_j]`` ``[B, T, 2H]``; returns (annotations,
    final forward carry, final backward carry — the state after reading the first token)."""
    fwd, hf = scan(forward, xs, mask=mask)
    bwd, hb = scan(backward, xs, mask=mask, reverse=True)
    return jnp.concatenate([hf, hb], axis=-1), fwd, bwd
