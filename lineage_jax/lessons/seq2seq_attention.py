"""Lesson: LSTM encoder–decoders without and with attention (Sutskever, Vinyals & Le 2014; Bahdanau, Cho &
Bengio 2015, Fig. 2–3; Luong, Pham & Manning 2015, §3.1), on the ``translate`` lesson's numbers task
("forty-two thousand and seven" -> "42007", one character vocabulary).

    none       the encoder's last state starts the decoder and is its context at every step (the fixed-length
               vector: Sutskever et al. 2014, Cho et al. 2014's RNNencdec)
    bahdanau   a bidirectional encoder, h_j = [h→_j; h←_j]; before each step e_ij = vᵀ tanh(W s_{i−1} + U h_j),
               α_i = softmax(e_i), c_i = Σ_j α_ij h_j feeds the decoder LSTM with y_{i−1};
               s_0 = tanh(W_s h←_1) (RNNsearch, Appendix A; the output layer here reads tanh(W [c_i; s_i]),
               not the paper's maxout of s_{i−1}, y_{i−1}, c_i)
    dot | general | concat   Luong's global attention after the step: score(h_t, h̄_s) = h_tᵀ h̄_s,
               h_tᵀ W_a h̄_s or v_aᵀ tanh(W_a [h_t; h̄_s]); h̃_t = tanh(W_c [c_t; h_t]) predicts y_t and is fed
               to the next step's input ("input feeding", §3.3)

The measured claim (Bahdanau Fig. 2): grouped by source length, the fixed-vector model's held-out exact match
falls with length more than the attention models', at an equal training budget. Training draws sources
length-balanced (most numbers below 10,000 are 30–47 characters long), the held-out pairs are stratified by
length bucket. The task's targets are short (≤ 5 digits), so with a long enough budget the fixed vector
carries them too: the effect measured is how much harder long sources are to learn through it.
Everything is a pure function of parameter dicts; the train step is jitted and pure.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lineage_jax.config import ConfigError
from lineage_jax.foundations import lstm
from lineage_jax.lessons import harness
from lineage_jax.lessons.translate import Vocab, task_pairs

VARIANTS: tuple[str, ...] = ("none", "bahdanau", "dot", "general", "concat")
LUONG = ("dot", "general", "concat")


def _dense(key, n_in, n_out, bias=True):
    p = {"w": jax.random.normal(key, (n_in, n_out)) * n_in ** -0.5}
    return {**p, "b": jnp.zeros((n_out,))} if bias else p


def _apply(p, x):
    return x @ p["w"] + p["b"] if "b" in p else x @ p["w"]


def init(key: jax.Array, variant: str, vocab: int, embed: int, hidden: int) -> dict:
    """The parameters of one variant; the decoder is an LSTM of width ``hidden`` in every variant."""
    if variant not in VARIANTS:
        raise ConfigError(f"variant={variant}: unknown; allowed: {', '.join(VARIANTS)}")
    k = iter(jax.random.split(key, 12))
    H, A = hidden, (2 * hidden if variant == "bahdanau" else hidden)     # A: an annotation's width
    p = {"embed": jax.random.normal(next(k), (vocab, embed)) * embed ** -0.5,
         "enc": lstm.init(next(k), embed, H, forget_bias=1.0),
         "dec": lstm.init(next(k), embed + (H if variant in LUONG else A), H, forget_bias=1.0),
         "out": _dense(next(k), H + A, H), "logits": _dense(next(k), H, vocab)}
    if variant == "bahdanau":
        p |= {"enc_back": lstm.init(next(k), embed, H, forget_bias=1.0), "init": _dense(next(k), H, H),
              "W": _dense(next(k), H, H, bias=False), "U": _dense(next(k), A, H), "v": _dense(next(k), H, 1, False)}
    if variant == "general":
        p["W_a"] = _dense(next(k), H, H, bias=False)
    if variant == "concat":
        p |= {"W_a": _dense(next(k), 2 * H, H), "v": _dense(next(k), H, 1, bias=False)}
    return p


def encode(p: dict, variant: str, src: jax.Array):
    """src [B, S] -> (annotations [B, S, A], source mask [B, S], the decoder's first (h, c))."""
    mask = (src != Vocab.PAD).astype(jnp.float32)
    x = p["embed"][src]
    if variant == "bahdanau":
        ann, _, (h_back, _) = lstm.bidirectional(p["enc"], p["enc_back"], x, mask)
        return ann, mask, (jnp.tanh(_apply(p["init"], h_back)), jnp.zeros_like(h_back))
    final, hs = lstm.scan(p["enc"], x, mask=mask)
    return hs, mask, final


def _softmax(scores, mask):
    return jax.nn.softmax(jnp.where(mask > 0, scores, -1e9), axis=-1)


def _score(p, variant, query, ann, proj):
    """Alignment scores [B, S] of one decoder state against every annotation."""
    if variant == "bahdanau":
        return _apply(p["v"], jnp.tanh(_apply(p["W"], query)[:, None] + proj))[..., 0]
    if variant == "dot":
        return jnp.einsum("bh,bsh->bs", query, ann)
    if variant == "general":
        return jnp.einsum("bh,bsh->bs", _apply(p["W_a"], query), ann)
    both = jnp.concatenate([jnp.broadcast_to(query[:, None], ann.shape), ann], -1)     # concat
    return _apply(p["v"], jnp.tanh(_apply(p["W_a"], both)))[..., 0]


def decode_step(p: dict, variant: str, enc, carry, y_prev):
    """One decoder step: carry ((h, c), feed) and the previous token [B] -> (carry, logits [B, V], α [B, S])."""
    ann, mask, proj, fixed = enc
    (h, c), feed = carry
    e = p["embed"][y_prev]
    if variant == "none":
        ctx, alpha = fixed, jnp.zeros(mask.shape)
        h, c = lstm.cell(p["dec"], (h, c), jnp.concatenate([e, ctx], -1))
    elif variant == "bahdanau":                       # attend with s_{i−1}, then step
        alpha = _softmax(_score(p, variant, h, ann, proj), mask)
        ctx = jnp.einsum("bs,bsa->ba", alpha, ann)
        h, c = lstm.cell(p["dec"], (h, c), jnp.concatenate([e, ctx], -1))
    else:                                             # Luong: step (input feeding), then attend with h_t
        h, c = lstm.cell(p["dec"], (h, c), jnp.concatenate([e, feed], -1))
        alpha = _softmax(_score(p, variant, h, ann, proj), mask)
        ctx = jnp.einsum("bs,bsa->ba", alpha, ann)
    out = jnp.tanh(_apply(p["out"], jnp.concatenate([ctx, h], -1)))
    return ((h, c), out), _apply(p["logits"], out), alpha


def _prepare(p, variant, src):
    ann, mask, first = encode(p, variant, src)
    proj = _apply(p["U"], ann) if variant == "bahdanau" else None
    enc = (ann, mask, proj, first[0])
    return enc, (first, jnp.zeros_like(first[0]))


def forward(p: dict, variant: str, src: jax.Array, tgt_in: jax.Array):
    """Teacher forcing: logits [B, T, V] and alignments [B, T, S], the decoder a ``lax.scan`` over T."""
    enc, carry = _prepare(p, variant, src)
    step = lambda carry, y: _pack(decode_step(p, variant, enc, carry, y))
    _, (logits, alpha) = jax.lax.scan(step, carry, tgt_in.T)
    return logits.swapaxes(0, 1), alpha.swapaxes(0, 1)


def _pack(out):
    carry, logits, alpha = out
    return carry, (logits, alpha)


@functools.partial(jax.jit, static_argnums=(1, 3))
def greedy(p: dict, variant: str, src: jax.Array, T: int):
    """Greedy decoding of T tokens from BOS: (tokens [B, T], alignments [B, T, S])."""
    enc, carry = _prepare(p, variant, src)

    def step(state, _):
        carry, y = state
        carry, logits, alpha = decode_step(p, variant, enc, carry, y)
        y = logits.argmax(-1).astype(jnp.int32)
        return (carry, y), (y, alpha)
    _, (ys, alpha) = jax.lax.scan(step, (carry, jnp.full(src.shape[:1], Vocab.BOS, jnp.int32)), None, length=T)
    return ys.T, alpha.swapaxes(0, 1)


def make_train_step(variant: str, tx: optax.GradientTransformation):
    """A jitted, pure ``train_step((params, opt_state), batch) -> ((params, opt_state), metrics)``."""
    def loss_fn(p, batch):
        logits, _ = forward(p, variant, batch["src"], batch["tgt_in"])
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["tgt_out"][..., None], -1)[..., 0]
        m = (batch["tgt_out"] != Vocab.PAD).astype(jnp.float32)
        return (nll * m).sum() / m.sum()

    @jax.jit
    def train_step(state, batch):
        p, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(p, batch)
        updates, opt_state = tx.update(grads, opt_state, p)
        return (optax.apply_updates(p, updates), opt_state), {"loss": loss, "grad_norm": optax.global_norm(grads)}
    return train_step


# --------------------------------------------------------------------------- the data

EDGES: tuple[int, ...] = (20, 30, 40, 50)        # source-length buckets: < 20, 20–29, 30–39, 40–49, ≥ 50


def bucket_names(edges=EDGES) -> list[str]:
    return [f"<{edges[0]}"] + [f"{a}-{b - 1}" for a, b in zip(edges, edges[1:])] + [f">={edges[-1]}"]


def stratified_split(pairs: list, per_bucket: int, seed: int, edges=EDGES):
    """(train, test, test bucket ids): up to ``per_bucket`` held-out pairs from every source-length bucket
    (at most half of a bucket), chosen by a permutation fixed by ``seed``; the rest is training."""
    buckets = np.searchsorted(edges, [len(x) for x, _ in pairs], side="right")
    order = np.random.default_rng(seed).permutation(len(pairs))
    taken = {b: 0 for b in range(len(edges) + 1)}
    limit = {b: min(per_bucket, int((buckets == b).sum()) // 2) for b in taken}
    test_idx = []
    for i in order:
        b = int(buckets[i])
        if taken[b] < limit[b]:
            taken[b] += 1
            test_idx.append(i)
    held = set(test_idx)
    train = [pairs[i] for i in range(len(pairs)) if i not in held]
    return train, [pairs[i] for i in test_idx], buckets[test_idx]


def balanced_batches(train: list, steps: int, batch: int, seed: int, edges=EDGES) -> np.ndarray:
    """[steps, batch] training indices, each bucket of source length equally likely (then uniform within)."""
    buckets = np.searchsorted(edges, [len(x) for x, _ in train], side="right")
    sizes = np.bincount(buckets, minlength=len(edges) + 1)
    w = 1.0 / sizes[buckets]
    return np.random.default_rng(seed + 1).choice(len(train), size=(steps, batch), p=w / w.sum())


# --------------------------------------------------------------------------- the lesson

@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    variants: str = "none,bahdanau,dot,general,concat"
    steps: int = 600            # an equal, short budget: at 1,500 steps every variant is at ~100% (docs/lineage.md)
    batch: int = 64
    embed: int = 32
    hidden: int = 48
    lr: float = 3e-3            # Adam, gradients clipped to global norm `clip`
    clip: float = 1.0
    max_number: int = 10_000    # the numbers task: 0 … max_number − 1 (sources of 3 … 47 characters)
    per_bucket: int = 200       # held-out pairs per source-length bucket

    def __post_init__(self):
        harness.at_least_one(self, "steps", "batch", "embed", "hidden", "per_bucket")
        names = self.variant_list
        bad = [v for v in names if v not in VARIANTS]
        if bad or not names or len(set(names)) != len(names):
            raise ConfigError(f"variants={self.variants}: a comma-separated list of distinct names from "
                              f"{', '.join(VARIANTS)}")
        if "none" not in names or len(names) < 2:
            raise ConfigError(f"variants={self.variants}: must include none and at least one attention variant")
        if not 100 <= self.max_number <= 1_000_000:
            raise ConfigError(f"max_number={self.max_number}: must be in 100 … 1000000")
        if not self.lr > 0 or not self.clip > 0:
            raise ConfigError(f"lr={self.lr}, clip={self.clip}: each must be > 0")

    @property
    def variant_list(self) -> list[str]:
        return [v.strip() for v in self.variants.split(",") if v.strip()]


# `--quick`: no attention against Bahdanau's, 300 steps.
QUICK = dict(variants="none,bahdanau", steps=300, per_bucket=60)


def drops(rows: list[dict]) -> dict[str, float]:
    """Per variant: its best bucket's exact match minus its longest bucket's (how far it falls at the long end).

    Not "shortest minus longest": the < 20 bucket holds only the numbers below 100 and a few round thousands
    (about 45 training pairs below 10,000), so every variant is weaker there for want of data, not of length.
    """
    out = {}
    for v in dict.fromkeys(r["variant"] for r in rows):
        rs = sorted((r for r in rows if r["variant"] == v), key=lambda r: r["bucket_index"])
        out[v] = max(r["accuracy"] for r in rs) - rs[-1]["accuracy"]
    return out


def supports(rows: list[dict]) -> bool:
    """Without attention exact match falls from its best bucket to the longest by at least 5 points, and by
    more than it falls for every attention variant."""
    d = drops(rows)
    return d["none"] >= 0.05 and all(d[v] < d["none"] for v in d if v != "none")


def evaluate(p, variant, vocab, test, buckets, S, T, n_buckets):
    """Rows: exact match of the greedy decoding per source-length bucket; and the alignments."""
    arrays = vocab.arrays(test, S, T)
    tokens, alpha = greedy(p, variant, jnp.asarray(arrays["src"]), T)
    preds = [vocab.decode(row) for row in np.asarray(tokens)]
    hit = np.array([pr == y for pr, (_, y) in zip(preds, test)])
    names = bucket_names()
    rows = [{"variant": variant, "bucket": names[b], "bucket_index": b, "accuracy": float(hit[buckets == b].mean()),
             "n": int((buckets == b).sum())} for b in range(n_buckets) if (buckets == b).any()]
    return rows, preds, np.asarray(alpha)


def run(cfg: Config, out_dir: str | Path | None = None, progress: bool = True) -> harness.LessonResult:
    t0 = time.perf_counter()
    vocab = Vocab()
    pairs = task_pairs("numbers", cfg.max_number)
    train, test, buckets = stratified_split(pairs, cfg.per_bucket, cfg.seed)
    S, T = max(len(x) for x, _ in pairs), max(len(y) for _, y in pairs) + 1
    data = {k: jnp.asarray(v) for k, v in vocab.arrays(train, S, T).items()}
    order = balanced_batches(train, cfg.steps, cfg.batch, cfg.seed)
    batch_at = lambda s: {k: v[order[s - 1]] for k, v in data.items()}
    tx = optax.chain(optax.clip_by_global_norm(cfg.clip), optax.adam(cfg.lr))
    rows, details, shown = [], {}, {}
    for variant in cfg.variant_list:
        t1 = time.perf_counter()
        params = init(jax.random.key(cfg.seed), variant, len(vocab), cfg.embed, cfg.hidden)
        state = (params, tx.init(params))
        state, history, _ = harness.fit(make_train_step(variant, tx), state, batch_at, cfg.steps,
                                        log_every=max(1, cfg.steps // 20), progress=progress,
                                        desc=f"seq2seq {variant}")
        r, preds, alpha = evaluate(state[0], variant, vocab, test, buckets, S, T, len(EDGES) + 1)
        rows += r
        details[variant] = {"params": int(sum(math.prod(x.shape) for x in jax.tree.leaves(params))),
                            "final_loss": history[-1]["loss"], "seconds": round(time.perf_counter() - t1, 1),
                            "accuracy": float(np.mean([pr == y for pr, (_, y) in zip(preds, test)])),
                            "loss_curve": [(h["step"], h["loss"]) for h in history]}
        shown[variant] = (preds, alpha)
    figures = []
    if out_dir is not None:
        figures.append(harness.figure(out_dir, "seq2seq_attention.png", functools.partial(plot, rows=rows),
                                      title="Exact match by source length (Bahdanau et al. 2015, Fig. 2)",
                                      panel_size=(7.0, 4.5)))
        attn = next(v for v in ("bahdanau", *LUONG) if v in shown)
        i = int(np.argmax([len(x) for x, _ in test]))
        figures.append(harness.figure(out_dir, "alignment.png", functools.partial(
            plot_alignment, source=test[i][0], prediction=shown[attn][0][i], alpha=shown[attn][1][i]),
            title=f"{attn} attention: alignment (Bahdanau et al. 2015, Fig. 3)", panel_size=(10.0, 3.5)))
    return harness.result("seq2seq_attention", rows, supports, figures, drops=drops(rows), variants=details,
                          buckets=bucket_names(), n_train=len(train), n_test=len(test),
                          seconds=round(time.perf_counter() - t0, 1), config=dataclasses.asdict(cfg))


def report(res: harness.LessonResult) -> list[str]:
    lines = ["exact match by source length (characters):"]
    names = list(dict.fromkeys(r["bucket"] for r in res.rows))
    lines.append("  " + "variant".ljust(10) + "".join(n.rjust(8) for n in names) + "    drop   params")
    for v, d in res.details["variants"].items():
        acc = {r["bucket"]: r["accuracy"] for r in res.rows if r["variant"] == v}
        lines.append("  " + v.ljust(10) + "".join(f"{acc[n]:8.1%}" for n in names)
                     + f"  {res.details['drops'][v]:6.1%}  {d['params']:,}")
    return lines


def plot(ax, rows) -> None:
    for v in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == v]
        ax.plot([r["bucket"] for r in rs], [r["accuracy"] for r in rs], "o-" if v != "none" else "s--",
                label="no attention" if v == "none" else v)
    ax.set_xlabel("source length (characters)")
    ax.set_ylabel("held-out exact match (greedy)")
    ax.set_ylim(0, 1.02)
    ax.legend()
    ax.grid(alpha=0.3)


def plot_alignment(ax, source: str, prediction: str, alpha: np.ndarray) -> None:
    out = list(prediction) + ["</s>"]
    a = alpha[:len(out), :len(source)]
    ax.imshow(a, cmap="gray_r", aspect="auto", vmin=0, vmax=max(float(a.max()), 1e-6))
    ax.set_xticks(range(len(source)), list(source), fontsize=7)
    ax.set_yticks(range(len(out)), out)
    ax.set_xlabel("source characters")
    ax.set_ylabel("generated")
