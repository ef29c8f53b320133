"""The training loop: the only place in training with side effects (files, progress bar).

A run directory holds ``config.yaml``, ``run.json`` (the tokenizer, by content), ``metrics.jsonl``
(one JSON object per logged step), ``checkpoints/`` (Orbax) and ``loss.png``. Rerunning with the same
run_dir resumes from the latest checkpoint: parameters, optimizer state, step and data position are
restored, so the continued run is the run that was never stopped. One run at a time holds the
directory (``runs.lock``), and nothing in it that is not the run's own is overwritten (``runs.rundir``).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import numpy as np
import yaml
from tqdm.auto import tqdm

from lineage_jax.config import Config, UserError
from parallel.distributed import verdict_of_process_0
from lineage_jax.data import PackedSampler, Sampler, load_prepared, load_splits
from lineage_jax.data.mixture import build_mixture, plot_mixture
from lineage_jax.data.prefetch import Prefetch
from lineage_jax.data.loader import check_prepared_tokenizer
from lineage_jax.data.sources import describe_source
from lineage_jax.decode.generation import generate_text
from lineage_jax.tokenize import get_tokenizer
from lineage_jax.runs import atomic, checkpoint as ckpt, lock, rundir
from lineage_jax.runs.rundir import RunDirError
from lineage_jax.train.setup import build, compile_all


class NonFiniteError(UserError, ArithmeticError):
    """Training stopped: ``train.nan_patience`` steps in a row had a non-finite loss or gradient."""


def _finite(metrics) -> bool:
    """Whether a step's loss and gradient norm are finite (one small device-to-host copy)."""
    loss, norm = jax.device_get((metrics["loss"], metrics["grad_norm"]))
    return bool(np.isfinite(loss) and np.isfinite(norm))


def samplers(setup, tokenizer) -> tuple[Sampler, Sampler]:
    """Train and eval samplers of the configured data. A prepared dataset with
    ``data.segment_mask`` gives ``PackedSampler``s, whose batches carry segment ids, positions
    and loss weights (``draw``), so packed documents never see each other."""
    cfg = setup.cfg
    if cfg.data.mixture:                     # data.mixture: weighted components with epoch limits
        return build_mixture(cfg.data, cfg.train.seed, cfg.model.context, tokenizer)
    src = describe_source(cfg.data)
    if setup.packed:
        packed = load_prepared(cfg.data.prepared_dir)
        check_prepared_tokenizer(packed.meta, tokenizer)
        eos = int(packed.meta["eos_id"])
        return (PackedSampler(packed.train, cfg.train.seed, eos, where=f"{src} (train split)", order=cfg.data.loader),
                PackedSampler(packed.eval, cfg.train.seed, eos, where=f"{src} (eval split)", order=cfg.data.loader))
    splits = load_splits(cfg.data, tokenizer)
    T = cfg.model.context
    return (Sampler(splits.train, T, cfg.train.seed, where=f"{src} (train split)", order=cfg.data.loader),
            Sampler(splits.eval, T, cfg.train.seed, where=f"{src} (eval split)", order=cfg.data.loader))


def draw(sampler: Sampler, position: int, batch_size: int):
    """The host batch at ``position``: tokens, plus segments for a ``PackedSampler``."""
    if isinstance(sampler, PackedSampler) or getattr(sampler, "packed", False):
        return sampler.batch_with_segments(position, batch_size)
    return sampler.batch(position, batch_size)


def _eval_loss(setup, params, sampler: Sampler, n_batches: int) -> float:
    B, (lo, hi) = setup.cfg.train.batch_size, setup.process_rows()
    losses = [setup.eval_step(params, setup.put_batch(draw(sampler, i * B + lo, hi - lo), B)) for i in range(n_batches)]
    return float(np.mean(jax.device_get(losses)))


def _append_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def _mean(values):
    """Mean over logged steps: a float, or a list for vector metrics (per-expert load)."""
    m = np.mean(np.asarray(values, np.float64), axis=0)
    return float(m) if m.ndim == 0 else [float(x) for x in m]


def read_metrics(path: Path, note=None) -> list[dict]:
    """The rows of ``metrics.jsonl``. A torn last line (what a kill mid-append leaves) is dropped,
    with a ``note``; a damaged line before the last is a one-line RunDirError naming it."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise RunDirError(f"{path}: line {i + 1} is not JSON; fix or remove the file") from None
            if note is not None:
                note(f"{path.name}: dropped a torn last line (an interrupted write): {line[:60]!r}")
    return rows


def truncate_metrics(path: Path, step: int, note=None) -> None:
    """Drop rows logged after the checkpoint we resume from (they will be logged again), atomically."""
    if path.is_file():
        rows = [r for r in read_metrics(path, note) if r["step"] <= step]
        atomic.write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def train(cfg: Config, *, progress: bool = True, sample_chars: int = 0, stop_at: int | None = None,
          overwrite: bool = False, builder=None, files: dict[str, str] | None = None) -> dict:
    """Train (or resume) ``cfg``; return a summary {first_loss, final_loss, eval_loss, steps, ...}.

    The run directory is locked for the whole run (``runs.lock``: a second run into it is refused)
    and checked before anything is written (``runs.rundir.check``); ``overwrite`` starts it afresh,
    clearing only the run's own files. ``stop_at`` ends this invocation after that step,
    checkpointed, as a killed run would end.

    Multi-process (``parallel.distributed``): every process runs this same function; each draws only
    its own rows of every global batch (``Setup.process_rows``; the global order is the sampler's,
    whatever the process count) and Orbax writes each process's shards of a checkpoint. Only
    process 0 (``is_main``) writes metrics.jsonl, config.yaml, loss.png and shows progress.

    ``builder``: ``cfg -> (setup, compile)`` in place of ``build(cfg, compile_steps=False)`` and
    ``compile_all`` (LoRA fine-tuning: ``train.finetune``); ``files``: {name: text} written beside
    config.yaml (e.g. the adapter record).
    """
    run_dir = Path(cfg.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        rundir.create(run_dir)                          # the one-line refusal, before any other work
    tokenizer = get_tokenizer(cfg.data.tokenizer)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise RunDirError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's "
                          f"{tokenizer.vocab_size} tokens; set model.vocab_size >= {tokenizer.vocab_size}")
    kw = dict(progress=progress, sample_chars=sample_chars, stop_at=stop_at, overwrite=overwrite, builder=builder,
              files=files or {})
    if jax.process_index() > 0:                        # multi-process: process 0 locks and checks run_dir
        if not verdict_of_process_0(True):
            raise RunDirError(f"run_dir {run_dir}: process 0 refused it (its log says why)")
        with lock.hold(run_dir, process=jax.process_index()):   # run.<i>.lock: a rerun waits for this process too
            return _train_locked(cfg, run_dir, tokenizer, **kw)
    created = rundir.create(run_dir)
    try:
        with lock.hold(run_dir):
            try:
                rundir.check(run_dir, cfg.to_dict()["model"], cfg.data.tokenizer, tokenizer.fingerprint(),
                             overwrite=overwrite)
            except UserError:
                verdict_of_process_0(False)
                raise
            verdict_of_process_0(True)
            return _train_locked(cfg, run_dir, tokenizer, **kw)
    except lock.RunDirBusyError:
        verdict_of_process_0(False)
        raise
    finally:
        if created and not any(run_dir.iterdir()):     # refused or failed before writing: leave no trace
            run_dir.rmdir()


def _train_locked(cfg: Config, run_dir: Path, tokenizer, *, progress: bool, sample_chars: int,
                  stop_at: int | None, overwrite: bool, builder, files: dict[str, str]) -> dict:
    """``train`` with ``run_dir`` locked and checked."""
    # mesh/batch/divisibility checks before compiling
    setup, compile_steps = builder(cfg) if builder else (build(cfg, compile_steps=False), compile_all)
    T, B = cfg.model.context, cfg.train.batch_size
    train_data, eval_data = samplers(setup, tokenizer)
    is_main = jax.process_index() == 0                 # multi-process: the one writer of run files
    lo, hi = setup.process_rows(B)                     # this process's rows of each global batch
    progress = progress and is_main

    compile_steps(setup)
    mngr = ckpt.manager(run_dir, keep=cfg.train.keep_checkpoints, async_save=cfg.train.async_checkpointing)
    metrics_path = run_dir / "metrics.jsonl"
    record = {"spec": cfg.data.tokenizer, "sha256": tokenizer.fingerprint(), "vocab_size": tokenizer.vocab_size}
    restored = ckpt.restore_latest_good(mngr, setup.abstract_state(), log=lambda m: tqdm.write(m, file=sys.stderr))
    if restored is None:
        state = setup.init_state(jax.random.key(cfg.train.seed))
        position, start = 0, 0
        if is_main:
            if metrics_path.is_file() and metrics_path.stat().st_size:   # a run stopped before its first save
                tqdm.write(f"no checkpoint in {run_dir} yet: starting at step 0; dropping the metrics of unsaved "
                           "steps", file=sys.stderr)
            metrics_path.unlink(missing_ok=True)
    else:
        start, state, meta = restored
        problem = rundir.tokenizer_problem({"spec": "?", **(meta.get("tokenizer") or {})}, cfg.data.tokenizer,
                                           record["sha256"])
        if problem:
            mngr.close()
            raise RunDirError(f"run_dir {run_dir}: checkpoint step {start} {problem}; use the tokenizer it was "
                              f"trained with, a new run_dir, or --overwrite to start afresh there")
        order = meta.get("data_order", "numpy")       # checkpoints from before the record: NumPy's, then the default
        if order != cfg.data.loader and not cfg.data.mixture:    # (a mixture's order is its plan's, either way)
            mngr.close()
            raise RunDirError(f"run_dir {run_dir}: checkpoint step {start} was trained with data.loader={order}; "
                              f"resume with data.loader={order} (another order would repeat and skip windows of "
                              f"the epoch), or use a new run_dir, or --overwrite to start afresh there")
        position = int(meta["data_position"])
        if is_main:
            truncate_metrics(metrics_path, start, note=tqdm.write)
    if is_main:
        atomic.write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        atomic.write_text(run_dir / rundir.RUN_JSON, json.dumps({"tokenizer": record}, indent=1) + "\n")
        for name, text in files.items():
            atomic.write_text(run_dir / name, text)
    saved_meta = {"tokenizer": {"spec": cfg.data.tokenizer, "sha256": record["sha256"]}, "data_order": cfg.data.loader}

    bar = tqdm(total=cfg.train.steps, initial=start, disable=not progress, unit="step", dynamic_ncols=True,
               desc=f"train {run_dir.name}")
    if progress and start:
        tqdm.write(f"resumed from step {start} (data position {position})")
    window, t_window, rows, step, bad_run = [], time.perf_counter(), [], start, 0
    end, first = min(cfg.train.steps, stop_at or cfg.train.steps), position
    # step start + k reads global rows first + k·B + [lo, hi): drawn ahead on a thread while the step runs
    batches = Prefetch(lambda k: draw(train_data, first + k * B + lo, hi - lo), max(0, end - start))
    try:
        for step, host_batch in zip(range(start, end), batches):
            state, metrics = setup.train_step(state, setup.put_batch(host_batch, B))
            position += B
            window.append(metrics)
            done = step + 1
            bad_run = 0 if _finite(metrics) else bad_run + 1   # skip policy: the update was not applied
            if bad_run and cfg.train.nan_policy == "stop" and bad_run >= cfg.train.nan_patience:
                raise NonFiniteError(
                    f"training stopped at step {done}: loss or gradients not finite for {bad_run} steps in a row "
                    f"(train.nan_patience={cfg.train.nan_patience}); none of them was checkpointed, the latest "
                    f"checkpoint is step {mngr.latest_step()}; lower optim.lr, raise optim.warmup_steps, or set "
                    f"train.nan_policy=skip")
            if done % cfg.train.log_every == 0 or done == cfg.train.steps or done == 1:
                window = jax.device_get(window)
                dt = time.perf_counter() - t_window
                row = {"step": done, **{k: _mean([m[k] for m in window]) for k in window[0]},
                       "tokens_per_s": len(window) * B * T / dt}
                if cfg.train.eval_every and (done % cfg.train.eval_every == 0 or done == cfg.train.steps):
                    row["eval_loss"] = _eval_loss(setup, state.params, eval_data, cfg.train.eval_batches)
                rows.append(row)
                if is_main:
                    _append_jsonl(metrics_path, [row])
                bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row.get('lr', 0):.2e}",
                                tok_s=f"{row['tokens_per_s']:.0f}", refresh=False)
                window, t_window = [], time.perf_counter()
            saving = done % cfg.train.ckpt_every == 0 or done == cfg.train.steps or done == stop_at
            if saving and not (bad_run and cfg.train.nan_policy == "stop"):   # a non-finite state is never saved
                ckpt.save(mngr, done, state, {"data_position": position, "step": done, **saved_meta})
            bar.update(1)
    except KeyboardInterrupt:
        try:  # save the last completed step unless the interrupt hit mid-update (one process: a save is a
            done = int(jax.device_get(state.step))   # collective, and the others may stop a step apart)
            if done * B == position and done > (mngr.latest_step() or 0) and not bad_run \
                    and jax.process_count() == 1:
                ckpt.save(mngr, done, state, {"data_position": position, "step": done, **saved_meta})
                if window and is_main:   # the saved step's row, so every saved step has one
                    window = jax.device_get(window)
                    _append_jsonl(metrics_path, [{"step": done, **{k: _mean([m[k] for m in window]) for k in window[0]},
                                                  "tokens_per_s": len(window) * B * T / (time.perf_counter() - t_window)}])
        except Exception:  # noqa: BLE001 - the donated state may be gone; the last checkpoint stands
            pass
        again = "rerun the command without --overwrite" if overwrite else "rerun the same command"
        tqdm.write(f"interrupted; {again} to resume from step {mngr.latest_step()}")
        raise
    finally:
        batches.close()
        bar.close()
        mngr.wait_until_finished()
        mngr.close()

    history = read_metrics(metrics_path) if is_main else rows    # other processes: this invocation's rows
    if is_main:
        plot_losses(history, run_dir / "loss.png", title=f"{run_dir.name}: {cfg.model.layers}L×{cfg.model.width}")
        if cfg.data.mixture:                 # what the mixture served: proportions and epochs vs the config
            mix = train_data.plan.realised(position)
            atomic.write_text(run_dir / "mixture.json", json.dumps(mix, indent=1) + "\n")
            plot_mixture(train_data.plan, B, max(1, position // B), run_dir / "mixture.png")
    summary = {"steps": int(jax.device_get(state.step)), "first_loss": history[0]["loss"] if history else None,
               "final_loss": history[-1]["loss"] if history else None,
               "eval_loss": next((r["eval_loss"] for r in reversed(history) if "eval_loss" in r), None),
               "compile_seconds": setup.compile_seconds, "run_dir": str(run_dir),
               "process": [jax.process_index(), jax.process_count()], "process_rows": [lo, hi],
               "rows_read": {"train": train_data.rows_read, "eval": eval_data.rows_read}}
    if cfg.data.mixture:
        summary["mixture"] = {c["name"]: {k: c[k] for k in ("weight", "proportion", "epochs")}
                              for c in train_data.plan.realised(position)["components"]}
    if sample_chars and jax.process_count() == 1:   # sampling is a single-process program
        summary["sample"] = generate_text(setup.model, state.params, tokenizer, prompt="def ",
                                          max_new_tokens=sample_chars, temperature=0.8, seed=cfg.train.seed)
    return summary


def plot_losses(history: list[dict], path: Path, title: str = "") -> None:
    """Train (and eval) loss against step, as a PNG."""
    if not history:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["step"] for r in history], [r["loss"] for r in history], label="train")
    ev = [r for r in history if "eval_loss" in r]
    if ev:
        ax.plot([r["step"] for r in ev], [r["eval_loss"] for r in ev], "o-", label="eval")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic.replacing(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
