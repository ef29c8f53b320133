"""``captioned_shapes``: image-caption pairs rendered here, deterministically, for CLIP-style training.

Each 32×32 RGB image holds one shape (circle, square, triangle) of one colour (red, green, blue,
yellow) and size (small, large) at a random place on black; its caption is "a {size} {colour}
{shape}". Four (colour, shape) combinations are **held out**: they never occur in ``train`` (nor in
a train caption), only in the ``heldout`` split, while every colour and every shape does occur in
training with other partners, so zero-shot accuracy there measures composition. In ``train`` a
fraction of the pairs (``MISMATCH``) get another training pair's caption, flagged ``mismatched = 1``:
the noise that CLIP-score filtering (Schuhmann et al. 2022, LAION-5B) should remove. ``test`` holds
clean pairs of the training combinations. Every example depends only on (split, index): a NumPy
generator seeded by both. Written as ``array_record``, read with ``as_data_source`` (no TensorFlow).
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

SIZE = 32
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 90, 230), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 5, "large": 9}                      # half-width in pixels
HELD_OUT = frozenset({("red", "triangle"), ("green", "circle"), ("blue", "square"), ("yellow", "circle")})
TRAIN_COMBOS = tuple(c for c in itertools.product(COLOURS, SHAPES) if c not in HELD_OUT)
MISMATCH = 0.1
SPLITS = {"train": 0, "test": 1, "heldout": 2}


def caption(size: str, colour: str, shape: str) -> str:
    return f"a {size} {colour} {shape}"


def render(colour: str, shape: str, size: str, cx: int, cy: int) -> np.ndarray:
    """[SIZE, SIZE, 3] uint8: the shape centred at (cx, cy) in its colour on black."""
    r = SIZES[size]
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        mask = dx * dx + dy * dy <= r * r
    elif shape == "square":
        mask = (np.abs(dx) <= r) & (np.abs(dy) <= r)
    else:                                              # apex up: |dx| grows with dy from the apex
        mask = (dy >= -r) & (dy <= r) & (np.abs(dx) * 2 <= (dy + r))
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    img[mask] = COLOURS[colour]
    return img


def example(split: str, index: int) -> dict:
    """The index-th pair of a split: image, caption, attributes, and whether the caption is planted noise."""
    rng = np.random.default_rng([SPLITS[split], index, 22])
    combos = sorted(HELD_OUT) if split == "heldout" else TRAIN_COMBOS
    colour, shape = combos[rng.integers(len(combos))]
    size = ("small", "large")[rng.integers(2)]
    r = SIZES[size]
    cx, cy = (int(v) for v in rng.integers(r, SIZE - r, size=2))
    text = caption(size, colour, shape)
    mismatched = split == "train" and rng.random() < MISMATCH
    if mismatched:                                     # another training combination's caption, never a held-out one
        others = [c for c in TRAIN_COMBOS if c != (colour, shape)]
        c2, s2 = others[rng.integers(len(others))]
        text = caption(size, c2, s2)
    return {"image": render(colour, shape, size, cx, cy), "caption": text, "colour": colour, "shape": shape,
            "size": size, "mismatched": int(mismatched)}


class CaptionedShapesConfig(tfds.core.BuilderConfig):
    def __init__(self, *, sizes: dict[str, int], **kw):
        super().__init__(**kw)
        self.sizes = sizes


class CaptionedShapes(tfds.core.GeneratorBasedBuilder):
    """Rendered coloured shapes with captions; held-out attribute combinations; planted mismatched pairs."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "one shape per image; 4 held-out (colour, shape) pairs; 10% mismatched train pairs."}
    BUILDER_CONFIGS = [CaptionedShapesConfig(name="default", sizes={"train": 4000, "test": 500, "heldout": 500}),
                       CaptionedShapesConfig(name="tiny", sizes={"train": 300, "test": 40, "heldout": 60})]

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(SIZE, SIZE, 3), dtype=np.uint8),
                "caption": tfds.features.Text(),
                "colour": tfds.features.ClassLabel(names=list(COLOURS)),
                "shape": tfds.features.ClassLabel(names=list(SHAPES)),
                "size": tfds.features.ClassLabel(names=list(SIZES)),
                "mismatched": tfds.features.Scalar(dtype=np.int64)}),
            disable_shuffling=True)

    def _split_generators(self, dl_manager):
        del dl_manager   # rendered here: nothing to download
        return {split: self._generate_examples(split, n) for split, n in self.builder_config.sizes.items()}

    def _generate_examples(self, split: str, n: int):
        for i in range(n):
            yield i, example(split, i)


def load_shapes(data_dir: str | Path, config: str = "default") -> dict[str, dict[str, np.ndarray]]:
    """{split: {"image": [N, 32, 32, 3] uint8, "caption": [N] str, "colour"/"shape"/"size": [N] ids,
    "mismatched": [N]}}, prepared under ``data_dir`` on first use."""
    builder = CaptionedShapes(config=config, data_dir=str(data_dir), file_format="array_record")
    if not builder.is_prepared():
        tfds.display_progress_bar(False)
        builder.download_and_prepare()
    out = {}
    for split in SPLITS:
        source = builder.as_data_source(split)
        rows = [source[i] for i in range(len(source))]
        out[split] = {k: np.stack([r[k] for r in rows]) for k in ("image", "colour", "shape", "size", "mismatched")}
        out[split]["caption"] = np.array([r["caption"].decode() if isinstance(r["caption"], bytes) else r["caption"]
                                          for r in rows])
    return out
