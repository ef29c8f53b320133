"""Every model's config, side by side, each checking its own fields.

``ModelConfig`` is the decoder-only family the CLI trains (GPT-2, Llama, their MoE variants);
``BertConfig``, ``T5Config`` and ``TransformerConfig`` are the encoder and encoder-decoder models
(``lineage_jax/models/{bert,t5,transformer}.py``), which check themselves when built.
"""
from __future__ import annotations

import dataclasses

from lineage_jax.config.errors import ConfigError, divisors, one_of, positive

DTYPES = ("float32", "bfloat16", "float16")
REMAT = ("none", "full", "dots")
ARCHS = ("gpt2", "llama")
ATTN_IMPLS = ("chunks", "auto", "naive", "xla", "flash", "cudnn", "pallas")
MOE_ROUTERS = ("shazeer", "gshard", "switch")
MOE_BACKENDS = ("capacity", "dropless")
BERT_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")   # Hugging Face hidden_act names
T5_FEED_FORWARD = ("relu", "gated-gelu")


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

    def validate(self) -> None:
        """ConfigError (one line) for the first bad ``model.*`` value."""
        self._check_sizes()
        self._check_numerics()
        self._check_architecture()
        if self.moe_every:
            self._check_moe()

    def _check_sizes(self) -> None:
        positive({"model.vocab_size": self.vocab_size, "model.layers": self.layers, "model.width": self.width,
                  "model.heads": self.heads, "model.mlp_ratio": self.mlp_ratio,
                  "model.attn_chunks": self.attn_chunks, "model.vocab_multiple": self.vocab_multiple})
        if self.context < 2:
            raise ConfigError(f"model.context={self.context}: must be at least 2")
        if self.width % self.heads:
            raise ConfigError(f"model.heads={self.heads} does not divide model.width={self.width}; "
                              f"allowed heads: {divisors(self.width)}")
        if self.context % self.attn_chunks:
            raise ConfigError(f"model.attn_chunks={self.attn_chunks} does not divide model.context={self.context}; "
                              f"allowed: {divisors(self.context)}")
        kv = self.kv_heads or self.heads
        if self.kv_heads < 0 or self.heads % kv:
            raise ConfigError(f"model.kv_heads={self.kv_heads} must divide model.heads={self.heads} (0 = heads); "
                              f"allowed: 0, {divisors(self.heads)}")
        if self.mlp_dim < 0:
            raise ConfigError(f"model.mlp_dim={self.mlp_dim}: must be >= 0 (0 = mlp_ratio * width)")

    def _check_numerics(self) -> None:
        one_of("model.dtype", self.dtype, DTYPES)
        one_of("model.param_dtype", self.param_dtype, DTYPES)
        one_of("model.remat", self.remat, REMAT)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout={self.dropout}: must be in [0, 1)")
        if self.init_std <= 0 or self.layernorm_eps <= 0:
            raise ConfigError("model.init_std and model.layernorm_eps must be positive")
        if self.rope_theta <= 0:
            raise ConfigError(f"model.rope_theta={self.rope_theta}: must be positive")

    def _check_architecture(self) -> None:
        one_of("model.attn_impl", self.attn_impl, ATTN_IMPLS)
        if self.attn_impl != "chunks" and self.dropout > 0:
            raise ConfigError(f"model.attn_impl={self.attn_impl} has no attention dropout; use model.attn_impl=chunks "
                              f"or model.dropout=0")
        one_of("model.arch", self.arch, ARCHS)

    def _check_moe(self) -> None:
        if self.moe_every < 0 or self.layers % self.moe_every:
            raise ConfigError(f"model.moe_every={self.moe_every} must divide model.layers={self.layers} (0 = dense); "
                              f"allowed: 0, {divisors(self.layers)}")
        if self.arch == "llama" and self.moe_every != 1:
            raise ConfigError(f"model.moe_every={self.moe_every}: with model.arch=llama (Mixtral) every block is "
                              f"MoE; allowed: 0 (dense), 1")
        one_of("model.moe_router", self.moe_router, MOE_ROUTERS)
        one_of("model.moe_backend", self.moe_backend, MOE_BACKENDS)
        if self.experts < 2 or not 1 <= self.moe_k <= self.experts:
            raise ConfigError(f"model.experts={self.experts}, model.moe_k={self.moe_k}: need experts >= 2 and "
                              f"1 <= moe_k <= experts")
        if self.moe_aux_weight < 0:
            raise ConfigError(f"model.moe_aux_weight={self.moe_aux_weight}: must be >= 0")
        if self.capacity_factor <= 0:
            raise ConfigError(f"model.capacity_factor={self.capacity_factor}: must be positive")


def ffn_dim(m: ModelConfig) -> int:
    """F, the feed-forward width: ``mlp_dim`` when set, else ``mlp_ratio * width``."""
    return m.mlp_dim or m.mlp_ratio * m.width


def _positive_ints(name: str, cfg, keys) -> None:
    for key in keys:
        v = getattr(cfg, key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{name}.{key}={v!r}: must be a positive integer")


def _dropout_and_dtypes(name: str, cfg) -> None:
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"{name}.dropout={cfg.dropout}: must be in [0, 1)")
    for key in ("dtype", "param_dtype"):
        if getattr(cfg, key) not in DTYPES:
            raise ConfigError(f"{name}.{key}={getattr(cfg, key)!r}: float32, bfloat16 or float16")


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """BERT (Devlin et al. 2019) sizes, in Hugging Face's terms where they differ."""
    vocab_size: int = 30522
    width: int = 768                 # hidden_size, D
    heads: int = 12                  # H; head dim K = D / H
    layers: int = 12
    mlp_dim: int = 3072              # intermediate_size, F
    max_positions: int = 512
    type_vocab_size: int = 2
    layernorm_eps: float = 1e-12
    hidden_act: str = "gelu"         # one of BERT_ACTIVATIONS
    dropout: float = 0.0
    init_std: float = 0.02
    pad_token_id: int = 0            # kept for the Hugging Face config; the model does not use it
    dtype: str = "float32"           # compute dtype
    param_dtype: str = "float32"     # storage dtype of parameters

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        _positive_ints("BertConfig", self, ("vocab_size", "width", "heads", "layers", "mlp_dim", "max_positions",
                                            "type_vocab_size"))
        if self.width % self.heads:
            raise ConfigError(f"BertConfig.width={self.width} is not divisible by heads={self.heads}")
        if self.hidden_act not in BERT_ACTIVATIONS:
            raise ConfigError(f"BertConfig.hidden_act={self.hidden_act!r}: allowed {', '.join(BERT_ACTIVATIONS)}")
        _dropout_and_dtypes("BertConfig", self)


@dataclasses.dataclass(frozen=True)
class T5Config:
    """T5 (Raffel et al. 2020) sizes, with Hugging Face's field names."""
    vocab_size: int = 32128
    d_model: int = 512               # D
    d_kv: int = 64                   # K, need not be D / H
    d_ff: int = 2048                 # F
    num_heads: int = 8               # H
    num_layers: int = 6              # encoder layers
    num_decoder_layers: int | None = None   # None: as many as the encoder
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"         # one of T5_FEED_FORWARD
    tie_word_embeddings: bool = True        # output projection = the shared embedding table
    scale_decoder_outputs: bool = True      # multiply the decoder output by d_model^-1/2 (T5 v1.0)
    dropout: float = 0.0
    init_factor: float = 1.0
    pad_token_id: int = 0                   # also the decoder start token, as in T5
    eos_token_id: int = 1
    dtype: str = "float32"                  # compute dtype
    param_dtype: str = "float32"            # storage dtype of parameters

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        _positive_ints("T5Config", self, ("vocab_size", "d_model", "d_kv", "d_ff", "num_heads", "num_layers",
                                          "relative_attention_num_buckets", "relative_attention_max_distance"))
        if self.num_decoder_layers is not None and (not isinstance(self.num_decoder_layers, int)
                                                    or self.num_decoder_layers < 1):
            raise ConfigError(f"T5Config.num_decoder_layers={self.num_decoder_layers!r}: a positive integer or None")
        if self.relative_attention_num_buckets < 4:
            raise ConfigError(f"T5Config.relative_attention_num_buckets={self.relative_attention_num_buckets}: "
                              f"at least 4 (two sides, each with exact and log-spaced buckets)")
        if self.feed_forward_proj not in T5_FEED_FORWARD:
            raise ConfigError(f"T5Config.feed_forward_proj={self.feed_forward_proj!r}: "
                              f"allowed {', '.join(T5_FEED_FORWARD)}")
        _dropout_and_dtypes("T5Config", self)

    @property
    def decoder_layers(self) -> int:
        return self.num_layers if self.num_decoder_layers is None else self.num_decoder_layers


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Sizes of the encoder-decoder (Vaswani et al. 2017); the defaults are the paper's base model (Table 3)."""
    vocab_size: int = 37000        # V: shared source/target vocabulary (the paper's BPE)
    d_model: int = 512             # D
    heads: int = 8                 # H (head dim K = D / H)
    d_ff: int = 2048               # F: inner width of the feed-forward network
    encoder_layers: int = 6        # N
    decoder_layers: int = 6
    dropout: float = 0.1           # P_drop
    max_len: int = 512             # longest source or target the position table is checked against
    pad_id: int = 0
    layernorm_eps: float = 1e-5
    dtype: str = "float32"         # compute
    param_dtype: str = "float32"   # storage

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        for f in ("vocab_size", "d_model", "heads", "d_ff", "encoder_layers", "decoder_layers", "max_len"):
            if getattr(self, f) < 1:
                raise ConfigError(f"TransformerConfig.{f}={getattr(self, f)}: must be at least 1")
        if self.d_model % self.heads or self.d_model % 2:
            raise ConfigError(f"TransformerConfig: d_model={self.d_model} must be even and divisible by "
                              f"heads={self.heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"TransformerConfig.dropout={self.dropout}: must be in [0, 1)")
