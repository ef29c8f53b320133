"""Orbax checkpoints of a run directory: the whole train state plus a JSON sidecar (data position, step).

No pickle anywhere: arrays go through Orbax's tensorstore format, metadata through JSON.
Restoring takes an abstract target (shapes, dtypes, shardings), so a checkpoint written
under one mesh restores directly into another.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from lineage_jax.config.errors import UserError


class CheckpointError(UserError, FileNotFoundError):
    """A missing or unusable checkpoint, stated in one line."""


def manager(run_dir: str | Path, *, keep: int = 3, async_save: bool = True, create: bool = True) -> ocp.CheckpointManager:
    directory = Path(run_dir).absolute() / "checkpoints"
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create,
                                           enable_async_checkpointing=async_save)
    return ocp.CheckpointManager(directory, options=options)


def save(mngr: ocp.CheckpointManager, step: int, state: Any, meta: dict) -> None:
    """Start an (async) save of ``state`` and ``meta`` at ``step``."""
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))


def latest_step(run_dir: str | Path) -> int | None:
    directory = Path(run_dir).absolute() / "checkpoints"
    if not directory.is_dir():
        return None
    with manager(run_dir, create=False, async_save=False) as mngr:
        return mngr.latest_step()


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """State restored into the shapes/shardings of ``abstract_state`` (a pytree of ShapeDtypeStruct)."""
    out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                     meta=ocp.args.JsonRestore()))
    return out["state"], out["meta"]


def restore_params(mngr: ocp.CheckpointManager, step: int, abstract_params: Any) -> Any:
    """Only the ``params`` subtree of the state saved at ``step`` (Orbax partial restore: the optimizer
    state, step and loss scale are never read), placed as the shardings of ``abstract_params``; each
    array keeps the dtype it was saved in."""
    args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding), abstract_params)
    out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item={"params": abstract_params}, restore_args={"params": args}, partial_restore=True)))
    return out["state"]["params"]
