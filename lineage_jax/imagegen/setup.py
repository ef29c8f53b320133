"""What a digit diffusion run is made of, as values and pure functions: its config, the U-Net ε-model in
pixel or latent space, the jitted train step (L_simple with CFG label dropout, Adam, an EMA of the
weights), its shardings (data parallel or FSDP over a 1-D ``data`` mesh) and the first-stage autoencoder.

Labels: digit d is the U-Net's label d + 1; label 0 is the null label ∅ that guidance drops to.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import parallel
from lineage_jax.config.errors import ConfigError, one_of
from lineage_jax.diffusion import SCHEDULES, Schedule, ddpm_loss, make_schedule
from lineage_jax.vision.autoencoder import Autoencoder, AutoencoderConfig, autoencoder_loss
from lineage_jax.vision.unet import UNet, UNetConfig, eps_model

SPACES = ("pixel", "latent")
PARALLEL = ("dp", "fsdp")
IMAGE = (8, 8, 1)          # the digits' native shape
CLASSES = 10


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    """Everything a run's model and training are; ``model_keys`` must match to resume a run directory."""
    space: str = "pixel"           # pixel: the U-Net on 8×8 images; latent: on the autoencoder's 4×4×c latents
    base: int = 16                 # U-Net channels at full resolution
    mults: str = "1,2"             # channel multiplier per U-Net level
    groups: int = 4
    schedule: str = "linear"
    timesteps: int = 1000
    latent_channels: int = 4
    ae_base: int = 32
    steps: int = 1500              # diffusion training steps
    batch: int = 64
    lr: float = 1e-3
    p_uncond: float = 0.1          # CFG label dropout (Ho & Salimans 2022 use 0.1-0.2)
    ema: float = 0.995             # decay of the weights' exponential moving average (sampled from)
    ae_steps: int = 600            # latent space: autoencoder training steps, before diffusion
    ae_kl_weight: float = 1e-3
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 500

    MODEL_KEYS = ("space", "base", "mults", "groups", "schedule", "timesteps", "latent_channels", "ae_base")

    def __post_init__(self):
        one_of("space", self.space, SPACES)
        one_of("schedule", self.schedule, SCHEDULES)
        for f in ("base", "groups", "timesteps", "latent_channels", "ae_base", "steps", "batch", "log_every",
                  "ckpt_every"):
            if getattr(self, f) < 1:
                raise ConfigError(f"{f}={getattr(self, f)}: must be at least 1")
        if self.timesteps < 2:
            raise ConfigError(f"timesteps={self.timesteps}: must be at least 2")
        if self.space == "latent" and self.ae_steps < 1:
            raise ConfigError(f"ae_steps={self.ae_steps}: latent space needs a trained autoencoder (>= 1 step)")
        if not 0.0 <= self.p_uncond < 1.0:
            raise ConfigError(f"p_uncond={self.p_uncond}: must be in [0, 1) (the share of labels dropped to ∅)")
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"ema={self.ema}: must be in [0, 1)")
        if not self.lr > 0 or not self.ae_kl_weight >= 0:
            raise ConfigError(f"lr={self.lr}, ae_kl_weight={self.ae_kl_weight}: need lr > 0, ae_kl_weight >= 0")
        self.unet()          # the U-Net's own checks (groups divide channels, size divides by the levels)

    def level_mults(self) -> tuple[int, ...]:
        try:
            mults = tuple(int(m) for m in self.mults.split(","))
        except ValueError:
            mults = ()
        if not mults or min(mults) < 1:
            raise ConfigError(f"mults={self.mults}: comma-separated positive integers, e.g. 1,2")
        return mults

    def autoencoder(self) -> AutoencoderConfig:
        return AutoencoderConfig(image_size=IMAGE[0], channels=IMAGE[2], latent_channels=self.latent_channels,
                                 base=self.ae_base, downs=1, groups=min(8, self.ae_base))

    def data_shape(self) -> tuple[int, int, int]:
        """What the U-Net denoises: the image, or the latent."""
        return IMAGE if self.space == "pixel" else self.autoencoder().latent_shape

    def unet(self) -> UNetConfig:
        h, _, c = self.data_shape()
        return UNetConfig(image_size=h, channels=c, base=self.base, mults=self.level_mults(), groups=self.groups,
                          num_classes=CLASSES)

    def make_schedule(self) -> Schedule:
        return make_schedule(self.schedule, self.timesteps)

    @property
    def clip(self) -> float | None:
        """x̂_0 clipping in the samplers: pixels live in [-1, 1]; unit-variance latents do not (None)."""
        return 1.0 if self.space == "pixel" else None

    def model_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.MODEL_KEYS}


class TrainState(NamedTuple):
    params: Any
    ema: Any
    opt_state: Any
    step: jax.Array


def init_params(cfg: DiffusionConfig, key) -> Any:
    """The U-Net's boxed parameters (logical names kept, for the shardings)."""
    shape = cfg.data_shape()
    x = jnp.zeros((1, *shape))
    return UNet(cfg.unet()).init(key, x, jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.int32))["params"]


def optimizer(cfg: DiffusionConfig) -> optax.GradientTransformation:
    return optax.adam(cfg.lr)


def init_state(cfg: DiffusionConfig, params) -> TrainState:
    ema = jax.tree.map(lambda p: jnp.array(p, copy=True), params)     # its own buffers (the step donates both)
    return TrainState(params, ema, optimizer(cfg).init(params), jnp.int32(0))


def make_train_step(cfg: DiffusionConfig) -> Callable:
    """Pure ``step(state, x0 [B, ...], digits [B], key) -> (state, loss)``: Ho et al.'s Alg. 1 with CFG's label
    dropout, one Adam update, then ema ← d·ema + (1-d)·params."""
    sched, eps, tx, d = cfg.make_schedule(), eps_model(cfg.unet()), optimizer(cfg), cfg.ema

    def step(state: TrainState, x0, digits, key):
        loss, g = jax.value_and_grad(ddpm_loss, argnums=1)(eps, state.params, sched, x0, key, digits + 1, 0,
                                                           cfg.p_uncond)
        updates, opt = tx.update(g, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state.ema, params)
        return TrainState(params, ema, opt, state.step + 1), loss
    return step


# --------------------------------------------------------------------------- shardings

def mesh_over(devices=None) -> Mesh:
    return parallel.make_mesh({"data": -1}, devices=devices)


def param_shardings(boxed, mesh: Mesh, how: str):
    """NamedShardings of the parameters: ``dp`` replicated; ``fsdp`` ZeRO-3's table (``embed`` → data: conv
    kernels split by output channel at rest, gathered by GSPMD where used). A dimension the mesh does not
    divide (the 1-channel output convolution) stays replicated rather than padded."""
    one_of("parallel", how, PARALLEL)
    rules = parallel.strategy_for(dict(mesh.shape), zero_stage=3 if how == "fsdp" else 0).params
    specs = nn.get_partition_spec(boxed)
    shapes = nn.unbox(boxed)

    def fit(spec, leaf):
        out = parallel.spec_for(tuple(spec), rules)
        size = lambda a: 1 if a is None else int(np.prod([mesh.shape[n] for n in ((a,) if isinstance(a, str) else a)]))
        return NamedSharding(mesh, P(*[a if d % size(a) == 0 else None for a, d in zip(out, leaf.shape)]))
    return jax.tree.map(fit, specs, shapes, is_leaf=lambda s: isinstance(s, P))


def state_shardings(cfg: DiffusionConfig, boxed, mesh: Mesh, how: str) -> TrainState:
    """Parameters, EMA and both Adam moments sharded alike (FSDP: all at rest over ``data``)."""
    ps = param_shardings(boxed, mesh, how)
    rep = NamedSharding(mesh, P())
    abstract = jax.eval_shape(lambda p: init_state(cfg, p), nn.unbox(boxed))
    opt = jax.tree.map(lambda _: rep, abstract.opt_state)
    opt = _match_params(abstract.opt_state, ps, opt)
    return TrainState(ps, ps, opt, rep)


def _match_params(opt_abstract, ps, default):
    """Adam's mu/nu are trees shaped like the params: give them the params' shardings."""
    treedef = jax.tree.structure(ps)
    def walk(node, dflt):
        if jax.tree.structure(node) == treedef and not isinstance(node, jax.ShapeDtypeStruct):
            return ps
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            return type(node)(*[walk(a, b) for a, b in zip(node, dflt)])
        if isinstance(node, (tuple, list)):
            return type(node)(walk(a, b) for a, b in zip(node, dflt))
        return dflt
    return walk(opt_abstract, default)


def check_batch(batch: int, mesh: Mesh) -> None:
    n = mesh.shape["data"]
    if batch % n:
        raise ConfigError(f"batch={batch}: does not split over the {n} devices; use a multiple of {n}")


def jit_train_step(cfg: DiffusionConfig, boxed, mesh: Mesh, how: str = "dp"):
    """The step jitted with the state's shardings in and out (donated) and the batch split over ``data``."""
    ss = state_shardings(cfg, boxed, mesh, how)
    batch = NamedSharding(mesh, P("data"))
    rep = NamedSharding(mesh, P())
    return jax.jit(make_train_step(cfg), in_shardings=(ss, batch, batch, rep), out_shardings=(ss, rep),
                   donate_argnums=(0,)), ss


# --------------------------------------------------------------------------- the first stage

def train_autoencoder(cfg: DiffusionConfig, images: np.ndarray, progress: Callable[[int, float], None] | None = None):
    """(params, scale_factor, info: final losses and the step's FLOPs): ``ae_steps`` of Adam on the KL-regularised bound over the
    training images, then Stable Diffusion's scale = 1 / std of the training latents (posterior means)."""
    from lineage_jax.vision.autoencoder import scale_factor
    acfg = cfg.autoencoder()
    model = Autoencoder(acfg)
    x = jnp.asarray(images)
    params = nn.unbox(model.init(jax.random.key(cfg.seed + 11), x[:1], jax.random.key(0))["params"])
    tx = optax.adam(cfg.lr)

    @jax.jit
    def step(params, opt, key):
        k_i, k_z = jax.random.split(key)
        xb = x[jax.random.randint(k_i, (cfg.batch,), 0, x.shape[0])]
        (loss, parts), g = jax.value_and_grad(lambda p: autoencoder_loss(model, p, xb, k_z, cfg.ae_kl_weight),
                                              has_aux=True)(params)
        updates, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, updates), opt, loss, parts

    opt, key = tx.init(params), jax.random.key(cfg.seed + 12)
    compiled = step.lower(params, opt, key).compile()     # run ahead-of-time: its FLOPs are reported too
    parts = {}
    for s in range(cfg.ae_steps):
        params, opt, loss, parts = compiled(params, opt, jax.random.fold_in(key, s))
        if progress:
            progress(s + 1, float(loss))
    from lineage_jax.imagegen.cost import flops
    mean = encode(cfg, params, images)
    return params, scale_factor(mean), {**{k: float(v) for k, v in parts.items()}, "flops_per_step": flops(compiled)}


def encode(cfg: DiffusionConfig, ae_params, images, batch: int = 512) -> np.ndarray:
    """Posterior means of the images' latents (unscaled)."""
    model = Autoencoder(cfg.autoencoder())
    fn = jax.jit(lambda p, x: model.apply({"params": p}, x, method=Autoencoder.encode)[0])
    return np.concatenate([np.asarray(fn(ae_params, jnp.asarray(images[i:i + batch])))
                           for i in range(0, len(images), batch)])


def decoder(cfg: DiffusionConfig) -> Callable:
    """``decode(ae_params, z) -> images``, a pure function (for inside a jitted sampler)."""
    model = Autoencoder(cfg.autoencoder())
    return lambda p, z: model.apply({"params": p}, z, method=Autoencoder.decode)
