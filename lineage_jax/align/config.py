"""The settings of an alignment stage (``align.KEY=VALUE`` on the command line), checked before JAX starts.

Everything else (``train.steps``, ``train.batch_size``, ``optim.lr``, ``mesh.*``, ``parallel.*``) is the
pretraining config of the source run with the stage's defaults (``STAGE_DEFAULTS``) and the user's
overrides on top, so an alignment run is sharded and checkpointed exactly like pretraining.
"""
from __future__ import annotations

import dataclasses

from lineage_jax.config.errors import ConfigError

KINDS = ("sft", "rm", "dpo", "ppo", "judge")
PROMPT_WIDTH = 12                # the toy task's prompts are at most 10 bytes


@dataclasses.dataclass(frozen=True)
class AlignConfig:
    seq_len: int = 32            # prompt + response + end-of-text, right-padded (<= model.context)
    beta: float = 0.1            # DPO: strength of the implicit KL leash
    loss: str = "sigmoid"        # DPO: sigmoid | ipo
    label_smoothing: float = 0.0  # DPO: conservative DPO's ε (sigmoid only)
    kl_coef: float = 0.05        # PPO: β of the per-token KL penalty to the reference
    gamma: float = 1.0           # PPO: discount
    lam: float = 0.95            # PPO: GAE λ
    clip: float = 0.2            # PPO: policy ratio clip ε
    vf_coef: float = 0.1         # PPO: weight of the value loss
    vf_clip: float = 0.2         # PPO: value clip
    ppo_epochs: int = 2          # PPO: passes over each batch of rollouts
    minibatches: int = 2         # PPO: minibatches per pass
    ptx_coef: float = 0.0        # PPO-ptx: weight of the NLL on demonstrations mixed in (InstructGPT)
    temperature: float = 1.0     # PPO rollouts and evaluation samples
    examples: int = 32           # CAI judge: worked examples per principle of the constitution
    candidates: int = 4          # SL-CAI (sft --judge): fresh samples a revision is chosen from
    revise_prompts: int = 1024   # SL-CAI: training prompts whose own samples are critiqued and revised
    eval_prompts: int = 64       # held-out prompts scored by the gold function at the end
    data_dir: str = ""           # TFDS data dir for align_toy ("" = data.data_dir, $TFDS_DATA_DIR, ~/.cache/lineage_jax/tfds)

    @property
    def new_tokens(self) -> int:
        return self.seq_len - PROMPT_WIDTH


STAGE_DEFAULTS = {
    "sft": ["train.steps=150", "optim.lr=1e-3"],
    "rm": ["train.steps=150", "optim.lr=1e-3"],
    "dpo": ["train.steps=100", "optim.lr=3e-4"],
    "ppo": ["train.steps=30", "optim.lr=3e-4"],
    "judge": ["train.steps=150", "optim.lr=1e-3"],
}
COMMON_DEFAULTS = ["train.batch_size=16", "optim.warmup_steps=10", "optim.weight_decay=0.0", "train.log_every=5",
                   "train.ckpt_every=25", "train.eval_every=0"]


def split_overrides(overrides) -> tuple[dict, list[str]]:
    """(align.* values typed by AlignConfig's fields, the other overrides) — one line for an unknown key or bad value."""
    fields = {f.name: f for f in dataclasses.fields(AlignConfig)}
    values, rest = {}, []
    for o in overrides:
        key, eq, raw = o.partition("=")
        if not eq:
            raise ConfigError(f"{o!r}: overrides are key=value")
        if not key.startswith("align."):
            rest.append(o)
            continue
        name = key.removeprefix("align.")
        if name not in fields:
            raise ConfigError(f"{key}: unknown; allowed align.{', align.'.join(fields)}")
        kind = type(getattr(AlignConfig(), name))
        try:
            values[name] = kind(raw)
        except ValueError:
            raise ConfigError(f"{key}={raw}: expected a {kind.__name__}") from None
    return values, rest


def check(kind: str, a: AlignConfig, context: int) -> None:
    """One line for each setting that cannot work (before anything compiles)."""
    def bad(msg):
        raise ConfigError(msg)
    if kind not in KINDS:
        bad(f"lineage align {kind}: allowed {', '.join(KINDS)}")
    if not PROMPT_WIDTH + 4 <= a.seq_len <= context:
        bad(f"align.seq_len={a.seq_len}: must be in [{PROMPT_WIDTH + 4}, model.context={context}]")
    if not a.beta > 0:
        bad(f"align.beta={a.beta}: must be > 0 (the strength of the KL leash)")
    if a.loss not in ("sigmoid", "ipo"):
        bad(f"align.loss={a.loss!r}: allowed sigmoid, ipo")
    if not 0 <= a.label_smoothing < 0.5:
        bad(f"align.label_smoothing={a.label_smoothing}: must be in [0, 0.5)")
    if a.kl_coef < 0:
        bad(f"align.kl_coef={a.kl_coef}: must be >= 0")
    if not (0 < a.gamma <= 1 and 0 <= a.lam <= 1):
        bad(f"align.gamma={a.gamma}, align.lam={a.lam}: need 0 < gamma <= 1 and 0 <= lam <= 1")
    if not (a.clip > 0 and a.vf_clip > 0 and a.vf_coef >= 0 and a.ptx_coef >= 0):
        bad("align.clip and align.vf_clip must be > 0; align.vf_coef and align.ptx_coef >= 0")
    if a.ppo_epochs < 1 or a.minibatches < 1 or a.eval_prompts < 1:
        bad("align.ppo_epochs, align.minibatches and align.eval_prompts must be >= 1")
    if a.examples < 2 or a.candidates < 1 or a.revise_prompts < 1:
        bad(f"align.examples={a.examples}, align.candidates={a.candidates}, align.revise_prompts={a.revise_prompts}: "
            "need examples >= 2 (one following and one breaking each principle), candidates and revise_prompts >= 1")
    if a.temperature < 0:
        bad(f"align.temperature={a.temperature}: must be >= 0")
