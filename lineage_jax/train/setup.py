"""Compose a model with parallel/: mesh, shardings, initial state and the compiled steps.

This is where the mesh-agnostic model meets the model-agnostic sharding rules: the model
supplies logical axis names, parallel/ turns them into shardings, and every step is
compiled ahead of time (so errors surface before training and compile time is measured).
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

import parallel
from parallel import distributed, precision
from lineage_jax.config import Config
from lineage_jax import models
from lineage_jax.models import GPT
from lineage_jax.nn import collective_hooks
from lineage_jax.optim import make_optimizer, make_schedule
from lineage_jax.train.explicit import make_explicit_train_step
from lineage_jax.train.pipeline import make_pipeline_train_step
from lineage_jax.train.state import TrainState
from lineage_jax.train.step import decay_mask, make_eval_step, make_train_step


@dataclasses.dataclass
class Setup:
    cfg: Config
    model: GPT  # or Llama: lineage_jax.models.build(cfg.model)
    tx: optax.GradientTransformation
    schedule: Callable
    mesh: jax.sharding.Mesh
    strategy: parallel.Strategy
    logical_specs: Any           # params pytree of logical PartitionSpecs
    state_sharding: TrainState   # NamedSharding per leaf, at rest
    grad_sharding: Any           # NamedSharding per parameter, as the optimizer receives gradients
    batch_sharding: NamedSharding
    init_state: Callable         # key -> TrainState (jitted, sharded)
    train_step: Any = None       # compiled train_step(state, batch)
    eval_step: Any = None        # compiled eval_step(params, batch)
    compile_seconds: float = 0.0

    @contextlib.contextmanager
    def context(self):
        """Mesh + logical rules: needed while tracing, so activation constraints resolve.

        Each parameter is read at rest (``params`` table) and then used in compute layout, so
        under ZeRO-3 the gather happens inside the layer scan, one layer at a time, and the
        gradient is laid back out sharded there too (its transpose), never accumulated whole.
        """
        at_rest = lambda w, axes: nn.with_logical_constraint(w, axes, rules=self.strategy.params)
        with jax.set_mesh(self.mesh), parallel.axis_rules(self.strategy.compute), collective_hooks(param=at_rest):
            yield

    def abstract_state(self) -> TrainState:
        shapes = jax.eval_shape(self.init_state, jax.random.key(0))
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes,
                            self.state_sharding)

    @property
    def packed(self) -> bool:
        """Batches carry segment ids, positions and loss weights (a prepared dataset, ``data.segment_mask``)."""
        return (bool(self.cfg.data.prepared_dir) or self.cfg.data.mixture_prepared()) and self.cfg.data.segment_mask

    def abstract_batch(self, batch_size: int | None = None) -> dict:
        b, T = batch_size or self.cfg.train.batch_size, self.cfg.model.context
        spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=self.batch_sharding)  # noqa: E731
        batch = {"tokens": spec((b, T + 1), jnp.int32)}
        if self.packed:
            batch.update(segment_ids=spec((b, T), jnp.int32), positions=spec((b, T), jnp.int32),
                         weights=spec((b, T), jnp.float32))
        return batch

    def process_rows(self, batch_size: int | None = None) -> tuple[int, int]:
        """The rows ``[lo, hi)`` of a global batch that this process's devices hold: all of them in a
        single-process run; with several processes, this process's contiguous block (``put_batch``)."""
        b = batch_size or self.cfg.train.batch_size
        return (0, b) if jax.process_count() == 1 else distributed.process_rows(self.batch_sharding, b)

    def put_batch(self, batch, batch_size: int | None = None) -> dict:
        """Host batch -> device arrays laid out over the batch axes: a token array [B, T+1], or a
        dict of them (``PackedSampler.batch_with_segments``). With several processes ``batch`` is
        this process's rows (``process_rows``) of a ``batch_size``-row global batch, assembled with
        ``jax.make_array_from_process_local_data``: no process ever holds another's rows."""
        batch = batch if isinstance(batch, dict) else {"tokens": batch}
        like = self.abstract_batch(batch_size or len(batch["tokens"]))
        if set(batch) != set(like):
            raise ValueError(f"batch has {sorted(batch)}; this setup compiled for {sorted(like)}")
        if jax.process_count() == 1:
            return {k: jax.device_put(jnp.asarray(v, like[k].dtype), self.batch_sharding) for k, v in batch.items()}
        return {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v, like[k].dtype),
                                                          like[k].shape) for k, v in batch.items()}


def build(cfg: Config, *, compile_steps: bool = True, devices=None, compile_eval: bool = True) -> Setup:
    """Everything a run needs, checked before anything compiles.

    ``config.validate`` has checked all that the config alone decides; the checks here need the
    devices: the batch over the data-parallel devices, the sequence over a (possibly ``-1``) tensor
    axis, every parameter dimension over the mesh axes its logical names map to.
    """
    devices = list(jax.devices() if devices is None else devices)
    stages = cfg.parallel.pipeline_stages   # the stage axis comes from the pipeline config, not mesh.*
    mesh_shape = parallel.resolve_mesh_shape({**dataclasses.asdict(cfg.mesh), "stage": stages}, len(devices))
    mesh = parallel.make_mesh(mesh_shape, devices)
    distributed.check_process_boundary(mesh)   # several processes: tensor/expert groups stay inside one
    strategy = parallel.strategy_for(mesh_shape, zero_stage=cfg.parallel.zero_stage,
                                     sequence_parallel=cfg.parallel.sequence_parallel)
    micro = cfg.train.batch_size // cfg.train.grad_accum
    parallel.check_batch(micro, mesh, strategy.compute,
                         what=f"train.batch_size/train.grad_accum ({cfg.train.batch_size}/{cfg.train.grad_accum})")
    if stages > 1:
        parallel.check_batch(cfg.train.batch_size // cfg.parallel.microbatches, mesh, strategy.compute,
                             what=f"train.batch_size/parallel.microbatches ({cfg.train.batch_size}/"
                                  f"{cfg.parallel.microbatches})")
    if cfg.parallel.sequence_parallel and cfg.model.context % mesh_shape["tensor"]:
        raise parallel.MeshError(f"model.context={cfg.model.context} does not split over mesh.tensor="
                                 f"{mesh_shape['tensor']} for sequence parallelism; use a multiple")

    policy = precision.policy_for(cfg.parallel.precision)
    if cfg.parallel.precision != "fp32":  # the policy names the dtypes; the model follows it
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(
            cfg.model, dtype=jnp.dtype(policy.compute_dtype).name, param_dtype=jnp.dtype(policy.param_dtype).name))
    model = models.build(cfg.model)
    dummy = jnp.zeros((1, cfg.model.context), jnp.int32)
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), dummy))
    logical_specs = nn.get_partition_spec(boxed)["params"]
    abstract_params = nn.unbox(boxed)["params"]
    for table in strategy.tables().values():
        parallel.check_divisible(abstract_params, logical_specs, mesh, table)

    schedule = make_schedule(cfg.optim, cfg.train.steps)
    tx = make_optimizer(cfg.optim, cfg.train.steps, decay_mask)
    replicated = NamedSharding(mesh, P())
    shardings = {name: parallel.logical_to_sharding(logical_specs, mesh, table)
                 for name, table in strategy.tables().items()}
    opt_sharding = optax.tree_map_params(tx, lambda _, sh: sh, jax.eval_shape(tx.init, abstract_params),
                                         shardings["opt_state"], transform_non_params=lambda _: replicated)
    loss_scale = precision.loss_scale_for(cfg.parallel.precision, cfg.parallel.loss_scale_init)
    state_sharding = TrainState(step=replicated, params=shardings["params"], opt_state=opt_sharding,
                                loss_scale=jax.tree.map(lambda _: replicated, loss_scale))
    batch_sharding = NamedSharding(mesh, parallel.spec_for(("batch", None), strategy.compute))

    def init_state(key):
        params = nn.unbox(model.init(key, dummy)["params"])
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          loss_scale=loss_scale)

    setup = Setup(cfg, model, tx, schedule, mesh, strategy, logical_specs, state_sharding, shardings["grads"],
                  batch_sharding, jax.jit(init_state, out_shardings=state_sharding))
    if compile_steps:
        compile_all(setup, compile_eval=compile_eval)
    return setup


def jit_state_step(step: Callable, mesh, state_sharding, context: Callable) -> Callable:
    """``step(state, batch) -> (state, metrics)`` jitted with the state donated and its layout pinned on
    output (metrics replicated), each call run under ``context()`` (the mesh and the rule tables): the
    steps of the chapters with their own loops (align, clip) compile here like ``compile_all``'s."""
    jitted = jax.jit(step, out_shardings=(state_sharding, NamedSharding(mesh, P())), donate_argnums=0)

    def run(state, batch):
        with context():
            return jitted(state, batch)
    return run


def compile_all(setup: Setup, compile_eval: bool = True) -> None:
    """AOT-compile train and eval steps for the configured shapes (``compile_eval=False``: the train
    step alone, for callers that never evaluate); record compile time."""
    cfg = setup.cfg
    step_fn = make_train_step(setup.model, setup.tx, seed=cfg.train.seed, grad_accum=cfg.train.grad_accum,
                              dropout=cfg.model.dropout > 0, schedule=setup.schedule,
                              grad_sharding=setup.grad_sharding, loss_scale_period=cfg.parallel.loss_scale_period,
                              skip_nonfinite=cfg.train.nan_policy == "skip")
    if cfg.parallel.form == "shard_map":   # the same step, every collective written out
        step_fn = make_explicit_train_step(setup)
    if cfg.parallel.pipeline_stages > 1:    # the explicit step, gradients by the pipeline schedule
        step_fn = make_pipeline_train_step(setup)
    replicated = NamedSharding(setup.mesh, P())
    t0 = time.perf_counter()
    with setup.context():
        state, batch = setup.abstract_state(), setup.abstract_batch()
        setup.train_step = jax.jit(step_fn, out_shardings=(setup.state_sharding, replicated),
                                   donate_argnums=0).lower(state, batch).compile()
        if compile_eval:
            setup.eval_step = jax.jit(make_eval_step(setup.model), out_shardings=replicated).lower(
                state.params, batch).compile()
    setup.compile_seconds = time.perf_counter() - t0
