"""Lesson: emergence or metric? Wei et al. 2022 ("Emergent Abilities of Large Language Models") saw
multi-digit arithmetic appear abruptly with scale; Schaeffer, Miranda & Koyejo 2023 ("Are Emergent
Abilities of Large Language Models a Mirage?") showed the jump is made by exact match, a metric
that is ~p^L in the per-token accuracy p, while per-token log-likelihood and token edit distance
improve smoothly over the same models.

Here a family of GPTs (``lineage_jax.models``, widths ``widths``, ``layers`` deep, the same steps and
data for each) learns ``digits``-digit addition written as ``a+b=`` followed by the sum's digits,
least significant first (so each answer digit needs only the carry of the one before it). On
held-out sums each model is scored four ways (``lineage_jax.scaling.metrics``): exact match of its
greedy answer, per-token accuracy and token edit distance of that answer, and the teacher-forced
log-likelihood per answer token. The verdict compares the metrics on one scale: the largest share of
a metric's total rise (smallest model to largest) that happens between two neighbouring sizes. Exact
match is the jumpy one if its largest share exceeds per-token accuracy's, and it tracks p^L.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.core import meta

from lineage_jax.config import ConfigError, ModelConfig
from lineage_jax.lessons import harness
from lineage_jax.models import build
from lineage_jax.scaling import metrics as M
from lineage_jax.scaling.count import count

PLUS, EQUALS = 10, 11           # tokens 0-9 are the digits
VOCAB = 12


@dataclasses.dataclass(frozen=True)
class Config:
    digits: int = 3              # operand digits; the answer has digits + 1
    widths: str = "8,16,24,32,48,64"
    layers: int = 2
    steps: int = 1500
    batch: int = 64
    lr: float = 3e-3
    n_test: int = 1024
    seed: int = 0
    seeds: int = 1               # models per width (seed, seed + 1, ...); the rows average their scores

    def __post_init__(self):
        harness.positive_list("widths", self.widths, int, "16,32,64")
        if len(self.width_list()) < 3:
            raise ConfigError(f"widths={self.widths}: give 3 or more model widths (the lesson compares sizes)")
        if any(w % 8 for w in self.width_list()):
            raise ConfigError(f"widths={self.widths}: each width must be a multiple of 8")
        harness.at_least_one(self, "digits", "layers", "steps", "batch", "n_test", "seeds")
        if self.digits > 8:
            raise ConfigError(f"digits={self.digits}: at most 8")
        if not self.lr > 0:
            raise ConfigError(f"lr={self.lr}: must be positive")

    def width_list(self) -> list[int]:
        return sorted(set(harness.positive_list("widths", self.widths, int, "16,32,64")))


QUICK = dict(widths="8,16,32", steps=300, n_test=256)


def problems(rng: np.random.Generator, n: int, digits: int) -> tuple[np.ndarray, np.ndarray]:
    """(sequences [n, 2·digits + 3 + digits] of ``a+b=`` then the reversed sum, answers [n, digits + 1])."""
    a, b = rng.integers(0, 10 ** digits, n), rng.integers(0, 10 ** digits, n)
    place = lambda x, k: (x[:, None] // 10 ** np.arange(k)[::-1]) % 10          # most significant first
    answer = place(a + b, digits + 1)[:, ::-1]                                    # least significant first
    seq = np.concatenate([place(a, digits), np.full((n, 1), PLUS), place(b, digits), np.full((n, 1), EQUALS),
                          answer], axis=1)
    return seq.astype(np.int32), answer.astype(np.int32)


def model_config(cfg: Config, width: int) -> ModelConfig:
    heads = width // 16 if width % 16 == 0 else 1                       # heads of width 16, else one head
    return ModelConfig(vocab_size=VOCAB, context=3 * cfg.digits + 2, layers=cfg.layers, width=width,
                       heads=heads, attn_chunks=1, scan_layers=False)


def train_one(cfg: Config, width: int, progress: bool):
    """One model of the family: (model, params), trained on fresh random sums every step."""
    m = model_config(cfg, width)
    model = build(m)
    prompt = 2 * cfg.digits + 2                      # tokens before the first answer digit
    rng = np.random.default_rng(cfg.seed + 1)
    tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, cfg.lr, min(100, cfg.steps // 10), cfg.steps,
                                                        cfg.lr * 0.05), weight_decay=0.0)
    params = meta.unbox(jax.jit(model.init)(jax.random.key(cfg.seed), jnp.zeros((1, m.context), jnp.int32))["params"])

    def loss_fn(p, seq):
        logits = model.apply({"params": p}, seq[:, :-1])[:, prompt - 1:]           # predictions of the answer
        logp = jax.nn.log_softmax(logits.astype(jnp.float32))
        return -jnp.take_along_axis(logp, seq[:, prompt:, None], -1).mean()

    @jax.jit
    def step(state, seq):
        p, opt = state
        loss, g = jax.value_and_grad(loss_fn)(p, seq)
        updates, opt = tx.update(g, opt, p)
        return (optax.apply_updates(p, updates), opt), {"loss": loss}

    state = (params, tx.init(params))
    state, history, _ = harness.fit(step, state, lambda s: problems(rng, cfg.batch, cfg.digits)[0], cfg.steps,
                                    log_every=max(1, cfg.steps // 10), progress=progress, desc=f"width {width}")
    return model, m, state[0], history


def score(cfg: Config, model, params, test_seq, test_answer) -> dict:
    """The four metrics of one model on the held-out sums (greedy answers, teacher-forced likelihood)."""
    prompt, L = 2 * cfg.digits + 2, cfg.digits + 1
    forward = jax.jit(lambda p, s: model.apply({"params": p}, s))
    logits = np.asarray(forward(params, test_seq[:, :-1]))[:, prompt - 1:]
    buf = test_seq[:, :-1].copy()
    buf[:, prompt:] = 0
    for i in range(L):                               # greedy: position prompt-1+i predicts answer digit i
        nxt = np.asarray(forward(params, buf))[:, prompt - 1 + i].argmax(-1)
        if i + 1 < L:
            buf[:, prompt + i] = nxt
        pred_last = nxt
    pred = np.concatenate([buf[:, prompt:prompt + L - 1], pred_last[:, None]], axis=1)
    per_position = (pred == test_answer).mean(0)
    return {"exact_match": float(M.exact_match(pred, test_answer).mean()),
            "token_accuracy": float(M.token_accuracy(pred, test_answer).mean()),
            "edit_distance": float(M.token_edit_distance(pred, test_answer).mean()),
            "log_likelihood": float(M.answer_log_likelihood(logits, test_answer).mean()),
            "p_to_the_L": M.independent_exact_match(per_position)}


def largest_share(values: list[float]) -> float:
    """The largest rise between neighbouring sizes as a share of the whole rise (smallest -> largest)."""
    total = values[-1] - values[0]
    if total <= 0:
        return float("nan")
    return float(max(np.diff(values)) / total)


def supports(rows: list[dict]) -> bool:
    """Exact match rises more abruptly (a larger share of its rise between two neighbouring sizes) than
    per-token accuracy and log-likelihood do, it does rise (>= 0.3 from smallest to largest), and it is
    within 0.1 of p^L at every size: the jump is what p^L does to a smooth p."""
    rows = sorted(rows, key=lambda r: r["params"])
    em = [r["exact_match"] for r in rows]
    sharp = largest_share(em)
    smooth = [largest_share([r[k] for r in rows]) for k in ("token_accuracy", "log_likelihood")]
    return (em[-1] - em[0] >= 0.3 and all(sharp > s for s in smooth)
            and all(abs(r["exact_match"] - r["p_to_the_L"]) < 0.1 for r in rows))


def run(cfg: Config, out_dir: str | Path | None = None, progress: bool = True) -> harness.LessonResult:
    t0 = time.perf_counter()
    test_seq, test_answer = problems(np.random.default_rng(cfg.seed + 99), cfg.n_test, cfg.digits)
    rows = []
    for width in cfg.width_list():
        runs = []
        for k in range(cfg.seeds):     # each model learns addition in a sudden transition: seeds smooth the rows
            model, m, params, history = train_one(dataclasses.replace(cfg, seed=cfg.seed + k), width, progress)
            runs.append({"train_loss": history[-1]["loss"], **score(cfg, model, params, test_seq, test_answer)})
        rows.append({"width": width, "params": count(m).non_embedding,
                     **{key: float(np.mean([r[key] for r in runs])) for key in runs[0]}})
    sorted_rows = sorted(rows, key=lambda r: r["params"])
    shares = {k: largest_share([r[k] for r in sorted_rows]) for k in ("exact_match", "token_accuracy",
                                                                      "log_likelihood")}
    figures = [] if out_dir is None else [harness.figure(
        out_dir, "emergence.png", functools.partial(plot, rows=sorted_rows), panels=2,
        title=f"{cfg.digits}-digit addition across model sizes (Wei et al. 2022 vs Schaeffer et al. 2023)")]
    return harness.result("emergence", rows, supports, figures, largest_share=shares, config=dataclasses.asdict(cfg),
                          seconds=time.perf_counter() - t0)


def report(res: harness.LessonResult) -> list[str]:
    s = res.details["largest_share"]
    return [f"largest share of the total rise between two neighbouring sizes: exact match {s['exact_match']:.2f}, "
            f"per-token accuracy {s['token_accuracy']:.2f}, log-likelihood {s['log_likelihood']:.2f}"]


def plot(axes, rows) -> None:
    a, b = axes
    n = [r["params"] for r in rows]
    a.plot(n, [r["exact_match"] for r in rows], "o-", label="exact match (nonlinear)")
    a.plot(n, [r["token_accuracy"] for r in rows], "s-", label="per-token accuracy")
    a.plot(n, [r["p_to_the_L"] for r in rows], "k:", label="p^L from per-position accuracy")
    a.set(xscale="log", xlabel="non-embedding parameters N", ylabel="score", ylim=(-0.02, 1.02))
    a.legend(fontsize=8)
    a.grid(alpha=0.3)
    b.plot(n, [r["log_likelihood"] for r in rows], "o-", color="C2", label="log-likelihood per answer token")
    b.plot(n, [-r["edit_distance"] for r in rows], "s-", color="C3", label="− token edit distance")
    b.set(xscale="log", xlabel="non-embedding parameters N", ylabel="higher is better")
    b.legend(fontsize=8)
    b.grid(alpha=0.3)
