"""Train the shipped language-ID model (``lineage_jax/data/pipeline/langid_model.json``).

The text is ``scripts/langid_text/<label>.txt``, one sentence per line, written for this
project: en de fr es it nl pt, and ``other`` (sentences of other languages). Every fifth
sentence (line 5, 10, …) is held out: it is never trained on, and its accuracy is printed.

    python scripts/train_langid.py            # writes the model, prints held-out accuracy
    python scripts/train_langid.py --check    # exit 1 if the shipped model differs from a retrain
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lineage_jax.data.pipeline import langid

TEXT_DIR = Path(__file__).resolve().with_name("langid_text")
HOLDOUT_EVERY = 5


def read_corpus(text_dir: Path = TEXT_DIR) -> dict[str, tuple[list[str], list[str]]]:
    """{label: (train sentences, held-out sentences)}."""
    out = {}
    for path in sorted(text_dir.glob("*.txt")):
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        held = [s for i, s in enumerate(lines, start=1) if i % HOLDOUT_EVERY == 0]
        out[path.stem] = ([s for i, s in enumerate(lines, start=1) if i % HOLDOUT_EVERY != 0], held)
    return out


def build_model(corpus=None) -> dict:
    corpus = read_corpus() if corpus is None else corpus
    return langid.train({lab: tr for lab, (tr, _) in corpus.items()})


def heldout_accuracy(ident: langid.LanguageIdentifier, corpus=None) -> dict[str, float]:
    """Sentence-level accuracy on the held-out sentences, per label and overall."""
    corpus = read_corpus() if corpus is None else corpus
    acc, right, total = {}, 0, 0
    for lab, (_, held) in corpus.items():
        ok = sum(ident.predict(s) == lab for s in held)
        acc[lab] = ok / len(held)
        right, total = right + ok, total + len(held)
    acc["all"] = right / total
    return acc


def dumps(model: dict) -> str:
    return json.dumps(model, ensure_ascii=False, separators=(",", ":"), sort_keys=True) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="compare with the shipped model instead of writing it")
    args = p.parse_args(argv)
    corpus = read_corpus()
    model = build_model(corpus)
    text = dumps(model)
    if args.check:
        same = langid.MODEL_PATH.read_text(encoding="utf-8") == text
        print("shipped model matches a retrain" if same else "shipped model differs from a retrain")
        return 0 if same else 1
    langid.MODEL_PATH.write_text(text, encoding="utf-8")
    acc = heldout_accuracy(langid.LanguageIdentifier(model), corpus)
    n_train = sum(len(tr) for tr, _ in corpus.values())
    n_held = sum(len(h) for _, h in corpus.values())
    print(f"wrote {langid.MODEL_PATH.name} ({len(text) / 1024:.0f} KiB, {len(model['counts'])} n-grams) from "
          f"{n_train} sentences; held-out accuracy on {n_held} sentences: {acc['all']:.3f} "
          + " ".join(f"{k}={v:.2f}" for k, v in acc.items() if k != "all"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
