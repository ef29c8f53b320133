"""Sampling from a trained run: greedy or temperature, one token at a time at a fixed shape.

Each new token reruns the model over a fixed ``context``-long window (the prompt padded on
the right), so one compiled function serves every step; the KV cache and the other
decoding strategies come with the inference lineage.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lineage_jax.config import Config, load_config
from lineage_jax.models import GPT
from lineage_jax.tokenize import Tokenizer, get_tokenizer
from lineage_jax.train import checkpoint as ckpt


def _make_next_token(model: GPT):
    @jax.jit
    def next_token(params, window, length, key, temperature):
        """window [1, C] with ``length`` real tokens -> the next token id (greedy if temperature == 0)."""
        logits = model.apply({"params": params}, window)[0, length - 1].astype(jnp.float32)
        sampled = jax.random.categorical(key, logits / jnp.maximum(temperature, 1e-6))
        return jnp.where(temperature > 0, sampled, jnp.argmax(logits))
    return next_token


def generate(model: GPT, params, prompt: Sequence[int], max_new_tokens: int, *, temperature: float = 1.0,
             seed: int = 0, eos_id: int | None = None, on_token: Callable[[list[int]], None] | None = None) -> list[int]:
    """Prompt ids -> prompt + up to ``max_new_tokens`` ids; stops early at ``eos_id``."""
    if not prompt:
        raise ValueError("prompt must contain at least one token")
    if temperature < 0:
        raise ValueError(f"temperature={temperature}: must be >= 0 (0 = greedy)")
    C = model.cfg.context
    next_token = _make_next_token(model)
    tokens, key = list(prompt), jax.random.key(seed)
    for i in range(max_new_tokens):
        recent = tokens[-C:]
        window = np.zeros((1, C), np.int32)
        window[0, :len(recent)] = recent
        tok = int(next_token(params, window, len(recent), jax.random.fold_in(key, i), temperature))
        tokens.append(tok)
        if on_token is not None:
            on_token(tokens)
        if eos_id is not None and tok == eos_id:
            break
    return tokens


def generate_text(model: GPT, params, tokenizer: Tokenizer, prompt: str, max_new_tokens: int, *,
                  temperature: float = 1.0, seed: int = 0, stream: Callable[[str], None] | None = None) -> str:
    """Text in, text out; ``stream`` receives each newly completed piece of text as it is made."""
    ids = tokenizer.encode(prompt)
    shown = len(tokenizer.decode(ids))

    def emit(text: str) -> None:
        nonlocal shown
        if stream is not None and len(text) > shown:
            stream(text[shown:])
            shown = len(text)

    # A trailing U+FFFD may be a multi-byte character not yet complete: hold it back until the end.
    out = generate(model, params, ids, max_new_tokens, temperature=temperature, seed=seed,
                   eos_id=tokenizer.eos_id, on_token=lambda toks: emit(tokenizer.decode(toks).rstrip("\ufffd")))
    text = tokenizer.decode(out)
    emit(text)
    return text


def load_run(run_dir: str | Path) -> tuple[Config, GPT, object]:
    """(config, model, params) of the latest checkpoint in ``run_dir``, on one device."""
    run_dir = Path(run_dir)
    step = ckpt.latest_step(run_dir)
    if step is None or not (run_dir / "config.yaml").is_file():
        raise ckpt.CheckpointError(f"no checkpoint in {run_dir}/checkpoints; train first "
                                   f"(lineage train run_dir={run_dir}) or pass the run_dir of a trained run")
    cfg = load_config(str(run_dir / "config.yaml"), ["mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1"])
    from lineage_jax.train.setup import build
    setup = build(cfg, compile_steps=False, devices=jax.devices()[:1])
    with ckpt.manager(run_dir, create=False, async_save=False) as mngr:
        state, _ = ckpt.restore(mngr, step, setup.abstract_state())
    return cfg, setup.model, state.params


def sample_run(run_dir: str | Path, prompt: str, max_new_tokens: int, *, temperature: float = 1.0, seed: int = 0,
               stream: Callable[[str], None] | None = None) -> str:
    cfg, model, params = load_run(run_dir)
    return generate_text(model, params, get_tokenizer(cfg.data.tokenizer), prompt, max_new_tokens,
                         temperature=temperature, seed=seed, stream=stream)
