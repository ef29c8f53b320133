"""Compose an alignment stage with parallel/: the same mesh, logical-axis rules and ZeRO tables as
pretraining (``train.setup.build``), extended to the scalar head, for the trainable state and for the
frozen models beside it (the reference and the reward model are laid out by the same rules).

``AlignSetup.jit(fn)`` compiles any pure function of (state | params, batch) under the mesh with the
state's shardings pinned on output, so a step on 8 devices is the step on one, laid out.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

import parallel
from parallel import precision
from lineage_jax.align import feedback, heads
from lineage_jax.config import Config
from lineage_jax.optim import make_optimizer
from lineage_jax.train import setup as train_setup
from lineage_jax.train.state import TrainState
from lineage_jax.train.step import decay_mask


@dataclasses.dataclass
class AlignSetup:
    base: train_setup.Setup       # mesh, strategy, model, logical specs of the language model
    with_head: bool               # the trainable params are {"lm", "head"} (reward model, PPO's value head)
    tx: optax.GradientTransformation
    specs: Any                    # logical PartitionSpecs of the trainable params
    shardings: dict               # table name -> NamedSharding pytree of the trainable params
    state_sharding: TrainState
    judge: int = 0                # > 0: the trainable params are {"lm", "heads"}, a CAI judge with this many principles

    @property
    def model(self):
        return self.base.model

    @property
    def mesh(self):
        return self.base.mesh

    def context(self):
        return self.base.context()

    def lm_sharding(self) -> Any:
        """Shardings at rest of a language model's params (a frozen reference)."""
        return self.shardings["params"]["lm"] if self.with_head or self.judge else self.shardings["params"]

    def head_sharding(self) -> Any:
        """Shardings at rest of a {"lm", "head"} tree (a frozen reward model)."""
        return {"lm": self.lm_sharding(),
                "head": parallel.logical_to_sharding(heads.head_specs(), self.mesh, self.base.strategy.params)}

    def put_batch(self, batch: dict) -> dict:
        """Host arrays -> device arrays split over the batch axes (leading dimension)."""
        rules = self.base.strategy.compute
        out = {}
        for k, v in batch.items():
            v = np.asarray(v)
            spec = parallel.spec_for(("batch",) + (None,) * (v.ndim - 1), rules, k)
            out[k] = jax.device_put(v, NamedSharding(self.mesh, spec))
        return out

    def init_state(self, params) -> TrainState:
        """A fresh state around ``params`` (host or device arrays), laid out by the strategy."""
        params = jax.device_put(params, self.shardings["params"])
        opt = jax.jit(self.tx.init, out_shardings=self.state_sharding.opt_state)(params)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt,
                          loss_scale=jax.device_put(precision.loss_scale_for("fp32", 1.0),
                                                    self.state_sharding.loss_scale))

    def abstract_state(self) -> TrainState:
        abstract = jax.eval_shape(self.init_state_shapes)
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract,
                            self.state_sharding)

    def init_state_shapes(self) -> TrainState:
        params = self.abstract_params()
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params),
                          loss_scale=precision.loss_scale_for("fp32", 1.0))

    def abstract_params(self):
        lm = jax.eval_shape(lambda: nn.unbox(self.model.init(jax.random.key(0), jnp.zeros(
            (1, self.base.cfg.model.context), jnp.int32))["params"]))
        if self.judge:
            return {"lm": lm, "heads": jax.eval_shape(lambda: feedback.init_judge(
                jax.random.key(0), {}, self.base.cfg.model.width, self.judge)["heads"])}
        if not self.with_head:
            return lm
        return {"lm": lm, "head": jax.eval_shape(lambda: heads.init_head(jax.random.key(0), self.base.cfg.model.width))}

    def jit_step(self, step: Callable) -> Callable:
        """``step(state, batch) -> (state, metrics)`` jitted with the state's layout pinned (donated)."""
        return train_setup.jit_state_step(step, self.mesh, self.state_sharding, self.context)

    def jit(self, fn: Callable, out_shardings=None) -> Callable:
        """Any other pure function (scoring, log-probabilities) compiled under the mesh and rules."""
        jitted = jax.jit(fn, out_shardings=out_shardings)

        def run(*args):
            with self.context():
                return jitted(*args)
        return run


def build(cfg: Config, *, with_head: bool, devices=None, judge: int = 0) -> AlignSetup:
    """The mesh and rules of ``cfg`` (its ``mesh`` and ``parallel`` sections, checked as pretraining checks
    them) around a language model, with a scalar head when ``with_head``, or a CAI judge's ``judge``
    principle heads."""
    base = train_setup.build(cfg, compile_steps=False, devices=devices)
    specs = {"lm": base.logical_specs, "head": heads.head_specs()} if with_head else base.logical_specs
    if judge:
        specs = {"lm": base.logical_specs, "heads": feedback.judge_specs()}
    tx = make_optimizer(cfg.optim, cfg.train.steps, decay_mask)
    shardings = {name: parallel.logical_to_sharding(specs, base.mesh, table)
                 for name, table in base.strategy.tables().items()}
    replicated = NamedSharding(base.mesh, P())
    setup = AlignSetup(base, with_head, tx, specs, shardings, None, judge)
    abstract = setup.abstract_params()
    opt_sharding = optax.tree_map_params(tx, lambda _, sh: sh, jax.eval_shape(tx.init, abstract),
                                         shardings["opt_state"], transform_non_params=lambda _: replicated)
    setup.state_sharding = TrainState(step=replicated, params=shardings["params"], opt_state=opt_sharding,
                                      loss_scale=jax.tree.map(lambda _: replicated,
                                                              precision.loss_scale_for("fp32", 1.0)))
    return setup
