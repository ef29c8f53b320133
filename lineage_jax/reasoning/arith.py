"""The reasoning chapter's world: arithmetic problems a program can generate and check.

Four families, every answer an integer a checker verifies:

    addition        ``"57+68="``, n-digit operands
    multiplication  ``"123*45="``, partial products per digit of the second operand
    word problems   ``"tom has 3;ann has 4 more than tom;bob has 2 times ann;bob?"``, several steps
    fact problems   ``"zor+kip="`` over a seeded ``fact_table`` of made-up names (what ``tools.lookup`` reads)

Each problem renders in two formats (Nye et al. 2021's scratchpad; Wei et al. 2022's chain of thought):

    direct       prompt ``"57+68="``  completion ``">125."``
    scratchpad   prompt ``"57+68="``  completion ``"7+8+0=15,5+6+1=12,>125."``   (the steps, then the answer)

The final answer always follows the tag ``>`` and ends at ``.`` (the end-of-completion token), so a
verifier can read it back (``parse_answer``) and check the format (``check``): the verifiable reward of
RL on reasoning (Shao et al. 2024; DeepSeek-AI 2025). Tokens are characters (``CharVocab``).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np

from lineage_jax.config import ConfigError

ANSWER, END = ">", "."
PAD = "_"                       # token 0: padding, never predicted
NAMES = ("tom", "ann", "bob", "eve", "sam", "kim", "joe", "amy")


class CharVocab:
    """Characters <-> token ids; id 0 is padding. The one vocabulary of the chapter's tasks."""

    def __init__(self, chars: str = PAD + "0123456789+-*=,;:|?>. " + "abcdefghijklmnopqrstuvwxyz"):
        if len(set(chars)) != len(chars) or chars[0] != PAD:
            raise ValueError("vocabulary characters must be distinct and start with the pad character")
        self.chars = chars
        self.index = {c: i for i, c in enumerate(chars)}

    @property
    def size(self) -> int:
        return len(self.chars)

    @property
    def end_id(self) -> int:
        return self.index[END]

    def encode(self, text: str) -> list[int]:
        bad = sorted({c for c in text if c not in self.index})
        if bad:
            raise ValueError(f"characters {bad!r} are not in the vocabulary {self.chars!r}")
        return [self.index[c] for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text, stopping at the first padding id."""
        out = []
        for i in ids:
            if int(i) == 0:
                break
            out.append(self.chars[int(i)])
        return "".join(out)


VOCAB = CharVocab()


@dataclasses.dataclass(frozen=True)
class Problem:
    prompt: str            # what the model is given, e.g. "57+68="
    answer: int            # the checked answer
    steps: tuple[str, ...]  # the scratchpad lines (intermediate results), in order
    kind: str              # "add", "mul" or "word"
    size: int              # digits (add/mul) or reasoning steps (word)

    def completion(self, scratchpad: bool) -> str:
        """The target text after the prompt: [steps joined by ','] + ',' then '>answer.'."""
        work = ",".join(self.steps) + "," if scratchpad and self.steps else ""
        return f"{work}{ANSWER}{self.answer}{END}"


def _number(rng: np.random.Generator, digits: int) -> int:
    lo = 0 if digits == 1 else 10 ** (digits - 1)
    return int(rng.integers(lo, 10 ** digits))


def addition(rng: np.random.Generator, digits: int) -> Problem:
    """a + b with ``digits``-digit operands; one step per column, least significant first: "a_i+b_i+c=s"."""
    a, b = _number(rng, digits), _number(rng, digits)
    return Problem(f"{a}+{b}=", a + b, tuple(addition_steps(a, b)), "add", digits)


def addition_steps(a: int, b: int) -> list[str]:
    """The column sums of a + b with the carry written in: 57+68 -> ["7+8+0=15", "5+6+1=12"]."""
    da, db = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        steps.append(f"{x}+{y}+{carry}={s:02d}")
        carry = s // 10
    return steps


def multiplication(rng: np.random.Generator, digits: int, digits_b: int = 1) -> Problem:
    """a * b: a has ``digits`` digits, b ``digits_b``; steps are the partial products, then their running sum."""
    a, b = _number(rng, digits), _number(rng, digits_b)
    steps, total = [], 0
    for i, d in enumerate(str(b)[::-1]):
        part = a * int(d) * 10 ** i
        steps.append(f"{a}*{int(d) * 10 ** i}={part}")
        if i:
            steps.append(f"{total}+{part}={total + part}")
        total += part
    return Problem(f"{a}*{b}=", a * b, tuple(steps), "mul", digits)


def word_problem(rng: np.random.Generator, steps: int, max_start: int = 9) -> Problem:
    """A chain of ``steps`` relations over people: "ann has 4 more than tom", "bob has 2 times ann", …

    The question asks for the last person; the scratchpad computes each person in order ("ann=3+4=7").
    Subtraction is chosen only where the result stays >= 0, so every answer is a natural number.
    """
    if not 1 <= steps < len(NAMES):
        raise ValueError(f"steps={steps}: between 1 and {len(NAMES) - 1}")
    names = [NAMES[i] for i in rng.permutation(len(NAMES))[:steps + 1]]
    value = int(rng.integers(1, max_start + 1))
    text, work = [f"{names[0]} has {value}"], []
    for prev, name in zip(names, names[1:]):
        k = int(rng.integers(2, 10))
        kinds = ["more", "times"] + (["less"] if value - k >= 0 else [])
        kind = kinds[int(rng.integers(len(kinds)))]
        if kind == "times":
            k = int(rng.integers(2, 4))
        new = {"more": value + k, "less": value - k, "times": value * k}[kind]
        text.append(f"{name} has {k} {kind} than {prev}" if kind != "times" else f"{name} has {k} times {prev}")
        work.append(f"{name}={value}{ {'more': '+', 'less': '-', 'times': '*'}[kind]}{k}={new}")
        value = new
    return Problem(";".join(text) + f";{names[-1]}?", value, tuple(work), "word", steps)


KINDS = {"add": addition, "mul": multiplication, "word": word_problem}


def problems(kind: str, n: int, sizes: Sequence[int], seed: int) -> list[Problem]:
    """``n`` problems of ``kind``, sizes drawn uniformly from ``sizes``; the same seed gives the same list."""
    if kind not in KINDS:
        raise ConfigError(f"kind={kind}: one of {', '.join(KINDS)}")
    rng = np.random.default_rng(seed)
    return [KINDS[kind](rng, int(sizes[int(rng.integers(len(sizes)))])) for _ in range(n)]


def split(kind: str, n_train: int, n_test: int, sizes: Sequence[int], seed: int,
          test_sizes: Sequence[int] | None = None) -> tuple[list[Problem], list[Problem]]:
    """Training and held-out problems with no prompt in common (held-out prompts are removed from training)."""
    test = problems(kind, n_test, test_sizes or sizes, seed + 1_000_003)
    held = {p.prompt for p in test}
    train = [p for p in problems(kind, n_train + n_test, sizes, seed) if p.prompt not in held][:n_train]
    return train, test


# --------------------------------------------------------------------------- a fact table (for the lookup tool)

_CONSONANTS, _VOWELS = "bcdfghjklmnprstvwz", "aeiou"
MAX_FACTS = 256


def fact_table(seed: int, n: int = 16, lo: int = 10, hi: int = 1000) -> dict[str, int]:
    """``n`` made-up names (consonant-vowel-consonant, e.g. ``"zor"``; never one of the word problems' ``NAMES``)
    -> integers in [lo, hi): the small fact table a ReAct agent reads with ``tools.lookup``. The same seed gives
    the same table; the model cannot compute a value, only look it up (or memorise it)."""
    if not 1 <= n <= MAX_FACTS or not 0 <= lo < hi:
        raise ConfigError(f"fact_table(n={n}, lo={lo}, hi={hi}): 1 <= n <= {MAX_FACTS} and 0 <= lo < hi")
    rng = np.random.default_rng(seed)
    words = [a + b + c for a in _CONSONANTS for b in _VOWELS for c in _CONSONANTS]
    words = [w for w in words if w not in NAMES]
    picked = rng.choice(len(words), n, replace=False)
    return {words[int(i)]: int(v) for i, v in zip(picked, rng.integers(lo, hi, n))}


def fact_problem(rng: np.random.Generator, table: dict[str, int], terms: int = 2) -> Problem:
    """``terms`` distinct names of ``table`` joined by ``+`` or ``*`` (``"zor+kip*vem="``); the steps are the
    looked-up values, then the arithmetic on them when there are two terms or more (``"zor=412", …,
    "412+57*3=583"``)."""
    if not 1 <= terms <= len(table):
        raise ConfigError(f"terms={terms}: between 1 and the table's {len(table)} names")
    names = [sorted(table)[int(i)] for i in rng.choice(len(table), terms, replace=False)]
    ops = [("+", "*")[int(rng.integers(2))] for _ in names[1:]]
    prompt = names[0] + "".join(o + n for o, n in zip(ops, names[1:]))
    numeric = str(table[names[0]]) + "".join(o + str(table[n]) for o, n in zip(ops, names[1:]))
    answer = eval_plus_times(numeric)
    work = (f"{numeric}={answer}",) if terms > 1 else ()
    return Problem(prompt + "=", answer, tuple(f"{n}={table[n]}" for n in names) + work, "fact", terms)


def eval_plus_times(text: str) -> int:
    """The value of a ``+``/``*`` expression of natural numbers, ``*`` first (a sum of products)."""
    return sum(int(np.prod([int(x) for x in part.split("*")], dtype=object)) for part in text.split("+"))


def fact_problems(table: dict[str, int], n: int, terms: Sequence[int], seed: int) -> list[Problem]:
    """``n`` fact problems over ``table``, term counts drawn uniformly from ``terms``; deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    return [fact_problem(rng, table, int(terms[int(rng.integers(len(terms)))])) for _ in range(n)]


# --------------------------------------------------------------------------- the verifier

_FINAL = re.compile(r">(-?\d+)\.")
_FORMAT = re.compile(r"^(?:[^>.]+,)*>-?\d+\.$")


def parse_answer(completion: str) -> int | None:
    """The integer after the first '>' up to '.', or None when the completion has no tagged answer."""
    m = _FINAL.search(completion)
    return int(m.group(1)) if m else None


def check(problem: Problem, completion: str) -> dict:
    """The verifier: ``correct`` (the tagged answer equals the problem's), ``formatted`` (zero or more
    comma-terminated steps, then exactly one ``>answer.`` and nothing after it), ``answer`` (parsed or None)."""
    answer = parse_answer(completion)
    return {"correct": answer == problem.answer, "formatted": bool(_FORMAT.match(completion)), "answer": answer}


def reward(problem: Problem, completion: str, format_weight: float = 0.1) -> float:
    """The verifiable reward: 1 for a correct answer, plus ``format_weight`` for the format followed."""
    c = check(problem, completion)
    return float(c["correct"]) + format_weight * float(c["formatted"])


# --------------------------------------------------------------------------- batches

def encode_pairs(pairs: Sequence[tuple[str, str]], length: int, vocab: CharVocab = VOCAB
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(prompt, completion) pairs -> tokens [B, length] (0-padded) and a loss mask [B, length] that is 1 where
    the *next* token belongs to the completion (so ``mask[:, :-1]`` weighs the targets ``tokens[:, 1:]``)."""
    tokens = np.zeros((len(pairs), length), np.int32)
    mask = np.zeros((len(pairs), length), np.float32)
    for i, (prompt, completion) in enumerate(pairs):
        p, c = vocab.encode(prompt), vocab.encode(completion)
        if len(p) + len(c) > length:
            raise ValueError(f"{prompt + completion!r}: {len(p) + len(c)} tokens exceed length {length}")
        tokens[i, :len(p) + len(c)] = p + c
        mask[i, len(p) - 1:len(p) + len(c) - 1] = 1.0
    return tokens, mask


def encode_prompts(prompts: Sequence[str], length: int, vocab: CharVocab = VOCAB) -> tuple[np.ndarray, np.ndarray]:
    """Prompts -> tokens [B, length] (0-padded after each prompt) and their lengths [B]."""
    tokens, mask = encode_pairs([(p, "") for p in prompts], length, vocab)
    return tokens, np.array([len(p) for p in prompts], np.int32)
