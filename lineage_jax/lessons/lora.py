"""Lesson: LoRA and QLoRA against full fine-tuning (Hu et al. 2021; Dettmers et al. 2023).

A tiny Llama is pretrained on one synthetic "domain" (sequences from a random sparse bigram chain) and
then adapted to another (a second chain) four ways, each for the same steps: full fine-tuning, LoRA at
several ranks (q, k, v, o and MLP kernels; ``adapt.lora``), and QLoRA (the frozen kernels NF4 with double
quantisation, ``adapt.quant``). Rows: held-out loss on the new domain, trainable parameters, and the
memory per device the compiled step reads (``memory_analysis()`` and its arguments: frozen + trained
parameters, optimiser state, temporaries). GPT-2 small (124M) is compiled the same ways but not run:
the memory a real adaptation would take.

Why LoRA's optimiser state shrinks: Adam keeps two moments per *trained* scalar, so the ratio of LoRA's
optimiser state to full fine-tuning's is the ratio of trainable parameters (the count scalars aside).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import numpy as np

from lineage_jax.adapt import lora, quant
from lineage_jax.config import ConfigError, load_config
from lineage_jax.lessons import harness
from lineage_jax.train.finetune import build_finetune
from lineage_jax.train.setup import build

TINY = ["model.arch=llama", "model.layers=2", "model.width=64", "model.heads=4", "model.vocab_size=64",
        "model.context=32", "model.scan_layers=true", "mesh.data=1", "optim.warmup_steps=10", "optim.clip_norm=1.0",
        "train.batch_size=16"]
# GPT-2 small's compiled rows: (method, rank, quant, LoRA forward); "merged" builds W + ΔW per kernel (the reference)
GPT2_METHODS = [("full", 0, "none", "-"), ("lora", 8, "none", "onthefly"), ("lora", 8, "none", "merged"),
                ("qlora", 8, "nf4", "onthefly")]
GPT2_SMALL = ["mesh.data=1", "train.batch_size=8", "train.grad_accum=1", "model.dropout=0.0", "model.remat=full"]


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    pretrain_steps: int = 400
    steps: int = 200              # fine-tuning steps, every method
    ranks: str = "1,4,16"
    qlora_rank: int = 4
    full_lr: float = 3e-3
    lora_lr: float = 1e-2
    gpt2_small: bool = True       # compile GPT-2 small's steps (not run) for the memory rows

    def __post_init__(self):
        harness.at_least_one(self, "pretrain_steps", "steps", "qlora_rank")
        if not (self.full_lr > 0 and self.lora_lr > 0):
            raise ConfigError(f"full_lr={self.full_lr}, lora_lr={self.lora_lr}: must be positive")
        self.rank_list()

    def rank_list(self) -> list[int]:
        return harness.positive_list("ranks", self.ranks, int, "1,4,16")


QUICK = dict(pretrain_steps=40, steps=30, ranks="4", gpt2_small=False)


def chain(seed: int, vocab: int, fan: int = 4):
    """A random sparse bigram chain: each token goes to one of ``fan`` successors, with Dirichlet weights."""
    rng = np.random.default_rng(seed)
    nxt = np.stack([rng.choice(vocab, fan, replace=False) for _ in range(vocab)])
    p = rng.dirichlet(np.full(fan, 0.5), size=vocab)
    return nxt, p


def sample(ch, rng, batch: int, length: int) -> np.ndarray:
    nxt, p = ch
    out = np.empty((batch, length), np.int32)
    out[:, 0] = rng.integers(0, len(nxt), batch)
    for t in range(1, length):
        pick = (rng.random(batch)[:, None] > np.cumsum(p[out[:, t - 1]], axis=1)).sum(1)
        out[:, t] = nxt[out[:, t - 1], np.minimum(pick, nxt.shape[1] - 1)]
    return out


def state_bytes(tree) -> int:
    """Bytes per device of a tree of (sharded) arrays or ShapeDtypeStructs."""
    def one(x):
        shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
        return int(np.prod(shape)) * np.dtype(x.dtype).itemsize
    return sum(one(x) for x in jax.tree.leaves(tree))


def kernel_bits(frozen) -> float | None:
    """Bits per weight of the frozen base's quantised kernels (None when none is quantised)."""
    qs = [x for x in jax.tree.leaves(frozen, is_leaf=quant.is_quantized) if quant.is_quantized(x)]
    return 8 * sum(q.nbytes() for q in qs) / sum(int(np.prod(q.shape)) for q in qs) if qs else None


def memory_row(compiled, params, opt_state, frozen=None) -> dict:
    m = compiled.memory_analysis()
    bits = kernel_bits(frozen) if frozen is not None else None
    return {"trained_param_bytes": state_bytes(params), "frozen_param_bytes": state_bytes(frozen) if frozen else 0,
            "frozen_kernel_bits": 32.0 if frozen is not None and bits is None else bits,
            "opt_state_bytes": state_bytes(opt_state), "temp_bytes": int(m.temp_size_in_bytes),
            "argument_bytes": int(m.argument_size_in_bytes)}


def methods(cfg: Config):
    yield "full", 0, "none"
    for r in cfg.rank_list():
        yield "lora", r, "none"
    yield "qlora", cfg.qlora_rank, "nf4"


def adapt_setup(c, method: str, rank: int, q: str, params, devices, mode: str = "onthefly", compile_eval=True):
    """(setup, trained-state abstract, frozen, compiled step) of one method (``compile_eval=False``: the train
    step alone, for the memory rows)."""
    if method == "full":
        setup = build(c, devices=devices, compile_eval=compile_eval)
        return setup, setup.abstract_state(), None, setup.train_step
    ft = build_finetune(c, lora.LoraConfig(rank=rank, alpha=2.0 * rank), params, quant_kind=q, devices=devices,
                        mode=mode, compile_eval=compile_eval)
    return ft.setup, ft.setup.abstract_state(), ft.base, ft.step_fn


def run(cfg: Config, out_dir: str | Path | None = None, progress: bool = True) -> harness.LessonResult:
    t0 = time.perf_counter()
    devices = jax.devices()[:1]
    over = [*TINY, f"train.steps={cfg.pretrain_steps}", f"train.seed={cfg.seed}", f"optim.lr={cfg.full_lr}"]
    base_cfg = load_config("tiny", over)
    a, b = chain(cfg.seed + 1, 64), chain(cfg.seed + 2, 64)
    rng = np.random.default_rng(cfg.seed)
    T, B = base_cfg.model.context, base_cfg.train.batch_size
    held_out = sample(b, np.random.default_rng(cfg.seed + 99), 64, T + 1)

    setup = build(base_cfg, devices=devices)                    # pretraining on domain A
    state = setup.init_state(jax.random.key(cfg.seed))
    state, _, _ = harness.fit(setup.train_step, state, lambda s: setup.put_batch(sample(a, rng, B, T + 1)),
                              cfg.pretrain_steps, progress=progress, desc="pretrain (domain A)")
    params = jax.device_get(state.params)

    def eval_loss(s, st):
        return float(np.mean([float(s.eval_step(st.params, s.put_batch(held_out[i:i + B])))
                              for i in range(0, len(held_out), B)]))

    base_loss = eval_loss(setup, state)
    rows, curves = [], {}
    for method, rank, q in methods(cfg):
        lr = cfg.full_lr if method == "full" else cfg.lora_lr
        c = load_config("tiny", [*TINY, f"train.steps={cfg.steps}", f"optim.lr={lr}", "optim.weight_decay=0.0"])
        s, abstract, frozen, compiled = adapt_setup(c, method, rank, q, params, devices)
        st = s.init_state(jax.random.key(cfg.seed + 5))
        if method == "full":
            st = st.replace(params=jax.device_put(params, s.state_sharding.params),
                            opt_state=jax.jit(s.tx.init)(params))
        frng = np.random.default_rng(cfg.seed + 7)
        label = method if method == "full" else f"{method} r={rank}"
        st, hist, _ = harness.fit(s.train_step, st, lambda _: s.put_batch(sample(b, frng, B, T + 1)), cfg.steps,
                                  log_every=max(1, cfg.steps // 20), progress=progress, desc=label)
        curves[label] = [(h["step"], h["loss"]) for h in hist]
        trained = lora.count(abstract.params)
        rows.append({"model": "tiny", "method": method, "rank": rank, "quant": q, "ran": True,
                     "mode": "-" if method == "full" else "onthefly",
                     "trainable": trained, "trainable_frac": trained / lora.count(params),
                     "base_loss_new_domain": base_loss, "final_loss_new_domain": eval_loss(s, st),
                     **memory_row(compiled, abstract.params, abstract.opt_state, frozen)})
    if cfg.gpt2_small:
        rows += gpt2_small_rows(cfg, devices, progress)
    figures = [] if out_dir is None else [harness.figure(out_dir, "lora.png", lambda ax: plot(ax, rows, curves),
                                                         panels=2, title="Full fine-tuning vs LoRA vs QLoRA")]
    return harness.result("lora", rows, supports, figures, seconds=round(time.perf_counter() - t0, 1),
                          config=dataclasses.asdict(cfg))


def gpt2_small_rows(cfg: Config, devices, progress: bool) -> list[dict]:
    """GPT-2 small's steps compiled, not run: the memory rows of a real-sized adaptation."""
    c = load_config("gpt2_small", GPT2_SMALL)
    setup = build(c, compile_steps=False, devices=devices)
    params = jax.eval_shape(setup.init_state, jax.random.key(0)).params
    params = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), params)     # shapes only matter (host zeros)
    rows = []
    total = lora.count(params)
    for method, rank, q, mode in GPT2_METHODS:
        if progress:
            print(f"compiling gpt2_small: {method} {mode}", flush=True)
        s, abstract, frozen, compiled = adapt_setup(c, method, rank, q, params, devices, mode, compile_eval=False)
        trained = lora.count(abstract.params)
        rows.append({"model": "gpt2_small", "method": method, "rank": rank, "quant": q, "mode": mode, "ran": False,
                     "trainable": trained, "trainable_frac": trained / total,
                     **memory_row(compiled, abstract.params, abstract.opt_state, frozen)})
    return rows


def opt_ratio_ok(rows: list[dict], tol: float = 0.05) -> bool:
    """Every LoRA row's optimiser-state bytes / full fine-tuning's = its trainable ratio, within ``tol``."""
    ok = True
    for model in {r["model"] for r in rows}:
        full = next(r for r in rows if r["model"] == model and r["method"] == "full")
        for r in rows:
            if r["model"] == model and r["method"] != "full":
                want = r["trainable"] / full["trainable"]
                ok &= abs(r["opt_state_bytes"] / full["opt_state_bytes"] / want - 1) <= tol
    return ok


def supports(rows: list[dict]) -> bool:
    """Every adapted model (LoRA, QLoRA) learns the new domain: its held-out loss falls below the base's by
    at least half as much as full fine-tuning's does, training a fraction of the parameters; the optimiser
    state scales with the trainable parameters (5%); QLoRA's frozen kernels take 4–4.2 bits per weight
    (NF4 + double quantisation), under a third of LoRA's 32; where GPT-2 small is compiled, LoRA on the fly
    holds fewer temporaries than the merged form (no W + ΔW, no kernel cotangent per layer)."""
    tiny = [r for r in rows if r["model"] == "tiny"]
    full = next(r for r in tiny if r["method"] == "full")
    gain = full["base_loss_new_domain"] - full["final_loss_new_domain"]
    learns = all(r["base_loss_new_domain"] - r["final_loss_new_domain"] >= 0.5 * gain and r["trainable_frac"] < 1
                 for r in tiny if r["method"] != "full")
    small = all(4.0 <= r["frozen_kernel_bits"] <= 4.2 for r in rows if r["method"] == "qlora")
    gpt2 = {r["mode"]: r["temp_bytes"] for r in rows if r["model"] == "gpt2_small" and r["method"] == "lora"}
    lighter = not gpt2 or gpt2["onthefly"] < gpt2["merged"]
    return bool(gain > 0 and learns and opt_ratio_ok(rows) and small and lighter)


def row_label(r: dict) -> str:
    """"lora r=8", with " merged" for the reference form's row."""
    return r["method"] + (f" r={r['rank']}" if r["rank"] else "") + (" merged" if r.get("mode") == "merged" else "")


def report(res: harness.LessonResult) -> list[str]:
    mb = lambda n: f"{n / 2 ** 20:.2f} MiB"  # noqa: E731
    lines = []
    for r in res.rows:
        name = row_label(r)
        loss = f"loss {r['final_loss_new_domain']:.3f}, " if r["ran"] else "compiled only, "
        bits = f" ({r['frozen_kernel_bits']:.3g} bits/weight in adapted kernels)" if r["frozen_kernel_bits"] else ""
        lines.append(f"{r['model']:>10} {name:>17}: {loss}trainable {r['trainable']:,} ({r['trainable_frac']:.2%}), "
                     f"frozen {mb(r['frozen_param_bytes'])}{bits}, trained {mb(r['trained_param_bytes'])}, "
                     f"optimiser {mb(r['opt_state_bytes'])}, temporaries {mb(r['temp_bytes'])}")
    return lines


def plot(axes, rows, curves) -> None:
    a, b = axes
    for label, pts in curves.items():
        a.plot(*zip(*pts), label=label)
    a.set_xlabel("fine-tuning step")
    a.set_ylabel("training loss, new domain")
    a.grid(alpha=0.3)
    a.legend(fontsize=8)
    show = [r for r in rows if r["model"] == ("gpt2_small" if any(r["model"] == "gpt2_small" for r in rows)
                                               else "tiny")]
    names = [row_label(r) for r in show]
    bottom = np.zeros(len(show))
    for key, label in (("frozen_param_bytes", "frozen weights"), ("trained_param_bytes", "trained weights"),
                       ("opt_state_bytes", "optimiser state")):
        vals = np.array([r[key] / 2 ** 20 for r in show])
        b.bar(names, vals, bottom=bottom, label=label)
        bottom += vals
    for i, r in enumerate(show):   # the step's temporaries (activations, ΔW) beside each bar, not stacked
        b.text(i, bottom[i], f"+{r['temp_bytes'] / 2 ** 20:,.0f} MiB\ntemporaries", ha="center", va="bottom", fontsize=7)
    b.set_ylim(0, bottom.max() * 1.25)
    b.set_ylabel(f"state, MiB per device ({show[0]['model']}, compiled step)")
    b.legend(fontsize=8)
