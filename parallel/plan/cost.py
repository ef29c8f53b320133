"""The planner's formulas: parameters per chip, memory per chip, bytes per collective, FLOPs.

A model is its shape (``Shape``); a plan is a mesh ``{data, fsdp, tensor, stage}``, a number of
microbatches and a remat policy. The formulas are those of docs/parallelism.md, written as code:

* parameters: a table of weight groups, each split by the mesh axes its logical names map to
  (this project's rules: ``heads``/``mlp``/``vocab`` → tensor, ``layers`` → stage, and under ZeRO
  ``embed`` → data × fsdp), so the per-chip bytes are what ``lineage shard-report`` measures;
* optimizer state: Adam's two moments (``opt_bytes`` per parameter), sharded like the
  parameters plus ZeRO's data × fsdp from stage 1;
* activations (Korthikanti et al. 2022, §4.1, 16-bit): per layer and token ``s·h·(34/t + 5·a·s/(h·t))``
  without remat (10 + 24/t in place of 34/t without sequence parallelism), ``34/t`` saving matmul
  outputs only (``dots``), ``2·h`` (the layer input) with full remat; times the microbatches a
  stage holds (1F1B: P; GPipe: M; no pipeline: 1);
* collectives per chip and step (ring algorithms, bytes each chip sends): data parallel
  all-reduce 2·Ψ_c·(n−1)/n; ZeRO-3 all-gather forward and (under remat) backward 2·Ψ_c·(n−1)/n plus the
  gradients' reduce-scatter Ψ_c·(n−1)/n (in a pipeline: per microbatch, gathered for each forward and
  each recomputing backward, ``pipeline_zero3_uses``); Megatron TP 4 all-reduces of b·s·h per layer and
  microbatch and 2 for the vocab-parallel embedding and head, 2·(t−1)/t each (6 and 3 under a
  pipeline, which recomputes the forward; 5 per layer under full remat); pipeline sends of b·s·h forward and back per microbatch, and the
  all-reduce over stages of the weights outside the layer stack (embedding on the first stage,
  head on the last; tied in GPT-2).
"""
from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Shape:
    arch: str = "llama"          # llama (SwiGLU, RMSNorm, no biases, untied head) | gpt2 (GELU, LN, biases, tied)
    layers: int = 32
    width: int = 4096
    heads: int = 32
    kv_heads: int = 0            # 0: = heads
    ffn: int = 0                 # 0: 4·width (gpt2) or the SwiGLU 8/3·width rounded to 256 (llama)
    vocab: int = 32000
    seq: int = 4096              # also the position table's rows (gpt2)

    @property
    def kv(self) -> int:
        return self.kv_heads or self.heads

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def f(self) -> int:
        if self.ffn:
            return self.ffn
        return 4 * self.width if self.arch == "gpt2" else 256 * -(-(8 * self.width // 3) // 256)


def shape_for_params(params: float, arch: str = "llama", vocab: int = 32000, seq: int = 4096) -> Shape:
    """A shape of about ``params`` parameters: width/layers ≈ 128 (Kaplan et al. 2020's range), width a
    multiple of 512 with 128-wide heads, layers a multiple of 4 (so pipelines of 2 and 4 split them)."""
    width = max(128, int(round((params * 128 / 12) ** (1 / 3) / 512)) * 512)
    layers = max(4, 4 * int(round((params - 2 * vocab * width) / (12 * width * width) / 4)))
    return Shape(arch, layers, width, width // 128, 0, 0, vocab, seq)


def weight_groups(s: Shape) -> list[tuple[str, int, tuple[str, ...]]]:
    """(name, count, mesh axes that split it): ``tensor``, ``stage`` (the layer stack), ``zero``
    (the ``embed`` axis, split by ZeRO over data × fsdp)."""
    D, K, H, G, F, V, L = s.width, s.head_dim, s.heads, s.kv, s.f, s.vocab, s.layers
    T, Z, S = "tensor", "zero", "stage"
    if s.arch == "gpt2":
        return [("wte", V * D, (T, Z)), ("wpe", s.seq * D, (Z,)), ("ln_f", 2 * D, (Z,)),
                ("ln", L * 4 * D, (S, Z)), ("qkv", L * 3 * D * H * K, (S, T, Z)), ("qkv_bias", L * 3 * H * K, (S, T)),
                ("out", L * H * K * D, (S, T, Z)), ("out_bias", L * D, (S, Z)),
                ("mlp", L * 2 * D * F, (S, T, Z)), ("mlp_in_bias", L * F, (S, T)), ("mlp_out_bias", L * D, (S, Z))]
    return [("embed", V * D, (T, Z)), ("head", V * D, (T, Z)), ("norm_f", D, (Z,)), ("norms", L * 2 * D, (S, Z)),
            ("q_o", L * 2 * D * H * K, (S, T, Z)), ("k_v", L * 2 * D * G * K, (S, T, Z)),
            ("mlp", L * 3 * D * F, (S, T, Z))]


def n_params(s: Shape) -> int:
    return sum(n for _, n, _ in weight_groups(s))


def per_chip_params(s: Shape, mesh: dict, zero: int) -> float:
    """Parameters each chip holds at ZeRO stage ``zero`` (3: parameters split too)."""
    return _split(s, mesh, zero >= 3)


def _split(s: Shape, mesh: dict, by_zero: bool) -> float:
    size = {"tensor": mesh.get("tensor", 1), "stage": mesh.get("stage", 1),
            "zero": mesh.get("data", 1) * mesh.get("fsdp", 1) if by_zero else 1}
    return sum(n / math.prod(size[a] for a in axes) for _, n, axes in weight_groups(s))


def ring(n: int) -> float:
    return (n - 1) / n if n > 1 else 0.0


def memory_per_chip(s: Shape, mesh: dict, *, zero: int, microbatches: int, schedule: str, remat: str,
                    rows: int, param_bytes: int = 4, grad_bytes: int = 4, opt_bytes: int = 8,
                    act_bytes: int = 2, sequence_parallel: bool = False) -> dict[str, float]:
    """Bytes per chip: params, grads (sharded by ZeRO-2), optimizer state, activations, total.
    ``rows``: sequences in one microbatch on one chip (global batch / (data · fsdp · M))."""
    t, P = mesh.get("tensor", 1), mesh.get("stage", 1)
    out = {"params": per_chip_params(s, mesh, zero) * param_bytes,
           "grads": _split(s, mesh, zero >= 2) * grad_bytes,
           "opt_state": _split(s, mesh, zero >= 1) * opt_bytes}
    sbh = rows * s.seq * s.width
    if remat == "full":
        per_layer = 2 * sbh                           # the layer's input, 16-bit
    elif remat == "dots":
        per_layer = sbh * 34 / t
    else:
        per_layer = sbh * ((34 / t if sequence_parallel else 10 + 24 / t) + 5 * s.heads * s.seq / (s.width * t))
    in_flight = 1 if P == 1 else (microbatches if schedule == "gpipe" else P)
    out["activations"] = per_layer * (s.layers / P) * in_flight * act_bytes / 2
    out["total"] = sum(out.values())
    return out


def collective_bytes(s: Shape, mesh: dict, *, zero: int, microbatches: int, rows: int, param_bytes: int = 4,
                     grad_bytes: int = 4, act_bytes: int = 2, remat: str = "full") -> dict[str, float]:
    """Bytes each chip sends per step, by collective kind (ring estimates; a permute sends its operand).

    ZeRO-3 gathers each layer's weights in the forward pass and, under remat, again in the backward
    (the ZeRO paper's 3Ψ); without remat XLA keeps the gathered layer for the backward (memory for
    traffic), so the weights are gathered once."""
    n = mesh.get("data", 1) * mesh.get("fsdp", 1)
    t, P = mesh.get("tensor", 1), mesh.get("stage", 1)
    size = {"tensor": t, "stage": P, "zero": 1}
    rank = lambda axes: math.prod(size[a] for a in axes)   # noqa: E731
    # one model-parallel rank's parameters; ZeRO partitions those with an ``embed`` axis, the rest
    # (biases over heads / mlp) stay whole and are all-reduced
    psi = sum(n / rank(axes) for _, n, axes in weight_groups(s) if "zero" in axes)
    out = {"all-reduce": 2 * sum(n / rank(axes) for _, n, axes in weight_groups(s) if "zero" not in axes)
           * grad_bytes * ring(n) if zero else 0.0, "all-gather": 0.0, "reduce-scatter": 0.0,
           "collective-permute": 0.0}
    if not zero:
        psi = _split(s, mesh, False)
    if zero >= 3 and P > 1:
        uses = microbatches * pipeline_zero3_uses(s, mesh)
        out["all-gather"] += 2 * uses * param_bytes * ring(n)
        out["reduce-scatter"] += uses * grad_bytes * ring(n)
    elif zero >= 3:
        out["all-gather"] += (1 if remat == "none" else 2) * psi * param_bytes * ring(n)
        out["reduce-scatter"] += psi * grad_bytes * ring(n)
    elif zero == 2:
        out["reduce-scatter"] += psi * grad_bytes * ring(n)
        out["all-gather"] += psi * param_bytes * ring(n)
    elif zero == 1:
        out["all-reduce"] += 2 * psi * grad_bytes * ring(n)
        out["all-gather"] += psi * param_bytes * ring(n)
    else:
        out["all-reduce"] += 2 * psi * grad_bytes * ring(n)
    out["all-reduce"] += tensor_all_reduce_bytes(s, mesh, microbatches=microbatches, rows=rows, act_bytes=act_bytes,
                                                 remat=remat)
    act = rows * s.seq * s.width * act_bytes
    if P > 1:
        out["collective-permute"] += 2 * microbatches * act
        shared = sum(k / t ** ("tensor" in axes) for _, k, axes in weight_groups(s) if "stage" not in axes)
        if zero >= 3:   # their gradients arrive reduce-scattered over data × fsdp: the shards are summed
            shared /= n
        out["all-reduce"] += 2 * shared * grad_bytes * ring(P)   # embedding (first) + head (last stage)
    out["total"] = sum(out.values())
    return out


def pipeline_zero3_uses(s: Shape, mesh: dict) -> float:
    """Parameters one chip gathers per microbatch under ZeRO-3 in a pipeline, averaged over the stages.

    The executor gathers a chunk's weights for each forward op and again for its backward (which
    recomputes the chunk), and reduce-scatters their gradients once per backward: per microbatch,
    the stage's layers, plus the weights outside the stack where they are used — the embedding (and
    GPT-2's positions) on the first stage, the final norm and head on the last (GPT-2's tied ``wte``
    in both), each on 1 of the P stages."""
    t, P = mesh.get("tensor", 1), mesh.get("stage", 1)
    per = lambda k, axes: k / (t if "tensor" in axes else 1) / (P if "stage" in axes else 1)  # noqa: E731
    groups = weight_groups(s)
    stack = sum(per(k, axes) for _, k, axes in groups if "zero" in axes and "stage" in axes)
    ends = sum(per(k, axes) for _, k, axes in groups if "zero" in axes and "stage" not in axes)
    ends += sum(per(k, axes) for name, k, axes in groups if name == "wte")   # tied: the head reads it again
    return stack + ends / P


def tensor_all_reduce_bytes(s: Shape, mesh: dict, *, microbatches: int, rows: int, act_bytes: int = 2,
                            remat: str = "full") -> float:
    """Megatron's f/g all-reduces of b·s·h per chip and step: per layer 2 in the forward pass and 2
    in the backward, plus the vocab-parallel embedding's forward and the head input's backward (on
    the first / last stage: averaged over the P stages). What the backward recomputes runs again:
    under a pipeline the executor recomputes each chunk from its stashed input (both forward
    all-reduces of every layer, and the embedding's: 6 per layer, 3 at the ends); under full remat
    a block is recomputed from its input up to what its backward needs — the attention output's
    all-reduce, not the block output's (5 per layer, as the compiled step shows)."""
    t, P = mesh.get("tensor", 1), mesh.get("stage", 1)
    again = 2 if P > 1 else (1 if remat == "full" else 0)
    act = rows * s.seq * s.width * act_bytes
    return ((4 + again) * s.layers / P + (2 + (P > 1)) / P) * microbatches * 2 * act * ring(t)


def train_flops(s: Shape, tokens: float, remat: str = "none") -> float:
    """6·N·tokens for the matmuls (Kaplan et al. 2020) plus causal attention's 6·L·s·h per token;
    full remat adds a forward (×4/3), ``dots`` recomputes elementwise work only (counted as 0)."""
    f = 6 * n_params(s) * tokens + 6 * s.layers * s.seq * s.width * tokens
    return f * (4 / 3 if remat == "full" else 1.0)
