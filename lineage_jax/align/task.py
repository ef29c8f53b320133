"""The alignment chapter's toy task, its gold preference and its noisy "human" labeller.

Instructions over short lowercase words — ``rev abc=`` (reverse), ``sort cab=`` (sort the letters),
``dup ab=`` (the word twice) — answered by a response that may be right, wrong, padded with filler
("ok", "sure") or rude ("duh", "ugh"). Everything a human would do is a program here, so every claim of
the chapter is measured against a known preference:

* ``gold_score(prompt, response)``: **correctness, then brevity, then politeness**
  (2 for a correct answer, −0.1 per character beyond the answer (at most −1), −0.5 if rude: a
  correct but verbose and rude answer, 0.5, still beats every wrong one, ≤ 0);
* ``noisy_label``: a labeller that prefers a over b with Bradley–Terry probability
  σ((g(a) − g(b)) / τ) (Bradley & Terry 1952; the comparison model of Christiano et al. 2017);
* ``demonstration``: a crowd's demonstration, of mixed quality on purpose (mostly right, some
  verbose, rude or wrong), so that a fine-tuned policy has room that preferences can fill.

A response is correct when, once filler and rude words are removed, exactly the answer is left.
Pure Python on a ``random.Random``: the same seed gives the same data on every machine.
"""
from __future__ import annotations

import math
import random
import string

OPS = {"rev": lambda w: w[::-1], "sort": lambda w: "".join(sorted(w)), "dup": lambda w: w + w}
FILLER = ("ok", "sure", "so", "well")
RUDE = ("duh", "ugh", "meh")
LETTERS = string.ascii_lowercase[:8]
KINDS = ("correct", "verbose", "rude", "wrong")
DEMO_MIX = {"correct": 0.55, "verbose": 0.2, "rude": 0.15, "wrong": 0.1}     # the crowd's demonstrations
PAIR_MIX = {"correct": 0.3, "verbose": 0.25, "rude": 0.2, "wrong": 0.25}     # candidates for comparison
W_CORRECT, W_CHAR, MAX_BREVITY, W_RUDE = 2.0, 0.1, 1.0, 0.5


def make_prompt(rng: random.Random) -> str:
    """``"{op} {word}="`` with a word of 3-4 letters from a-h."""
    op = rng.choice(sorted(OPS))
    return f"{op} {''.join(rng.choice(LETTERS) for _ in range(rng.randint(3, 4)))}="


def parse(prompt: str) -> tuple[str, str]:
    """(op, word) of a prompt; ValueError naming the allowed form otherwise."""
    body = prompt.removesuffix("=")
    op, _, word = body.partition(" ")
    if op not in OPS or not word or not prompt.endswith("="):
        raise ValueError(f"prompt {prompt!r}: expected '<op> <word>=' with op one of {', '.join(sorted(OPS))}")
    return op, word


def answer(prompt: str) -> str:
    op, word = parse(prompt)
    return OPS[op](word)


def is_correct(prompt: str, response: str) -> bool:
    """Filler and rude words removed, exactly the answer is left."""
    core = [w for w in response.split() if w.strip(",.!") not in FILLER + RUDE]
    return core == [answer(prompt)]


def is_rude(response: str) -> bool:
    return any(w.strip(",.!") in RUDE for w in response.split())


def gold_score(prompt: str, response: str) -> float:
    """Correctness, then brevity, then politeness (weights above): the one preference every claim is measured by."""
    extra = max(len(response) - len(answer(prompt)), 0)
    return (W_CORRECT * is_correct(prompt, response) - min(W_CHAR * extra, MAX_BREVITY)
            - W_RUDE * is_rude(response))


def _wrong(rng: random.Random, ans: str) -> str:
    """A plausible mistake: two letters swapped, one dropped, or one replaced (never the answer itself)."""
    for _ in range(20):
        a = list(ans)
        how = rng.randrange(3)
        i, j = rng.randrange(len(a)), rng.randrange(len(a))
        if how == 0:
            a[i], a[j] = a[j], a[i]
        elif how == 1:
            del a[i]
        else:
            a[i] = rng.choice(LETTERS)
        if "".join(a) != ans and a:
            return "".join(a)
    return ans[:-1]


def response_of_kind(rng: random.Random, prompt: str, kind: str) -> str:
    """A response of one of ``KINDS``."""
    ans = answer(prompt)
    if kind == "correct":
        return ans
    if kind == "verbose":
        return f"{rng.choice(FILLER)} {ans}" if rng.random() < 0.5 else f"{rng.choice(FILLER)}, {ans}"
    if kind == "rude":
        return f"{ans} {rng.choice(RUDE)}" if rng.random() < 0.5 else f"{rng.choice(RUDE)} {ans}"
    if kind == "wrong":
        return _wrong(rng, ans)
    raise ValueError(f"kind {kind!r}: allowed {', '.join(KINDS)}")


def _draw_kind(rng: random.Random, mix: dict[str, float]) -> str:
    return rng.choices(list(mix), weights=list(mix.values()))[0]


def demonstration(rng: random.Random, prompt: str) -> str:
    """One crowd demonstration (``DEMO_MIX``)."""
    return response_of_kind(rng, prompt, _draw_kind(rng, DEMO_MIX))


def bt_probability(score_a: float, score_b: float, temperature: float) -> float:
    """P(a ≻ b) = σ((s_a − s_b) / τ) under Bradley–Terry with gold scores as utilities."""
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}: must be > 0")
    return 1.0 / (1.0 + math.exp(-(score_a - score_b) / temperature))


def noisy_label(rng: random.Random, prompt: str, a: str, b: str, temperature: float = 0.5) -> bool:
    """True when the noisy labeller prefers ``a`` to ``b`` (a Bradley–Terry draw on the gold scores)."""
    return rng.random() < bt_probability(gold_score(prompt, a), gold_score(prompt, b), temperature)


def comparison(rng: random.Random, prompt: str, temperature: float = 0.5) -> tuple[str, str]:
    """(chosen, rejected): two different candidates (``PAIR_MIX``) ordered by the noisy labeller."""
    a = response_of_kind(rng, prompt, _draw_kind(rng, PAIR_MIX))
    b = a
    while b == a:
        b = response_of_kind(rng, prompt, _draw_kind(rng, PAIR_MIX))
    return (a, b) if noisy_label(rng, prompt, a, b, temperature) else (b, a)


def examples(seed: int, n: int, temperature: float = 0.5):
    """``n`` rows {prompt, demonstration, chosen, rejected}, all fixed by ``seed``."""
    rng = random.Random(seed)
    for _ in range(n):
        prompt = make_prompt(rng)
        chosen, rejected = comparison(rng, prompt, temperature)
        yield {"prompt": prompt, "demonstration": demonstration(rng, prompt), "chosen": chosen, "rejected": rejected}
