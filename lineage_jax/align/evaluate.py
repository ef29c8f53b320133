"""Measure a policy against the gold preference: sample responses to held-out prompts, score them with
``task.gold_score`` (the program that plays the human, never seen by training), and estimate the KL to
the reference as the mean over samples of Σ_t (log π − log π_ref) on the response tokens."""
from __future__ import annotations

import jax
import numpy as np

from lineage_jax.align import dataset, objectives as O, task
from lineage_jax.align.config import PROMPT_WIDTH
from lineage_jax.align.rollout import rollout


def sample(model, lm_params, tokenizer, prompts, *, new_tokens: int, seed: int, temperature: float = 1.0):
    """(rollouts dict of host arrays, response texts) for ``prompts``."""
    ids, lens = dataset.encode_prompts(tokenizer, prompts, PROMPT_WIDTH)
    out = jax.device_get(rollout(model, lm_params, ids, lens, jax.random.key(seed), new_tokens=new_tokens,
                                 eos_id=tokenizer.eos_id, temperature=temperature,
                                 vocab_limit=tokenizer.vocab_size))
    texts = [dataset.decode_response(tokenizer, out["tokens"][i], int(lens[i]), tokenizer.eos_id)
             for i in range(len(prompts))]
    return out, texts


def _ref_logp(model, params, tokens, mask):
    logp = O.token_logprobs(model.apply({"params": params}, tokens[:, :-1]), tokens[:, 1:])
    return O.sequence_logprob(logp, mask[:, 1:])


_ref_logp_jit = jax.jit(_ref_logp, static_argnums=0)


def evaluate(model, lm_params, ref_params, tokenizer, prompts, *, new_tokens: int, seed: int = 0,
             temperature: float = 1.0, keep_rollouts: bool = False) -> dict:
    """{"gold": mean gold score, "correct": share correct, "rude": share rude, "length": mean response
    characters, "kl": mean KL(π ‖ π_ref) estimate in nats (0 without a reference)}; with ``keep_rollouts``
    also "rollouts" (the sampled rows, host arrays) for scoring by a reward model."""
    out, texts = sample(model, lm_params, tokenizer, prompts, new_tokens=new_tokens, seed=seed,
                        temperature=temperature)
    res = {"gold": float(np.mean([task.gold_score(p, r) for p, r in zip(prompts, texts)])),
           "correct": float(np.mean([task.is_correct(p, r) for p, r in zip(prompts, texts)])),
           "rude": float(np.mean([task.is_rude(r) for r in texts])),
           "length": float(np.mean([len(r) for r in texts])), "kl": 0.0, "examples": list(zip(prompts, texts))[:4]}
    if ref_params is not None:
        pol = np.asarray(out["logp"] * out["mask"][:, 1:]).sum(-1)
        ref = np.asarray(_ref_logp_jit(model, ref_params, out["tokens"], out["mask"]))
        res["kl"] = float(np.mean(pol - ref))
    if keep_rollouts:
        res["rollouts"] = out
    return res
