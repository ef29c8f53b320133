"""The ReAct loop (Yao et al. 2023): the model writes until it calls a tool, the tool's result is appended as
an observation, and the model goes on, until it writes a final answer or runs out of steps.

In the chapter's character format a call is ``[calc(123*45)]`` (``tools.parse_call``) and an observation is
``=5535;`` written by the loop, never by the model: ``react`` returns the observations' character spans so a
training loss can mask them out (``loss_mask``), as the model should learn to call tools, not to imitate them.
``generate(text) -> continuation`` is any sampler; whatever it writes after the first action marker ``]`` or
the end token ``.`` is cut, so generation stops exactly at the boundary. Malformed calls, unknown tools and
tool errors come back as ``error: …`` observations; a trace that never answers stops at ``max_steps``.
"""
from __future__ import annotations

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
