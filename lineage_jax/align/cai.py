"""Constitutional AI's two data steps (Bai et al. 2022), composed from ``feedback``'s pure functions; shared by
``lineage align judge|sft|rm|dpo --judge`` and the ``cai`` lesson.

* ``revise`` (SL-CAI): the policy samples a response to each prompt; the judge critiques it (its verdict
  per principle); a response that breaks a principle is revised — replaced by the best of ``candidates``
  fresh samples by the constitution. The rows come back laid out for SFT (tokens as sampled, never
  re-encoded from text).
* ``relabel`` (RLAIF): comparison pairs re-ordered by the judge's constitutional preference instead of
  the human's.

``agreement`` and ``principle_truth`` measure labels and verdicts against the task's own predicates
(the gold side: used to report, never to train).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lineage_jax.align import constitution as C, dataset, evaluate as ev, feedback as F, task


def judge_batch(tok, examples: list[dict], length: int) -> dict:
    """The worked examples as one batch for ``feedback.make_judge_step``."""
    enc = dataset.encode(tok, [e["prompt"] for e in examples], [e["response"] for e in examples], length)
    return {"tokens": enc["tokens"], "lengths": enc["lengths"],
            "principle": np.array([e["principle"] for e in examples], np.int32),
            "follows": np.array([e["follows"] for e in examples], np.float32)}


def judge_probs(model, judge: dict, rows: dict, chunk: int = 512) -> np.ndarray:
    """P(follows principle k) [N, K] of encoded rows ({"tokens", "lengths"}), in chunks."""
    return np.concatenate([np.asarray(_verdicts(model, judge, rows["tokens"][i:i + chunk], rows["lengths"][i:i + chunk]))
                           for i in range(0, len(rows["tokens"]), chunk)])


_verdicts = jax.jit(F.verdicts, static_argnums=0)


def relabel(model, judge: dict, chosen: dict, rejected: dict) -> tuple[dict, dict, np.ndarray]:
    """(chosen', rejected', ai_first): the encoded pairs swapped wherever the judge prefers the human's
    rejected response; ``ai_first`` [N] is True where it keeps the human's order."""
    first = np.asarray(F.preference(jnp.asarray(judge_probs(model, judge, chosen)),
                                    jnp.asarray(judge_probs(model, judge, rejected)))[0])

    def pick(a, b):
        return {k: np.where(first.reshape((-1,) + (1,) * (a[k].ndim - 1)), a[k], b[k]) for k in a}
    return pick(chosen, rejected), pick(rejected, chosen), first


def revise(model, policy, judge: dict, tok, prompts: list[str], *, candidates: int, new_tokens: int,
           seed: int) -> tuple[dict, dict]:
    """SL-CAI on ``prompts``: ({"tokens", "mask", "lengths"} of the revised responses, {"critiqued": share of
    samples that broke a principle, "gold_samples", "gold_revisions": mean gold of both (measurement only)})."""
    drawn = [ev.sample(model, policy, tok, prompts, new_tokens=new_tokens, seed=seed + c)
             for c in range(candidates + 1)]
    probs = np.stack([judge_probs(model, judge, ro) for ro, _ in drawn])
    pick = np.asarray(F.revision_choice(jnp.asarray(probs)))
    rows = {k: np.stack([np.asarray(drawn[c][0][k][i]) for i, c in enumerate(pick)]) for k in ("tokens", "mask",
                                                                                                 "lengths")}
    info = {"critiqued": float(np.mean(~np.all(probs[0] > 0.5, axis=-1))),
            "gold_samples": float(np.mean([task.gold_score(p, r) for p, r in zip(prompts, drawn[0][1])])),
            "gold_revisions": float(np.mean([task.gold_score(p, drawn[c][1][i])
                                             for i, (p, c) in enumerate(zip(prompts, pick))]))}
    return rows, info


def agreement(prompts, first, second, first_preferred) -> float:
    """Share of pairs where the labeller's choice is gold's, over pairs gold does not tie (measurement only)."""
    hits = []
    for p, a, b, pref in zip(prompts, first, second, first_preferred):
        ga, gb = task.gold_score(p, a), task.gold_score(p, b)
        if ga != gb:
            hits.append((ga > gb) == bool(pref))
    return float(np.mean(hits)) if hits else float("nan")


def principle_truth(prompt: str, response: str) -> list[bool]:
    """Whether a response follows each principle of ``constitution.CONSTITUTION``, by the task's predicates."""
    return [task.is_correct(prompt, response), not any(w.strip(",") in task.FILLER for w in response.split()),
            not task.is_rude(response)]


def judge_accuracy(model, judge: dict, tok, prompts, responses, length: int) -> dict[str, float]:
    """Per principle, the share of responses whose verdict (P > 0.5) matches ``principle_truth``."""
    verdict = judge_probs(model, judge, dataset.encode(tok, prompts, responses, length)) > 0.5
    truth = np.array([principle_truth(p, r) for p, r in zip(prompts, responses)])
    return {n: float(np.mean(verdict[:, k] == truth[:, k])) for k, n in enumerate(C.NAMES)}
