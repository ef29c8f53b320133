"""``validate``: each section's own checks, then the checks that relate sections, all in one place.

Plain Python, before JAX starts or anything compiles. What needs the devices (the batch over the
data-parallel devices, sizes over a ``-1`` axis, parameter dims over the mesh) is checked by
``lineage_jax/train/setup.py`` once the mesh exists.
"""
from __future__ import annotations

import dataclasses

from lineage_jax.config.errors import ConfigError, divisors
from lineage_jax.config.sections import Config


def validate(cfg: Config) -> None:
    """ConfigError (one line) for the first problem: a section's own, then one across sections."""
    cfg.validate()
    cross_section(cfg)


def cross_section(cfg: Config) -> None:
    """The checks that relate two sections; each section is already valid by itself."""
    m, t, p = cfg.model, cfg.train, cfg.parallel
    if cfg.optim.warmup_steps < 0:   # more than train.steps is clamped to it (optim.make_schedule)
        raise ConfigError(f"optim.warmup_steps={cfg.optim.warmup_steps}: must be >= 0")
    if cfg.data.prepared_dir:
        meta = cfg.data.prepared_meta()
        if meta["seq_len"] != m.context:
            raise ConfigError(f"data.prepared_dir was packed at --seq-len {meta['seq_len']}: "
                              f"set model.context={meta['seq_len']}")
        if meta.get("vocab_size", 0) > m.vocab_size:
            raise ConfigError(f"data.prepared_dir was tokenized with a vocabulary of {meta['vocab_size']}: "
                              f"set model.vocab_size >= {meta['vocab_size']}")
    for c in cfg.data.mixture if cfg.data.mixture_prepared() else ():
        meta = dataclasses.replace(cfg.data, mixture=(), prepared_dir=c.name).prepared_meta()
        if meta["seq_len"] != m.context:
            raise ConfigError(f"data.mixture {c.name} was packed at --seq-len {meta['seq_len']}: "
                              f"set model.context={meta['seq_len']} (every component must match it)")
        if meta.get("vocab_size", 0) > m.vocab_size:
            raise ConfigError(f"data.mixture {c.name} was tokenized with a vocabulary of {meta['vocab_size']}: "
                              f"set model.vocab_size >= {meta['vocab_size']}")
    expert = cfg.mesh.expert
    if expert > 1 or expert == -1:
        if not m.moe_every:
            raise ConfigError(f"mesh.expert={expert}: expert parallelism needs MoE layers (model.moe_every > 0)")
        if m.moe_backend != "capacity":
            raise ConfigError(f"mesh.expert={expert}: expert parallelism needs model.moe_backend=capacity "
                              f"(fixed-size buffers for the all-to-all), not {m.moe_backend}")
        if expert > 1 and m.experts % expert:
            raise ConfigError(f"mesh.expert={expert} does not divide model.experts={m.experts}; "
                              f"allowed: {divisors(m.experts)}")
    if m.moe_every and p.sequence_parallel:
        raise ConfigError("parallel.sequence_parallel=true with MoE layers is not supported (each sequence is "
                          "one routing group); set model.moe_every=0 or parallel.sequence_parallel=false")
    if p.form == "shard_map" and t.nan_policy == "skip":
        raise ConfigError("train.nan_policy=skip is implemented for parallel.form=gspmd; with shard_map use "
                          "train.nan_policy=stop (or parallel.precision=fp16, whose loss scaling skips such steps)")
    if p.form == "shard_map" and m.dropout > 0:
        raise ConfigError("parallel.form=shard_map does not support model.dropout > 0 yet (each device would "
                          "draw the same mask for its shard); use parallel.form=gspmd or model.dropout=0")
    if p.pipeline_stages > 1:
        pipeline_checks(cfg)


def pipeline_checks(cfg: Config) -> None:
    """What the pipeline executor (``lineage_jax/train/pipeline.py``) runs: a GPT-2 (dense or MoE) or
    dense Llama scanned stack, split into ``pipeline_stages × virtual_stages`` equal chunks of whole
    scanned units (a block, or with MoE a group of ``moe_every`` blocks), one microbatch per op."""
    m, t, p = cfg.model, cfg.train, cfg.parallel
    P, v = p.pipeline_stages, p.virtual_stages
    unit = m.moe_every if m.moe_every and m.arch == "gpt2" else 1
    if m.layers % (P * v * unit):
        what = f" (model.moe_every={unit}: units of {unit} blocks)" if unit > 1 else ""
        raise ConfigError(f"model.layers={m.layers} does not split into parallel.pipeline_stages × "
                          f"parallel.virtual_stages = {P} × {v} = {P * v} equal chunks{what}; "
                          f"use a multiple of {P * v * unit}")
    refused = [(m.arch == "llama" and bool(m.moe_every), "model.arch=llama with model.moe_every=1 (Mixtral "
                "balances its router over the whole batch, so microbatches would change its loss)",
                "model.moe_every=0, or model.arch=gpt2 with MoE groups"),
               (m.dropout > 0, f"model.dropout={m.dropout}", "model.dropout=0"),
               (not m.scan_layers, "model.scan_layers=false", "model.scan_layers=true"),
               (t.grad_accum != 1, f"train.grad_accum={t.grad_accum}",
                "train.grad_accum=1 (parallel.microbatches splits the batch)"),
               (t.nan_policy == "skip", "train.nan_policy=skip", "train.nan_policy=stop")]
    for bad, what, use in refused:
        if bad:
            raise ConfigError(f"parallel.pipeline_stages={P}: the pipeline does not run {what} yet; use {use}")
    if t.batch_size % p.microbatches:
        raise ConfigError(f"train.batch_size={t.batch_size} does not split into parallel.microbatches="
                          f"{p.microbatches}; allowed: {divisors(t.batch_size)}")
