"""Lesson: a class-conditional DDPM on real digits, sampled by DDPM and DDIM, guided without a classifier,
and moved into an autoencoder's latent space (Ho et al. 2020; Song et al. 2021; Ho & Salimans 2022;
Rombach et al. 2022).

The pieces are the chapter's: schedules, L_simple, the samplers and guidance (``lineage_jax/diffusion``),
the U-Net and the KL autoencoder (``lineage_jax/vision``), the training step and the judge
(``lineage_jax/imagegen``). Quality is measured, not eyeballed: a classifier trained here on the real
training digits (its test accuracy reported) scores every sample set by the share recognised as the digit
asked for, and by the Fréchet distance of its features to the real test digits' (FID's recipe).

DDIM re-derives ε̂ from the clipped x̂_0 at every step (``recompute_eps``; diffusers'
``use_clipped_model_output=True``): the deterministic step follows the ODE through x_t only if x̂_0 and ε̂
both explain x_t, and the ``ablation`` row measures DDIM with the model's own ε̂ after clipping (diffusers'
default), which at w = 3 pushes x̂_0 past [-1, 1] at most steps and leaves blotchy samples.

Measured: sample grids over training; DDPM's 1000 ancestral steps against DDIM's 50 at the same guidance;
a guidance-scale sweep; the FLOPs of one denoising step in pixel vs latent space (XLA's cost analysis of
the compiled programs) and the quality of both models at equal training compute (the pixel model's
snapshot at the step where its FLOPs equal the latent run's, autoencoder included).
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lineage_jax.config import ConfigError
from lineage_jax.imagegen import cost, scorer as J, setup as S
from lineage_jax.imagegen.data import digit_images
from lineage_jax.imagegen.run import batch_indices, sample_digits
from lineage_jax.lessons import harness
from lineage_jax.vision.grid import image_grid

GUIDED = 3.0       # the guidance scale of the DDPM/DDIM comparison, the snapshots and the latent model


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    steps: int = 1500            # diffusion training steps (pixel and latent alike)
    batch: int = 64
    base: int = 16
    mults: str = "1,2"
    groups: int = 4
    timesteps: int = 1000
    ae_steps: int = 600
    samples: int = 200           # per DDIM evaluation (20 per digit)
    ddpm_samples: int = 100      # DDPM's 1000 steps cost 20× DDIM's 50: fewer samples, DDIM scored on the same count
    ddim_steps: int = 50
    guidances: str = "0,1,2,3,5"
    recompute_eps: bool = True   # DDIM: ε̂ from the clipped x̂_0 (see the module doc); the ablation row flips it
    snapshots: int = 3           # sample grids over training
    scorer_steps: int = 600
    data_dir: str = ""           # "" : $TFDS_DATA_DIR or ~/.cache/lineage_jax/tfds

    def __post_init__(self):
        harness.at_least_one(self, "steps", "batch", "ae_steps", "samples", "ddpm_samples", "ddim_steps", "snapshots",
                                   "scorer_steps")
        if min(self.samples, self.ddpm_samples) < 10:
            raise ConfigError(f"samples={self.samples}, ddpm_samples={self.ddpm_samples}: need >= 10 (one per digit)")
        if self.ddim_steps > self.timesteps:
            raise ConfigError(f"ddim_steps={self.ddim_steps}: must be <= timesteps={self.timesteps}")
        try:
            ws = self.guidance_list()
        except ValueError:
            ws = [-1.0]
        if min(ws) < 0 or not {0.0, 1.0, GUIDED} <= set(ws):
            raise ConfigError(f"guidances={self.guidances}: comma-separated scales >= 0 that include 0 (unconditional), "
                              f"1 (the conditional model alone) and {GUIDED:g}, e.g. 0,1,3")
        self.model("pixel")      # the U-Net's own checks

    def guidance_list(self) -> list[float]:
        return [float(w) for w in self.guidances.split(",")]

    def model(self, space: str) -> S.DiffusionConfig:
        return S.DiffusionConfig(space=space, base=self.base, mults=self.mults, groups=self.groups,
                                 timesteps=self.timesteps, steps=self.steps, batch=self.batch, ae_steps=self.ae_steps,
                                 seed=self.seed)


QUICK = dict(steps=40, base=8, mults="1", groups=2, ae_steps=20, samples=20, ddpm_samples=10, ddim_steps=10,
             guidances="0,1,3", snapshots=1, scorer_steps=60)


def _row(rows, part, **match):
    return next(r for r in rows if r["part"] == part and all(r.get(k) == v for k, v in match.items()))


def supports(rows: list[dict]) -> bool:
    """DDIM's 50 steps within 0.1 of DDPM's 1000 in class accuracy and within 1.5× in FID; class accuracy at
    w = 3 above the conditional model alone (w = 1) and far above the unconditional one (w = 0, +0.3); a
    latent denoising step at most half a pixel one's FLOPs."""
    ddpm, ddim = _row(rows, "sampler", sampler="ddpm"), _row(rows, "sampler", sampler="ddim")
    acc = {r["guidance"]: r["accuracy"] for r in rows if r["part"] == "guidance"}
    pix, lat = _row(rows, "cost", space="pixel"), _row(rows, "cost", space="latent")
    close = ddim["accuracy"] >= ddpm["accuracy"] - 0.1 and ddim["fid"] <= 1.5 * ddpm["fid"]
    guided = acc[GUIDED] > acc[1.0] and acc[GUIDED] >= acc[0.0] + 0.3
    return close and guided and lat["flops_per_step"] <= 0.5 * pix["flops_per_step"]


class _Sampler:
    """Jitted samplers of one model, compiled once per (sampler, steps, count); the guidance scale is traced."""

    def __init__(self, cfg: S.DiffusionConfig, scale: float = 1.0, recompute_eps: bool = True):
        self.cfg, self.scale, self.recompute, self.fns = cfg, scale, recompute_eps, {}

    def __call__(self, params, ae, digits, seed, sampler, steps, guidance, recompute_eps=None):
        rec = self.recompute if recompute_eps is None else recompute_eps
        k = (sampler, steps, len(digits), rec)
        if k not in self.fns:
            d = jnp.asarray(digits)
            self.fns[k] = jax.jit(lambda p, a, key, w: sample_digits(self.cfg, p, a, self.scale, d, key, sampler=sampler,
                                                                     steps=steps, guidance=w, recompute_eps=rec))
        return np.asarray(self.fns[k](params, ae, jax.random.key(seed), jnp.float32(guidance)))


def _prepare(cfg: S.DiffusionConfig, data, labels):
    """(state, the train step compiled ahead of time on one device, its FLOPs)."""
    mesh = S.mesh_over(jax.devices()[:1])
    boxed = S.init_params(cfg, jax.random.key(cfg.seed))
    jitted, ss = S.jit_train_step(cfg, boxed, mesh)
    state = jax.device_put(S.init_state(cfg, nn.unbox(boxed)), ss)
    i0 = batch_indices(len(data), cfg.batch, cfg.seed, 0)
    compiled = jitted.lower(state, data[i0], labels[i0], jax.random.key(0)).compile()
    return state, compiled, cost.flops(compiled)


def _train(cfg: S.DiffusionConfig, prepared, data, labels, progress, desc, evaluate=None, eval_at=()):
    """``cfg.steps`` of the compiled step (batch and key of step s as ``lineage diffusion train`` draws them)."""
    state, compiled, _ = prepared
    key = jax.random.key(cfg.seed + 1)

    def step(state, s):
        i = batch_indices(len(data), cfg.batch, cfg.seed, s - 1)
        state, loss = compiled(state, data[i], labels[i], jax.random.fold_in(key, s - 1))
        return state, {"loss": loss}
    return harness.fit(step, state, lambda s: s, cfg.steps, log_every=max(1, cfg.steps // 30), evaluate=evaluate,
                       eval_at=eval_at, progress=progress, desc=desc)


def run(cfg: Config, out_dir: str | Path | None = None, progress: bool = True) -> harness.LessonResult:
    t0 = time.perf_counter()
    data = digit_images(cfg.data_dir or None)
    (x_tr, y_tr), (x_te, y_te) = data["train"], data["test"]
    judge = J.train_scorer((x_tr, y_tr), (x_te, y_te), how=J.ScorerTraining(steps=cfg.scorer_steps, seed=cfg.seed))
    _, ref = J.predict(judge, x_te)
    rng = np.random.default_rng(cfg.seed)
    real = rng.choice(len(x_tr), cfg.samples, replace=False)
    rows = [{"part": "real", "what": f"{cfg.samples} real training digits", **J.score(judge, x_tr[real], y_tr[real], ref)}]
    digits = np.arange(cfg.samples) % 10
    pixel, latent = cfg.model("pixel"), cfg.model("latent")

    # the latent run first: its training FLOPs fix the pixel snapshot at equal compute
    ae, scale, ae_info = S.train_autoencoder(latent, x_tr)
    z_tr = S.encode(latent, ae, x_tr) * scale
    lat_prep = _prepare(latent, z_tr, y_tr)
    lat_state, lat_hist, _ = _train(latent, lat_prep, z_tr, y_tr, progress, "latent diffusion")
    lat_images = _Sampler(latent, scale, cfg.recompute_eps)(lat_state.ema, ae, digits, cfg.seed + 5, "ddim", cfg.ddim_steps, GUIDED)
    latent_total = cfg.ae_steps * ae_info["flops_per_step"] + cfg.steps * lat_prep[2]

    pix_sampler = _Sampler(pixel, recompute_eps=cfg.recompute_eps)
    grids = {}

    def evaluate(state, step):
        grids[step] = pix_sampler(state.ema, {}, digits, cfg.seed + 5, "ddim", cfg.ddim_steps, GUIDED)
        return J.score(judge, grids[step], digits, ref)
    pix_prep = _prepare(pixel, x_tr, y_tr)
    pix_train_flops = pix_prep[2]
    equal_step = max(1, min(cfg.steps, math.ceil(latent_total / pix_train_flops)))
    snaps = {round(cfg.steps * (i + 1) / cfg.snapshots) for i in range(cfg.snapshots)}
    pix_state, pix_hist, evals = _train(pixel, pix_prep, x_tr, y_tr, progress, "pixel diffusion", evaluate,
                                        snaps | {equal_step})
    for e in evals:
        rows.append({"part": "snapshot", "step": e["step"], "accuracy": e["accuracy"], "fid": e["fid"],
                     "train_flops": e["step"] * pix_train_flops})

    # DDPM's 1000 ancestral steps vs DDIM's 50, the same model, guidance and sample count
    few = digits[:cfg.ddpm_samples]
    samples = {}
    for sampler, steps in (("ddpm", None), ("ddim", cfg.ddim_steps)):
        t1 = time.perf_counter()
        samples[sampler] = pix_sampler(pix_state.ema, {}, few, cfg.seed + 7, sampler, steps, GUIDED)
        rows.append({"part": "sampler", "sampler": sampler, "steps": steps or cfg.timesteps, "guidance": GUIDED,
                     "n": len(few), "seconds": round(time.perf_counter() - t1, 2),
                     **({"recompute_eps": cfg.recompute_eps} if sampler == "ddim" else {}),
                     **J.score(judge, samples[sampler], few, ref)})
    # the ablation: the same DDIM chain with the other choice of ε̂ after clipping
    abl = pix_sampler(pix_state.ema, {}, few, cfg.seed + 7, "ddim", cfg.ddim_steps, GUIDED, not cfg.recompute_eps)
    samples["ablation"] = abl
    rows.append({"part": "ablation", "sampler": "ddim", "steps": cfg.ddim_steps, "guidance": GUIDED, "n": len(few),
                 "recompute_eps": not cfg.recompute_eps, **J.score(judge, abl, few, ref)})
    # the guidance sweep (DDIM)
    sweep = {}
    for w in cfg.guidance_list():
        sweep[w] = pix_sampler(pix_state.ema, {}, digits, cfg.seed + 9, "ddim", cfg.ddim_steps, w)
        rows.append({"part": "guidance", "guidance": w, "n": cfg.samples, **J.score(judge, sweep[w], digits, ref)})
    # pixel vs latent: the cost of a denoising step, and quality at equal training compute
    eq = next(e for e in evals if e["step"] == equal_step)
    for space, c, train_flops, total, q in (
            ("pixel", pixel, pix_train_flops, equal_step * pix_train_flops, eq),
            ("latent", latent, lat_prep[2], latent_total, J.score(judge, lat_images, digits, ref))):
        rows.append({"part": "cost", "space": space, "shape": "x".join(map(str, c.data_shape())),
                     "flops_per_step": cost.denoise_step_flops(c), "train_step_flops": train_flops,
                     "train_flops": total, "steps_at_equal_compute": equal_step if space == "pixel" else cfg.steps,
                     "accuracy": q["accuracy"], "fid": q["fid"]})
    decode = cost.decode_flops(latent)

    figures = [] if out_dir is None else [
        harness.figure(out_dir, "diffusion_grids.png", lambda axes: _grids(axes, grids, samples, lat_images, sweep, cfg),
                       panels=4, title="class-conditional DDPM on the 8×8 digits (each row: 0-9)",
                       panel_size=(3.6, 4.0)),
        harness.figure(out_dir, "diffusion_measures.png", lambda axes: _measures(axes, rows, pix_hist, lat_hist),
                       panels=3, title="guidance sweep, training, pixel vs latent cost")]
    pc, lc = _row(rows, "cost", space="pixel"), _row(rows, "cost", space="latent")
    return harness.result("diffusion", rows, supports, figures, scorer_test_accuracy=judge.test_accuracy,
                          flops_ratio=pc["flops_per_step"] / lc["flops_per_step"], decode_flops=decode,
                          autoencoder=ae_info, scale_factor=scale, equal_compute_step=equal_step,
                          pixel_final_loss=pix_hist[-1]["loss"], latent_final_loss=lat_hist[-1]["loss"],
                          seconds=round(time.perf_counter() - t0, 1), config=dataclasses.asdict(cfg))


def report(res: harness.LessonResult) -> list[str]:
    d, rows = res.details, res.rows
    ddpm, ddim = _row(rows, "sampler", sampler="ddpm"), _row(rows, "sampler", sampler="ddim")
    abl = _row(rows, "ablation")
    sweep = ", ".join(f"w={r['guidance']:g}: {r['accuracy']:.0%}" for r in rows if r["part"] == "guidance")
    return [f"judge: {d['scorer_test_accuracy']:.1%} on the real test digits; real digits score "
            f"{_row(rows, 'real')['accuracy']:.0%}, FID {_row(rows, 'real')['fid']:.2f}",
            f"DDPM {ddpm['steps']} steps: accuracy {ddpm['accuracy']:.0%}, FID {ddpm['fid']:.2f}; DDIM {ddim['steps']}: "
            f"{ddim['accuracy']:.0%}, FID {ddim['fid']:.2f} (ε̂ {'recomputed from' if ddim.get('recompute_eps') else 'kept past'} "
            f"the clipped x̂_0); the other choice: {abl['accuracy']:.0%}, FID {abl['fid']:.2f}",
            f"guidance sweep (class accuracy): {sweep}",
            f"a latent denoising step costs 1/{d['flops_ratio']:.1f} of a pixel one"]


def _show(ax, images, title, nrow=10):
    ax.imshow(image_grid(images, nrow=nrow)[..., 0], cmap="gray", vmin=0, vmax=255)
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def _grids(axes, grids, samples, lat_images, sweep, cfg):
    _show(axes[0], np.concatenate([grids[s][:20] for s in sorted(grids)]),
          "DDIM samples over training\n(2 rows per snapshot: steps " + ", ".join(map(str, sorted(grids))) + ")")
    _show(axes[1], np.concatenate([samples["ddpm"][:30], samples["ddim"][:30], samples["ablation"][:20]]),
          f"DDPM {cfg.timesteps} steps (3 rows), DDIM {cfg.ddim_steps} (3),\nDDIM with ε̂ "
          f"{'kept past' if cfg.recompute_eps else 'recomputed from'} the clipped x̂_0 (2); w = {GUIDED:g}")
    ws = sorted(sweep)
    _show(axes[2], np.concatenate([sweep[w][:10] for w in ws]), "guidance w = " + ", ".join(f"{w:g}" for w in ws)
          + "\n(one row each)")
    _show(axes[3], lat_images[:40], f"latent diffusion (4×4×4 latents, decoded)\nafter {cfg.steps} steps")


def _measures(axes, rows, pix_hist, lat_hist):
    a, b, c = axes
    g = [r for r in rows if r["part"] == "guidance"]
    a.plot([r["guidance"] for r in g], [r["accuracy"] for r in g], "o-", label="class accuracy")
    a.set_xlabel("guidance scale w")
    a.set_ylabel("share recognised as the asked digit")
    a2 = a.twinx()
    a2.plot([r["guidance"] for r in g], [r["fid"] for r in g], "s--", color="C1", label="FID")
    a2.set_ylabel("Fréchet distance (classifier features)")
    a.set_title("classifier-free guidance")
    b.plot([h["step"] for h in pix_hist], [h["loss"] for h in pix_hist], label="pixel 8×8")
    b.plot([h["step"] for h in lat_hist], [h["loss"] for h in lat_hist], label="latent 4×4")
    b.set_xlabel("step")
    b.set_ylabel("L_simple")
    b.legend()
    b.set_title("training loss")
    cs = [r for r in rows if r["part"] == "cost"]
    c.bar([r["space"] for r in cs], [r["flops_per_step"] / 1e6 for r in cs], color=["C0", "C2"])
    c.set_ylabel("MFLOPs per denoising step (one image)")
    c.set_title("compiled cost per step")
