"""The alignment steps: they learn what they claim on a toy batch, and under FSDP (ZeRO-3) and DP × TP on 8
emulated devices they equal one device (loss and parameters after 3 steps)."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax.align import dataset, heads, setup as align_setup, steps, task
from lineage_jax.config import load_config
from lineage_jax.tokenize import get_tokenizer

TINY = ["model.layers=1", "model.width=16", "model.heads=4", "model.context=32", "model.attn_chunks=1", "model.vocab_multiple=8",
        "train.batch_size=8", "train.steps=10", "optim.lr=3e-3", "optim.warmup_steps=0"]


def _cfg(*extra):
    return load_config("tiny", TINY + list(extra))


def _pairs(n=8, seed=0):
    rows = list(task.examples(seed, n))
    tok = get_tokenizer("byte")
    c = dataset.encode(tok, [r["prompt"] for r in rows], [r["chosen"] for r in rows], 32)
    r = dataset.encode(tok, [r["prompt"] for r in rows], [r["rejected"] for r in rows], 32)
    return c, r


def _lm_params(cfg, seed=0):
    from lineage_jax import models
    m = models.build(cfg.model)
    return nn.unbox(jax.jit(m.init)(jax.random.key(seed), jnp.zeros((1, 32), jnp.int32))["params"])   # one compile


def _dpo_run(cfg, devices, n_steps=3):
    s = align_setup.build(cfg, with_head=False, devices=devices)
    policy, ref = _lm_params(cfg, 0), _lm_params(cfg, 1)
    c, r = _pairs()
    logprob = s.jit(steps.make_logprob_fn(s.model))
    ref = jax.device_put(ref, s.lm_sharding())
    batch = s.put_batch({"chosen": c["tokens"], "chosen_mask": c["mask"], "rejected": r["tokens"],
                         "rejected_mask": r["mask"]})
    batch["ref_chosen"], _ = logprob(ref, batch["chosen"], batch["chosen_mask"])
    batch["ref_rejected"], _ = logprob(ref, batch["rejected"], batch["rejected_mask"])
    step = s.jit_step(steps.make_dpo_step(s.model, s.tx, beta=0.5))
    state, losses = s.init_state(policy), []
    for _ in range(n_steps):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    return losses, jax.device_get(state.params)


def _rm_run(cfg, devices, n_steps=3):
    """Bradley-Terry sees r_w - r_l only, so the head's bias and ln_f's bias have gradient exactly 0; Adam with
    eps 1e-8 would turn one layout's rounding noise (~1e-10) into a full lr-sized step, so eps is 1e-4 here."""
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, eps=1e-4))
    s = align_setup.build(cfg, with_head=True, devices=devices)
    params = {"lm": _lm_params(cfg), "head": heads.init_head(jax.random.key(3), cfg.model.width)}
    c, r = _pairs()
    batch = s.put_batch({"chosen": c["tokens"], "chosen_lengths": c["lengths"], "rejected": r["tokens"],
                         "rejected_lengths": r["lengths"]})
    step = s.jit_step(steps.make_rm_step(s.model, s.tx))
    state, losses = s.init_state(params), []
    for _ in range(n_steps):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    return losses, jax.device_get(state.params)


def _ppo_run(cfg, devices, n_steps=3):
    """PPO updates on one scored batch of fixed rollouts (the chosen rows as responses)."""
    s = align_setup.build(cfg, with_head=True, devices=devices)
    params = {"lm": _lm_params(cfg), "head": heads.init_head(jax.random.key(3), cfg.model.width)}
    reward = jax.device_put({"lm": _lm_params(cfg, 2), "head": heads.init_head(jax.random.key(4), cfg.model.width)},
                            s.head_sharding())
    c, _ = _pairs()
    score = s.jit(steps.make_score_fn(s.model, kl_coef=0.1, gamma=1.0, lam=0.95))
    state = s.init_state(params)
    batch, _ = score(state.params, jax.device_put(_lm_params(cfg, 1), s.lm_sharding()), reward,
                     s.put_batch({"tokens": c["tokens"], "mask": c["mask"], "lengths": c["lengths"]}))
    batch = s.put_batch(jax.device_get(batch))
    step, losses = s.jit_step(steps.make_ppo_step(s.model, s.tx, ptx_coef=0.1)), []
    batch.update(s.put_batch({"ptx_tokens": c["tokens"], "ptx_mask": c["mask"]}))
    for _ in range(n_steps):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    return losses, jax.device_get(state.params)


def _same(a, b):
    la, pa = a
    lb, pb = b
    np.testing.assert_allclose(la, lb, rtol=1e-5, atol=1e-5)
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


def test_dpo_step_on_8_devices_equals_one_under_fsdp():
    one = _dpo_run(_cfg(), jax.devices()[:1])
    assert one[0][-1] < one[0][0]                     # DPO lowers its loss on the batch it sees
    _same(one, _dpo_run(_cfg("mesh.data=1", "mesh.fsdp=8", "parallel.zero_stage=3"), jax.devices()))


@pytest.mark.slow
def test_ppo_step_on_8_devices_equals_one_under_fsdp_and_dp_tp():
    one = _ppo_run(_cfg(), jax.devices()[:1])
    _same(one, _ppo_run(_cfg("mesh.data=1", "mesh.fsdp=8", "parallel.zero_stage=3"), jax.devices()))
    _same(one, _ppo_run(_cfg("mesh.data=2", "mesh.tensor=4"), jax.devices()))


@pytest.mark.slow
def test_dpo_and_rm_steps_on_8_devices_equal_one_under_dp_tp():
    dp_tp = ("mesh.data=2", "mesh.tensor=4")
    _same(_dpo_run(_cfg(), jax.devices()[:1]), _dpo_run(_cfg(*dp_tp), jax.devices()))
    one = _rm_run(_cfg(), jax.devices()[:1])
    assert one[0][-1] < one[0][0]
    _same(one, _rm_run(_cfg(*dp_tp), jax.devices()))
    _same(one, _rm_run(_cfg("mesh.data=1", "mesh.fsdp=8", "parallel.zero_stage=3"), jax.devices()))
