"""``sklearn_digits``: a TFDS dataset of the 1,797 8×8 handwritten digits that scikit-learn ships.

Real images that need no download (UCI's optical digits, 16-level grey, as bundled in scikit-learn's
``datasets/data/digits.csv.gz``: 64 pixel values then the label per row). The file is found through
scikit-learn's installed package directory without importing scikit-learn. About 20% of the images,
chosen by a stable hash of the row number, form the ``test`` split. Written as ``array_record`` and read
back with ``as_data_source`` (no TensorFlow needed).
"""
from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from lineage_jax.config.errors import MissingFileError
from lineage_jax.data.stdlib_docs import stable_unit_hash

TEST_FRACTION = 0.2


def digits_csv() -> Path:
    """scikit-learn's bundled digits file; a one-line error naming the fix when scikit-learn is absent."""
    spec = importlib.util.find_spec("sklearn")
    path = None if spec is None or not spec.submodule_search_locations else \
        Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    if path is None or not path.is_file():
        raise MissingFileError("the digits images ship with scikit-learn, which is not installed: "
                               "pip install scikit-learn (only its bundled data file is read)")
    return path


def read_digits(path: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images [1797, 8, 8] uint8 in 0 … 16, labels [1797] int) from the CSV."""
    with gzip.open(path or digits_csv(), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return table[:, :64].reshape(-1, 8, 8).astype(np.uint8), table[:, 64]


def is_test(index: int) -> bool:
    return stable_unit_hash(f"digits-{index}") < TEST_FRACTION


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
    """The 8×8 handwritten digits bundled with scikit-learn; train/test by a stable hash of the row."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "1,797 images, 20% test by row-number hash."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description="UCI optical handwritten digits, 8×8, 16 grey levels, as bundled with scikit-learn.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                "label": tfds.features.ClassLabel(num_classes=10)}),
            supervised_keys=("image", "label"), disable_shuffling=True,
            homepage="https://archive.ics.uci.edu/dataset/80")

    def _split_generators(self, dl_manager):
        del dl_manager   # nothing to download
        images, labels = read_digits()
        return {"train": self._generate_examples(images, labels, test=False),
                "test": self._generate_examples(images, labels, test=True)}

    def _generate_examples(self, images, labels, test: bool):
        for i, (image, label) in enumerate(zip(images, labels)):
            if is_test(i) == test:
                yield i, {"image": image[..., None], "label": int(label)}


def load_digits(data_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train": (images [N, 8, 8, 1] uint8, labels [N]), "test": …}, prepared under ``data_dir`` on first use."""
    builder = SklearnDigits(data_dir=str(data_dir), file_format="array_record")
    if not builder.is_prepared():
        tfds.display_progress_bar(False)
        builder.download_and_prepare()
    out = {}
    for split in ("train", "test"):
        source = builder.as_data_source(split)
        rows = [source[i] for i in range(len(source))]
        out[split] = (np.stack([r["image"] for r in rows]), np.array([r["label"] for r in rows], np.int32))
    return out
