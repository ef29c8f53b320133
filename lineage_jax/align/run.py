"""``lineage align sft|rm|dpo|ppo|judge``: the side effects of an alignment stage (files, progress, checkpoints).

A stage starts from run directories (a ``lineage train`` run, a converted Hugging Face checkpoint, or an
earlier stage) and writes a run directory like pretraining's: ``config.yaml`` (the source's model, this
stage's train/optim/mesh), ``run.json`` (the tokenizer by content, plus ``align``: the stage, its sources
and its ``align.*`` settings), ``metrics.jsonl``, ``checkpoints/``. Rerunning the same command resumes
from the latest checkpoint (the data order and PPO's rollout keys are functions of the step), and the
directory is locked and checked as ``lineage train`` checks it (``runs.rundir``).

The trainable tree is the language model's params, or ``{"lm", "head"}`` for the reward model and for
PPO (the policy with its value head, initialised from the reward model's head, as InstructGPT does), or
``{"lm", "heads"}`` for a Constitutional AI judge. ``--judge`` swaps a stage's human data for AI feedback
(``align.cai``): SL-CAI revisions for sft, judge-ordered pairs for rm and dpo.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import jax
import numpy as np
import yaml
from tqdm.auto import tqdm

from lineage_jax.align import (cai, config as acfg, constitution as C, dataset, evaluate as ev, feedback, heads,
                                setup as align_setup, steps)
from lineage_jax.align.rollout import rollout
from lineage_jax.config import Config, load_config
from lineage_jax.config.errors import UserError
from lineage_jax.data.sources import resolve_data_dir
from lineage_jax.runs import atomic, checkpoint as ckpt, lock, rundir
from lineage_jax.runs.rundir import RunDirError
from lineage_jax.tokenize import get_tokenizer
from lineage_jax.train.loop import truncate_metrics

HEADED = ("rm", "ppo")   # stages whose checkpoints hold {"lm", "head"}; a "judge" run's hold {"lm", "heads"}
SOURCES = {"sft": ("pretrain", "sft"), "rm": ("pretrain", "sft"), "dpo": ("pretrain", "sft"),
           "ppo": ("pretrain", "sft", "dpo"), "judge": ("pretrain", "sft")}


def _build(cfg, stage: str, devices=None):
    return align_setup.build(cfg, with_head=stage in HEADED, judge=len(C.NAMES) if stage == "judge" else 0,
                             devices=devices)


def stage_of(run_dir: Path) -> str:
    """"pretrain" for a lineage train/convert run, else the align stage recorded in run.json."""
    return (rundir.read_record(run_dir).get("align") or {}).get("kind", "pretrain")


def check_source(run_dir: Path, what: str, allowed: tuple[str, ...]) -> str:
    """One line if ``run_dir`` is not a trained run of an allowed stage; its stage otherwise."""
    if not (run_dir / "config.yaml").is_file():
        raise RunDirError(f"{what} {run_dir}: not a run directory (no config.yaml); give a trained run")
    if ckpt.latest_step(run_dir) is None:
        raise RunDirError(f"{what} {run_dir}: no checkpoint there; train it first")
    stage = stage_of(run_dir)
    if stage not in allowed:
        raise RunDirError(f"{what} {run_dir}: is a '{stage}' run; {what} takes a run of: {', '.join(allowed)}")
    return stage


def load_params(run_dir: Path):
    """(config, host params) of a run's newest good checkpoint: the lm tree, or {"lm", "head"} for RM/PPO runs."""
    cfg = load_config(str(run_dir / "config.yaml"), [])
    s = _build(dataclasses.replace(cfg, mesh=type(cfg.mesh)(data=1)), stage_of(run_dir), devices=jax.devices()[:1])
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one), s.abstract_params())
    with ckpt.manager(run_dir, create=False, async_save=False) as mngr:
        _, params, _ = ckpt.restore_latest_good(mngr, abstract, params_only=True, move_bad=False)
    return cfg, jax.device_get(params)


def tokenizer_sha(run_dir: Path) -> str | None:
    return (rundir.read_record(run_dir).get("tokenizer") or {}).get("sha256")


class Batches:
    """Rows of the encoded train split in a seeded order, a fresh permutation per epoch: the batch of a
    step is a function of (seed, step), so a resumed run reads what the uninterrupted one would."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.B, self.seed, self._perms = n, batch_size, seed, {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n),
                           **{e: p for e, p in self._perms.items() if e >= epoch - 1}}
        return self._perms[epoch]

    def indices(self, step: int) -> np.ndarray:
        i = step * self.B + np.arange(self.B)
        return np.array([self._perm(int(e))[w] for e, w in zip(i // self.n, i % self.n)])


def _encode(tok, rows, key, T):
    return dataset.encode(tok, [r["prompt"] for r in rows], [r[key] for r in rows], T)


def run(kind: str, sources: dict[str, str], run_dir: str, overrides=(), *, progress: bool = True,
        overwrite: bool = False) -> dict:
    """Train (or resume) one alignment stage; return a summary with the final evaluation."""
    a_values, rest = acfg.split_overrides(overrides)
    a = acfg.AlignConfig(**a_values)
    src = Path(sources["policy" if kind == "ppo" else "from"])
    check_source(src, "--policy" if kind == "ppo" else "--from", SOURCES[kind])
    cfg = load_config(str(src / "config.yaml"), acfg.COMMON_DEFAULTS + acfg.STAGE_DEFAULTS[kind] + rest
                      + [f"run_dir={run_dir}"])
    acfg.check(kind, a, cfg.model.context)
    tok = get_tokenizer(cfg.data.tokenizer)
    if sources.get("judge") and kind not in ("sft", "rm", "dpo"):
        raise UserError(f"--judge: AI feedback is for sft (SL-CAI revisions), rm and dpo (AI-labelled pairs), not {kind}")
    for name, allowed in (("reference", ("pretrain", "sft")), ("reward", ("rm",)), ("judge", ("judge",))):
        if sources.get(name):
            check_source(Path(sources[name]), f"--{name}", allowed)
            if tokenizer_sha(Path(sources[name])) not in (None, tok.fingerprint()):
                raise RunDirError(f"--{name} {sources[name]}: was trained with another tokenizer than the policy "
                                  f"({cfg.data.tokenizer}); its token ids would mean other text")
    out = Path(run_dir)
    created = rundir.create(out)
    try:
        with lock.hold(out):
            rundir.check(out, cfg.to_dict()["model"], cfg.data.tokenizer, tok.fingerprint(), overwrite=overwrite)
            return _run_locked(kind, sources, out, cfg, a, tok, progress)
    finally:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()


def open_stage(out: Path, s, init_params, cfg: Config, tok, kind: str, sources: dict, stage_cfg):
    """A stage's run directory opened for training: the checkpoint manager, the step to start from and its
    state (the latest good checkpoint, else ``s.init_state(init_params)``), ``metrics.jsonl`` cut back to
    that step (removed on a fresh start), and ``config.yaml`` + ``run.json`` (tokenizer, kind, sources,
    the stage's settings) written. Returns (manager, start, state, metrics path)."""
    mngr = ckpt.manager(out, keep=cfg.train.keep_checkpoints, async_save=False)
    restored = ckpt.restore_latest_good(mngr, s.abstract_state(), log=lambda m: tqdm.write(m, file=sys.stderr))
    start, state = (0, s.init_state(init_params)) if restored is None else restored[:2]
    metrics_path = out / "metrics.jsonl"
    if restored is None:
        metrics_path.unlink(missing_ok=True)
    else:
        truncate_metrics(metrics_path, start, note=tqdm.write)
    record = {"spec": cfg.data.tokenizer, "sha256": tok.fingerprint(), "vocab_size": tok.vocab_size}
    atomic.write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    atomic.write_text(out / rundir.RUN_JSON, json.dumps({"tokenizer": record, "align": {
        "kind": kind, "sources": sources, "config": dataclasses.asdict(stage_cfg)}}, indent=1) + "\n")
    return mngr, start, state, metrics_path


def save_stage(mngr, step: int, state, cfg: Config, tok) -> None:
    """A stage's checkpoint at ``step``, with the tokenizer it was trained with in its meta."""
    ckpt.save(mngr, step, state, {"step": step, "tokenizer": {"spec": cfg.data.tokenizer, "sha256": tok.fingerprint()}})


def _run_locked(kind, sources, out: Path, cfg: Config, a, tok, progress: bool) -> dict:
    data_dir = a.data_dir or resolve_data_dir(cfg.data)
    train_rows, test_rows = dataset.load(data_dir, "train"), dataset.load(data_dir, "test")
    iters = cfg.train.steps
    if kind == "ppo":   # the optimizer's schedule counts PPO updates, not iterations
        cfg_opt = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=iters * a.ppo_epochs * a.minibatches))
    else:
        cfg_opt = cfg
    s = _build(cfg_opt, kind)
    _, init_params = load_params(Path(sources["policy" if kind == "ppo" else "from"]))
    ref_lm = reward = None
    if kind not in ("rm", "judge"):   # the reference: for DPO and PPO's KL, and the KL every policy reports
        ref_src = Path(sources.get("reference") or sources["policy" if kind == "ppo" else "from"])
        ref_lm = load_params(ref_src)[1]
        ref_lm = ref_lm["lm"] if isinstance(ref_lm, dict) and "head" in ref_lm else ref_lm
    if isinstance(init_params, dict) and "head" in init_params:
        init_params = init_params["lm"]
    if kind == "rm":
        init_params = {"lm": init_params, "head": heads.init_head(jax.random.key(cfg.train.seed), cfg.model.width)}
    if kind == "judge":
        init_params = feedback.init_judge(jax.random.key(cfg.train.seed), init_params, cfg.model.width, len(C.NAMES))
    data, fb_info = _ai_feedback(kind, sources, s.model, init_params, train_rows, tok, a, cfg)
    if kind == "ppo":
        reward = load_params(Path(sources["reward"]))[1]
        init_params = {"lm": init_params, "head": reward["head"]}
        reward = jax.device_put(reward, s.head_sharding())
    ref_dev = jax.device_put(ref_lm, s.lm_sharding()) if ref_lm is not None else None

    mngr, start, state, metrics_path = open_stage(out, s, init_params, cfg, tok, kind, sources, a)

    step_fn = _stage_step(kind, s, a, cfg, train_rows, tok, ref_dev, reward, data)
    bar = tqdm(total=iters, initial=start, disable=not progress, unit="it" if kind == "ppo" else "step",
               desc=f"align {kind} {out.name}", dynamic_ncols=True)
    window = []
    try:
        for it in range(start, iters):
            state, m = step_fn(state, it)
            window.append(jax.device_get(m))
            done = it + 1
            if done % cfg.train.log_every == 0 or done == iters or done == 1:
                row = {"step": done, **{k: float(np.mean([w[k] for w in window])) for k in window[0]}}
                with metrics_path.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                bar.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k in ("loss", "accuracy", "score", "kl")},
                                refresh=False)
                window = []
            if done % cfg.train.ckpt_every == 0 or done == iters:
                save_stage(mngr, done, state, cfg, tok)
            bar.update(1)
    finally:
        bar.close()
        mngr.wait_until_finished()
        mngr.close()
    return {"kind": kind, "steps": iters, "run_dir": str(out), **({"feedback": fb_info} if fb_info else {}),
            "final": _final_eval(kind, s, state.params, ref_lm, tok, test_rows, a, cfg)}


def _ai_feedback(kind, sources, model, policy, train_rows, tok, a, cfg):
    """With ``--judge``: (the stage's data from AI feedback, what it did) — SL-CAI revisions of the start
    policy's own samples for sft, the pairs re-ordered by the judge for rm and dpo; (None, {}) without."""
    if not sources.get("judge"):
        return None, {}
    judge = load_params(Path(sources["judge"]))[1]
    if kind == "sft":
        prompts = [r["prompt"] for r in train_rows[:a.revise_prompts]]
        rows, info = cai.revise(model, policy, judge, tok, prompts, candidates=a.candidates, new_tokens=a.new_tokens,
                                seed=cfg.train.seed + 100)
        return rows, {"revised_prompts": len(prompts), **info}
    c, r, first = cai.relabel(model, judge, _encode(tok, train_rows, "chosen", a.seq_len),
                              _encode(tok, train_rows, "rejected", a.seq_len))
    return (c, r), {"pairs": len(first), "kept_human_order": float(np.mean(first))}


def _stage_step(kind, s, a, cfg, train_rows, tok, ref_dev, reward, data=None):
    """step(state, iteration) -> (state, metrics) for the stage: draws the iteration's data, then the pure steps.
    ``data``: AI feedback's rows instead of the dataset's (SL-CAI revisions; AI-ordered pairs)."""
    T, B, seed = a.seq_len, cfg.train.batch_size, cfg.train.seed
    order = Batches(len(train_rows) if data is None or kind != "sft" else len(data["tokens"]), B, seed)
    if kind == "judge":
        exb = cai.judge_batch(tok, C.worked_examples(a.examples, seed=seed + 12345), T)
        ex_order, step = Batches(len(exb["tokens"]), B, seed), s.jit_step(feedback.make_judge_step(s.model, s.tx))
        return lambda st, it: step(st, s.put_batch({k: v[ex_order.indices(it)] for k, v in exb.items()}))
    if kind == "sft":
        enc = data if data is not None else _encode(tok, train_rows, "demonstration", T)
        step = s.jit_step(steps.make_sft_step(s.model, s.tx))
        return lambda st, it: step(st, s.put_batch({k: enc[k][order.indices(it)] for k in ("tokens", "mask")}))
    c, r = data if data is not None else (_encode(tok, train_rows, "chosen", T), _encode(tok, train_rows, "rejected", T))
    if kind == "rm":
        step = s.jit_step(steps.make_rm_step(s.model, s.tx))

        def rm(st, it):
            i = order.indices(it)
            return step(st, s.put_batch({"chosen": c["tokens"][i], "chosen_lengths": c["lengths"][i],
                                         "rejected": r["tokens"][i], "rejected_lengths": r["lengths"][i]}))
        return rm
    if kind == "dpo":
        step = s.jit_step(steps.make_dpo_step(s.model, s.tx, beta=a.beta, kind=a.loss, label_smoothing=a.label_smoothing))
        logprob = s.jit(steps.make_logprob_fn(s.model))

        def dpo(st, it):
            i = order.indices(it)
            b = s.put_batch({"chosen": c["tokens"][i], "chosen_mask": c["mask"][i], "rejected": r["tokens"][i],
                             "rejected_mask": r["mask"][i]})
            b["ref_chosen"] = logprob(ref_dev, b["chosen"], b["chosen_mask"])[0]
            b["ref_rejected"] = logprob(ref_dev, b["rejected"], b["rejected_mask"])[0]
            return step(st, b)
        return dpo
    return _ppo_iteration(s, a, cfg, train_rows, tok, ref_dev, reward, order)


def _ppo_iteration(s, a, cfg, train_rows, tok, ref_dev, reward, order):
    """One InstructGPT iteration: roll out B prompts, score them (reward model, reference, values, GAE), then
    ``ppo_epochs`` passes of ``minibatches`` PPO updates."""
    B, seed = cfg.train.batch_size, cfg.train.seed
    if B % a.minibatches:
        raise UserError(f"train.batch_size={B}: must split into align.minibatches={a.minibatches}")
    prompts, plens = dataset.encode_prompts(tok, [r["prompt"] for r in train_rows], acfg.PROMPT_WIDTH)
    demos = _encode(tok, train_rows, "demonstration", a.seq_len) if a.ptx_coef > 0 else None
    score = s.jit(steps.make_score_fn(s.model, kl_coef=a.kl_coef, gamma=a.gamma, lam=a.lam))
    update = s.jit_step(steps.make_ppo_step(s.model, s.tx, clip=a.clip, vf_coef=a.vf_coef, vf_clip=a.vf_clip,
                                            ptx_coef=a.ptx_coef))

    def iteration(st, it):
        i = order.indices(it)
        with s.context():
            ro = rollout(s.model, st.params["lm"], prompts[i], plens[i], jax.random.fold_in(jax.random.key(seed), it),
                         new_tokens=a.new_tokens, eos_id=tok.eos_id, temperature=a.temperature,
                         vocab_limit=tok.vocab_size)
        batch, info = score(st.params, ref_dev, reward, {k: ro[k] for k in ("tokens", "mask", "lengths")})
        batch = jax.device_get(batch)
        rng, mb = np.random.default_rng([seed, it]), B // a.minibatches
        logs = []
        for _ in range(a.ppo_epochs):
            perm = rng.permutation(B)
            for j in range(a.minibatches):
                sel = perm[j * mb:(j + 1) * mb]
                part = {k: v[sel] for k, v in batch.items()}
                if demos is not None:
                    part.update(ptx_tokens=demos["tokens"][i[sel]], ptx_mask=demos["mask"][i[sel]])
                st, m = update(st, s.put_batch(part))
                logs.append(jax.device_get(m))
        return st, {**{k: float(np.mean([x[k] for x in logs])) for k in logs[0]}, **jax.device_get(info)}
    return iteration


def _final_eval(kind, s, params, ref_lm, tok, test_rows, a, cfg) -> dict:
    """RM: held-out pair accuracy; a policy: gold score, correctness and KL to its reference on held-out prompts."""
    one = jax.device_get(params)
    if kind == "judge":   # its verdicts against the task's predicates, its labels against gold (measurement)
        P, ch, rj = [r["prompt"] for r in test_rows], [r["chosen"] for r in test_rows], [r["rejected"] for r in test_rows]
        _, _, first = cai.relabel(s.model, one, _encode(tok, test_rows, "chosen", a.seq_len),
                                  _encode(tok, test_rows, "rejected", a.seq_len))
        acc = cai.judge_accuracy(s.model, one, tok, P + P, ch + rj, a.seq_len)
        return {**{f"verdict_{k}": v for k, v in acc.items()}, "ai_agreement": cai.agreement(P, ch, rj, first),
                "human_agreement": cai.agreement(P, ch, rj, np.ones(len(P), bool))}
    if kind == "rm":
        c, r = _encode(tok, test_rows, "chosen", a.seq_len), _encode(tok, test_rows, "rejected", a.seq_len)
        fn = jax.jit(steps.make_rm_eval(s.model))
        res = jax.device_get(fn(one, {"chosen": c["tokens"], "chosen_lengths": c["lengths"], "rejected": r["tokens"],
                                      "rejected_lengths": r["lengths"]}))
        return {k: float(v) for k, v in res.items()}
    lm = one["lm"] if kind in HEADED else one
    prompts = [r["prompt"] for r in test_rows[:a.eval_prompts]]
    return ev.evaluate(s.model, lm, ref_lm, tok, prompts, new_tokens=a.new_tokens, seed=cfg.train.seed + 1,
                       temperature=a.temperature or 1.0)
