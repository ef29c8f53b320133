"""Orbax checkpoints of a run directory: the whole train state plus a JSON sidecar (data position, step).

No pickle anywhere: arrays go through Orbax's tensorstore format, metadata through JSON.
Restoring takes an abstract target (shapes, dtypes, shardings), so a checkpoint written
under one mesh restores directly into another.

Integrity (issue 15; made scale-proof for issue 16): ``save`` puts a digest per top-level item
(params, opt_state, other) into the JSON ``meta``: ``runs.digest``, an additive position-keyed hash
that every device computes over its own shards (no host ever holds the state; only a few words per
leaf come back), identical under any mesh or process count. ``restore_latest_good`` recomputes it on
what was restored and checks, in the same pass, that params and optimiser state are finite.
Checkpoints written before (a ``sha256`` of the gathered host copy per item) are still verified the
old way, on a host copy of the state (``sha256_digest``): their writer held it whole, so it fits;
the run's next save carries the new digest. A step whose restore raises, whose digest differs or
whose values are not finite is damaged: it is named in one line and moved to ``checkpoints-corrupt/``
beside ``checkpoints/``, so Orbax's ``latest_step`` and ``max_to_keep``
rotation only ever count the good ones (and a resumed run saves that step anew); with
``train.nan_policy`` no non-finite state is saved in the first place, so rotation never drops the
last good checkpoint for an unverified one. If no step is good, nothing is moved and a
``CheckpointError`` says so: a run never starts from scratch over existing checkpoints.
"""
from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from lineage_jax.config.errors import UserError
from lineage_jax.runs.digest import digest, head, item_of, leaf_table, summarise


class CheckpointError(UserError, FileNotFoundError):
    """A missing or unusable checkpoint, stated in one line."""


def manager(run_dir: str | Path, *, keep: int = 3, async_save: bool = True, create: bool = True) -> ocp.CheckpointManager:
    """A writing manager (``create``) first removes the ``*.orbax-checkpoint-tmp-*`` leftovers of a killed save."""
    directory = Path(run_dir).absolute() / "checkpoints"
    if create and directory.is_dir() and jax.process_index() == 0:   # one process cleans up
        for tmp in directory.glob("*.orbax-checkpoint-tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create,
                                           enable_async_checkpointing=async_save)
    return ocp.CheckpointManager(directory, options=options)


def host_copy(tree: Any) -> Any:
    """``jax.device_get(tree)``, except that an array spread over several processes is first gathered
    from all of them (``process_allgather``: a collective, so every process calls this in step; it
    costs each process a host copy of the whole state, which is fine for the models trained here)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils
    return jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True))
                        if isinstance(x, jax.Array) and not x.is_fully_addressable else jax.device_get(x), tree)


def sha256_digest(state: Any) -> dict:
    """The digest checkpoints carried before ``runs.digest`` (kept to verify them): {item: {"sha256",
    "layout"}}, a SHA-256 over each leaf's path, dtype, shape and bytes of the host copy (a gather)."""
    groups: dict[str, tuple[Any, Any]] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(host_copy(state))[0]:
        data, layout = groups.setdefault(item_of(path), (hashlib.sha256(), hashlib.sha256()))
        a = np.ascontiguousarray(leaf)
        h = head(path, a.dtype, a.shape).encode()
        layout.update(h)
        data.update(h)
        data.update(a.tobytes())
    return {k: {"sha256": d.hexdigest(), "layout": s.hexdigest()} for k, (d, s) in groups.items()}


def save(mngr: ocp.CheckpointManager, step: int, state: Any, meta: dict) -> None:
    """Start an (async) save of ``state`` and ``meta`` (plus the state's ``digest``) at ``step``."""
    meta = {**meta, "digest": digest(state)}
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


def restore_params(mngr: ocp.CheckpointManager, step: int, abstract_params: Any) -> tuple[Any, dict]:
    """Only the ``params`` subtree of the state saved at ``step`` (Orbax partial restore: the optimizer
    state, step and loss scale are never read), placed as the shardings of ``abstract_params``; each
    array keeps the dtype it was saved in. Returned with the step's meta."""
    args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding), abstract_params)
    out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item={"params": abstract_params}, restore_args={"params": args}, partial_restore=True),
        meta=ocp.args.JsonRestore()))
    return out["state"]["params"], out["meta"]


def _problem(state: Any, meta: dict, log: Callable[[str], None] | None = None) -> str | None:
    """Why a restored (state, meta) is not the state that was saved, or None. Items whose layout differs
    from the saved one (a restore into other dtypes) are checked for finiteness only. A collective (every
    process calls it in step); only a few words per leaf reach the host, except for the items of a
    checkpoint from before ``runs.digest`` (``sha256`` entries), checked on a host copy as then."""
    if not isinstance(meta, dict):
        return f"meta is {type(meta).__name__}, not a JSON object"
    saved = meta.get("digest")
    saved = {k: v for k, v in saved.items() if isinstance(v, dict)} if isinstance(saved, dict) else {}
    now, finite = summarise(leaf_table(state))
    legacy = [k for k, d in now.items() if "sha256" in saved.get(k, {}) and saved[k].get("layout") == d["layout"]]
    old = sha256_digest(state) if legacy else {}          # the whole state, in its order, as it was hashed
    unknown = sorted(k for k, d in now.items() if k in saved and k not in legacy
                     and saved[k].get("algo") not in (None, d["algo"]))
    if unknown and log is not None:     # a digest from another version of this code: not damage
        log(f"checkpoint digest of {', '.join(unknown)} is {saved[unknown[0]].get('algo')!r}, which this version "
            f"cannot verify ({now[unknown[0]]['algo']!r}): checked for finite values only")
    changed = [k for k, d in now.items() if k in saved and k not in unknown and saved[k].get("layout") == d["layout"]
               and (saved[k].get("sha256") != old[k]["sha256"] if k in legacy
                    else (saved[k].get("algo"), saved[k].get("sum")) != (d["algo"], d["sum"]))]
    if changed:
        return f"digest mismatch: {', '.join(changed)}"
    for item in ("params", "opt_state"):
        if not finite.get(item, True):
            return f"{item} not finite"
    return None


def _steps(directory: Path) -> list[int]:
    """Every step directory, newest first (an empty or uncommitted one included: Orbax lists those too)."""
    return sorted((int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit()), reverse=True) \
        if directory.is_dir() else []


def restore_latest_good(mngr: ocp.CheckpointManager, abstract: Any, *, params_only: bool = False,
                        move_bad: bool = True, log: Callable[[str], None] | None = None) -> tuple[int, Any, dict] | None:
    """(step, state, meta) of the newest checkpoint that restores and verifies (``params_only``: the
    params, via ``restore_params``), or None when there is none at all. Each damaged newer step is
    named through ``log`` (one line, stderr by default) and, with ``move_bad``, moved out of Orbax's
    sight to ``checkpoints-corrupt/<step>-<reason>``; if every step is damaged nothing is moved and a
    one-line ``CheckpointError`` names them."""
    log = log or (lambda line: print(line, file=sys.stderr))
    directory = Path(mngr.directory)
    bad: list[tuple[int, str]] = []
    for step in _steps(directory):
        reason = None
        try:
            state, meta = (restore_params if params_only else restore)(mngr, step, abstract)
        except Exception as e:  # noqa: BLE001 - any failure to read a step makes that step unusable
            while e.__cause__ is not None:      # Orbax wraps TensorStore's own (informative) error
                e = e.__cause__
            reason = f"{type(e).__name__}: {(str(e).splitlines() or ['no message'])[0][:200]}"
        if not _everywhere(reason is None):     # every process takes the same verdict, in step
            reason = reason or "unreadable on another process (its log says why)"
        if reason is None:
            reason = _problem({"params": state} if params_only else state, meta, log)   # a collective
            if not _everywhere(reason is None):   # a process-local leaf could differ: one verdict for all
                reason = reason or "damaged on another process (its log says why)"
        if reason is None:
            if bad:
                _set_aside(mngr, bad, move_bad, log)
                log(f"falling back to step {step}, the newest good checkpoint in {directory}")
            return step, state, meta
        bad.append((step, reason))
    if bad:
        reasons = "; ".join(f"step {s}: {r}" for s, r in bad)
        raise CheckpointError(f"no usable checkpoint in {directory} ({reasons}); move {directory} away "
                              f"to start {directory.parent} afresh")
    return None


def _everywhere(ok: bool) -> bool:
    """Whether ``ok`` holds on every process (this one alone: ``ok``)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils
    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def _set_aside(mngr: ocp.CheckpointManager, bad: list[tuple[int, str]], move: bool, log) -> None:
    """Name each damaged step; with ``move``, process 0 renames it into ``checkpoints-corrupt/`` and every
    process reloads the manager once that is done."""
    directory = Path(mngr.directory)
    mover = jax.process_index() == 0
    for step, reason in bad:
        where = ""
        if move and not mover:
            where = "; process 0 moves it to checkpoints-corrupt/"
        elif move:
            slug = "".join(c if c.isalnum() else "-" for c in reason.split(":")[0])[:40].strip("-").lower()
            dest = directory.parent / "checkpoints-corrupt" / f"{step}-{slug}"
            n = 1
            while dest.exists():
                dest, n = dest.with_name(f"{step}-{slug}-{n}"), n + 1
            dest.parent.mkdir(exist_ok=True)
            (directory / str(step)).rename(dest)
            where = f"; moved to {dest}"
        log(f"checkpoint step {step} in {directory} is damaged ({reason}){where}")
    if move:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("lineage: damaged checkpoints set aside")
        mngr.reload()
