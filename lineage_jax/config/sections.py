"""The training config's sections besides the model's, each checking its own fields.

A section's ``validate()`` looks only at itself; checks that relate two sections (batch vs mesh,
warmup vs steps, a prepared dataset vs the model) are in ``checks.py``.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from lineage_jax.config.errors import ConfigError, divisors, one_of, positive
from lineage_jax.config.models import ModelConfig

NAN_POLICIES = ("stop", "skip")

FORMS = ("gspmd", "shard_map")
PRECISIONS = ("fp32", "bf16", "fp16")
MESH_AXES = ("data", "fsdp", "expert", "tensor")
PIPELINE_SCHEDULES = ("gpipe", "1f1b", "circular")   # = parallel/pipeline/schedule.py's SCHEDULES


@dataclasses.dataclass(frozen=True)
class MixtureComponent:
    """One dataset of ``data.mixture`` (The Pile's Table 1): a prepared dataset directory or a TFDS
    dataset name, its sampling weight, and its epoch limit (0 = unlimited; ``lineage_jax/data/mixture.py``)."""
    name: str = ""
    weight: float = 1.0
    epochs: float = 0.0

    def is_prepared(self) -> bool:
        return (Path(self.name).expanduser() / "prepared_tokens" / "1.0.0" / "metadata.json").is_file()


@dataclasses.dataclass(frozen=True)
class DataConfig:
    text_files: tuple[str, ...] = ()   # user's own text files, one document per file
    tfds_name: str = ""                # a registered TFDS dataset (needs internet to prepare)
    tfds_text_key: str = "text"
    max_docs: int = 0                  # 0 = all documents
    data_dir: str = ""                 # TFDS data dir; "" = ~/.cache/lineage_jax/tfds
    tokenizer: str = "byte"
    eval_fraction: float = 0.05        # share of documents held out when a source has no split
    prepared_dir: str = ""             # a dataset from `lineage data prepare --out DIR`; used alone
    segment_mask: bool = True          # prepared rows: documents attend only within themselves, positions
                                       # restart per document, no loss across documents; false: one stream
    loader: str = "grain"              # the visiting order: grain (MapDataset, the default) or numpy (permutation)
    mixture: tuple[MixtureComponent, ...] = ()   # [{name, weight, epochs}, ...]: prepared dirs or TFDS names;
                                                 # used alone (not with prepared_dir, text_files, tfds_name)

    def validate(self) -> None:
        if not 0.0 < self.eval_fraction < 1.0:
            raise ConfigError(f"data.eval_fraction={self.eval_fraction}: must be in (0, 1)")
        if self.max_docs < 0:
            raise ConfigError(f"data.max_docs={self.max_docs}: must be >= 0 (0 = all)")
        if self.loader not in ("grain", "numpy"):
            raise ConfigError(f"data.loader={self.loader}: allowed grain, numpy")
        if self.prepared_dir:
            if not self._prepared_meta_path().is_file():
                raise ConfigError(f"data.prepared_dir={self.prepared_dir}: no prepared dataset there; "
                                  f"make one with `lineage data prepare --out {self.prepared_dir}`")
            if self.text_files or self.tfds_name:
                raise ConfigError("data.prepared_dir: give it alone (not with data.text_files or data.tfds_name)")
        if self.mixture:
            if self.prepared_dir or self.text_files or self.tfds_name:
                raise ConfigError("data.mixture: give it alone (not with data.prepared_dir, data.text_files or "
                                  "data.tfds_name); its components name the datasets")
            names = [c.name for c in self.mixture]
            for c in self.mixture:
                if not c.name:
                    raise ConfigError("data.mixture: every component needs a name (a prepared dataset directory "
                                      "or a TFDS dataset name), e.g. [{name: out_a, weight: 2, epochs: 1}]")
                if not (c.weight > 0 and math.isfinite(c.weight)):
                    raise ConfigError(f"data.mixture {c.name}: weight={c.weight} must be a positive number")
                if not (c.epochs >= 0 and math.isfinite(c.epochs)):
                    raise ConfigError(f"data.mixture {c.name}: epochs={c.epochs} must be >= 0 (0 = unlimited)")
            if len(set(names)) != len(names):
                raise ConfigError(f"data.mixture: a component is named twice ({', '.join(names)})")
            kinds = {c.is_prepared() for c in self.mixture}
            if len(kinds) > 1:
                raise ConfigError("data.mixture: mix prepared datasets with prepared datasets and TFDS datasets with "
                                  "TFDS datasets (packed rows and token windows do not share a batch); got "
                                  + ", ".join(f"{c.name} ({'prepared' if c.is_prepared() else 'tfds'})"
                                              for c in self.mixture))

    def mixture_prepared(self) -> bool:
        """A mixture of prepared datasets (packed rows) rather than TFDS datasets."""
        return bool(self.mixture) and self.mixture[0].is_prepared()

    def _prepared_meta_path(self) -> Path:
        return Path(self.prepared_dir).expanduser() / "prepared_tokens" / "1.0.0" / "metadata.json"

    def prepared_meta(self) -> dict:
        """The metadata (seq_len, tokenizer, vocab_size, eos_id) of ``prepared_dir``'s dataset; a damaged
        ``metadata.json`` is a one-line ConfigError naming the directory and how to rebuild it."""
        path = self._prepared_meta_path()
        damaged = (f"data.prepared_dir={self.prepared_dir}: the prepared dataset is damaged ({path.name} {{}}); "
                   f"rebuild it with `lineage data prepare --out {self.prepared_dir} --overwrite`")
        try:
            meta = json.loads(path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(damaged.format(f"is not JSON: {e}")) from None
        need = ("seq_len", "vocab_size")                  # what the cross-section checks read
        if not isinstance(meta, dict) or not all(type(meta.get(k)) is int for k in need):
            raise ConfigError(damaged.format(f"lacks the integers {', '.join(need)}"))
        return meta


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3
    min_lr_ratio: float = 0.1      # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 50
    weight_decay: float = 0.1      # masked off biases, norms and embeddings
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    clip_norm: float = 1.0         # global-norm clipping; 0 disables

    def validate(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"optim.lr={self.lr}: must be positive")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"optim.min_lr_ratio={self.min_lr_ratio}: must be in [0, 1]")
        if not (0.0 <= self.b1 < 1.0 and 0.0 <= self.b2 < 1.0):
            raise ConfigError(f"optim.b1={self.b1}, optim.b2={self.b2}: each must be in [0, 1)")
        if self.weight_decay < 0 or self.clip_norm < 0 or self.eps <= 0:
            raise ConfigError("optim.weight_decay and optim.clip_norm must be >= 0 and optim.eps > 0")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 600
    batch_size: int = 16           # sequences per optimizer step (global)
    grad_accum: int = 1            # micro-batches per step; batch_size must divide evenly
    seed: int = 0
    log_every: int = 10
    eval_every: int = 100          # 0 disables periodic eval
    eval_batches: int = 4
    ckpt_every: int = 100
    keep_checkpoints: int = 3
    async_checkpointing: bool = True
    # a step whose loss or gradients are not finite: "stop" after nan_patience in a row (none of them
    # checkpointed), or "skip" its update (parameters and optimiser state untouched, as fp16 loss scaling does)
    nan_policy: str = "stop"
    nan_patience: int = 3

    def validate(self) -> None:
        positive({"train.steps": self.steps, "train.batch_size": self.batch_size, "train.grad_accum": self.grad_accum,
                  "train.log_every": self.log_every, "train.eval_batches": self.eval_batches,
                  "train.ckpt_every": self.ckpt_every, "train.keep_checkpoints": self.keep_checkpoints})
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"train.grad_accum={self.grad_accum} does not divide train.batch_size="
                              f"{self.batch_size}; allowed: {divisors(self.batch_size)}")
        if self.eval_every < 0:
            raise ConfigError(f"train.eval_every={self.eval_every}: must be >= 0 (0 disables eval)")
        one_of("train.nan_policy", self.nan_policy, NAN_POLICIES)
        positive({"train.nan_patience": self.nan_patience})


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    data: int = -1                 # -1 absorbs the devices left by the other axes
    fsdp: int = 1                  # the axis ZeRO shards state over (batch is split over data × fsdp × expert)
    expert: int = 1                # GShard expert parallelism: each MoE layer's experts split over it
    tensor: int = 1                # Megatron tensor parallelism

    def validate(self) -> None:
        sizes = {f"mesh.{axis}": getattr(self, axis) for axis in MESH_AXES}
        bad = [k for k, v in sizes.items() if v == 0 or v < -1]
        if bad:
            raise ConfigError(f"{bad[0]}={sizes[bad[0]]}: mesh axis sizes must be positive, or -1 to absorb the rest")
        if sum(v == -1 for v in sizes.values()) > 1:
            raise ConfigError("mesh: at most one axis may be -1 (it absorbs the remaining devices)")


@dataclasses.dataclass(frozen=True)
class ParallelConfig:
    zero_stage: int = 0            # over mesh.data × mesh.fsdp: 1 optimizer state, 2 + gradients, 3 + parameters (FSDP)
    form: str = "gspmd"            # gspmd (jit + sharding rules) | shard_map (explicit collectives)
    sequence_parallel: bool = False  # Megatron-SP: norm/dropout regions sharded along the sequence
    precision: str = "fp32"        # fp32 | bf16 (f32 master weights) | fp16 (+ dynamic loss scaling)
    loss_scale_init: float = 32768.0
    loss_scale_period: int = 2000  # finite steps before the fp16 loss scale doubles
    pipeline_stages: int = 1       # P > 1: the layer stack split into P stages over a `stage` mesh axis
    microbatches: int = 1          # M: the batch split into M microbatches flowing through the stages (>= P)
    pipeline_schedule: str = "1f1b"  # gpipe | 1f1b (PipeDream-Flush) | circular (interleaved, virtual_stages)
    virtual_stages: int = 1        # v chunks per stage device (circular only)

    def validate(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"parallel.zero_stage={self.zero_stage}: allowed 0 (none), 1 (optimizer state), "
                              f"2 (+ gradients), 3 (+ parameters, FSDP)")
        one_of("parallel.form", self.form, FORMS)
        one_of("parallel.precision", self.precision, PRECISIONS)
        if self.loss_scale_init <= 0 or self.loss_scale_period < 1:
            raise ConfigError("parallel.loss_scale_init must be > 0 and parallel.loss_scale_period >= 1")
        positive({"parallel.pipeline_stages": self.pipeline_stages, "parallel.microbatches": self.microbatches,
                  "parallel.virtual_stages": self.virtual_stages})
        one_of("parallel.pipeline_schedule", self.pipeline_schedule, PIPELINE_SCHEDULES)
        if self.pipeline_stages > 1:
            P, M, v = self.pipeline_stages, self.microbatches, self.virtual_stages
            if self.pipeline_schedule != "circular" and v != 1:
                raise ConfigError(f"parallel.virtual_stages={v} needs parallel.pipeline_schedule=circular "
                                  f"({self.pipeline_schedule} runs one chunk per stage)")
            if M < P:
                raise ConfigError(f"parallel.microbatches={M} is fewer than parallel.pipeline_stages={P}: every "
                                  f"stage needs a microbatch in flight; use at least {P}")
            if self.pipeline_schedule == "circular" and M % P:
                raise ConfigError(f"parallel.microbatches={M}: the circular schedule sends microbatches round the "
                                  f"ring in groups of parallel.pipeline_stages={P}; use a multiple of {P}")


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    mesh: MeshConfig = MeshConfig()
    parallel: ParallelConfig = ParallelConfig()
    run_dir: str = "runs/tiny"

    SECTIONS = ("model", "data", "optim", "train", "mesh", "parallel")

    def validate(self) -> None:
        """Every number finite, then each section's own checks (the cross-section ones are
        ``checks.cross_section``). ``x <= 0`` is False for NaN, so finiteness is checked once,
        here, for every float field, before any rule compares it."""
        for name in self.SECTIONS:
            section = getattr(self, name)
            for f in dataclasses.fields(section):
                value = getattr(section, f.name)
                if isinstance(value, float) and not math.isfinite(value):
                    raise ConfigError(f"{name}.{f.name}={value}: must be a finite number")
        for name in self.SECTIONS:
            getattr(self, name).validate()
        if not self.run_dir:
            raise ConfigError("run_dir: must name a directory for checkpoints and metrics")
        if "://" in self.run_dir:   # Path("gs://b/r") would quietly become a local directory named "gs:"
            raise ConfigError(f"run_dir={self.run_dir}: a run directory is a path on a filesystem every process "
                              f"mounts (local disk, NFS such as Filestore); mount the storage and give the path")

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x
