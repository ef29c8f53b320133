"""``lineage bench attention``: memory of attention's forward+backward against sequence length.

FlashAttention's claim (Dao et al. 2022, §3.2): tiling the softmax and recomputing the tiles in
the backward pass makes attention's memory linear in length, where the naive form stores the
T × T score and probability matrices (quadratic). Measured here on the compiled program, with
nothing executed: for each length, ``jax.jit(jax.grad(loss)).lower(...).compile()`` and its
``memory_analysis().temp_size_in_bytes`` (the scratch XLA allocates beyond arguments and outputs),
for naive causal attention (``lineage_jax.attention.mha.attention``) and for ours
(``lineage_jax.attention.flash.flash_attention``).

Reported: bytes per length, the growth per doubling (linear ≈ 2×, quadratic ≈ 4×) and
naive / ours at the largest length. Targets: ours grows ≤ 2.2× per doubling; naive / ours ≥ 10×
at 8192.
"""
from __future__ import annotations

LENGTHS = (512, 1024, 2048, 4096, 8192)
QUICK_LENGTHS = (512, 1024, 2048)
BATCH, HEADS, HEAD_DIM = 1, 4, 64
GROWTH_TARGET, RATIO_TARGET, RATIO_AT = 2.2, 10.0, 8192


def temp_bytes(attn, T: int, batch: int = BATCH, heads: int = HEADS, head_dim: int = HEAD_DIM) -> int:
    """Temporary bytes of the compiled forward+backward of sum(attn(q, k, v)) at length T (not run)."""
    import jax
    import jax.numpy as jnp
    x = jax.ShapeDtypeStruct((batch, T, heads, head_dim), jnp.float32)
    grad = jax.jit(jax.grad(lambda q, k, v: attn(q, k, v).sum(), argnums=(0, 1, 2)))
    return int(grad.lower(x, x, x).compile().memory_analysis().temp_size_in_bytes)


def _naive(q, k, v):
    from lineage_jax.attention import mha
    return mha.attention(q, k, v, mask=mha.causal_mask(q.shape[1]))


def _ours(q, k, v):
    from lineage_jax.attention.flash import flash_attention
    return flash_attention(q, k, v, causal=True)


def measure(lengths=LENGTHS) -> dict:
    """{"lengths", "naive_bytes", "flash_bytes", growth per doubling, naive/ours per length}."""
    import jax
    naive = [temp_bytes(_naive, T) for T in lengths]
    ours = [temp_bytes(_ours, T) for T in lengths]
    growth = lambda b: [b[i + 1] / b[i] for i in range(len(b) - 1)]
    return {"backend": jax.default_backend(), "shape": {"batch": BATCH, "heads": HEADS, "head_dim": HEAD_DIM},
            "dtype": "float32", "causal": True, "lengths": list(lengths),
            "naive_bytes": naive, "flash_bytes": ours,
            "naive_growth": growth(naive), "flash_growth": growth(ours),
            "naive_over_flash": [n / f for n, f in zip(naive, ours)]}


def plot(result: dict, path: str) -> None:
    """Log-log temporary memory against length, naive and ours, with a linear guide."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    L = result["lengths"]
    mib = lambda b: [x / 2 ** 20 for x in b]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.loglog(L, mib(result["naive_bytes"]), "o-", base=2, label="naive (T×T scores)")
    ax.loglog(L, mib(result["flash_bytes"]), "s-", base=2, label="blockwise (flash)")
    f0 = result["flash_bytes"][0] / 2 ** 20
    ax.loglog(L, [f0 * t / L[0] for t in L], ":", color="gray", base=2, label="linear in T")
    ax.loglog(L, [f0 * (t / L[0]) ** 2 for t in L], "--", color="lightgray", base=2, label="quadratic in T")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("compiled fwd+bwd temporary memory (MiB)")
    ax.set_title(f"causal attention, B={BATCH} H={HEADS} K={HEAD_DIM}, f32")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args) -> dict:
    """The ``lineage bench attention`` entry point (args: json, out, quick; the rest ignored)."""
    result = measure(QUICK_LENGTHS if getattr(args, "quick", False) else LENGTHS)
    L = result["lengths"]
    result["max_flash_growth"] = max(result["flash_growth"])
    result["ratio_at"] = L[-1]
    result["naive_over_flash_at_max"] = result["naive_over_flash"][-1]
    result["targets"] = {"flash_growth_max": GROWTH_TARGET, "naive_over_flash_min": RATIO_TARGET,
                         "at": RATIO_AT}
    result["growth_ok"] = result["max_flash_growth"] <= GROWTH_TARGET
    result["ratio_ok"] = result["naive_over_flash_at_max"] >= RATIO_TARGET if L[-1] >= RATIO_AT else None
    out = getattr(args, "out", None)
    if out:
        plot(result, out)
        result["plot"] = out
    return result


def report(r: dict) -> str:
    """A table: length, naive MiB, ours MiB, growth per doubling, naive / ours."""
    mib = lambda b: f"{b / 2 ** 20:10.1f}"
    lines = [f"attention fwd+bwd temporary memory (compiled, not run; {r['backend']}, causal, "
             f"B={r['shape']['batch']} H={r['shape']['heads']} K={r['shape']['head_dim']}, f32)",
             f"{'T':>6} {'naive MiB':>10} {'flash MiB':>10} {'naive x':>8} {'flash x':>8} {'naive/flash':>12}"]
    for i, T in enumerate(r["lengths"]):
        ng = f"{r['naive_growth'][i - 1]:8.2f}" if i else f"{'':>8}"
        fg = f"{r['flash_growth'][i - 1]:8.2f}" if i else f"{'':>8}"
        lines.append(f"{T:>6} {mib(r['naive_bytes'][i])} {mib(r['flash_bytes'][i])} {ng} {fg} "
                     f"{r['naive_over_flash'][i]:12.1f}")
    ok = lambda b: "n/a (quick)" if b is None else ("ok" if b else "MISSED")
    lines.append(f"flash growth per doubling: max {r['max_flash_growth']:.2f}x (target <= "
                 f"{r['targets']['flash_growth_max']}x): {ok(r['growth_ok'])}")
    lines.append(f"naive / flash at {r['ratio_at']}: {r['naive_over_flash_at_max']:.1f}x (target >= "
                 f"{r['targets']['naive_over_flash_min']}x at {r['targets']['at']}): {ok(r['ratio_ok'])}")
    if r.get("plot"):
        lines.append(f"plot: {r['plot']}")
    return "\n".join(lines)
