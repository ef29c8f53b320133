"""LoRA / QLoRA fine-tuning composed from the ordinary pieces: ``build`` (mesh, strategy, logical specs),
``make_train_step`` (loss, accumulation, loss scale) and ``adapt`` (the parameter transform).

The trained state is the adapters alone — ``TrainState(params=adapters, opt_state=tx.init(adapters))`` —
so the optimiser holds state for adapter leaves only, checkpoints are a few MB and ``train.loop``
resumes them unchanged. The frozen base (plain, or with NF4/int8 kernels) is an *argument* of the
compiled step, never a constant folded into it and never differentiated. Two forms of the adapted forward
(``mode``): ``"onthefly"`` (the default; ``adapt.onthefly``) adds ((x·A)·B)·α/r at each adapted ``Dense``
call over the frozen kernel, so no merged kernel and no kernel cotangent is ever a temporary of the step;
``"merged"`` runs ``loss(adapt.lora.merge(stop_gradient(base), adapters))``, which builds W + ΔW for every
adapted kernel of every layer (more temporaries than full fine-tuning; kept as the reference form).
``Setup.train_step`` / ``eval_step`` are the compiled programs with the base bound, so the loop calls them
as it calls a full run's.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

import parallel
from parallel import precision
from lineage_jax.adapt import lora, onthefly, quant
from lineage_jax.config import Config, ConfigError
from lineage_jax.optim import make_optimizer
from lineage_jax.train.setup import Setup, build
from lineage_jax.train.state import TrainState
from lineage_jax.train.step import make_eval_step, make_train_step


class Adapted:
    """Duck-types a model's ``apply`` for the step: parameters are adapters over the bound frozen base (no
    gradient reaches it), applied on the fly at each adapted ``Dense`` (``mode="onthefly"``) or merged into
    the base's kernels before the base model's own ``apply`` (``mode="merged"``)."""

    def __init__(self, model, base, cfg: lora.LoraConfig, mode: str = "onthefly"):
        check_mode(mode)
        self.model, self.base, self.cfg, self.mode = model, base, cfg, mode

    def apply(self, variables, *args, **kw):
        if self.mode == "onthefly":
            return onthefly.apply(self.model, self.base, variables["params"], self.cfg.scale, *args, **kw)
        dtype = jnp.dtype(self.model.cfg.param_dtype)
        params = lora.merge(jax.lax.stop_gradient(self.base), variables["params"], self.cfg, dtype)
        return self.model.apply({"params": params}, *args, **kw)


def check_mode(mode: str) -> None:
    if mode not in onthefly.MODES:
        raise ConfigError(f"lora mode '{mode}': allowed {', '.join(onthefly.MODES)}")


def quantize_base(params, specs, cfg: lora.LoraConfig, kind: str | None):
    """The frozen base with every adapted kernel quantised (``kind`` nf4/int8; None: unchanged)."""
    if not kind or kind == "none":
        return params
    return quant.quantize_tree(params, lambda path, _: cfg.matches(path), kind)


def base_specs(base, specs):
    """Logical specs of a (partly quantised) base: a quantised kernel's arrays follow its kernel."""
    def fn(x, s):
        return quant.logical_specs(x, tuple(s)) if quant.is_quantized(x) else s
    return jax.tree.map(fn, base, specs, is_leaf=lambda x: quant.is_quantized(x) or isinstance(x, P))


@dataclasses.dataclass
class Finetune:
    setup: Setup                 # train_step / eval_step take (state, batch) with the base bound
    lora: lora.LoraConfig
    base: Any                    # the frozen base on the mesh (quantised kernels as ``Quantized``)
    base_sharding: Any
    step_fn: Any = None          # compiled (state, batch, base) -> (state, metrics)
    offload: bool = False        # optimiser state at rest in host memory (``memory_kind="pinned_host"``)
    device_opt_sharding: Any = None
    mode: str = "onthefly"       # the adapted forward: "onthefly" (x·W + (x·A)·B·α/r) or "merged" (W + ΔW)


def host_offload_supported(devices=None) -> bool:
    """Whether the devices have a ``pinned_host`` memory to keep state in (GPU, TPU; CPU lists one too,
    but there it is the same RAM: the option runs, the saving is nil)."""
    dev = (devices or jax.devices())[0]
    return "pinned_host" in {m.kind for m in dev.addressable_memories()}


def build_finetune(cfg: Config, lcfg: lora.LoraConfig, base_params, *, quant_kind: str | None = None,
                   devices=None, compile_steps: bool = True, offload_opt_state: bool = False,
                   mode: str = "onthefly", compile_eval: bool = True) -> Finetune:
    """The finetune Setup for ``cfg`` (the base's model config; train/optim/mesh as configured) and the
    base's parameters (host or device arrays, unquantised). Adapter shardings follow their kernels.

    ``offload_opt_state``: QLoRA's paged optimiser, the JAX way — the Adam moments rest in host memory
    (``memory_kind="pinned_host"``) between steps and are brought to the device inside the step, only
    for the update; a backend without host memory kinds is refused in one line."""
    setup = build(cfg, compile_steps=False, devices=devices)
    mesh, strategy = setup.mesh, setup.strategy
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), base_params)
    ad_specs = lora.logical_specs(abstract, setup.logical_specs, lcfg)
    ad_abstract = jax.eval_shape(lambda: lora.init(jax.random.key(0), abstract, setup.logical_specs, lcfg))
    for table in strategy.tables().values():
        parallel.check_divisible(ad_abstract, ad_specs, mesh, table)

    base = quantize_base(base_params, setup.logical_specs, lcfg, quant_kind)
    b_specs = base_specs(base, setup.logical_specs)
    base_sharding = parallel.logical_to_sharding(b_specs, mesh, strategy.params)
    base = put_global(base, base_sharding)

    tx = make_optimizer(cfg.optim, cfg.train.steps, None)     # weight decay on every adapter (AdamW)
    replicated = NamedSharding(mesh, P())
    shardings = {name: parallel.logical_to_sharding(ad_specs, mesh, table) for name, table in strategy.tables().items()}
    opt_sharding = optax.tree_map_params(tx, lambda _, sh: sh, jax.eval_shape(tx.init, ad_abstract),
                                         shardings["opt_state"], transform_non_params=lambda _: replicated)
    ls = precision.loss_scale_for(cfg.parallel.precision, cfg.parallel.loss_scale_init)
    device_opt_sharding = opt_sharding
    if offload_opt_state:
        if not host_offload_supported(devices):
            raise parallel.MeshError("offload_opt_state: this backend has no pinned_host memory kind")
        opt_sharding = jax.tree.map(lambda sh: sh.with_memory_kind("pinned_host"), opt_sharding)
    state_sharding = TrainState(step=replicated, params=shardings["params"], opt_state=opt_sharding,
                                loss_scale=jax.tree.map(lambda _: replicated, ls))

    def init_state(key):
        ad = lora.init(key, abstract, setup.logical_specs, lcfg, jnp.dtype(cfg.model.param_dtype))
        return TrainState(step=jnp.zeros((), jnp.int32), params=ad, opt_state=tx.init(ad), loss_scale=ls)

    ft_setup = dataclasses.replace(setup, tx=tx, logical_specs=ad_specs, state_sharding=state_sharding,
                                   grad_sharding=shardings["grads"],
                                   init_state=jax.jit(init_state, out_shardings=state_sharding))
    ft = Finetune(ft_setup, lcfg, base, base_sharding, offload=offload_opt_state,
                  device_opt_sharding=device_opt_sharding, mode=mode)
    if compile_steps:
        compile_finetune(ft, compile_eval=compile_eval)
    return ft


def put_global(tree, shardings):
    """``jax.device_put(tree, shardings)``; but where a sharding spans other processes' devices too (a
    multi-process run), each leaf is assembled from this process's host copy, shard by shard
    (``jax.make_array_from_callback``): ``device_put`` refuses an array committed to one local device
    there. Every process holds the same base (it loaded the same checkpoint)."""
    if all(sh.is_fully_addressable for sh in jax.tree.leaves(shardings)):
        return jax.device_put(tree, shardings)

    def one(x, sh):
        host = np.asarray(jax.device_get(x))
        return jax.make_array_from_callback(host.shape, sh, lambda index: host[index])
    return jax.tree.map(one, tree, shardings)


def compile_finetune(ft: Finetune, compile_eval: bool = True) -> None:
    """AOT-compile (state, batch, base) -> (state, metrics) and (``compile_eval``) the eval step; bind the base."""
    s, cfg = ft.setup, ft.setup.cfg
    if cfg.parallel.form == "shard_map":
        raise parallel.MeshError("parallel.form=shard_map: LoRA fine-tuning runs in the GSPMD form; use "
                                 "parallel.form=gspmd")

    def step(state, batch, base):
        model = Adapted(s.model, base, ft.lora, ft.mode)
        if ft.offload:   # host -> device for the update only
            state = state.replace(opt_state=jax.device_put(state.opt_state, ft.device_opt_sharding))
        state, metrics = make_train_step(model, s.tx, seed=cfg.train.seed, grad_accum=cfg.train.grad_accum,
                                         dropout=cfg.model.dropout > 0, schedule=s.schedule,
                                         grad_sharding=s.grad_sharding, loss_scale_period=cfg.parallel.loss_scale_period,
                                         skip_nonfinite=cfg.train.nan_policy == "skip")(state, batch)
        if ft.offload:   # and back to host memory
            state = state.replace(opt_state=jax.device_put(state.opt_state, s.state_sharding.opt_state))
        return state, metrics

    def evaluate(params, batch, base):
        return make_eval_step(Adapted(s.model, base, ft.lora, ft.mode))(params, batch)

    replicated = NamedSharding(s.mesh, P())
    abstract_base = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), ft.base,
                                 ft.base_sharding)
    t0 = time.perf_counter()
    with s.context():
        state, batch = s.abstract_state(), s.abstract_batch()
        ft.step_fn = jax.jit(step, out_shardings=(s.state_sharding, replicated), donate_argnums=0).lower(
            state, batch, abstract_base).compile()
        eval_fn = jax.jit(evaluate, out_shardings=replicated).lower(state.params, batch, abstract_base).compile() \
            if compile_eval else None
    s.train_step = functools.partial(_bound, ft.step_fn, ft)
    s.eval_step = functools.partial(_bound, eval_fn, ft) if compile_eval else None
    s.compile_seconds = time.perf_counter() - t0


def _bound(fn, ft: Finetune, first, batch):
    return fn(first, batch, ft.base)
