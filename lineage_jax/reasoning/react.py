"""The ReAct loop (Yao et al. 2023): the model writes until it calls a tool, the tool's result is appended as
an observation, and the model goes on, until it writes a final answer or runs out of steps.

In the chapter's character format a call is ``[calc(123*45)]`` (``tools.parse_call``) and an observation is
``=5535;`` written by the loop, never by the model: ``react`` returns the observations' character spans so a
training loss can mask them out (``loss_mask``), as the model should learn to call tools, not to imitate them.
``generate(text) -> continuation`` is any sampler; whatever it writes after the first action marker ``]`` or
the end token ``.`` is cut, so generation stops exactly at the boundary. Malformed calls, unknown tools and
tool errors come back as ``error: …`` observations; a trace that never answers stops at ``max_steps``. The
toolbox is any mapping of call names to tools (``tools.toolbox``: ``calc``, and ``lookup`` over a fact table), so
one trace may use both (``fact_trace``).
"""
from __future__ import annotations

import re
from typing import Callable, Mapping

import numpy as np

from lineage_jax.reasoning import arith, tools

ACTION_END = "]"


def cut(continuation: str) -> str:
    """The continuation up to and including its first ``]`` or end token (the step boundary)."""
    ends = [i for i in (continuation.find(ACTION_END), continuation.find(arith.END)) if i >= 0]
    return continuation[:min(ends) + 1] if ends else continuation


def react(generate: Callable[[str], str], prompt: str, toolbox: Mapping[str, Callable[[str], object]], *,
          max_steps: int = 4) -> dict:
    """Run the loop from ``prompt``. Returns text (prompt + the whole trace), spans [(start, end)] of the
    observations, calls (the observations as written), and ``stop``: "answer" (the end token was written),
    "step_limit" or "no_progress" (the model wrote nothing)."""
    text, spans, calls = prompt, [], []
    for _ in range(max_steps):
        piece = cut(generate(text))
        if not piece:
            return {"text": text, "spans": spans, "calls": calls, "stop": "no_progress"}
        text += piece
        if piece.endswith(arith.END):
            return {"text": text, "spans": spans, "calls": calls, "stop": "answer"}
        if piece.endswith(ACTION_END):
            obs = "=" + tools.observe(text, toolbox) + ";"
            spans.append((len(text), len(text) + len(obs)))
            calls.append(obs)
            text += obs
    return {"text": text, "spans": spans, "calls": calls, "stop": "step_limit"}


def loss_mask(trace: dict, prompt_len: int) -> np.ndarray:
    """Per character of ``trace["text"]``: 1 where the model wrote it, 0 for the prompt and the observations."""
    m = np.zeros(len(trace["text"]), np.float32)
    m[prompt_len:] = 1.0
    for a, b in trace["spans"]:
        m[a:b] = 0.0
    return m


# --------------------------------------------------------------------------- a batch of agents, a trained model

VOCAB = arith.CharVocab(arith.VOCAB.chars + "[]()")     # the chapter's characters and the call's brackets


def run_batch(generate: Callable[[list[str]], list[str]], prompts: list[str],
              toolbox: Mapping[str, Callable[[str], object]], *, max_steps: int = 4,
              max_chars: int | None = None) -> list[dict]:
    """``react`` for many prompts at once: each round ``generate(texts) -> continuations`` serves only the
    agents still running, so a batch whose agents are at different steps gives each the trace it would get
    alone (with a deterministic ``generate``). A trace that reaches ``max_chars`` (a model's window) stops
    there with ``stop="too_long"``."""
    traces = [{"text": p, "spans": [], "calls": [], "stop": None} for p in prompts]
    for _ in range(max_steps):
        live = [t for t in traces if t["stop"] is None]
        if not live:
            break
        for t, cont in zip(live, generate([t["text"] for t in live])):
            piece = cut(cont)
            if not piece:
                t["stop"] = "no_progress"
                continue
            t["text"] += piece
            if piece.endswith(arith.END):
                t["stop"] = "answer"
            elif piece.endswith(ACTION_END):
                obs = "=" + tools.observe(t["text"], toolbox) + ";"
                t["spans"].append((len(t["text"]), len(t["text"]) + len(obs)))
                t["calls"].append(obs)
                t["text"] += obs
            if t["stop"] is None and max_chars is not None and len(t["text"]) >= max_chars:
                t["text"], t["stop"] = t["text"][:max_chars], "too_long"
    for t in traces:
        t["stop"] = t["stop"] or "step_limit"
    return traces


def encode_traces(traces: list[dict], prompt_lens: list[int], length: int, vocab: arith.CharVocab = VOCAB
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Traces -> tokens [B, length] and the next-token loss mask of ``arith.encode_pairs``: 1 where the target
    ``tokens[:, t + 1]`` is a character the model wrote (``loss_mask``), so prompts and observations are not
    learned."""
    tokens = np.zeros((len(traces), length), np.int32)
    mask = np.zeros((len(traces), length), np.float32)
    for i, (t, n) in enumerate(zip(traces, prompt_lens)):
        ids = vocab.encode(t["text"])
        if len(ids) > length:
            raise ValueError(f"{t['text']!r}: {len(ids)} tokens exceed length {length}")
        tokens[i, :len(ids)] = ids
        mask[i, :len(ids) - 1] = loss_mask(t, n)[1:]
    return tokens, mask


def tool_trace(problem: arith.Problem, name: str = "calc") -> dict:
    """The reference trace of a problem whose prompt is ``expression=``: call the tool on the expression, read the
    observation, answer: ``123*45=[calc(123*45)]=5535;>5535.`` (the observation's span marked)."""
    call = f"[{name}({problem.prompt.rstrip('=')})]"
    obs = f"={problem.answer};"
    text = problem.prompt + call
    return {"text": text + obs + f"{arith.ANSWER}{problem.answer}{arith.END}", "spans": [(len(text), len(text) + len(obs))],
            "calls": [obs], "stop": "answer"}


def action_trace(prompt: str, actions: list[str], answer: int,
                 toolbox: Mapping[str, Callable[[str], object]]) -> dict:
    """The trace ``react`` builds when the model writes ``actions`` (each a ``[tool(argument)]`` call) and then
    ``>answer.``: every observation comes from running the call through ``toolbox``, with its span marked."""
    text, spans, calls = prompt, [], []
    for action in actions:
        text += action
        obs = "=" + tools.observe(text, toolbox) + ";"
        spans.append((len(text), len(text) + len(obs)))
        calls.append(obs)
        text += obs
    return {"text": text + f"{arith.ANSWER}{answer}{arith.END}", "spans": spans, "calls": calls, "stop": "answer"}


def fact_trace(problem: arith.Problem, table: Mapping[str, int]) -> dict:
    """The reference trace of a fact problem (``arith.fact_problem``): look up each name, calculate on the values
    read, answer: ``zor+kip=[lookup(zor)]=412;[lookup(kip)]=57;[calc(412+57)]=469;>469.``"""
    expr = problem.prompt.rstrip("=")
    names = re.findall(r"[a-z]+", expr)
    numeric = re.sub(r"[a-z]+", lambda m: str(table[m.group()]), expr)
    calc = [f"[calc({numeric})]"] if len(names) > 1 else []          # one name: its value is the answer
    return action_trace(problem.prompt, [f"[lookup({n})]" for n in names] + calc, problem.answer,
                        tools.toolbox(table))


def greedy_generator(apply: Callable, params, *, window: int, max_new: int, vocab: arith.CharVocab = VOCAB,
                     chunk: int = 256) -> Callable[[list[str]], list[str]]:
    """``generate(texts) -> continuations``: greedy decoding of up to ``max_new`` tokens (to the end token) with
    ``sample.sample``, in chunks padded to a power of two (few shapes, few compiles)."""
    import jax
    from lineage_jax.reasoning import sample

    def generate(texts: list[str]) -> list[str]:
        size = min(chunk, 1 << max(len(texts) - 1, 1).bit_length())
        out = []
        for start in range(0, len(texts), size):
            part = texts[start:start + size]
            tokens, _ = arith.encode_pairs([(t, "") for t in part + [part[-1]] * (size - len(part))], window, vocab)
            lengths = np.array([len(t) for t in part] + [len(part[-1])] * (size - len(part)), np.int32)
            res = sample.sample(apply, params, tokens, lengths, jax.random.key(0), max_new=max_new,
                                end_id=vocab.end_id, greedy=True)
            out += sample.completions(vocab, res, lengths)[:len(part)]
        return out
    return generate
