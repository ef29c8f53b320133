"""``lineage clip train|zeroshot|score``: CLIP on the captioned shapes (``lineage_jax/clip/``).

    lineage clip train --run-dir R [--steps 600 --batch-size 64 --lr 5e-4 --strategy DP|FSDP|ZeRO-1… --devices N]
    lineage clip zeroshot --run-dir R [--split heldout|test] [--template "a small {}" …] [--json]
    lineage clip score --run-dir R --image PNG --text "a small red circle" [--text …] [--threshold 0.8]

``train`` resumes R (rerun the same command after a stop); every argument is checked (one line, exit
2) before JAX starts. ``zeroshot`` classifies a split's images among the twelve colour-shape classes
by prompt ensembles (held-out combinations never seen in training). ``score`` prints the CLIP cosine
of a PNG against each text: the number CLIP-score filtering thresholds.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from lineage_jax.commands.devices import init_devices
from lineage_jax.config import ConfigError


def register(subparsers) -> None:
    p = subparsers.add_parser("clip", help="CLIP: contrastive image-text training, zero-shot, pair scores")
    sub = p.add_subparsers(dest="clip_command", required=True)
    t = sub.add_parser("train", help="train (or resume) a CLIP run on the captioned shapes")
    t.add_argument("--run-dir", required=True, help="the run directory (created, or resumed)")
    t.add_argument("--steps", type=int, default=600)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=5e-4)
    t.add_argument("--warmup", type=int, default=50)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--strategy", default="DP", help="a named strategy of parallel/strategies.py (DP, FSDP = ZeRO-3, …)")
    t.add_argument("--save-every", type=int, default=200)
    t.add_argument("--dataset", default="default", help="captioned_shapes config: default (4,000 pairs) or tiny (300)")
    t.add_argument("--data-dir", default=None, help="TFDS data dir (default: $TFDS_DATA_DIR, else ~/.cache/lineage_jax/tfds)")
    t.add_argument("--devices", type=int, default=None, help="emulate N CPU devices (before JAX starts)")
    t.add_argument("--overwrite", action="store_true", help="start afresh (clears only the run's own files)")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--json", action="store_true", help="print the summary as JSON")
    t.add_argument("overrides", nargs="*", metavar="key=value",
                   help="model settings (clip.model.CLIPConfig: text_layers=1, embed_dim=16, image.depth=1, …)")
    t.set_defaults(func=cmd_train)
    z = sub.add_parser("zeroshot", help="zero-shot accuracy of a run on a split, by prompt templates")
    z.add_argument("--run-dir", required=True)
    z.add_argument("--split", default="heldout", help="heldout (combinations never trained on) or test")
    z.add_argument("--template", action="append", default=None, metavar="T",
                   help='a prompt template with one {} (repeatable; default "a small {}", "a large {}")')
    z.add_argument("--ensemble", default="max", help="max: the class of the best-matching prompt (default); "
                   "mean: CLIP's average of the templates' embeddings")
    z.add_argument("--data-dir", default=None)
    z.add_argument("--json", action="store_true")
    z.set_defaults(func=cmd_zeroshot)
    s = sub.add_parser("score", help="CLIP cosine similarity of an image (PNG) with each text")
    s.add_argument("--run-dir", required=True)
    s.add_argument("--image", required=True, help="a PNG (resized to the model's input, RGB)")
    s.add_argument("--text", action="append", required=True, help="a caption (repeatable)")
    s.add_argument("--threshold", type=float, default=None, help="also say keep / drop at this cosine")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_score)


def _data_dir(arg) -> str:
    raw = arg or os.environ.get("TFDS_DATA_DIR") or str(Path.home() / ".cache" / "lineage_jax" / "tfds")
    if Path(raw).exists() and not Path(raw).is_dir():
        raise ConfigError(f"--data-dir={raw}: is a file; give a directory")
    return raw


def _run_dir(path: str) -> Path:
    p = Path(path)
    if not (p / "clip.json").is_file():
        raise ConfigError(f"--run-dir={path}: not a CLIP run (no clip.json); train one with "
                          f"`lineage clip train --run-dir {path}`")
    return p


def cmd_train(args) -> int:
    from lineage_jax.clip.settings import TrainSettings    # no JAX: checked before it starts
    settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
                             seed=args.seed, strategy=args.strategy, save_every=args.save_every, dataset=args.dataset)
    data_dir = _data_dir(args.data_dir)
    for o in args.overrides:
        if "=" not in o:
            raise ConfigError(f"{o!r}: model settings are key=value (e.g. text_layers=1 image.depth=1)")
    init_devices(args.devices)
    from lineage_jax.clip.model import model_config
    from lineage_jax.clip.run import train
    summary = train(args.run_dir, model_config(args.overrides), settings, data_dir, progress=not args.no_progress,
                    overwrite=args.overwrite)
    if args.json:
        print(json.dumps(summary))
        return 0
    f = summary["final"]
    where = f"resumed at step {summary['resumed_from']}, " if summary["resumed_from"] else ""
    if f:
        print(f"done: {summary['steps']} steps ({where}{summary['train_pairs']} pairs, {summary['params']:,} params); "
              f"loss {f['loss']:.3f}, logit scale {f['logit_scale']:.1f}, matched-pair cosine {f['pair_cos']:.3f}")
    else:
        print(f"done: already at step {summary['steps']} ({where.rstrip(', ')})")
    print(f"run files in {summary['run_dir']}")
    return 0


def cmd_zeroshot(args) -> int:
    if args.split not in ("heldout", "test"):
        raise ConfigError(f"--split={args.split}: allowed heldout, test")
    if args.ensemble not in ("max", "mean"):
        raise ConfigError(f"--ensemble={args.ensemble}: allowed max, mean")
    for t in args.template or ():
        if t.count("{}") != 1:
            raise ConfigError(f"--template={t!r}: must hold exactly one {{}} (where the class name goes)")
    run_dir, data_dir = _run_dir(args.run_dir), _data_dir(args.data_dir)
    import numpy as np
    from lineage_jax.clip import data as clip_data, store, zeroshot
    from lineage_jax.clip.infer import Encoder
    from lineage_jax.data.shapes import load_shapes
    cfg, params, vocab, step = store.load(run_dir)
    templates = tuple(args.template or zeroshot.TEMPLATES)
    unknown = sorted({w for t in templates for w in vocab.unknown_words(t.replace("{}", ""))})
    _, train, _ = store.read_config(run_dir)
    split = load_shapes(data_dir, train.get("dataset", "default"))[args.split]
    enc = Encoder(cfg, params, vocab)
    n = len(clip_data.CLASS_NAMES)
    prompt_emb = enc.texts(zeroshot.prompts(clip_data.CLASS_NAMES, templates))
    images, y = enc.images(split["image"]), clip_data.labels(split)

    def predict(ids):
        p = prompt_emb.reshape(n, len(templates), -1)[ids].reshape(len(ids) * len(templates), -1)
        if args.ensemble == "max":
            return np.asarray(ids)[np.asarray(zeroshot.predict_max(images, p, len(ids)))]
        return np.asarray(ids)[np.asarray(zeroshot.predict(images, zeroshot.ensemble(p, len(ids))))]
    acc = zeroshot.accuracy(predict(np.arange(n)), y)
    out = {"run_dir": str(run_dir), "step": step, "split": args.split, "templates": list(templates),
           "ensemble": args.ensemble, "classes": n, "accuracy": acc, "chance": 1 / len(clip_data.CLASS_NAMES),
           "unknown_words": unknown}
    if args.split == "heldout":
        ho = np.array(clip_data.HELD_OUT_CLASSES)
        out["accuracy_among_heldout"] = zeroshot.accuracy(predict(ho), y)
        out["chance_among_heldout"] = 1 / len(ho)
    if args.json:
        print(json.dumps(out))
        return 0
    if unknown:
        print(f"note: words outside the vocabulary read as <unk>: {', '.join(unknown)}")
    print(f"zero-shot on {args.split} ({len(y)} images, step {step}): {acc:.3f} among 12 classes (chance 0.083)")
    if "accuracy_among_heldout" in out:
        print(f"  among the 4 held-out combinations only: {out['accuracy_among_heldout']:.3f} (chance 0.250)")
    return 0


def cmd_score(args) -> int:
    image = Path(args.image)
    if not image.is_file():
        raise ConfigError(f"--image={args.image}: no such file; give a PNG")
    run_dir = _run_dir(args.run_dir)
    import numpy as np
    from PIL import Image, UnidentifiedImageError
    try:
        pil = Image.open(image).convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise ConfigError(f"--image={args.image}: not an image Pillow can read ({type(e).__name__})") from None
    from lineage_jax.clip import store
    from lineage_jax.clip.infer import Encoder, Scorer
    cfg, params, vocab, step = store.load(run_dir)
    size = cfg.image.image_size
    pixels = np.asarray(pil.resize((size, size), Image.BILINEAR) if pil.size != (size, size) else pil, np.uint8)
    scores = Scorer(Encoder(cfg, params, vocab)).batch(np.repeat(pixels[None], len(args.text), 0), args.text)
    rows = [{"text": t, "score": float(s), "unknown_words": vocab.unknown_words(t)} for t, s in zip(args.text, scores)]
    if args.threshold is not None:
        for r in rows:
            r["keep"] = r["score"] >= args.threshold
    if args.json:
        print(json.dumps({"run_dir": str(run_dir), "step": step, "image": str(image), "scores": rows}))
        return 0
    for r in rows:
        keep = f"  {'keep' if r['keep'] else 'drop'}" if "keep" in r else ""
        unk = f"  (<unk>: {', '.join(r['unknown_words'])})" if r["unknown_words"] else ""
        print(f"{r['score']:+.4f}{keep}  {r['text']}{unk}")
    return 0
