"""Lesson: train the original Transformer (Vaswani et al. 2017) on a synthetic translation task.

    numbers   "three hundred and forty-two"  ->  "342"            (0 … max_number − 1, British "and")
    dates     "2024-03-07"                    ->  "7 March 2024"   (every day of 1900 … 2099)

Both sides are spelled in one character vocabulary (PAD, BOS, EOS, then the characters), so the
paper's shared source/target/output embedding applies. The paper's training recipe, written out:

    label smoothing    q = (1 − ε)·onehot(y) + ε/V,  loss = −Σ_v q_v log p_v,  ε = 0.1     §5.4
    learning rate      lrate = d_model^−0.5 · min(step^−0.5, step · warmup^−1.5)          §5.3, eq. 3
    optimizer          Adam, β1 = 0.9, β2 = 0.98, ε = 1e−9                                   §5.3

``train_step(state, batch) -> (state, metrics)`` is pure; the held-out split (disjoint from the
training pairs, fixed by the seed) is scored by exact match of the greedy decoding.
"""
from __future__ import annotations

import dataclasses
import datetime
import math
import string
import time
from pathlib import Path
from typing import Any, Callable

import flax.struct
from flax.core import meta
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lineage_jax.config import ConfigError
from lineage_jax.lessons import harness
from lineage_jax.models.transformer import Transformer, TransformerConfig, greedy_decode

TASKS: tuple[str, ...] = ("numbers", "dates")

# --------------------------------------------------------------------------- the tasks

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_MONTHS = ("January February March April May June July August September October November December").split()


def _below_100(n: int) -> str:
    return _ONES[n] if n < 20 else _TENS[n // 10] + (f"-{_ONES[n % 10]}" if n % 10 else "")


def _below_1000(n: int) -> str:
    h, r = divmod(n, 100)
    if not h:
        return _below_100(r)
    return f"{_ONES[h]} hundred" + (f" and {_below_100(r)}" if r else "")


def number_words(n: int) -> str:
    """0 ≤ n < 10⁶ in British English words: 342 -> "three hundred and forty-two", 1005 -> "one thousand and five"."""
    if not 0 <= n < 1_000_000:
        raise ValueError(f"number_words: {n} is outside 0 … 999999")
    if n == 0:
        return "zero"
    th, r = divmod(n, 1000)
    words = f"{_below_1000(th)} thousand" if th else ""
    if r:
        words += (" and " if th and r < 100 else " " if th else "") + _below_1000(r)
    return words


def written_date(iso: str) -> str:
    """"2024-03-07" -> "7 March 2024"."""
    d = datetime.date.fromisoformat(iso)
    return f"{d.day} {_MONTHS[d.month - 1]} {d.year}"


def task_pairs(task: str, max_number: int = 10_000) -> list[tuple[str, str]]:
    """Every (source, target) pair of the task, in a fixed order."""
    if task == "numbers":
        return [(number_words(n), str(n)) for n in range(max_number)]
    if task == "dates":
        first, last = datetime.date(1900, 1, 1), datetime.date(2099, 12, 31)
        days = (first + datetime.timedelta(days=i) for i in range((last - first).days + 1))
        return [(d.isoformat(), written_date(d.isoformat())) for d in days]
    raise ConfigError(f"task={task}: unknown; allowed: {', '.join(TASKS)}")


def split(pairs: list, n_test: int, seed: int) -> tuple[list, list]:
    """(train, test): a permutation fixed by ``seed``; the first ``n_test`` pairs are held out."""
    if not 0 < n_test < len(pairs):
        raise ConfigError(f"n_test={n_test}: must be in 1 … {len(pairs) - 1} for {len(pairs)} pairs")
    order = np.random.default_rng(seed).permutation(len(pairs))
    return [pairs[i] for i in order[n_test:]], [pairs[i] for i in order[:n_test]]


class Vocab:
    """Characters -> ids: PAD 0, BOS 1, EOS 2, then space, '-', digits and letters."""
    PAD, BOS, EOS = 0, 1, 2
    CHARS = " -" + string.digits + string.ascii_lowercase + string.ascii_uppercase

    def __init__(self):
        self.index = {ch: i + 3 for i, ch in enumerate(self.CHARS)}

    def __len__(self) -> int:
        return len(self.CHARS) + 3

    def encode(self, text: str) -> list[int]:
        return [self.index[ch] for ch in text]

    def decode(self, ids) -> str:
        """Characters up to the first EOS (specials dropped)."""
        out = []
        for i in np.asarray(ids).tolist():
            if i == self.EOS:
                break
            if i >= 3:
                out.append(self.CHARS[i - 3])
        return "".join(out)

    def arrays(self, pairs, S: int, T: int) -> dict[str, np.ndarray]:
        """src [N, S] (characters, PAD), tgt_in [N, T] (BOS y), tgt_out [N, T] (y EOS), PAD-filled."""
        src = np.full((len(pairs), S), self.PAD, np.int32)
        tgt_in, tgt_out = src[:, :1].repeat(T, 1).copy(), src[:, :1].repeat(T, 1).copy()
        for r, (x, y) in enumerate(pairs):
            xs, ys = self.encode(x), self.encode(y)
            src[r, :len(xs)] = xs
            tgt_in[r, :len(ys) + 1] = [self.BOS, *ys]
            tgt_out[r, :len(ys) + 1] = [*ys, self.EOS]
        return {"src": src, "tgt_in": tgt_in, "tgt_out": tgt_out}


# --------------------------------------------------------------------------- the recipe (§5.3, §5.4)

def label_smoothed_cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array,
                                 epsilon: float = 0.1) -> tuple[jax.Array, jax.Array]:
    """Label smoothing (Szegedy et al. 2016; Vaswani et al. 2017, §5.4), per real target token.

    q = (1 − ε)·onehot(y) + ε/V, so −Σ_v q_v log p_v = (1 − ε)·(−log p_y) + ε·mean_v(−log p_v).
    logits [B, T, V], targets [B, T] int, mask [B, T] (1 = real) -> (smoothed loss, plain NLL),
    both averaged over the real tokens. The smoothed loss cannot fall below the entropy of q.
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    uniform = -logp.mean(axis=-1)
    loss = (1.0 - epsilon) * nll + epsilon * uniform
    mask = mask.astype(jnp.float32)
    n = jnp.maximum(mask.sum(), 1.0)
    return (loss * mask).sum() / n, (nll * mask).sum() / n


def inverse_sqrt_schedule(d_model: int, warmup: int, scale: float = 1.0) -> Callable[[jax.Array], jax.Array]:
    """lrate = scale · d_model^−0.5 · min(step^−0.5, step · warmup^−1.5) (§5.3, eq. 3; scale = 1 in the paper).

    Linear warmup to the peak d_model^−0.5 · warmup^−0.5 at step = warmup, then decay ∝ 1/√step.
    Optax counts updates from 0, the paper from 1: step = count + 1.
    """
    if warmup < 1:
        raise ConfigError(f"warmup={warmup}: must be at least 1")

    def schedule(count):
        step = jnp.asarray(count, jnp.float32) + 1.0
        return scale * d_model ** -0.5 * jnp.minimum(step ** -0.5, step * warmup ** -1.5)
    return schedule


def paper_adam(schedule) -> optax.GradientTransformation:
    """Adam with the paper's β1 = 0.9, β2 = 0.98, ε = 1e−9 (§5.3)."""
    return optax.adam(schedule, b1=0.9, b2=0.98, eps=1e-9)


@flax.struct.dataclass
class LessonState:
    step: jax.Array      # updates applied so far
    params: Any
    opt_state: Any
    key: jax.Array       # dropout key; step t uses fold_in(key, t)


def make_train_step(model: Transformer, tx: optax.GradientTransformation, epsilon: float = 0.1):
    """A pure, jitted ``train_step(state, batch) -> (state, metrics)``; batch = Vocab.arrays(...)."""
    def train_step(state: LessonState, batch):
        key = jax.random.fold_in(state.key, state.step)

        def loss_fn(params):
            logits = model.apply({"params": params}, batch["src"], batch["tgt_in"], deterministic=False,
                                 rngs={"dropout": key})
            return label_smoothed_cross_entropy(logits, batch["tgt_out"], batch["tgt_out"] != Vocab.PAD, epsilon)

        (loss, nll), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new, {"loss": loss, "nll": nll, "grad_norm": optax.global_norm(grads)}
    return jax.jit(train_step)


def translate(model: Transformer, params, vocab: Vocab, sources: list[str], S: int, T: int,
              batch: int = 200) -> list[str]:
    """Greedy translations of ``sources``, in fixed-shape batches (one compile; the last is padded)."""
    out = []
    for i in range(0, len(sources), batch):
        chunk = sources[i:i + batch]
        src = vocab.arrays([(s, "") for s in chunk + chunk[-1:] * (batch - len(chunk))], S, T)["src"]
        tokens = np.asarray(greedy_decode(model, params, jnp.asarray(src), max_len=T,
                                          bos_id=vocab.BOS, eos_id=vocab.EOS))
        out += [vocab.decode(row) for row in tokens[:len(chunk)]]
    return out


def exact_match(model, params, vocab, pairs, S, T, batch: int = 200) -> tuple[float, list[str]]:
    """Fraction of pairs whose greedy translation equals the target exactly, and the translations."""
    preds = translate(model, params, vocab, [x for x, _ in pairs], S, T, batch)
    return float(np.mean([p == y for p, (_, y) in zip(preds, pairs)])), preds


# --------------------------------------------------------------------------- the lesson

@dataclasses.dataclass(frozen=True)
class Config:
    task: str = "numbers"
    steps: int = 1000
    seed: int = 0
    batch: int = 64
    d_model: int = 64
    heads: int = 4
    d_ff: int = 0               # 0: 4 × d_model (the paper's 2048 = 4 × 512)
    layers: int = 2             # encoder layers = decoder layers
    dropout: float = 0.1
    warmup: int = 200
    lr_scale: float = 1.0       # multiplies eq. 3 (1.0: the paper's schedule unchanged)
    smoothing: float = 0.1
    n_test: int = 1000
    max_number: int = 10_000    # numbers task: 0 … max_number − 1
    evals: int = 6              # accuracy checkpoints on `eval_subset` held-out pairs during training
    eval_subset: int = 200

    def __post_init__(self):
        if self.task not in TASKS:
            raise ConfigError(f"task={self.task}: unknown; allowed: {', '.join(TASKS)}")
        harness.at_least_one(self, "steps", "batch", "d_model", "heads", "layers", "warmup", "n_test", "eval_subset")
        if self.d_ff < 0:
            raise ConfigError(f"d_ff={self.d_ff}: must be at least 0 (0: 4 × d_model)")
        if self.d_model % (2 * self.heads):
            raise ConfigError(f"d_model={self.d_model}: must be even and divisible by heads={self.heads}")
        if not 0 <= self.smoothing < 1 or not 0 <= self.dropout < 1:
            raise ConfigError(f"smoothing={self.smoothing}, dropout={self.dropout}: each must be in [0, 1)")
        if not 2 <= self.max_number <= 1_000_000:
            raise ConfigError(f"max_number={self.max_number}: must be in 2 … 1000000")

    @property
    def ffn(self) -> int:
        return self.d_ff or 4 * self.d_model


# `--quick`: 300 steps of a 32-wide 1+1-layer model on dates (tests/lessons: >= 50% held out).
QUICK = dict(task="dates", steps=300, d_model=32, layers=1, warmup=100, batch=32, n_test=200, evals=2)


def supports(rows: list[dict]) -> bool:
    """The claim holds when the final held-out exact match (the last row) is at least 50%."""
    return rows[-1]["accuracy"] >= 0.5


def run(cfg: Config, out_dir: str | Path | None = None, progress: bool = True,
        n_examples: int = 5) -> harness.LessonResult:
    """Train, score exact match on the held-out split (rows: accuracy against step), plot into ``out_dir``."""
    t0 = time.perf_counter()
    vocab = Vocab()
    pairs = task_pairs(cfg.task, cfg.max_number)
    train, test = split(pairs, cfg.n_test, cfg.seed)
    S = max(len(x) for x, _ in pairs)
    T = max(len(y) for _, y in pairs) + 1
    mcfg = TransformerConfig(vocab_size=len(vocab), d_model=cfg.d_model, heads=cfg.heads, d_ff=cfg.ffn,
                             encoder_layers=cfg.layers, decoder_layers=cfg.layers, dropout=cfg.dropout,
                             max_len=max(S, T), pad_id=vocab.PAD)
    model = Transformer(mcfg)
    data = vocab.arrays(train, S, T)
    init_key, drop_key = jax.random.split(jax.random.key(cfg.seed))
    first = {k: jnp.asarray(v[:1]) for k, v in data.items()}
    params = meta.unbox(jax.jit(model.init)(init_key, first["src"], first["tgt_in"])["params"])
    tx = paper_adam(inverse_sqrt_schedule(cfg.d_model, cfg.warmup, cfg.lr_scale))
    state = LessonState(step=jnp.int32(0), params=params, opt_state=tx.init(params), key=drop_key)

    rng = np.random.default_rng(cfg.seed + 1)
    order = np.concatenate([rng.permutation(len(train)) for _ in range(-(-cfg.steps * cfg.batch // len(train)))])
    probe = test[:min(cfg.eval_subset, len(test))]
    eval_at = {max(1, round(cfg.steps * (i + 1) / cfg.evals)) for i in range(cfg.evals)} - {cfg.steps}
    batch_at = lambda step: {k: jnp.asarray(v[order[(step - 1) * cfg.batch: step * cfg.batch]])
                             for k, v in data.items()}
    evaluate = lambda st, step: {"accuracy": exact_match(model, st.params, vocab, probe, S, T, len(probe))[0],
                                 "n": len(probe)}
    state, history, rows = harness.fit(make_train_step(model, tx, cfg.smoothing), state, batch_at, cfg.steps,
                                       evaluate=evaluate, eval_at=eval_at, progress=progress,
                                       desc=f"translate {cfg.task}")
    train_s = time.perf_counter() - t0

    accuracy, preds = exact_match(model, state.params, vocab, test, S, T, batch=len(probe))
    rows.append({"step": cfg.steps, "accuracy": accuracy, "n": len(test)})
    shown = list(range(min(n_examples, len(test))))
    shown += [i for i, (p, (_, y)) in enumerate(zip(preds, test)) if p != y and i not in shown][:2]   # two misses
    figures = [] if out_dir is None else [harness.figure(
        out_dir, "translate.png", lambda axes: plot(axes, history, rows), panels=2,
        title=f"Transformer, {cfg.task}: {cfg.steps} steps")]
    return harness.result(
        "translate", rows, supports, figures,
        task=cfg.task, steps=cfg.steps, seed=cfg.seed, n_train=len(train), n_test=len(test),
        params=int(sum(math.prod(p.shape) for p in jax.tree.leaves(state.params))),
        first_loss=history[0]["loss"], final_loss=history[-1]["loss"],
        first_nll=history[0]["nll"], final_nll=history[-1]["nll"],
        accuracy=accuracy, chance=1.0 / len(set(y for _, y in pairs)),
        examples=[{"source": test[i][0], "target": test[i][1], "prediction": preds[i]} for i in shown],
        train_seconds=round(train_s, 1), seconds=round(time.perf_counter() - t0, 1),
        config=dataclasses.asdict(cfg))


def report(res: harness.LessonResult) -> list[str]:
    """Loss, accuracy and a few translations, as text lines."""
    d = res.details
    c = d["config"]
    lines = [f"translate {d['task']}: {d['steps']} steps in {d['seconds']:.0f} s, {d['params']:,} parameters",
             f"loss (label-smoothed, eps={c['smoothing']}) {d['first_loss']:.3f} -> {d['final_loss']:.3f}; "
             f"cross-entropy {d['first_nll']:.3f} -> {d['final_nll']:.4f} nats/token",
             f"held-out exact match (greedy): {d['accuracy']:.1%} of {d['n_test']} "
             f"(chance {d['chance']:.2g}; {d['n_train']} training pairs)"]
    for e in d["examples"]:
        mark = "ok" if e["prediction"] == e["target"] else f"expected {e['target']!r}"
        lines.append(f"  {e['source']!r} -> {e['prediction']!r}  ({mark})")
    return lines


def plot(axes, history: list[dict], rows: list[dict]) -> None:
    """Training loss (smoothed and plain NLL) and held-out exact-match accuracy against step."""
    a, b = axes
    steps = [r["step"] for r in history]
    a.plot(steps, [r["loss"] for r in history], label="label-smoothed loss (ε = 0.1)")
    a.plot(steps, [r["nll"] for r in history], label="cross-entropy (NLL)")
    a.set_xlabel("step")
    a.set_ylabel("nats / target token")
    a.set_yscale("log")
    a.legend()
    a.grid(alpha=0.3)
    b.plot([r["step"] for r in rows], [r["accuracy"] for r in rows], "o-")
    b.set_xlabel("step")
    b.set_ylabel("held-out exact match (greedy)")
    b.set_ylim(0, 1)
    b.grid(alpha=0.3)
