"""A written constitution for the toy task (Bai et al. 2022, Constitutional AI): principles as data.

Each principle is a sentence a person could write, plus a handful of **worked examples** — responses to
prompts with the verdict "follows" or "breaks" this principle — the way the CAI paper shows its feedback
model a few examples in the prompt. The AI feedback model (``align.feedback``) learns the principles from
these examples only: it never sees ``task.gold_score`` nor the noisy human labels. The gold function
only measures, afterwards.

The principles are listed in **priority order** (the constitution says which matters most): a judge
compares two responses on the first principle where its verdicts differ (``feedback.preference``).

The worked examples are drawn once from the task's response templates (what the constitution's author
would type by hand: a right answer, the same answer padded with "ok,", a right answer with "duh", a wrong
one), from a fixed seed, a few per principle; ``per_principle`` sets how few.
"""
from __future__ import annotations

import dataclasses
import random

from lineage_jax.align import task


@dataclasses.dataclass(frozen=True)
class Principle:
    name: str
    text: str            # the principle as written
    follows: tuple       # response kinds (``task.KINDS``) the author writes as examples that follow it
    breaks: tuple        # ... and as examples that break it


CONSTITUTION: tuple[Principle, ...] = (
    Principle("correct", "Choose the response that carries out the instruction correctly, even if it is padded or "
              "impolite.", follows=("correct", "verbose", "rude"), breaks=("wrong",)),
    Principle("brief", "Choose the response that says nothing beyond the answer: no filler words such as 'ok' or "
              "'sure' before it.", follows=("correct", "wrong"), breaks=("verbose",)),
    Principle("polite", "Choose the response that is not rude: no 'duh', 'ugh' or 'meh'.",
              follows=("correct", "verbose"), breaks=("rude",)),
)
NAMES = tuple(p.name for p in CONSTITUTION)


def worked_examples(per_principle: int, seed: int = 12345, constitution=CONSTITUTION) -> list[dict]:
    """``per_principle`` examples for each principle, half following it and half breaking it:
    rows {"prompt", "response", "principle" (index in the constitution), "follows" (bool)}."""
    if per_principle < 2:
        raise ValueError(f"per_principle={per_principle}: need at least 2 (one that follows, one that breaks)")
    rng, out = random.Random(seed), []
    for k, p in enumerate(constitution):
        for i in range(per_principle):
            follows = i % 2 == 0
            prompt = task.make_prompt(rng)
            kind = rng.choice(p.follows if follows else p.breaks)
            out.append({"prompt": prompt, "response": task.response_of_kind(rng, prompt, kind), "principle": k,
                        "follows": follows})
    return out


def render(constitution=CONSTITUTION) -> str:
    """The constitution as text, one numbered principle a line (for reports and docs)."""
    return "\n".join(f"{i + 1}. [{p.name}] {p.text}" for i, p in enumerate(constitution))
