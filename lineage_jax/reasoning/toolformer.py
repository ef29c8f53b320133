"""Toolformer's filter (Schick et al. 2023, §2, "Filtering API Calls"): keep a sampled call only if it helps.

For a call c_i inserted at position i with result r_i, and the per-token negative log-likelihoods of the
tokens x_i, x_{i+1}, … that follow it under three prefixes,

    L_i(z) = Σ_j w_{j−i} · nll(x_j | z, x_{<j}),     w̃_t = max(0, 1 − 0.2·t),  w_t = w̃_t / Σ_s w̃_s

    L⁺ = L_i(e(c_i, r_i))                      the call and its result
    L⁻ = min(L_i(ε), L_i(e(c_i, ε)))           no call, or the call without its result

the call is kept when L⁻ − L⁺ ≥ τ_f: the result must make the next tokens easier to predict by at least τ_f.

Around the filter, the paper's pipeline on a corpus of (prompt, completion) texts: ``Candidate`` calls at
positions in a completion (the paper samples them from the model; here the caller proposes them), ``insert``
one into its text (as a trace whose observation is masked from the loss), ``gains`` scores every candidate with
any language model's per-character losses, and ``augment`` builds the fine-tuning set C* from the kept calls.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np


def weights(n: int, decay: float = 0.2) -> np.ndarray:
    """w_0 … w_{n−1}: max(0, 1 − decay·t), normalised to sum 1 (the next few tokens count most)."""
    w = np.maximum(0.0, 1.0 - decay * np.arange(n))
    if n < 1 or w.sum() == 0:
        raise ValueError(f"n={n}: at least one following token is needed")
    return w / w.sum()


def weighted_loss(nll: np.ndarray, decay: float = 0.2) -> np.ndarray:
    """L_i: nll [..., n] of the n tokens after the call position, weighted by ``weights`` -> [...]."""
    nll = np.asarray(nll, np.float64)
    return nll @ weights(nll.shape[-1], decay)


def keep(nll_with_result: np.ndarray, nll_without_call: np.ndarray, nll_call_only: np.ndarray, tau: float,
         decay: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """(keep [...] bool, L⁻ − L⁺ [...]) for each candidate call, from the three nll arrays [..., n]."""
    plus = weighted_loss(nll_with_result, decay)
    minus = np.minimum(weighted_loss(nll_without_call, decay), weighted_loss(nll_call_only, decay))
    gain = minus - plus
    return gain >= tau, gain


# --------------------------------------------------------------------------- annotating a corpus with calls

@dataclasses.dataclass(frozen=True)
class Candidate:
    """A call ``[name(argument)]`` proposed before character ``position`` of a text's completion."""
    text: int               # which text of the corpus
    position: int           # index into the completion (0: right after the prompt)
    argument: str
    result: str             # what the tool returned ('' for the call without its result)
    kind: str = ""          # a label carried along (e.g. "right" / "wrong" for the lesson's tables)


def insert(prompt: str, completion: str, c: Candidate, with_result: bool = True, name: str = "calc"
           ) -> tuple[dict, int]:
    """The text with the call (and its observation ``=result;``, empty without the result) inserted, as a trace
    for ``react.encode_traces`` (the observation's span marked), and the index of the first following character."""
    head = prompt + completion[:c.position] + f"[{name}({c.argument})]"
    obs = f"={c.result if with_result else ''};"
    trace = {"text": head + obs + completion[c.position:], "spans": [(len(head), len(head) + len(obs))],
             "calls": [obs], "stop": "answer"}
    return trace, len(head) + len(obs)


def gains(nll: Callable[[list[str]], list[np.ndarray]], corpus: Sequence[tuple[str, str]],
          candidates: Sequence[Candidate], decay: float = 0.2, name: str = "calc") -> np.ndarray:
    """L⁻ − L⁺ of each candidate. ``nll(texts)`` gives, per text, the negative log-likelihood of each character
    after the first (entry j: character j + 1 given characters 0 … j); the following tokens are the completion's
    characters from the call's position to its end, weighted by ``weights``."""
    texts, where = [], []
    for c in candidates:
        prompt, completion = corpus[c.text]
        plus, s_plus = insert(prompt, completion, c, True, name)
        bare, s_bare = insert(prompt, completion, c, False, name)
        texts += [plus["text"], prompt + completion, bare["text"]]
        where += [s_plus, len(prompt) + c.position, s_bare]
    losses = nll(texts)
    out = np.empty(len(candidates))
    for k, c in enumerate(candidates):
        n = len(corpus[c.text][1]) - c.position
        follow = [np.asarray(losses[3 * k + j])[where[3 * k + j] - 1: where[3 * k + j] - 1 + n] for j in range(3)]
        _, g = keep(*follow, tau=0.0, decay=decay)
        out[k] = float(g)
    return out


def augment(corpus: Sequence[tuple[str, str]], candidates: Sequence[Candidate], gain: np.ndarray, tau: float,
            name: str = "calc") -> tuple[list[dict], list[int]]:
    """Toolformer's C*: each text with its best kept call (gain ≥ τ) inserted, the others unchanged; returns the
    traces and their prompt lengths (for ``react.encode_traces``)."""
    best: dict[int, int] = {}
    for k, c in enumerate(candidates):
        if gain[k] >= tau and (c.text not in best or gain[k] > gain[best[c.text]]):
            best[c.text] = k
    traces = []
    for i, (prompt, completion) in enumerate(corpus):
        if i in best:
            traces.append(insert(prompt, completion, candidates[best[i]], True, name)[0])
        else:
            traces.append({"text": prompt + completion, "spans": [], "calls": [], "stop": "answer"})
    return traces, [len(p) for p, _ in corpus]
