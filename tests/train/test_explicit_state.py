"""The explicit (shard_map) step finds the clip's optimizer state by its structure, not by its place
in the optimizer chain: a chain that puts the clip last still traces, and keeps its state's layout."""
import dataclasses

import jax
import jax.numpy as jnp
import optax
import pytest

from lineage_jax import optim
from lineage_jax.config import load_config
from lineage_jax.train import explicit
from lineage_jax.train import setup as train_setup
from lineage_jax.train.explicit import clip_slot, make_explicit_train_step, with_slot, without_slot

PARAMS = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
SMALL = ["model.layers=2", "model.width=32", "model.heads=2", "model.context=32", "model.attn_chunks=2",
         "train.batch_size=8", "optim.warmup_steps=2", "parallel.form=shard_map"]


def clip_last(cfg, total_steps, decay_mask=None):
    """``make_optimizer``'s chain in the other order: AdamW, then [clip]."""
    parts = [optax.adamw(optim.make_schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                         weight_decay=cfg.weight_decay, mask=decay_mask)]
    if cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    return optax.chain(*parts)


@pytest.mark.parametrize("make, where", [(optim.make_optimizer, 0), (clip_last, 1)])
def test_clip_slot_is_found_wherever_the_chain_puts_the_clip(make, where):
    cfg = load_config("tiny").optim
    full = make(cfg, 10).init(PARAMS)
    inner = make(dataclasses.replace(cfg, clip_norm=0.0), 10).init(PARAMS)
    assert clip_slot(full, inner) == where and isinstance(full[where], optax.EmptyState)
    assert jax.tree.structure(without_slot(full, where)) == jax.tree.structure(inner)
    assert jax.tree.structure(with_slot(inner, where, full[where])) == jax.tree.structure(full)
    assert clip_slot(inner, inner) is None


def test_explicit_step_keeps_the_state_of_a_reordered_chain(monkeypatch):
    monkeypatch.setattr(train_setup, "make_optimizer", clip_last)
    monkeypatch.setattr(explicit, "make_optimizer", clip_last)
    setup = train_setup.build(load_config("tiny", SMALL), compile_steps=False)
    state = setup.abstract_state()
    assert isinstance(state.opt_state[1], optax.EmptyState)          # the clip is last in this chain
    with setup.context():
        new_state, _ = jax.eval_shape(make_explicit_train_step(setup), state, setup.abstract_batch())
    assert jax.tree.structure(new_state.opt_state) == jax.tree.structure(state.opt_state)
