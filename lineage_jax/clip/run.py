"""Training CLIP on the captioned shapes: ``fit`` (the loop, no files) and ``train`` (a resumable run
directory: checkpoints every ``save_every`` steps, metrics.jsonl, one run per directory by lock).

Every setting is checked (``clip.settings.TrainSettings``, one line; the strategy by ``clip.setup.build``) before JAX compiles anything; batches are a
function of (seed, step) (``clip.data.batch_at``), so a run stopped and restarted trains on the
same batches as one that never stopped.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from lineage_jax.clip import data as clip_data
from lineage_jax.clip import setup as clip_setup
from lineage_jax.clip import store
from lineage_jax.clip.model import CLIPConfig
from lineage_jax.clip.settings import TrainSettings
from lineage_jax.clip.train import ClipState, make_optimizer, make_train_step
from lineage_jax.config.errors import ConfigError
from lineage_jax.runs import checkpoint
from lineage_jax.runs.lock import hold


def build(cfg: CLIPConfig, s: TrainSettings, devices=None):
    tx = make_optimizer(s.lr, s.steps, s.warmup, s.weight_decay)
    setup = clip_setup.build(cfg, tx, strategy=s.strategy, batch_size=s.batch_size, devices=devices)
    return setup, setup.jit_step(make_train_step(setup.model, tx))


def fit(setup, step_fn, state: ClipState, pairs: dict, s: TrainSettings, *, start: int = 0,
        on_step: Callable[[int, ClipState, dict], None] | None = None, progress: bool = False) -> ClipState:
    """Steps ``start`` … ``s.steps - 1`` over ``pairs`` ({"image", "tokens"}); ``on_step(step, state, metrics)``."""
    from tqdm.auto import tqdm
    for i in tqdm(range(start, s.steps), disable=not progress, desc="clip", initial=start, total=s.steps):
        state, metrics = step_fn(state, setup.put_batch(clip_data.batch_at(pairs, s.batch_size, s.seed, i)))
        if on_step is not None:
            on_step(i + 1, state, metrics)
    return state


def train(run_dir: str | Path, cfg: CLIPConfig, s: TrainSettings, data_dir: str | Path, *, progress: bool = True,
          overwrite: bool = False, devices=None) -> dict:
    """Train (or resume) ``run_dir`` to ``s.steps``; returns a summary dict."""
    from lineage_jax.data.shapes import load_shapes
    run_dir = Path(run_dir)
    vocab = clip_data.vocabulary()
    if cfg.vocab_size != vocab.vocab_size:
        cfg = dataclasses.replace(cfg, vocab_size=vocab.vocab_size)
    store.check(run_dir, cfg.to_dict(), vocab, overwrite=overwrite)
    run_dir.mkdir(parents=True, exist_ok=True)
    with hold(run_dir):
        splits = load_shapes(data_dir, s.dataset)
        pairs = clip_data.pairs(splits["train"], vocab, cfg.context)
        if len(pairs["tokens"]) < s.batch_size:
            raise ConfigError(f"batch_size={s.batch_size}: more than the {len(pairs['tokens'])} training pairs")
        setup, step_fn = build(cfg, s, devices)
        store.write_config(run_dir, cfg, dataclasses.asdict(s), vocab)
        start, state = 0, None
        with checkpoint.manager(run_dir) as mngr:
            if checkpoint.latest_step(run_dir) is not None:
                abstract = setup.abstract_state()._asdict()
                found = checkpoint.restore_latest_good(mngr, abstract)
                if found is not None:
                    start, restored, _ = found
                    state = ClipState(**restored)
            if state is None:
                state = setup.init_state(jax.random.key(s.seed))
            last = {}

            def on_step(i, st, metrics):
                last.update({k: float(v) for k, v in metrics.items()})
                if i % 10 == 0 or i == s.steps:
                    with open(run_dir / store.METRICS, "a", encoding="utf-8") as f:
                        f.write(json.dumps({"step": i, **last}) + "\n")
                if i % s.save_every == 0 or i == s.steps:
                    checkpoint.save(mngr, i, st._asdict(), {"step": i})
            state = fit(setup, step_fn, state, pairs, s, start=start, on_step=on_step, progress=progress)
            mngr.wait_until_finished()
    return {"run_dir": str(run_dir), "steps": s.steps, "resumed_from": start, "final": last,
            "train_pairs": int(len(pairs["tokens"])), "params": int(sum(np.size(x) for x in jax.tree.leaves(state.params)))}
