"""``lineage align grpo --from RUN --run-dir OUT``: GRPO on verifiable arithmetic over a trained run.

The policy is the run's language model (any ``lineage train`` run, a converted checkpoint, or an ``align sft`` /
``align grpo`` run), its tokenizer encodes the chapter's prompts (``57+68=``), and each iteration:

    draws train.batch_size / G addition problems (a function of (seed, iteration): a resumed run reads what the
    uninterrupted one would; held-out prompts are never drawn),
    samples G completions each with the project's KV cache (``align.rollout``: prefill, then one position per
    token, one compile), rewards each with the verifier (``reasoning.arith.reward``: 1 if the tagged answer is
    right, + format_weight if the format is followed), and
    takes one step of ``reasoning.grpo``'s clipped objective with the k3 KL to the frozen start (no value model),
    jitted and sharded by ``align.setup`` exactly like the other stages (``mesh.fsdp=8`` is ZeRO-3).

Settings are ``grpo.KEY=VALUE`` (``GrpoConfig``, checked before JAX starts); the run directory is written, locked
and resumed as ``align.run`` does for the other stages. The summary holds held-out greedy accuracy, format rate
and response length before and after.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from lineage_jax.align import config as acfg, dataset, setup as align_setup, steps
from lineage_jax.align.rollout import rollout
from lineage_jax.align.run import check_source, load_params, open_stage, save_stage
from lineage_jax.config import load_config
from lineage_jax.config.errors import ConfigError
from lineage_jax.reasoning import arith, grpo
from lineage_jax.runs import lock, rundir
from lineage_jax.tokenize import get_tokenizer

DEFAULTS = ["train.steps=30", "optim.lr=3e-4"]


@dataclasses.dataclass(frozen=True)
class GrpoConfig:
    digits: int = 1              # digits per operand of the addition prompts
    group: int = 4               # G completions per prompt; train.batch_size = prompts x G
    new_tokens: int = 16         # the longest completion
    beta: float = 0.04           # weight of the k3 KL to the start
    epsilon: float = 0.2         # ratio clip
    loss_type: str = "grpo"      # grpo | bnpo | dr_grpo
    scale: str = "group"         # advantages divided by the group's std (group) or not (none: Dr. GRPO)
    baseline: str = "reward"     # group statistics of r (reward) or of r / completion length (length: TIC-GRPO)
    temperature: float = 1.0     # sampling temperature of the rollouts
    format_weight: float = 0.1   # reward for the format followed (on top of 1 for a right answer)
    eval_prompts: int = 64       # held-out problems scored greedily before and after

    @property
    def prompt_width(self) -> int:
        return 2 * self.digits + 2


def split_overrides(overrides) -> tuple[dict, list[str]]:
    """(grpo.* values typed by GrpoConfig's fields, the other overrides): one line for an unknown key or value."""
    fields = {f.name for f in dataclasses.fields(GrpoConfig)}
    values, rest = {}, []
    for o in overrides:
        key, eq, raw = o.partition("=")
        if not eq:
            raise ConfigError(f"{o!r}: overrides are key=value")
        if not key.startswith("grpo."):
            rest.append(o)
            continue
        name = key.removeprefix("grpo.")
        if name not in fields:
            raise ConfigError(f"{key}: unknown; allowed grpo.{', grpo.'.join(sorted(fields))}")
        kind = type(getattr(GrpoConfig(), name))
        try:
            values[name] = kind(raw)
        except ValueError:
            raise ConfigError(f"{key}={raw}: expected a {kind.__name__}") from None
    return values, rest


def check(g: GrpoConfig, batch_size: int | None = None, context: int | None = None) -> None:
    """One line for a setting that cannot work (before anything compiles)."""
    if not 1 <= g.digits <= 6:
        raise ConfigError(f"grpo.digits={g.digits}: between 1 and 6")
    if g.group < 2:
        raise ConfigError(f"grpo.group={g.group}: at least 2 completions per prompt (the group is the baseline)")
    if g.loss_type not in grpo.LOSS_TYPES or g.scale not in grpo.SCALES:
        raise ConfigError(f"grpo.loss_type={g.loss_type}, grpo.scale={g.scale}: loss_type one of "
                          f"{', '.join(grpo.LOSS_TYPES)}; scale one of {', '.join(grpo.SCALES)}")
    if g.baseline not in grpo.BASELINES:
        raise ConfigError(f"grpo.baseline={g.baseline}: one of {', '.join(grpo.BASELINES)}")
    if g.new_tokens < 4 or g.eval_prompts < 1 or g.beta < 0 or not 0 < g.epsilon < 1 or g.temperature <= 0:
        raise ConfigError("grpo.new_tokens >= 4, grpo.eval_prompts >= 1, grpo.beta >= 0, grpo.epsilon in (0, 1), "
                          "grpo.temperature > 0")
    if batch_size is not None and batch_size % g.group:
        raise ConfigError(f"train.batch_size={batch_size}: must be a multiple of grpo.group={g.group}")
    if context is not None and g.prompt_width + g.new_tokens > context:
        raise ConfigError(f"grpo.new_tokens={g.new_tokens}: prompt ({g.prompt_width}) + completion exceed "
                          f"model.context={context}")


def make_grpo_step(model, tx, g: GrpoConfig):
    """The pure GRPO step over the project's models: batch {"tokens" [B, T], "mask" [B, T] (1 on sampled
    tokens), "old_logp", "ref_logp" [B, T-1] (targets' positions), "advantages" [B]}."""
    def loss_fn(params, b):
        logp, mask = steps.policy_logprobs(model, params, b["tokens"], b["mask"])
        return grpo.grpo_loss(logp, b["old_logp"], b["ref_logp"], b["advantages"], mask, epsilon=g.epsilon,
                              beta=g.beta, loss_type=g.loss_type, max_len=g.new_tokens)
    return lambda state, batch: steps._update(tx, state, loss_fn, batch)


def held_out(g: GrpoConfig, seed: int) -> list[arith.Problem]:
    return arith.problems("add", g.eval_prompts, [g.digits], seed + 1_000_003)


def train_problems(g: GrpoConfig, n: int, seed: int, iteration: int, held: set[str]) -> list[arith.Problem]:
    """The iteration's n prompts: a function of (seed, iteration), never a held-out prompt."""
    rng, out = np.random.default_rng([seed, iteration]), []
    while len(out) < n:
        p = arith.addition(rng, g.digits)
        if p.prompt not in held or len(held) >= 10 ** (2 * g.digits):
            out.append(p)
    return out


def completions(tok, out: dict, lengths) -> list[str]:
    """Each row's sampled text, up to its end-of-text."""
    toks = np.asarray(out["tokens"])
    return [dataset.decode_response(tok, toks[i], int(lengths[i]), tok.eos_id) for i in range(len(toks))]


def evaluate(model, params, tok, problems, g: GrpoConfig) -> dict:
    """Greedy held-out accuracy, format rate and mean response length."""
    ids, lens = dataset.encode_prompts(tok, [p.prompt for p in problems], g.prompt_width)
    out = jax.device_get(rollout(model, params, ids, lens, jax.random.key(0), new_tokens=g.new_tokens,
                                 eos_id=tok.eos_id, temperature=0.0, vocab_limit=tok.vocab_size))
    texts = completions(tok, out, lens)
    checks = [arith.check(p, t) for p, t in zip(problems, texts)]
    return {"accuracy": float(np.mean([c["correct"] for c in checks])),
            "formatted": float(np.mean([c["formatted"] for c in checks])),
            "length": float(np.mean([len(t) for t in texts])),
            "examples": [[p.prompt, t] for p, t in zip(problems[:4], texts[:4])]}


def run(source: str, run_dir: str, overrides=(), *, progress: bool = True, overwrite: bool = False) -> dict:
    """Train (or resume) GRPO from ``source``; return a summary with held-out accuracy before and after."""
    values, rest = split_overrides(overrides)
    g = GrpoConfig(**values)
    src = Path(source)
    check_source(src, "--from", ("pretrain", "sft", "grpo"))
    cfg = load_config(str(src / "config.yaml"), acfg.COMMON_DEFAULTS + DEFAULTS + rest + [f"run_dir={run_dir}"])
    check(g, cfg.train.batch_size, cfg.model.context)
    tok = get_tokenizer(cfg.data.tokenizer)
    missing = sorted({c for c in "0123456789+=>.," if tok.decode(tok.encode(c)) != c})
    if missing:
        raise ConfigError(f"--from {src}: its tokenizer ({cfg.data.tokenizer}) cannot write {''.join(missing)!r}; "
                          f"GRPO's arithmetic needs digits and + = > . ,")
    out = Path(run_dir)
    created = rundir.create(out)
    try:
        with lock.hold(out):
            rundir.check(out, cfg.to_dict()["model"], cfg.data.tokenizer, tok.fingerprint(), overwrite=overwrite)
            return _run_locked(src, out, cfg, g, tok, progress)
    finally:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()


def _run_locked(src: Path, out: Path, cfg, g: GrpoConfig, tok, progress: bool) -> dict:
    s = align_setup.build(cfg, with_head=False)
    _, start_params = load_params(src)
    start_params = start_params["lm"] if isinstance(start_params, dict) and "head" in start_params else start_params
    ref = jax.device_put(start_params, s.lm_sharding())
    test = held_out(g, cfg.train.seed)
    before = evaluate(s.model, start_params, tok, test, g)
    mngr, start, state, metrics_path = open_stage(out, s, start_params, cfg, tok, "grpo", {"from": str(src)}, g)
    iteration = _iteration(s, g, cfg, tok, ref, {p.prompt for p in test})
    iters = cfg.train.steps
    bar = tqdm(total=iters, initial=start, disable=not progress, unit="it", desc=f"align grpo {out.name}",
               dynamic_ncols=True)
    try:
        for it in range(start, iters):
            state, m = iteration(state, it)
            done = it + 1
            if done % cfg.train.log_every == 0 or done in (1, iters):
                row = {"step": done, **{k: float(v) for k, v in m.items()}}
                with metrics_path.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                bar.set_postfix({k: f"{row[k]:.3f}" for k in ("reward", "kl")}, refresh=False)
            if done % cfg.train.ckpt_every == 0 or done == iters:
                save_stage(mngr, done, state, cfg, tok)
            bar.update(1)
    finally:
        bar.close()
        mngr.wait_until_finished()
        mngr.close()
    after = evaluate(s.model, jax.device_get(state.params), tok, test, g)
    return {"kind": "grpo", "steps": iters, "run_dir": str(out), "before": before, "final": after}


def _iteration(s, g: GrpoConfig, cfg, tok, ref, held: set[str]):
    """iteration(state, it) -> (state, metrics): sample the groups, reward them, one GRPO step."""
    B, seed = cfg.train.batch_size, cfg.train.seed
    step = s.jit_step(make_grpo_step(s.model, s.tx, g))
    ref_logp = s.jit(lambda p, tokens, mask: steps.policy_logprobs(s.model, p, tokens, mask)[0])

    def iteration(state, it):
        problems = [p for p in train_problems(g, B // g.group, seed, it, held) for _ in range(g.group)]
        ids, lens = dataset.encode_prompts(tok, [p.prompt for p in problems], g.prompt_width)
        with s.context():
            ro = rollout(s.model, state.params, ids, lens, jax.random.fold_in(jax.random.key(seed), it),
                         new_tokens=g.new_tokens, eos_id=tok.eos_id, temperature=g.temperature,
                         vocab_limit=tok.vocab_size)
        ro = jax.device_get(ro)
        rewards = np.array([arith.reward(p, t, g.format_weight) for p, t in zip(problems, completions(tok, ro, lens))],
                           np.float32)
        batch = {"tokens": ro["tokens"], "mask": ro["mask"], "old_logp": ro["logp"],
                 "advantages": np.asarray(grpo.group_advantages(jnp.asarray(rewards), g.group, g.scale,
                                                                baseline=g.baseline,
                                                                lengths=jnp.asarray(ro["mask"].sum(-1))))}
        batch = s.put_batch(batch)
        batch["ref_logp"] = ref_logp(ref, batch["tokens"], batch["mask"])
        state, m = step(state, batch)
        m = jax.device_get(m)
        return state, {**m, "reward": float(rewards.mean()), "correct": float((rewards >= 1).mean())}
    return iteration
