"""``lineage diffusion train`` / ``sample``: the side effects of a digit diffusion run (files, progress, checkpoints).

A run directory holds ``config.yaml`` (``model``: what the network is; ``train``: how it is trained),
``run.json``, ``metrics.jsonl`` and ``checkpoints/`` (Orbax: the U-Net's params, their EMA, Adam's state,
the step, and for latent space the autoencoder and its scale factor). It is locked and checked as every
run directory (``runs.rundir``: foreign files, another model, metrics without checkpoints are refused in
one line unless ``--overwrite``); rerunning the command resumes from the newest good checkpoint, and the
batch and noise of step s are functions of (seed, s), so a resumed run computes what an uninterrupted one
would. Sampling reads only the checkpoint: ``sample`` is a pure function of (params, seed).
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import yaml
from tqdm.auto import tqdm

from lineage_jax.config.errors import ConfigError, one_of
from lineage_jax.diffusion import SAMPLERS, sample as chain
from lineage_jax.diffusion.training import check_sample_args
from lineage_jax.imagegen import setup as S
from lineage_jax.imagegen.data import digit_images
from lineage_jax.runs import atomic, checkpoint as ckpt, lock, rundir
from lineage_jax.runs.rundir import RunDirError
from lineage_jax.vision.grid import image_grid, save_png


def batch_indices(n: int, batch: int, seed: int, step: int) -> np.ndarray:
    """The training rows of ``step``: a fresh seeded permutation per epoch, so resuming reads the same rows."""
    i = step * batch + np.arange(batch)
    perms = {int(e): np.random.default_rng([seed, int(e)]).permutation(n) for e in np.unique(i // n)}
    return np.array([perms[int(e)][w] for e, w in zip(i // n, i % n)])


def _abstract(cfg: S.DiffusionConfig, ss: S.TrainState):
    boxed = jax.eval_shape(lambda: S.init_params(cfg, jax.random.key(0)))
    shapes = jax.eval_shape(lambda p: S.init_state(cfg, p), nn.unbox(boxed))
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, ss)


def _ae_abstract(cfg: S.DiffusionConfig, sharding):
    from lineage_jax.vision.autoencoder import Autoencoder
    if cfg.space != "latent":
        return {}
    boxed = jax.eval_shape(lambda: Autoencoder(cfg.autoencoder()).init(
        jax.random.key(0), jnp.zeros((1, *S.IMAGE)), jax.random.key(0))["params"])
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), nn.unbox(boxed))


def train(cfg: S.DiffusionConfig, run_dir: str | Path, *, parallel: str = "dp", data_dir: str | None = None,
          progress: bool = True, overwrite: bool = False, on_step: Callable | None = None) -> dict:
    """Train (or resume) a class-conditional DDPM on the digits; returns a summary."""
    one_of("parallel", parallel, S.PARALLEL)
    mesh = S.mesh_over()
    S.check_batch(cfg.batch, mesh)
    out = Path(run_dir)
    created = rundir.create(out)
    try:
        with lock.hold(out):
            rundir.check(out, cfg.model_dict(), "none", "", overwrite=overwrite)
            return _train_locked(cfg, out, mesh, parallel, data_dir, progress, on_step)
    finally:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()


def _train_locked(cfg, out: Path, mesh, how, data_dir, progress, on_step) -> dict:
    x_train, y_train = digit_images(data_dir)["train"]
    boxed = S.init_params(cfg, jax.random.key(cfg.seed))
    step_fn, ss = S.jit_train_step(cfg, boxed, mesh, how)
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    abstract = {"state": _abstract(cfg, ss), "ae": _ae_abstract(cfg, rep),
                "scale": jax.ShapeDtypeStruct((), jnp.float32, sharding=rep)}
    mngr = ckpt.manager(out, keep=2, async_save=False)
    restored = ckpt.restore_latest_good(mngr, abstract, log=lambda m: tqdm.write(m, file=sys.stderr))
    metrics_path = out / "metrics.jsonl"
    if restored is None:
        metrics_path.unlink(missing_ok=True)
        ae, scale, ae_info = {}, 1.0, {}
        if cfg.space == "latent":
            bar = tqdm(total=cfg.ae_steps, disable=not progress, desc="autoencoder", unit="step", dynamic_ncols=True)
            ae, scale, ae_info = S.train_autoencoder(cfg, x_train, lambda s, l: (bar.update(1), bar.set_postfix(
                loss=f"{l:.3g}", refresh=False)))
            bar.close()
        state = jax.device_put(S.init_state(cfg, nn.unbox(boxed)), ss)
        start = 0
    else:
        start, saved, meta = restored
        state, ae, scale, ae_info = saved["state"], saved["ae"], float(saved["scale"]), meta.get("ae", {})
        rows = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()] if metrics_path.is_file() else []
        atomic.write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in rows if r["step"] <= start))
    atomic.write_text(out / "config.yaml", yaml.safe_dump({"model": cfg.model_dict(), "train": dataclasses.asdict(cfg)},
                                                          sort_keys=False))
    atomic.write_text(out / rundir.RUN_JSON, json.dumps({"diffusion": {"space": cfg.space, "parallel": how,
                                                                       "devices": mesh.size}}, indent=1) + "\n")
    data = x_train if cfg.space == "pixel" else S.encode(cfg, ae, x_train) * scale
    key = jax.random.key(cfg.seed + 1)
    bar = tqdm(total=cfg.steps, initial=start, disable=not progress, desc=f"diffusion {cfg.space}", unit="step",
               dynamic_ncols=True)
    losses, loss = [], float("nan")
    try:
        for s in range(start, cfg.steps):
            i = batch_indices(len(data), cfg.batch, cfg.seed, s)
            state, loss = step_fn(state, data[i], y_train[i], jax.random.fold_in(key, s))
            losses.append(loss)
            done = s + 1
            if done % cfg.log_every == 0 or done == cfg.steps or done == 1:
                row = {"step": done, "loss": float(np.mean(jax.device_get(losses)))}
                with metrics_path.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
                losses = []
            if done % cfg.ckpt_every == 0 or done == cfg.steps:
                ckpt.save(mngr, done, {"state": state, "ae": ae, "scale": jnp.float32(scale)},
                          {"step": done, "ae": ae_info})
            if on_step:
                on_step(done, state, ae, scale)
            bar.update(1)
    finally:
        bar.close()
        mngr.wait_until_finished()
        mngr.close()
    return {"run_dir": str(out), "space": cfg.space, "steps": cfg.steps, "resumed_from": start,
            "final_loss": row["loss"] if cfg.steps > start else None, "autoencoder": ae_info, "scale": scale,
            "devices": mesh.size, "parallel": how}


# --------------------------------------------------------------------------- sampling

def read_config(run_dir: Path) -> S.DiffusionConfig:
    """The run's DiffusionConfig from its config.yaml; one line when ``run_dir`` is not a diffusion run."""
    path = run_dir / "config.yaml"
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
        return S.DiffusionConfig(**saved["train"])
    except FileNotFoundError:
        raise RunDirError(f"--run-dir {run_dir}: not a run directory (no config.yaml); train one with "
                          f"`lineage diffusion train --run-dir {run_dir}`") from None
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        raise RunDirError(f"--run-dir {run_dir}: its config.yaml is not a diffusion run's") from None


def load_run(run_dir: str | Path):
    """(config, EMA params, autoencoder params, scale) of a run's newest good checkpoint, on one device."""
    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    if ckpt.latest_step(run_dir) is None:
        raise RunDirError(f"--run-dir {run_dir}: no checkpoint there yet; train it first")
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    mesh = S.mesh_over(jax.devices()[:1])
    boxed = jax.eval_shape(lambda: S.init_params(cfg, jax.random.key(0)))
    ss = S.state_shardings(cfg, boxed, mesh, "dp")
    abstract = {"state": _abstract(cfg, ss), "ae": _ae_abstract(cfg, one),
                "scale": jax.ShapeDtypeStruct((), jnp.float32, sharding=one)}
    with ckpt.manager(run_dir, create=False, async_save=False) as mngr:
        _, saved, _ = ckpt.restore_latest_good(mngr, abstract, move_bad=False)
    return cfg, saved["state"].ema, saved["ae"], float(saved["scale"])


def sample_digits(cfg: S.DiffusionConfig, params, ae, scale: float, digits, key, *, sampler: str = "ddim",
                  steps: int | None = 50, eta: float = 0.0, guidance: float | None = 3.0,
                  recompute_eps: bool = False) -> jax.Array:
    """Images [N, 8, 8, 1] in [-1, 1] of the asked ``digits`` [N]: the reverse chain in pixel or latent space
    (then decoded: z / scale through the autoencoder's decoder). A pure function of (params, key).
    ``recompute_eps``: DDIM re-derives ε̂ from the clipped x̂_0 (``diffusion.ddim_step``)."""
    sched = cfg.make_schedule()
    check_sample_args(sched, sampler, steps if sampler == "ddim" else None, eta)
    digits = jnp.asarray(digits, jnp.int32)
    out = chain(S.eps_model(cfg.unet()), params, sched, (digits.shape[0], *cfg.data_shape()), key, sampler=sampler,
                steps=steps if sampler == "ddim" else None, eta=eta, cond=digits + 1, null=0, guidance=guidance,
                clip=cfg.clip, recompute_eps=recompute_eps)
    if cfg.space == "latent":
        out = S.decoder(cfg)(ae, out / scale)
    return jnp.clip(out, -1.0, 1.0)


def check_sample_request(n: int, sampler: str, steps: int | None, eta: float, guidance: float | None,
                         label: int | None) -> None:
    """One line for a bad request, before the run is read or anything compiles."""
    if n < 1:
        raise ConfigError(f"--n={n}: must be at least 1")
    one_of("sampler", sampler, SAMPLERS)
    if sampler == "ddim" and steps is not None and steps < 1:
        raise ConfigError(f"--steps={steps}: must be at least 1")
    if not 0.0 <= eta <= 1.0:
        raise ConfigError(f"--eta={eta}: must be between 0 (deterministic DDIM) and 1 (DDPM's variance)")
    if guidance is not None and guidance < 0:
        raise ConfigError(f"--guidance={guidance}: must be >= 0 (0: unconditional, 1: conditional, > 1: guided)")
    if label is not None and not 0 <= label < S.CLASSES:
        raise ConfigError(f"--label={label}: a digit 0-9")


def sample(run_dir: str | Path, n: int, out: str | Path, *, sampler: str = "ddim", steps: int | None = 50,
           eta: float = 0.0, guidance: float | None = 3.0, label: int | None = None, seed: int = 0,
           nrow: int | None = None, recompute_eps: bool = True) -> dict:
    """Write a PNG grid of ``n`` samples (digit ``label``, or 0-9 in turn) and return what was drawn.
    ``recompute_eps``: DDIM re-derives ε̂ from the clipped x̂_0 (the diffusion lesson measures why)."""
    check_sample_request(n, sampler, steps, eta, guidance, label)
    cfg, params, ae, scale = load_run(run_dir)
    if sampler == "ddim" and steps is not None and steps > cfg.timesteps:
        raise ConfigError(f"--steps={steps}: must be between 1 and the run's {cfg.timesteps} timesteps")
    digits = np.full(n, label) if label is not None else np.arange(n) % S.CLASSES
    images = jax.jit(lambda p, a, k: sample_digits(cfg, p, a, scale, digits, k, sampler=sampler, steps=steps,
                                                   eta=eta, guidance=guidance, recompute_eps=recompute_eps)
                     )(params, ae, jax.random.key(seed))
    path = save_png(out, image_grid(np.asarray(images), nrow=nrow or (10 if label is None and n >= 10 else None)))
    return {"out": str(path), "n": n, "digits": digits.tolist(), "sampler": sampler,
            "steps": cfg.timesteps if sampler == "ddpm" else steps, "eta": eta, "guidance": guidance, "seed": seed,
            "space": cfg.space, "recompute_eps": recompute_eps}
