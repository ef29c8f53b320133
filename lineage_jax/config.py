"""One config system: YAML presets + ``section.key=value`` overrides into frozen dataclasses.

Everything here is plain Python (no JAX import), so the CLI can validate a config and
report a bad key in one line before JAX initialises or anything compiles.
"""
from __future__ import annotations

import dataclasses
import difflib

import typing
from pathlib import Path
from typing import Any

import yaml

REPO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DTYPES = ("float32", "bfloat16", "float16")
REMAT = ("none", "full", "dots")
FORMS = ("gspmd", "shard_map")
PRECISIONS = ("fp32", "bf16", "fp16")
ARCHS = ("gpt2", "llama")
ATTN_IMPLS = ("chunks", "auto", "naive", "xla", "flash", "cudnn", "pallas")
MOE_ROUTERS = ("shazeer", "gshard", "switch")
MOE_BACKENDS = ("capacity", "dropless")


class ConfigError(ValueError):
    """A config problem, stated in one line: the key, the bad value, what is allowed."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 257          # byte tokenizer: 256 bytes + <|endoftext|>
    vocab_multiple: int = 1        # pad the embedding table's rows to a multiple (e.g. 8 for tensor parallel)
    context: int = 256             # T: maximum sequence length
    layers: int = 4                # L
    width: int = 256               # D: model width
    heads: int = 4                 # H: attention heads (head dim K = D / H)
    mlp_ratio: int = 4             # F = mlp_ratio * D
    dropout: float = 0.0
    dtype: str = "float32"         # compute dtype
    param_dtype: str = "float32"   # storage dtype of parameters
    scan_layers: bool = True       # nn.scan over layers: flat compile time, ~25% slower step on CPU
    remat: str = "none"            # none | full | dots (save matmul outputs only)
    attn_chunks: int = 4           # causal attention in query chunks that skip masked key blocks
    # training-time attention kernel: chunks (the above) | flash (blockwise, O(T) memory) | auto (cuDNN on
    # GPU, Pallas on TPU, else flash) | xla | naive | cudnn | pallas  (lineage_jax/attention/backend.py)
    attn_impl: str = "chunks"
    init_std: float = 0.02
    layernorm_eps: float = 1e-5    # LayerNorm eps (gpt2) or RMSNorm eps (llama)
    # architecture family: gpt2 (learned positions, LayerNorm, GELU, tied) | llama (RoPE, RMSNorm, SwiGLU, GQA)
    arch: str = "gpt2"
    kv_heads: int = 0              # grouped-query attention: key/value heads (0 = heads, i.e. MHA; 1 = MQA)
    mlp_dim: int = 0               # F when not mlp_ratio * width (0 = mlp_ratio * width)
    rope_theta: float = 10000.0    # llama: RoPE base
    tied: bool = True              # output head tied to the token embedding
    # mixture of experts: every moe_every-th block's MLP is an MoE layer (0 = dense; llama: 1 = Mixtral)
    moe_every: int = 0
    experts: int = 8               # E
    moe_k: int = 2                 # experts per token (shazeer; gshard is 2, switch is 1)
    moe_router: str = "gshard"     # shazeer | gshard | switch
    moe_backend: str = "capacity"  # capacity | dropless
    capacity_factor: float = 1.25
    moe_aux_weight: float = 0.01   # load-balancing loss coefficient (GShard, Switch α); Shazeer keeps w = 0.1


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


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    data: int = -1                 # -1 absorbs the devices left by the other axes
    fsdp: int = 1                  # the axis ZeRO shards state over (batch is split over data × fsdp × expert)
    expert: int = 1                # GShard expert parallelism: each MoE layer's experts split over it
    tensor: int = 1                # Megatron tensor parallelism


@dataclasses.dataclass(frozen=True)
class ParallelConfig:
    zero_stage: int = 0            # over mesh.fsdp: 1 optimizer state, 2 + gradients, 3 + parameters (FSDP)
    form: str = "gspmd"            # gspmd (jit + sharding rules) | shard_map (explicit collectives)
    sequence_parallel: bool = False  # Megatron-SP: norm/dropout regions sharded along the sequence
    precision: str = "fp32"        # fp32 | bf16 (f32 master weights) | fp16 (+ dynamic loss scaling)
    loss_scale_init: float = 32768.0
    loss_scale_period: int = 2000  # finite steps before the fp16 loss scale doubles


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    mesh: MeshConfig = MeshConfig()
    parallel: ParallelConfig = ParallelConfig()
    run_dir: str = "runs/tiny"

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def ffn_dim(m: ModelConfig) -> int:
    """F, the feed-forward width: ``mlp_dim`` when set, else ``mlp_ratio * width``."""
    return m.mlp_dim or m.mlp_ratio * m.width


# ----------------------------------------------------------------------------- loading

def resolve_preset(name_or_path: str) -> Path:
    """A path as given, else a preset name (``tiny``) or file name in the repo's configs/."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    for cand in (REPO_CONFIGS / name_or_path, REPO_CONFIGS / f"{name_or_path}.yaml"):
        if cand.is_file():
            return cand
    presets = sorted(q.stem for q in REPO_CONFIGS.glob("*.yaml"))
    raise ConfigError(f"config file '{name_or_path}' not found; give a path or one of the presets: {', '.join(presets)}")


def load_config(path: str | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Preset YAML (or defaults) + ``key.sub=value`` overrides -> validated frozen Config."""
    tree: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        p = resolve_preset(path)
        where = str(path)
        try:
            tree = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections (model, data, optim, train, mesh)")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' must look like section.key=value (e.g. train.steps=200)")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set_path(tree, key.strip(), value)
    cfg = _build(Config, tree, prefix="", where=where)
    validate(cfg)
    return cfg


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def _build(cls, tree: Any, prefix: str, where: str):
    if not isinstance(tree, dict):
        raise ConfigError(f"'{prefix.rstrip('.')}' must be a section (mapping), got {tree!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in tree:
        if key not in fields:
            near = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{prefix}{near[0]}'?)" if near else ""
            raise ConfigError(
                f"unknown key '{prefix}{key}' in {where}{hint}; allowed: {', '.join(prefix + f for f in fields)}")
    kwargs = {}
    for name, value in tree.items():
        typ = hints[name]
        if dataclasses.is_dataclass(typ):
            kwargs[name] = _build(typ, value, f"{prefix}{name}.", where)
        else:
            kwargs[name] = _coerce(f"{prefix}{name}", value, typ)
    return cls(**kwargs)


def _coerce(key: str, value: Any, typ) -> Any:
    origin = typing.get_origin(typ)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}={value!r}: expected a list of strings (YAML list or comma-separated)")
        return tuple(value)
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r}: expected true or false")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r}: expected an integer")
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}={value!r}: expected a number")
    if typ is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}={value!r}: expected a string")
        return "" if value is None else str(value)
    raise ConfigError(f"{key}: unsupported field type {typ}")  # pragma: no cover


# ----------------------------------------------------------------------------- validation

def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def _check_prepared(cfg: Config) -> None:
    import json
    meta = Path(cfg.data.prepared_dir).expanduser() / "prepared_tokens" / "1.0.0" / "metadata.json"
    if not meta.is_file():
        raise ConfigError(f"data.prepared_dir={cfg.data.prepared_dir}: no prepared dataset there; "
                          f"make one with `lineage data prepare --out {cfg.data.prepared_dir}`")
    if cfg.data.text_files or cfg.data.tfds_name:
        raise ConfigError("data.prepared_dir: give it alone (not with data.text_files or data.tfds_name)")
    seq_len = json.loads(meta.read_text())["seq_len"]
    if seq_len != cfg.model.context:
        raise ConfigError(f"data.prepared_dir was packed at --seq-len {seq_len}: set model.context={seq_len}")


def validate(cfg: Config) -> None:
    """Cross-field checks that need no devices. Device-dependent checks live in parallel/."""
    m, o, t = cfg.model, cfg.optim, cfg.train
    positive = {"model.vocab_size": m.vocab_size, "model.layers": m.layers, "model.width": m.width,
                "model.heads": m.heads, "model.mlp_ratio": m.mlp_ratio, "model.attn_chunks": m.attn_chunks,
                "train.steps": t.steps, "train.batch_size": t.batch_size, "train.grad_accum": t.grad_accum,
                "train.log_every": t.log_every, "train.eval_batches": t.eval_batches,
                "train.ckpt_every": t.ckpt_every, "train.keep_checkpoints": t.keep_checkpoints}
    for key, val in positive.items():
        if val < 1:
            raise ConfigError(f"{key}={val}: must be a positive integer")
    if m.context < 2:
        raise ConfigError(f"model.context={m.context}: must be at least 2")
    if m.width % m.heads:
        raise ConfigError(f"model.heads={m.heads} does not divide model.width={m.width}; allowed heads: {_divisors(m.width)}")
    if m.context % m.attn_chunks:
        raise ConfigError(
            f"model.attn_chunks={m.attn_chunks} does not divide model.context={m.context}; allowed: {_divisors(m.context)}")
    for key in ("dtype", "param_dtype"):
        if getattr(m, key) not in DTYPES:
            raise ConfigError(f"model.{key}='{getattr(m, key)}': allowed {', '.join(DTYPES)}")
    if m.remat not in REMAT:
        raise ConfigError(f"model.remat='{m.remat}': allowed {', '.join(REMAT)}")
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"model.dropout={m.dropout}: must be in [0, 1)")
    if m.init_std <= 0 or m.layernorm_eps <= 0:
        raise ConfigError("model.init_std and model.layernorm_eps must be positive")
    if t.batch_size % t.grad_accum:
        raise ConfigError(f"train.grad_accum={t.grad_accum} does not divide train.batch_size={t.batch_size}; "
                          f"allowed: {_divisors(t.batch_size)}")
    if t.eval_every < 0:
        raise ConfigError(f"train.eval_every={t.eval_every}: must be >= 0 (0 disables eval)")
    if o.lr <= 0:
        raise ConfigError(f"optim.lr={o.lr}: must be positive")
    if not 0.0 <= o.min_lr_ratio <= 1.0:
        raise ConfigError(f"optim.min_lr_ratio={o.min_lr_ratio}: must be in [0, 1]")
    if not 0 <= o.warmup_steps <= t.steps:
        raise ConfigError(f"optim.warmup_steps={o.warmup_steps}: must be in [0, train.steps={t.steps}]")
    if not (0.0 <= o.b1 < 1.0 and 0.0 <= o.b2 < 1.0):
        raise ConfigError(f"optim.b1={o.b1}, optim.b2={o.b2}: each must be in [0, 1)")
    if o.weight_decay < 0 or o.clip_norm < 0 or o.eps <= 0:
        raise ConfigError("optim.weight_decay and optim.clip_norm must be >= 0 and optim.eps > 0")
    if not 0.0 < cfg.data.eval_fraction < 1.0:
        raise ConfigError(f"data.eval_fraction={cfg.data.eval_fraction}: must be in (0, 1)")
    if cfg.data.max_docs < 0:
        raise ConfigError(f"data.max_docs={cfg.data.max_docs}: must be >= 0 (0 = all)")
    if cfg.data.prepared_dir:
        _check_prepared(cfg)
    axes = {"mesh.data": cfg.mesh.data, "mesh.fsdp": cfg.mesh.fsdp, "mesh.expert": cfg.mesh.expert,
            "mesh.tensor": cfg.mesh.tensor}
    bad = [k for k, v in axes.items() if v == 0 or v < -1]
    if bad:
        raise ConfigError(f"{bad[0]}={axes[bad[0]]}: mesh axis sizes must be positive, or -1 to absorb the rest")
    if sum(v == -1 for v in axes.values()) > 1:
        raise ConfigError("mesh: at most one axis may be -1 (it absorbs the remaining devices)")
    p = cfg.parallel
    if p.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"parallel.zero_stage={p.zero_stage}: allowed 0 (none), 1 (optimizer state), "
                          f"2 (+ gradients), 3 (+ parameters, FSDP)")
    if p.form not in FORMS:
        raise ConfigError(f"parallel.form='{p.form}': allowed {', '.join(FORMS)}")
    if p.precision not in PRECISIONS:
        raise ConfigError(f"parallel.precision='{p.precision}': allowed {', '.join(PRECISIONS)}")
    if p.loss_scale_init <= 0 or p.loss_scale_period < 1:
        raise ConfigError("parallel.loss_scale_init must be > 0 and parallel.loss_scale_period >= 1")
    if m.attn_impl not in ATTN_IMPLS:
        raise ConfigError(f"model.attn_impl='{m.attn_impl}': allowed {', '.join(ATTN_IMPLS)}")
    if m.attn_impl != "chunks" and m.dropout > 0:
        raise ConfigError(f"model.attn_impl={m.attn_impl} has no attention dropout; use model.attn_impl=chunks "
                          f"or model.dropout=0")
    if m.arch not in ARCHS:
        raise ConfigError(f"model.arch='{m.arch}': allowed {', '.join(ARCHS)}")
    kv = m.kv_heads or m.heads
    if m.kv_heads < 0 or m.heads % kv:
        raise ConfigError(f"model.kv_heads={m.kv_heads} must divide model.heads={m.heads} (0 = heads); "
                          f"allowed: 0, {_divisors(m.heads)}")
    if m.mlp_dim < 0:
        raise ConfigError(f"model.mlp_dim={m.mlp_dim}: must be >= 0 (0 = mlp_ratio * width)")
    if m.rope_theta <= 0:
        raise ConfigError(f"model.rope_theta={m.rope_theta}: must be positive")
    if m.moe_every:
        if m.moe_every < 0 or m.layers % m.moe_every:
            raise ConfigError(f"model.moe_every={m.moe_every} must divide model.layers={m.layers} (0 = dense); "
                              f"allowed: 0, {_divisors(m.layers)}")
        if m.arch == "llama" and m.moe_every != 1:
            raise ConfigError(f"model.moe_every={m.moe_every}: with model.arch=llama (Mixtral) every block is "
                              f"MoE; allowed: 0 (dense), 1")
        if m.moe_router not in MOE_ROUTERS:
            raise ConfigError(f"model.moe_router='{m.moe_router}': allowed {', '.join(MOE_ROUTERS)}")
        if m.moe_backend not in MOE_BACKENDS:
            raise ConfigError(f"model.moe_backend='{m.moe_backend}': allowed {', '.join(MOE_BACKENDS)}")
        if m.experts < 2 or not 1 <= m.moe_k <= m.experts:
            raise ConfigError(f"model.experts={m.experts}, model.moe_k={m.moe_k}: need experts >= 2 and "
                              f"1 <= moe_k <= experts")
        if m.moe_aux_weight < 0:
            raise ConfigError(f"model.moe_aux_weight={m.moe_aux_weight}: must be >= 0")
        if m.capacity_factor <= 0:
            raise ConfigError(f"model.capacity_factor={m.capacity_factor}: must be positive")
    if cfg.mesh.expert > 1 or cfg.mesh.expert == -1:
        if not m.moe_every:
            raise ConfigError(f"mesh.expert={cfg.mesh.expert}: expert parallelism needs MoE layers "
                              f"(model.moe_every > 0)")
        if m.moe_backend != "capacity":
            raise ConfigError(f"mesh.expert={cfg.mesh.expert}: expert parallelism needs model.moe_backend=capacity "
                              f"(fixed-size buffers for the all-to-all), not {m.moe_backend}")
        if cfg.mesh.expert > 1 and m.experts % cfg.mesh.expert:
            raise ConfigError(f"mesh.expert={cfg.mesh.expert} does not divide model.experts={m.experts}; "
                              f"allowed: {_divisors(m.experts)}")
    if m.moe_every and p.sequence_parallel:
        raise ConfigError("parallel.sequence_parallel=true with MoE layers is not supported (each sequence is "
                          "one routing group); set model.moe_every=0 or parallel.sequence_parallel=false")
    if m.vocab_multiple < 1:
        raise ConfigError(f"model.vocab_multiple={m.vocab_multiple}: must be a positive integer")
    if not cfg.run_dir:
        raise ConfigError("run_dir: must name a directory for checkpoints and metrics")
