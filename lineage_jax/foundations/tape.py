"""A tiny reverse-mode automatic differentiation, written here (Linnainmaa 1970; Rumelhart et al. 1986).

Every value computed from a ``Var`` records its parents and, for each parent, the vector-Jacobian product
that carries the output's gradient back to it (the "tape", a graph of primitives). ``grad`` orders the graph
topologically (each node after everything it was computed from) and walks it once in reverse, adding each
node's contributions into its parents' gradients:

    ḡ_parent += vjp(ḡ_node)        for the nodes in reverse topological order, ḡ_output = 1

so one backward sweep costs a small multiple of the forward (the cheap-gradient principle). Values are
numpy arrays (float64 by default), scalars are 0-d arrays; broadcasting is undone in the vjp by summing
over the broadcast axes. Primitives: + − × ÷, @, neg, exp, log, tanh, sigmoid, relu, sum, mean, and
``softmax_cross_entropy`` built from them.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def _unbroadcast(g: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum ``g`` over the axes broadcasting added or stretched, back to ``shape``."""
    while g.ndim > len(shape):
        g = g.sum(0)
    for i, n in enumerate(shape):
        if n == 1 and g.shape[i] != 1:
            g = g.sum(i, keepdims=True)
    return g


class Var:
    """A node of the graph: its value, its parents with their vjps, and (after ``grad``) its gradient."""
    __slots__ = ("value", "parents", "grad")
    __array_priority__ = 100   # numpy defers to Var's operators (np.ndarray + Var -> Var.__radd__)

    def __init__(self, value, parents: Sequence[tuple["Var", Callable]] = ()):
        self.value = np.asarray(value, dtype=np.float64 if np.asarray(value).dtype.kind in "iub" else None)
        self.parents = tuple(parents)
        self.grad = None

    @property
    def shape(self):
        return self.value.shape

    # the primitives, each with its vjp
    def __add__(self, other):
        o = lift(other)
        return Var(self.value + o.value, [(self, lambda g: _unbroadcast(g, self.shape)),
                                          (o, lambda g: _unbroadcast(g, o.shape))])

    def __mul__(self, other):
        o = lift(other)
        return Var(self.value * o.value, [(self, lambda g: _unbroadcast(g * o.value, self.shape)),
                                          (o, lambda g: _unbroadcast(g * self.value, o.shape))])

    def __truediv__(self, other):
        o = lift(other)
        return Var(self.value / o.value, [(self, lambda g: _unbroadcast(g / o.value, self.shape)),
                                          (o, lambda g: _unbroadcast(-g * self.value / o.value ** 2, o.shape))])

    def __matmul__(self, other):
        o = lift(other)   # [n, k] @ [k, m]; a 1-D operand is a row (left) or a column (right), as in numpy
        a, b = self.value, o.value
        a2, b2 = (a[None] if a.ndim == 1 else a), (b[:, None] if b.ndim == 1 else b)
        if a2.ndim != 2 or b2.ndim != 2:
            raise ValueError(f"tape matmul: 1-D or 2-D operands only, not {a.shape} @ {b.shape}")
        as2 = lambda g: np.reshape(g, (a2.shape[0], b2.shape[1]))
        return Var(a @ b, [(self, lambda g: (as2(g) @ b2.T).reshape(a.shape)),
                           (o, lambda g: (a2.T @ as2(g)).reshape(b.shape))])

    def __neg__(self):
        return Var(-self.value, [(self, lambda g: -g)])

    def __sub__(self, other):
        return self + (-lift(other))

    __radd__ = __add__
    __rmul__ = __mul__

    def __rsub__(self, other):
        return lift(other) - self

    def __rtruediv__(self, other):
        return lift(other) / self

    def __rmatmul__(self, other):
        return lift(other) @ self

    def __repr__(self):
        return f"Var({self.value!r})"


def lift(x) -> Var:
    """A constant (no parents) unless it is already a Var."""
    return x if isinstance(x, Var) else Var(x)


def exp(x: Var) -> Var:
    y = np.exp(x.value)
    return Var(y, [(x, lambda g: g * y)])


def log(x: Var) -> Var:
    return Var(np.log(x.value), [(x, lambda g: g / x.value)])


def tanh(x: Var) -> Var:
    y = np.tanh(x.value)
    return Var(y, [(x, lambda g: g * (1.0 - y ** 2))])


def sigmoid(x: Var) -> Var:
    y = 1.0 / (1.0 + np.exp(-x.value))
    return Var(y, [(x, lambda g: g * y * (1.0 - y))])


def relu(x: Var) -> Var:
    return Var(np.maximum(x.value, 0.0), [(x, lambda g: g * (x.value > 0))])


def linear(x: Var) -> Var:
    return x


def sum(x: Var, axis: int | None = None, keepdims: bool = False) -> Var:   # noqa: A001 (the primitive's name)
    def vjp(g):
        if axis is not None and not keepdims:
            g = np.expand_dims(g, axis)
        return np.broadcast_to(g, x.shape)
    return Var(x.value.sum(axis=axis, keepdims=keepdims), [(x, vjp)])


def mean(x: Var, axis: int | None = None) -> Var:
    n = x.value.size if axis is None else x.shape[axis]
    return sum(x, axis) / float(n)


def softmax_cross_entropy(logits: Var, y: np.ndarray) -> Var:
    """mean_b [ logsumexp(z_b) − z_b,y ], from primitives; the max shift is a constant (no gradient needed:
    logsumexp(z − c) + c is the same function of z for any c)."""
    c = logits.value.max(axis=-1, keepdims=True)
    shifted = logits - c
    lse = log(sum(exp(shifted), axis=-1, keepdims=True))
    onehot = np.eye(logits.shape[-1])[np.asarray(y)]
    return mean(sum(lse, axis=-1) - sum(shifted * onehot, axis=-1))


def topological_order(root: Var) -> list[Var]:
    """Every node that ``root`` depends on, each after all of its parents (iterative DFS, post-order)."""
    order, seen, stack = [], set(), [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        stack.extend((p, False) for p, _ in node.parents if id(p) not in seen)
    return order


def backward(root: Var) -> None:
    """Fill ``.grad`` of every node ``root`` depends on with ∂root/∂node (root must be a scalar)."""
    if root.value.size != 1:
        raise ValueError(f"backward: the output must be a scalar, not shape {root.shape}")
    order = topological_order(root)
    for node in order:
        node.grad = np.zeros_like(node.value)
    root.grad = np.ones_like(root.value)
    for node in reversed(order):
        for parent, vjp in node.parents:
            parent.grad = parent.grad + vjp(node.grad)


def grad(f: Callable[..., Var], *args) -> tuple[float, list]:
    """(f(*args), [∂f/∂arg …]); each arg is an array or a (nested) list/dict of arrays."""
    def wrap(tree):
        if isinstance(tree, dict):
            return {k: wrap(v) for k, v in tree.items()}
        if isinstance(tree, (list, tuple)):
            return type(tree)(wrap(v) for v in tree)
        return Var(np.array(tree, dtype=np.float64))

    def grads_of(tree):
        if isinstance(tree, dict):
            return {k: grads_of(v) for k, v in tree.items()}
        if isinstance(tree, (list, tuple)):
            return type(tree)(grads_of(v) for v in tree)
        return tree.grad if tree.grad is not None else np.zeros_like(tree.value)

    leaves = [wrap(a) for a in args]
    out = f(*leaves)
    backward(out)
    return float(out.value), [grads_of(t) for t in leaves]


ACTIVATIONS = {"tanh": tanh, "sigmoid": sigmoid, "relu": relu, "linear": linear}


def mlp_loss(params, x, y, act: str = "tanh") -> Var:
    """The MLP of ``foundations.mlp`` (same parameters, same cross-entropy) on the tape."""
    f, h = ACTIVATIONS[act], lift(x)
    for l, p in enumerate(params):
        h = h @ p["w"] + p["b"]
        if l < len(params) - 1:
            h = f(h)
    return softmax_cross_entropy(h, y)
