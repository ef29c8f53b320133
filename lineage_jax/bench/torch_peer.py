"""A PyTorch eager twin of the GPT-2 train step, used only as a speed peer for ``lineage bench``.

This module exists so ``lineage bench`` can print the JAX train step's tokens/s next to what
a careful PyTorch user gets, in eager mode, from *the same model and optimizer* on the same
machine, threads and process. It is not a reference for numerics (nothing here is checked
bitwise against JAX) and nothing in training, sampling or the tests of the JAX code uses it.

What is held equal to the JAX side (``lineage_jax.models.gpt.GPT`` + ``lineage_jax.train.step``
+ ``lineage_jax.optim.make_optimizer``), because it decides speed:

* the architecture and parameter count: GPT-2 with learned token/position embeddings, L pre-LN
  blocks (causal self-attention with biased q/k/v/out projections, GELU-tanh MLP of width
  ``mlp_ratio * D``), final LayerNorm, logits tied to the token embedding, mean cross-entropy
  over all B·T positions; ``param_count(cfg)`` is asserted against the built module;
* the FLOPs: the same matmuls (q/k/v fused into one ``[D, 3D]`` Linear, as PyTorch users write
  it; same FLOPs as three), causal attention through ``scaled_dot_product_attention``;
* the optimizer: clip by global norm (when ``clip_norm > 0``), then AdamW with betas/eps from
  the config, weight decay on the 2-D Linear weights only (the JAX mask decays ``kernel``
  leaves only: no biases, LayerNorm parameters or embeddings), and a learning rate following the
  same linear-warmup + cosine schedule (``LambdaLR``).

Idiomatic speed choices (measured on the bench model, 2-core CPU): fused qkv Linear, SDPA with
``is_causal=True``, ``F.gelu(approximate="tanh")``, ``F.cross_entropy``, AdamW with
``fused=True`` when this torch build supports it on CPU (else ``foreach=True``), and
``clip_grad_norm_(foreach=True)``.

torch is optional: this module imports without it and raises only when a torch-backed
function is called (``torch_available()`` says whether it can be).
"""
from __future__ import annotations

import math
from typing import Callable

from lineage_jax.config import ModelConfig, OptimConfig

try:  # guarded: torch is an optional ("ref") dependency
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    _TORCH_ERROR: Exception | None = None
except Exception as e:  # pragma: no cover - exercised only without torch
    torch = nn = F = None  # type: ignore[assignment]
    _TORCH_ERROR = e

__all__ = ["torch_available", "torch_threads", "param_count", "lr_multiplier", "TorchGPT", "make_torch_step"]


def torch_available() -> bool:
    """True when torch imported; the peer can then be built."""
    return _TORCH_ERROR is None


def _require_torch() -> None:
    if _TORCH_ERROR is not None:
        raise ImportError(
            "the PyTorch speed peer of `lineage bench` needs torch "
            "(pip install 'lineage_jax[ref]' or torch==2.13.0)") from _TORCH_ERROR


def torch_threads() -> int:
    """The number of intra-op threads torch uses now (``torch.get_num_threads()``)."""
    _require_torch()
    return int(torch.get_num_threads())


def param_count(cfg: ModelConfig) -> int:
    """Parameters of the JAX GPT for ``cfg``, from the config alone.

    V·D (wte, tied) + T·D (wpe) + L·[(4 + 2r)·D² + (9 + r)·D] + 2D (final LN), where per
    block q/k/v/out are 4·(D² + D), the MLP is 2r·D² + r·D + D and the two LNs 4D; for
    mlp_ratio r = 4 that is L·(12D² + 13D).
    """
    D, r = cfg.width, cfg.mlp_ratio
    block = (4 + 2 * r) * D * D + (9 + r) * D
    return cfg.vocab_size * D + cfg.context * D + cfg.layers * block + 2 * D


def lr_multiplier(optim_cfg: OptimConfig, total_steps: int) -> Callable[[int], float]:
    """``step -> lr(step) / lr`` for the JAX schedule (``lineage_jax.optim.make_schedule``).

    Linear warmup 0 -> 1 over ``warmup_steps``, then cosine down to ``min_lr_ratio`` at
    ``max(total_steps, warmup_steps + 1)``, held there after. ``LambdaLR`` evaluates it at
    the count of optimizer steps taken, as optax does, so the first step uses lr(0).
    """
    W = min(int(optim_cfg.warmup_steps), int(total_steps))      # clamped as make_schedule does
    decay = max(int(total_steps), W + 1) - W
    end = float(optim_cfg.min_lr_ratio)

    def mult(step: int) -> float:
        if step < W:
            return step / W
        t = min(step - W, decay) / decay
        return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * t))

    return mult


if torch_available():

    class _Block(nn.Module):
        """x + Attn(LN(x)); x + MLP(LN(x)), with q/k/v in one fused Linear."""

        def __init__(self, cfg: ModelConfig):
            super().__init__()
            D = cfg.width
            self.heads, self.dropout = cfg.heads, float(cfg.dropout)
            self.ln1 = nn.LayerNorm(D, eps=cfg.layernorm_eps)
            self.qkv = nn.Linear(D, 3 * D)
            self.out = nn.Linear(D, D)
            self.ln2 = nn.LayerNorm(D, eps=cfg.layernorm_eps)
            self.fc = nn.Linear(D, cfg.mlp_ratio * D)
            self.proj = nn.Linear(cfg.mlp_ratio * D, D)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            B, T, D = x.shape
            H = self.heads
            p = self.dropout if self.training else 0.0
            q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, H, D // H).permute(2, 0, 3, 1, 4).unbind(0)
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)   # [B, H, T, K]
            y = self.out(y.transpose(1, 2).reshape(B, T, D))
            x = x + (F.dropout(y, p, self.training) if p else y)
            y = self.proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))
            return x + (F.dropout(y, p, self.training) if p else y)

    class TorchGPT(nn.Module):
        """GPT-2 as ``lineage_jax.models.gpt.GPT`` builds it, in idiomatic PyTorch (float32).

        ``forward(tokens [B, T] int64) -> logits [B, T, V]``; ``loss(tokens [B, T+1])`` is the
        mean next-token cross-entropy of the train step.
        """

        def __init__(self, cfg: ModelConfig, *, seed: int = 0):
            super().__init__()
            if cfg.width % cfg.heads:
                raise ValueError(f"model.width={cfg.width} is not divisible by model.heads={cfg.heads}")
            self.cfg = cfg
            D = cfg.width
            self.wte = nn.Embedding(cfg.vocab_size, D)
            self.wpe = nn.Embedding(cfg.context, D)
            self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.layers))
            self.ln_f = nn.LayerNorm(D, eps=cfg.layernorm_eps)
            self.dropout = float(cfg.dropout)
            self._init(seed)
            n = sum(p.numel() for p in self.parameters())
            assert n == param_count(cfg), f"TorchGPT has {n} parameters, the JAX GPT {param_count(cfg)}"

        @torch.no_grad()
        def _init(self, seed: int) -> None:
            g = torch.Generator().manual_seed(seed)
            std = self.cfg.init_std
            resid_std = std / math.sqrt(2 * self.cfg.layers)   # GPT-2 §2.3, as in the JAX model
            for name, p in self.named_parameters():
                if name.endswith(("out.weight", "proj.weight")):
                    nn.init.normal_(p, 0.0, resid_std, generator=g)
                elif name.startswith("ln") or ".ln" in name:
                    nn.init.ones_(p) if name.endswith("weight") else nn.init.zeros_(p)
                elif name.endswith("bias"):
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p, 0.0, std, generator=g)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            T = tokens.shape[-1]
            if T > self.cfg.context:
                raise ValueError(f"sequence length {T} exceeds model.context={self.cfg.context}")
            x = self.wte(tokens) + self.wpe.weight[:T]
            if self.dropout and self.training:
                x = F.dropout(x, self.dropout, True)
            for block in self.blocks:
                x = block(x)
            return F.linear(self.ln_f(x), self.wte.weight)      # tied: x · Eᵀ

        def loss(self, tokens: torch.Tensor) -> torch.Tensor:
            logits = self(tokens[:, :-1])
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))

        def param_groups(self, weight_decay: float) -> list[dict]:
            """Decay the 2-D Linear weights only (the JAX mask: ``kernel`` leaves)."""
            decay = [m.weight for m in self.modules() if isinstance(m, nn.Linear)]
            ids = {id(p) for p in decay}
            rest = [p for p in self.parameters() if id(p) not in ids]
            return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]

else:  # pragma: no cover - exercised only without torch

    class TorchGPT:  # type: ignore[no-redef]
        def __init__(self, *args, **kwargs):
            _require_torch()


def _adamw(groups: list[dict], optim_cfg: OptimConfig, impl: str) -> "torch.optim.Optimizer":
    kw = dict(lr=optim_cfg.lr, betas=(optim_cfg.b1, optim_cfg.b2), eps=optim_cfg.eps)
    if impl == "fused":
        try:
            return torch.optim.AdamW(groups, fused=True, **kw)
        except (RuntimeError, ValueError, TypeError):   # no fused CPU kernel in this build
            pass
    return torch.optim.AdamW(groups, foreach=impl != "for", **kw)


def make_torch_step(model_cfg: ModelConfig, optim_cfg: OptimConfig, batch_size: int, *,
                    threads: int | None = None, seed: int = 0, total_steps: int = 1000,
                    adamw: str = "fused") -> Callable[[], float]:
    """Build the PyTorch peer and return ``step() -> loss``: one full training step.

    Each call: ``zero_grad(set_to_none=True)``, forward on a fixed random int64 batch
    ``[batch_size, context + 1]`` (inputs ``[:, :-1]``, targets ``[:, 1:]``), mean
    cross-entropy, backward, ``clip_grad_norm_`` (when ``clip_norm > 0``), AdamW step,
    scheduler step; returns the loss as a Python float (so the call is synchronous).

    ``threads``: if given, ``torch.set_num_threads(threads)`` (process-wide); otherwise torch's
    default is left alone. The function carries ``.threads`` (the count in effect), ``.model``,
    ``.optimizer``, ``.tokens_per_step`` and ``.param_count``.
    ``adamw``: ``"fused"`` (falls back to foreach where unsupported), ``"foreach"`` or ``"for"``.
    """
    _require_torch()
    if threads is not None:
        torch.set_num_threads(int(threads))
    model = TorchGPT(model_cfg, seed=seed).float().train()
    optimizer = _adamw(model.param_groups(optim_cfg.weight_decay), optim_cfg, adamw)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(optim_cfg, total_steps))
    g = torch.Generator().manual_seed(seed + 1)
    tokens = torch.randint(0, model_cfg.vocab_size, (batch_size, model_cfg.context + 1),
                           generator=g, dtype=torch.int64)
    params = [p for p in model.parameters()]
    clip = float(optim_cfg.clip_norm)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = model.loss(tokens)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
        optimizer.step()
        scheduler.step()
        return float(loss.item())

    step.threads = torch_threads()                      # type: ignore[attr-defined]
    step.model = model                                  # type: ignore[attr-defined]
    step.optimizer = optimizer                          # type: ignore[attr-defined]
    step.tokens_per_step = batch_size * model_cfg.context  # type: ignore[attr-defined]
    step.param_count = param_count(model_cfg)           # type: ignore[attr-defined]
    return step
