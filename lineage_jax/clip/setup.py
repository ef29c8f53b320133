"""Lay CLIP out on a mesh with the project's rules: a named strategy of ``parallel.strategies``
(``DP``, ``ZeRO-1/2/3``, ``TP2×DP``, …; ``FSDP`` is ZeRO-3) turns the towers' logical axis names into
shardings for the parameters, the optimiser state and the batch, exactly as ``train.setup`` does for
the language models (the parameters at rest in the ``params`` table, used in the ``compute`` table).

``build`` checks the batch and every parameter dimension against the mesh before anything compiles;
``ClipSetup.jit_step`` compiles the pure step with the state's layout pinned on output.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

import parallel
from parallel.strategies import NAMED, strategy_named
from lineage_jax.clip.model import CLIP, CLIPConfig, init_params
from lineage_jax.clip.train import ClipState
from lineage_jax.config.errors import ConfigError
from lineage_jax.nn import collective_hooks
from lineage_jax.train.setup import jit_state_step

ALIASES = {"FSDP": "ZeRO-3", "none": "DP"}


def strategy_names() -> list[str]:
    return sorted(NAMED) + sorted(ALIASES)


@dataclasses.dataclass
class ClipSetup:
    model: CLIP
    tx: optax.GradientTransformation
    mesh: jax.sharding.Mesh
    strategy: parallel.Strategy
    specs: Any                 # logical PartitionSpecs of the params
    state_sharding: ClipState
    batch_sharding: dict

    @contextlib.contextmanager
    def context(self):
        """Mesh + compute rules while tracing; each parameter read at rest, used in compute layout."""
        at_rest = lambda w, axes: nn.with_logical_constraint(w, axes, rules=self.strategy.params)  # noqa: E731
        with jax.set_mesh(self.mesh), parallel.axis_rules(self.strategy.compute), collective_hooks(param=at_rest):
            yield

    def init_state(self, key: jax.Array, params=None) -> ClipState:
        """A fresh state (parameters from ``key``, or the given ones), laid out by the strategy."""
        cfg = self.model.cfg

        def make(k, p):
            p = nn.unbox(init_params(cfg, k)) if p is None else p
            return ClipState(jnp.zeros((), jnp.int32), p, self.tx.init(p))
        with self.context():
            return jax.jit(make, out_shardings=self.state_sharding)(key, params)

    def abstract_state(self) -> ClipState:
        shapes = jax.eval_shape(lambda: ClipState(jnp.zeros((), jnp.int32), self._abstract_params(),
                                                  self.tx.init(self._abstract_params())))
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes,
                            self.state_sharding)

    def _abstract_params(self):
        return nn.unbox(jax.eval_shape(lambda: init_params(self.model.cfg, jax.random.key(0))))

    def put_batch(self, batch: dict) -> dict:
        return {k: jax.device_put(np.asarray(v), self.batch_sharding[k]) for k, v in batch.items()}

    def jit_step(self, step: Callable) -> Callable:
        """``step(state, batch) -> (state, metrics)`` jitted with the state's layout pinned (donated)."""
        return jit_state_step(step, self.mesh, self.state_sharding, self.context)


def build(cfg: CLIPConfig, tx: optax.GradientTransformation, *, strategy: str = "DP", batch_size: int,
          devices=None) -> ClipSetup:
    """The mesh of ``strategy`` over ``devices`` (default all), its rule tables, and the shardings of CLIP's
    state and batch; a batch or a parameter that does not split is one line before any compilation."""
    name = ALIASES.get(strategy, strategy)
    if name not in NAMED:
        raise ConfigError(f"strategy={strategy!r}: allowed {', '.join(strategy_names())}")
    devices = list(jax.devices() if devices is None else devices)
    shape, strat = strategy_named(name, len(devices))
    mesh = parallel.make_mesh(shape, devices)
    parallel.check_batch(batch_size, mesh, strat.compute, what=f"batch_size ({batch_size})")
    model = CLIP(cfg)
    boxed = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    specs = nn.get_partition_spec(boxed)
    abstract = nn.unbox(boxed)
    for table in strat.tables().values():
        parallel.check_divisible(abstract, specs, mesh, table)
    shardings = {k: parallel.logical_to_sharding(specs, mesh, t) for k, t in strat.tables().items()}
    replicated = NamedSharding(mesh, P())
    opt_sharding = optax.tree_map_params(tx, lambda _, sh: sh, jax.eval_shape(tx.init, abstract),
                                         shardings["opt_state"], transform_non_params=lambda _: replicated)
    state_sharding = ClipState(replicated, shardings["params"], opt_sharding)
    spec = lambda nd: NamedSharding(mesh, parallel.spec_for(("batch",) + (None,) * (nd - 1), strat.compute))  # noqa: E731
    return ClipSetup(model, tx, mesh, strat, specs, state_sharding, {"image": spec(4), "tokens": spec(2)})
