"""A trained run, loaded for inference only: its config, model, parameters and tokenizer.

Only the parameters are read from the checkpoint (``runs.checkpoint.restore_params``); no
optimizer, train state or mesh is built. The model computes in ``model.dtype`` as configured (a run
trained under ``parallel.precision`` bf16/fp16 keeps its float32 master weights and samples in
float32). A run trained with another tokenizer than the one now at ``data.tokenizer`` (its SHA-256
is recorded in ``run.json`` and in each checkpoint's meta) is refused in one line.
"""
from __future__ import annotations

from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp

from lineage_jax import models
from lineage_jax.adapt import lora, quant, store
from lineage_jax.config import Config, load_config
from lineage_jax.runs import checkpoint as ckpt, rundir
from lineage_jax.tokenize import Tokenizer, get_tokenizer

__all__ = ["load_for_inference"]


def _latest(run_dir: Path) -> None:
    """Nothing if ``run_dir`` holds a checkpoint, else one line saying what is missing: the directory, its config, a checkpoint."""
    hint = f"train first (lineage train run_dir={run_dir}) or pass the run_dir of a trained run"
    if not run_dir.is_dir():
        raise ckpt.CheckpointError(f"run_dir {run_dir}: no such directory; {hint}")
    if not (run_dir / "config.yaml").is_file():
        raise ckpt.CheckpointError(f"run_dir {run_dir}: no config.yaml there (not a run directory); {hint}")
    step = ckpt.latest_step(run_dir)
    if step is None:
        raise ckpt.CheckpointError(f"no checkpoint in {run_dir}/checkpoints; {hint}")


def load_for_inference(run_dir: str | Path) -> tuple[Config, nn.Module, object, Tokenizer]:
    """(config, model, params, tokenizer) of the newest good checkpoint in ``run_dir`` (a damaged newer one
    is named on stderr and left in place for the training run to set aside), params on one device."""
    run_dir = Path(run_dir)
    _latest(run_dir)
    if store.is_adapted(run_dir):
        return load_adapted(run_dir)[:4]
    cfg = load_config(str(run_dir / "config.yaml"), [])
    tokenizer = get_tokenizer(cfg.data.tokenizer)
    _same_tokenizer(run_dir, rundir.read_record(run_dir).get("tokenizer"), cfg, tokenizer, "")
    model = models.build(cfg.model)
    dummy = jnp.zeros((1, cfg.model.context), jnp.int32)
    shapes = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), dummy)))["params"]
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])   # this process's (one of several: its own)
    abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=one), shapes)
    with ckpt.manager(run_dir, create=False, async_save=False) as mngr:
        step, params, meta = ckpt.restore_latest_good(mngr, abstract, params_only=True, move_bad=False)
    _same_tokenizer(run_dir, meta.get("tokenizer"), cfg, tokenizer, f"checkpoint step {step} ")
    return cfg, model, params, tokenizer


def _same_tokenizer(run_dir: Path, recorded: dict | None, cfg: Config, tokenizer: Tokenizer, what: str) -> None:
    """One line if the run was trained with a tokenizer other than ``data.tokenizer`` is now (a retrained
    tokenizer.json in the same place would decode the same ids as other text)."""
    problem = rundir.tokenizer_problem(recorded, cfg.data.tokenizer, tokenizer.fingerprint())
    if problem:
        raise rundir.RunDirError(f"run_dir {run_dir}: {what}{problem}; put back the tokenizer it was trained with")


def load_adapted(run_dir: Path):
    """A LoRA fine-tuning run (``adapt.store``): (config, model, merged params, tokenizer, adapters, record).
    The base comes from its own run directory; a QLoRA run's adapted kernels are quantised as in
    training, so the merged model is the one that was trained."""
    rec = store.read(run_dir)
    base_dir = rec.base_dir(run_dir)
    if not base_dir.is_dir():
        raise ckpt.CheckpointError(f"run_dir {run_dir}: its base {base_dir} (adapter.json) is gone; put it back")
    _, model, base, tokenizer = load_for_inference(base_dir)
    cfg = load_config(str(run_dir / "config.yaml"), [])
    dummy = jnp.zeros((1, model.cfg.context), jnp.int32)
    specs = nn.get_partition_spec(jax.eval_shape(lambda: model.init(jax.random.key(0), dummy)))["params"]
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])   # this process's (one of several: its own)
    shapes = jax.eval_shape(lambda: lora.init(jax.random.key(0), base, specs, rec.lora))
    abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=one), shapes)
    with ckpt.manager(run_dir, create=False, async_save=False) as mngr:
        step, adapters, meta = ckpt.restore_latest_good(mngr, abstract, params_only=True, move_bad=False)
    _same_tokenizer(run_dir, meta.get("tokenizer"), cfg, tokenizer, f"checkpoint step {step} ")
    if rec.quant != "none":
        base = quant.quantize_tree(base, lambda path, _: rec.lora.matches(path), rec.quant)
    params = lora.merge(base, adapters, rec.lora, jnp.dtype(model.cfg.param_dtype))
    return cfg, model, params, tokenizer, adapters, rec
