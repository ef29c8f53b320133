"""Lesson: a model teaches itself to use a calculator by keeping only the calls that help (Schick et al. 2023).

Toolformer's §2 pipeline on the arithmetic world. A small decoder (``reasoning.tiny``) is first trained without
any tool on a corpus of multiplications (hard in its head) and one-digit additions (easy), each written plainly
(``12*3=>36.``) or, for a fraction ``quoted``, stating the value before answering (``12*3=36;>36.``): the
in-context reading a pretrained LM brings (GPT-J in the paper), with no call anywhere. Then, on a corpus of plain
texts, candidate calls are proposed at every position of the completion: the right expression (``[calc(12*3)]``)
and a wrong one (``12+3``, ``12*4``; for an addition ``x*y``). Each is executed and scored by the model itself:
L⁺ with the call and its result, L⁻ the better of no call and the call without result; a call is kept when
L⁻ − L⁺ ≥ τ_f (``reasoning.toolformer``). The model is fine-tuned on C* (texts with their best kept call, the
others unchanged; observations masked out of the loss), and run through the ReAct loop with the calculator.

Measured: candidates kept per τ (right vs wrong calls, multiplication vs addition), and on held-out problems
before and after fine-tuning: accuracy and calls per problem, by kind (the tool used where it helps).
"""
from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path

import jax
import numpy as np
import optax

from lineage_jax.config import ConfigError
from lineage_jax.lessons import harness
from lineage_jax.reasoning import arith, react, sft, tiny, tools, toolformer

TOOLBOX = {"calc": tools.calculate}
KINDS = ("mul", "add")


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    base_steps: int = 1500
    ft_steps: int = 600
    batch: int = 32
    max_digits: int = 3          # multiplications: a of 2 … max_digits digits, b of one digit
    quoted: float = 0.3          # fraction of pretraining texts that state the value before answering
    corpus: int = 400            # plain texts annotated with candidate calls
    tau: float = 0.5             # τ_f for the fine-tuning set
    taus: str = "0.25,0.5,1,2"   # τ values the filter table reports
    d: int = 48
    heads: int = 4
    layers: int = 2
    lr: float = 2e-3
    ft_lr: float = 1e-3
    test_per_kind: int = 100

    def __post_init__(self):
        harness.at_least_one(self, "base_steps", "ft_steps", "batch", "corpus", "d", "heads", "layers", "test_per_kind")
        if not 2 <= self.max_digits <= 5:
            raise ConfigError(f"max_digits={self.max_digits}: between 2 and 5")
        if not 0 < self.quoted < 1:
            raise ConfigError(f"quoted={self.quoted}: a fraction in (0, 1)")
        if self.tau <= 0:
            raise ConfigError(f"tau={self.tau}: must be > 0")
        harness.positive_list("taus", self.taus, float, "0.25,0.5,1,2")
        if not (0 < self.lr < 1 and 0 < self.ft_lr < 1):
            raise ConfigError(f"lr={self.lr}, ft_lr={self.ft_lr}: in (0, 1)")
        if self.d % self.heads:
            raise ConfigError(f"d={self.d}: must be divisible by heads={self.heads}")

    @property
    def window(self) -> int:
        """Tokens of the longest trace: prompt, call, observation and answer of the largest problem."""
        return 4 * (self.max_digits + 1) + 20


QUICK = dict(base_steps=500, ft_steps=200, max_digits=2, corpus=64, d=32, test_per_kind=32)


def problems(n: int, cfg: Config, seed: int) -> list[arith.Problem]:
    """Half multiplications (a of 2 … max_digits digits times one digit), half one-digit additions (only 100
    exist: they are facts the model learns, and only multiplications are held out)."""
    rng = np.random.default_rng(seed)
    return [arith.multiplication(rng, int(rng.integers(2, cfg.max_digits + 1)), 1) if i % 2 == 0
            else arith.addition(rng, 1) for i in range(n)]


def pretraining_text(p: arith.Problem, rng: np.random.Generator, aside: float) -> str:
    """A text of the tool-free corpus: plain (``12*3=>36.``) or, with probability ``aside``, with the author's
    worked aside under an arbitrary label (``12*3=[qtv(12*3)]=36;>36.``): bracketed text and a stated value the
    model learns to read. Nothing is executed, and the label is never the tool's name."""
    if rng.random() >= aside:
        return p.prompt + p.completion(False)
    label = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), int(rng.integers(3, 5))))
    label = "calx" if label in TOOLBOX else label
    return p.prompt + f"[{label}({p.prompt.rstrip('=')})]={p.answer};" + p.completion(False)


def proposals(i: int, p: arith.Problem) -> list[toolformer.Candidate]:
    """Candidate calls at every position of the plain completion: the right expression and two wrong ones."""
    a, op, b = p.prompt.rstrip("=").partition("*" if p.kind == "mul" else "+")[::1]
    wrong = [f"{a}+{b}", f"{a}*{int(b) + 1}"] if p.kind == "mul" else [f"{a}*{b}", f"{a}+{int(b) + 1}"]
    calls = [(f"{a}{op}{b}", "right")] + [(w, "wrong") for w in wrong]
    return [toolformer.Candidate(i, pos, arg, str(tools.calculate(arg)), f"{p.kind}:{label}")
            for pos in range(len(p.completion(False)) - 1) for arg, label in calls]


def supports(rows: list[dict]) -> bool:
    """At the fine-tuning τ, the filter gives at least 0.3 more of the multiplication texts a kept right call than
    the fraction of wrong calls it keeps; after fine-tuning, held-out multiplication accuracy rises by at least
    0.2 and the model calls the calculator more on multiplications than on one-digit additions."""
    f = {r["problem"]: r for r in rows if r["part"] == "filter" and r["fine_tune_tau"]}
    e = {(r["model"], r["problem"]): r for r in rows if r["part"] == "eval"}
    wrong = max(r["wrong_kept"] for r in f.values())
    return (f["mul"]["texts_with_right_call"] >= wrong + 0.3
            and e[("after", "mul")]["accuracy"] >= e[("before", "mul")]["accuracy"] + 0.2
            and e[("after", "mul")]["calls_per_problem"] > e[("after", "add")]["calls_per_problem"])


def _nll_fn(apply, params, window: int, chunk: int = 256):
    forward = jax.jit(lambda p, t: -sft.token_logprobs(apply(p, t), t))

    def nll(texts: list[str]) -> list[np.ndarray]:
        out = []
        for s in range(0, len(texts), chunk):
            part = texts[s:s + chunk]
            tokens, _ = arith.encode_pairs([(t, "") for t in part + [part[-1]] * (chunk - len(part))], window,
                                           react.VOCAB)
            losses = np.asarray(forward(params, tokens))
            out += [losses[i, :len(t) - 1] for i, t in enumerate(part)]
        return out
    return nll


def _fit(apply, params, traces, prompt_lens, steps, lr, cfg, seed, desc, progress):
    tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, min(100, steps // 10 + 1), steps), weight_decay=0.01)
    rng = np.random.default_rng(seed)

    def batch_at(_):
        idx = rng.integers(0, len(traces), cfg.batch)
        return react.encode_traces([traces[i] for i in idx], [prompt_lens[i] for i in idx], cfg.window)

    state, history, _ = harness.fit(sft.make_sft_step(apply, tx), (params, tx.init(params)), batch_at, steps,
                                    log_every=50, progress=progress, desc=desc)
    return state[0], history


def _evaluate(apply, params, test, cfg, name, tool: bool) -> list[dict]:
    """Greedy accuracy and calls per problem by kind: through the ReAct loop with the calculator (``tool``), or
    as plain text (the tool-free model: whatever it writes, nothing is executed)."""
    generate = react.greedy_generator(apply, params, window=cfg.window, max_new=cfg.window - 1)
    prompts = [p.prompt for p in test]
    if tool:
        traces = react.run_batch(generate, prompts, TOOLBOX, max_steps=3, max_chars=cfg.window - 1)
    else:
        traces = [{"text": q + c, "calls": [], "stop": ""} for q, c in zip(prompts, generate(prompts))]
    rows = []
    for kind in KINDS:
        pairs = [(t, p) for t, p in zip(traces, test) if p.kind == kind]
        rows.append({"part": "eval", "model": name, "problem": kind,
                     "accuracy": float(np.mean([arith.parse_answer(t["text"][len(p.prompt):]) == p.answer
                                                for t, p in pairs])),
                     "calls_per_problem": float(np.mean([t["text"].count("[calc(") for t, _ in pairs]))})
    return rows


def filter_rows(cands: list[toolformer.Candidate], gain: np.ndarray, taus: list[float], tau_f: float) -> list[dict]:
    """Per τ and problem kind: the fraction of texts given at least one kept right call, and the fractions of
    right and wrong candidate calls kept."""
    rows = []
    for tau in taus:
        for kind in KINDS:
            right = [k for k, c in enumerate(cands) if c.kind == f"{kind}:right"]
            wrong = [k for k, c in enumerate(cands) if c.kind == f"{kind}:wrong"]
            texts = {cands[k].text for k in right}
            helped = {cands[k].text for k in right if gain[k] >= tau}
            rows.append({"part": "filter", "tau": tau, "fine_tune_tau": tau == tau_f, "problem": kind,
                         "texts": len(texts), "texts_with_right_call": len(helped) / max(len(texts), 1),
                         "right_kept": float(np.mean(gain[right] >= tau)),
                         "wrong_kept": float(np.mean(gain[wrong] >= tau))})
    return rows


def run(cfg: Config, out_dir: str | Path | None = None, progress: bool = True) -> harness.LessonResult:
    t0 = time.perf_counter()
    test = problems(2 * cfg.test_per_kind, cfg, cfg.seed + 1_000_003)
    held = {p.prompt for p in test if p.kind == "mul"}     # the 100 one-digit additions are facts, not held out
    pool = [p for p in problems(20_000, cfg, cfg.seed) if p.prompt not in held]
    rng = np.random.default_rng(cfg.seed + 1)
    base_texts = [{"text": pretraining_text(p, rng, cfg.quoted), "spans": []} for p in pool]
    mc = tiny.TinyConfig(vocab=react.VOCAB.size, context=cfg.window, d=cfg.d, heads=cfg.heads, layers=cfg.layers)
    model, params = tiny.init(mc, jax.random.key(cfg.seed))
    apply = lambda p, t: model.apply({"params": p}, t)
    base, _ = _fit(apply, params, base_texts, [len(p.prompt) for p in pool], cfg.base_steps, cfg.lr, cfg, cfg.seed,
                   "pretrain (no tools)", progress)
    # annotate: propose, execute, score with the base model, filter
    corpus_problems = pool[:cfg.corpus]
    corpus = [(p.prompt, p.completion(False)) for p in corpus_problems]
    cands = [c for i, p in enumerate(corpus_problems) for c in proposals(i, p)]
    gain = toolformer.gains(_nll_fn(apply, base, cfg.window), corpus, cands)
    taus = sorted(set(harness.positive_list("taus", cfg.taus, float, "") + [cfg.tau]))
    rows = filter_rows(cands, gain, taus, cfg.tau)
    traces, lens = toolformer.augment(corpus, cands, gain, cfg.tau)
    tuned, _ = _fit(apply, base, traces, lens, cfg.ft_steps, cfg.ft_lr, cfg, cfg.seed + 2, "fine-tune on C*", progress)
    rows += _evaluate(apply, base, test, cfg, "before", False) + _evaluate(apply, tuned, test, cfg, "after", True)
    examples = [t["text"] for t in traces if t["spans"]][:5]
    figures = [] if out_dir is None else [harness.figure(
        out_dir, "toolformer.png", functools.partial(plot, rows=rows), panels=2,
        title=f"Toolformer's filter and fine-tuning ({tiny.count_params(params):,} params, τ_f = {cfg.tau})")]
    return harness.result("toolformer", rows, supports, figures, examples=examples,
                          texts_with_calls=sum(bool(t["spans"]) for t in traces), mean_gain={
                              label: float(np.mean(gain[[c.kind == label for c in cands]]))
                              for label in sorted({c.kind for c in cands})},
                          seconds=round(time.perf_counter() - t0, 1), config=dataclasses.asdict(cfg))


def report(res: harness.LessonResult) -> list[str]:
    e = {(r["model"], r["problem"]): r for r in res.rows if r["part"] == "eval"}
    return [f"{k}: accuracy {e[('before', k)]['accuracy']:.2f} -> {e[('after', k)]['accuracy']:.2f}, calls per "
            f"problem {e[('before', k)]['calls_per_problem']:.2f} -> {e[('after', k)]['calls_per_problem']:.2f}"
            for k in KINDS]


def plot(axes, rows) -> None:
    a, b = axes
    f = [r for r in rows if r["part"] == "filter"]
    for kind in KINDS:
        rs = [r for r in f if r["problem"] == kind]
        a.plot([r["tau"] for r in rs], [r["texts_with_right_call"] for r in rs], "o-",
               label=f"{kind} texts with a kept right call")
        a.plot([r["tau"] for r in rs], [r["wrong_kept"] for r in rs], "x:", label=f"{kind} wrong calls kept")
    a.set_xscale("log")
    a.set_xlabel("τ_f")
    a.set_ylabel("fraction")
    a.legend()
    a.grid(alpha=0.3)
    e = [r for r in rows if r["part"] == "eval"]
    x = np.arange(len(KINDS))
    for i, model in enumerate(("before", "after")):
        b.bar(x + 0.4 * i, [next(r["accuracy"] for r in e if r["model"] == model and r["problem"] == k)
                            for k in KINDS], 0.4, label=f"{model} fine-tuning")
    b.set_xticks(x + 0.2, ["multiplication", "1-digit addition"])
    b.set_ylabel("held-out accuracy")
    b.set_ylim(0, 1.05)
    b.legend()
