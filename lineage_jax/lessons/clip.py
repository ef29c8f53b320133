"""Lesson: CLIP (Radford et al. 2021) and CLIP-score filtering (Schuhmann et al. 2022, LAION-5B).

A small CLIP (``lineage_jax/clip``: a ViT image tower, a GPT-2-block text tower over a word
vocabulary, the symmetric contrastive loss with a learned temperature) is trained on the rendered
``captioned_shapes`` pairs, of which 10% carry a planted wrong caption. Four colour-shape
combinations never occur in training (``data.shapes.HELD_OUT``). Measured:

* zero-shot accuracy on held-out-combination images, by prompts ("a small {}", "a large {}"; the
  class of the best-matching prompt, and CLIP's mean ensemble beside it, which fails here because the
  two templates name opposite sizes) over all twelve classes (chance 1/12) and over the four held-out ones (chance 1/4; the four
  have four different colours, so colour alone solves that one: the 12-way number, and how often the
  predicted class has the right colour and the right shape, are the test of composition), beside a
  supervised linear probe on the same frozen image embeddings, which sees labelled images of
  every class (trained on the ``test`` split and half the held-out images, scored on the other half,
  where the zero-shot numbers are also taken);
* the filter: the trained model scores its own training pairs; a label-free cut between the two
  modes of the cosine histogram (``clip.filter.two_mode_threshold``) removes pairs; precision and
  recall against the planted mismatches, and average precision of the ranking;
* the effect of filtering: a second model, same steps and seed, trained on the kept pairs only.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time
from pathlib import Path

import jax
import numpy as np

from lineage_jax.clip import data as clip_data
from lineage_jax.clip import filter as clip_filter
from lineage_jax.clip import zeroshot
from lineage_jax.clip.infer import Encoder, Scorer
from lineage_jax.clip.model import model_config
from lineage_jax.clip.run import build, fit
from lineage_jax.clip.settings import TrainSettings
from lineage_jax.config import ConfigError
from lineage_jax.lessons import harness

CHANCE = 1 / len(clip_data.CLASS_NAMES)


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    steps: int = 600
    batch: int = 64
    lr: float = 5e-4
    dataset: str = "default"     # captioned_shapes: default (4,000 train pairs) | tiny (300)
    small: bool = False          # a smaller CLIP (one layer per tower), for --quick
    retrain: bool = True         # train a second model on the CLIP-filtered pairs
    data_dir: str = ""

    def __post_init__(self):
        harness.at_least_one(self, "steps", "batch")
        if not self.lr > 0:
            raise ConfigError(f"lr={self.lr}: must be positive")
        if self.dataset not in ("default", "tiny"):
            raise ConfigError(f"dataset={self.dataset}: allowed default, tiny")


QUICK = dict(steps=40, batch=32, dataset="tiny", small=True)
SMALL = ("text_layers=1", "text_width=32", "text_heads=2", "embed_dim=16", "image.depth=1", "image.width=32",
         "image.heads=2", "image.mlp_dim=64", "image.patch_size=16")


def supports(rows: list[dict]) -> bool:
    """The model trained on all pairs: zero-shot on held-out combinations >= 3x chance among all twelve
    classes and >= 2x chance among the four held-out ones; the filter's precision and recall >= 0.8."""
    m = next(r for r in rows if r["model"] == "all pairs")
    return (m["zero_shot_12"] >= 3 * CHANCE and m["zero_shot_4"] >= 0.5 and m["filter_precision"] >= 0.8
            and m["filter_recall"] >= 0.8)


def evaluate(enc: Encoder, splits: dict, eval_idx, probe_idx) -> dict:
    """Zero-shot (12-way, 4-way) and the linear probe, on the held-out images ``eval_idx``."""
    ho, y_ho = splits["heldout"], clip_data.labels(splits["heldout"])
    prompt_emb = enc.texts(zeroshot.prompts(clip_data.CLASS_NAMES))
    classes = zeroshot.ensemble(prompt_emb, len(clip_data.CLASS_NAMES))      # CLIP's mean ensemble
    img_ho = enc.images(ho["image"])
    pred12 = np.asarray(zeroshot.predict_max(img_ho, prompt_emb, len(clip_data.CLASS_NAMES)))
    pred_mean = np.asarray(zeroshot.predict(img_ho, classes))
    four = np.array(clip_data.HELD_OUT_CLASSES)
    k = len(zeroshot.TEMPLATES)
    four_prompts = prompt_emb.reshape(len(clip_data.CLASS_NAMES), k, -1)[four].reshape(len(four) * k, -1)
    pred4 = four[np.asarray(zeroshot.predict_max(img_ho, four_prompts, len(four)))]
    test = splits["test"]
    img_te, y_te = enc.images(test["image"]), clip_data.labels(test)
    wb = zeroshot.fit_probe(np.r_[img_te, img_ho[probe_idx]], np.r_[y_te, y_ho[probe_idx]], len(clip_data.CLASS_NAMES))
    probe = np.asarray(zeroshot.probe_predict(wb, img_ho[eval_idx]))
    combos = np.array(clip_data.COMBOS)
    same = lambda k: float(np.mean(combos[pred12[eval_idx], k] == combos[y_ho[eval_idx], k]))   # noqa: E731
    return {"zero_shot_12": zeroshot.accuracy(pred12[eval_idx], y_ho[eval_idx]),
            "colour_right": same(0), "shape_right": same(1),
            "zero_shot_12_mean_ensemble": zeroshot.accuracy(pred_mean[eval_idx], y_ho[eval_idx]),
            "zero_shot_4": zeroshot.accuracy(pred4[eval_idx], y_ho[eval_idx]),
            "probe_12": zeroshot.accuracy(probe, y_ho[eval_idx]),
            "zero_shot_seen": zeroshot.accuracy(zeroshot.predict_max(img_te, prompt_emb, len(clip_data.CLASS_NAMES)), y_te)}


def similarity(enc: Encoder, splits: dict) -> tuple[np.ndarray, np.ndarray, list[bool]]:
    """One image per class (a large one where there is), its best cosine with each class's prompts."""
    images, held = [], []
    for i, (colour, shape) in enumerate(clip_data.COMBOS):
        split = splits["heldout" if i in clip_data.HELD_OUT_CLASSES else "test"]
        y = clip_data.labels(split)
        rows = np.flatnonzero(y == i)
        large = [r for r in rows if split["size"][r] == 1]
        images.append(split["image"][(large or list(rows))[0]])
        held.append(i in clip_data.HELD_OUT_CLASSES)
    images = np.stack(images)
    prompt_emb = enc.texts(zeroshot.prompts(clip_data.CLASS_NAMES))       # best prompt per class, as predict_max
    sims = (enc.images(images) @ prompt_emb.T).reshape(len(images), len(clip_data.CLASS_NAMES), -1).max(-1)
    return sims, images, held


def run(cfg: Config, out_dir: str | Path | None = None, progress: bool = True) -> harness.LessonResult:
    from lineage_jax.data.shapes import load_shapes
    t0 = time.perf_counter()
    data_dir = cfg.data_dir or os.environ.get("TFDS_DATA_DIR") or str(Path.home() / ".cache" / "lineage_jax" / "tfds")
    splits = load_shapes(data_dir, cfg.dataset)
    vocab = clip_data.vocabulary()
    model = dataclasses.replace(model_config(SMALL if cfg.small else ()), vocab_size=vocab.vocab_size)
    s = TrainSettings(steps=cfg.steps, batch_size=cfg.batch, lr=cfg.lr, warmup=min(50, cfg.steps // 10),
                      seed=cfg.seed, dataset=cfg.dataset)
    setup, step_fn = build(model, s)
    n_ho = len(splits["heldout"]["caption"])
    perm = np.random.default_rng([cfg.seed, 7]).permutation(n_ho)
    probe_idx, eval_idx = perm[: n_ho // 2], perm[n_ho // 2:]
    train = splits["train"]
    noisy = train["mismatched"].astype(bool)

    def train_on(keep, desc):
        pairs = clip_data.pairs(train, vocab, model.context, keep)
        state = fit(setup, step_fn, setup.init_state(jax.random.key(cfg.seed)), pairs, s, progress=progress)
        return Encoder(model, jax.device_get(state.params), vocab), len(pairs["tokens"])

    enc, n = train_on(None, "all pairs")
    scores = Scorer(enc).batch(train["image"], list(train["caption"]))
    threshold, mixture = clip_filter.two_mode_threshold(scores)
    keep = clip_filter.keep_mask(scores, threshold)
    quality = clip_filter.removal_quality(keep, noisy)
    rows = [{"model": "all pairs", "train_pairs": n, "noise": float(noisy.mean()),
             **evaluate(enc, splits, eval_idx, probe_idx),
             "filter_threshold": threshold, "filter_precision": quality["precision"], "filter_recall": quality["recall"],
             "filter_ap": clip_filter.average_precision(-scores, noisy)}]
    sims, sim_images, held = similarity(enc, splits)
    if cfg.retrain:
        enc_f, n_f = train_on(keep, "CLIP-filtered")
        rows.append({"model": "CLIP-filtered", "train_pairs": n_f, "noise": quality["kept_noise"],
                     **evaluate(enc_f, splits, eval_idx, probe_idx)})
    figures = [] if out_dir is None else [
        harness.figure(out_dir, "clip_similarity.png", functools.partial(plot_similarity, sims=sims, held=held),
                       title="CLIP: image-prompt cosine similarity (held-out combinations marked *)",
                       panel_size=(7.0, 6.0)),
        harness.figure(out_dir, "clip_filter.png", functools.partial(
            plot_filter, scores=scores, noisy=noisy, threshold=threshold),
            title="CLIP-score filtering of the training pairs (Schuhmann et al. 2022)"),
        _grid(out_dir, sim_images)]
    return harness.result("clip", rows, supports, figures, chance_12=CHANCE, chance_4=0.25, mixture=mixture,
                          kept_fraction=quality["kept_fraction"], eval_images=int(len(eval_idx)),
                          similarity=np.round(sims, 4).tolist(), classes=list(clip_data.CLASS_NAMES),
                          seconds=round(time.perf_counter() - t0, 1), config=dataclasses.asdict(cfg))


def _grid(out_dir, images) -> str:
    from lineage_jax.vision.grid import image_grid, save_png
    save_png(Path(out_dir) / "clip_images.png", image_grid(images.astype(np.float32) / 127.5 - 1, nrow=6))
    return "clip_images.png"


def report(res: harness.LessonResult) -> list[str]:
    m = res.rows[0]
    lines = [f"zero-shot on held-out combinations: {m['zero_shot_12']:.1%} among 12 classes (chance {CHANCE:.1%}), "
             f"{m['zero_shot_4']:.1%} among the 4 held-out (chance 25%); linear probe {m['probe_12']:.1%}; CLIP's mean "
             f"ensemble {m['zero_shot_12_mean_ensemble']:.1%}",
             f"filter at cosine {m['filter_threshold']:.3f}: precision {m['filter_precision']:.1%}, recall "
             f"{m['filter_recall']:.1%} on the planted mismatches (AP {m['filter_ap']:.3f})"]
    if len(res.rows) > 1:
        f = res.rows[1]
        lines.append(f"trained on the {f['train_pairs']} kept pairs: zero-shot {f['zero_shot_12']:.1%} (12) / "
                     f"{f['zero_shot_4']:.1%} (4) vs {m['zero_shot_12']:.1%} / {m['zero_shot_4']:.1%} on all pairs")
    return lines


def plot_similarity(ax, sims, held) -> None:
    names = [n + (" *" if h else "") for n, h in zip(clip_data.CLASS_NAMES, held)]
    im = ax.imshow(sims, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), [f"image: {n}" for n in names], fontsize=8)
    ax.set_xlabel("class prompts (best of the templates)")
    for i in range(len(names)):
        ax.add_patch(__import__("matplotlib.patches", fromlist=["Rectangle"]).Rectangle(
            (i - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="white", lw=1.5))
    ax.figure.colorbar(im, ax=ax, label="cosine")


def plot_filter(ax, scores, noisy, threshold) -> None:
    bins = np.linspace(scores.min(), scores.max(), 50)
    ax.hist(scores[~noisy], bins=bins, alpha=0.7, label="matched pairs")
    ax.hist(scores[noisy], bins=bins, alpha=0.7, label="planted mismatches")
    ax.axvline(threshold, color="k", ls="--", label=f"threshold {threshold:.3f}")
    ax.set_xlabel("CLIP cosine(image, caption)")
    ax.set_ylabel("pairs")
    ax.set_yscale("log")
    ax.legend()
