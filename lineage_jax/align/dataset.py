"""``align_toy``: the toy task (``align.task``) as a TFDS dataset, and its rows as token arrays.

Each row holds a prompt, one crowd demonstration (for SFT) and one comparison pair ordered by the
noisy Bradley–Terry labeller (for the reward model and DPO). Generated from a seed, so nothing is
downloaded; written as ``array_record`` and read back with ``as_data_source`` (no TensorFlow needed),
like ``lineage_jax/data/digits.py``.

``encode`` lays a (prompt, response) pair out as one right-padded row: prompt ids, response ids,
end-of-text, zeros; ``mask`` is 1 on the response tokens and the end-of-text (what SFT, the reward and
the policy's log-probability are about) and 0 on the prompt and padding.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from lineage_jax.align import task

SPLITS = {"train": (0, 4000), "test": (1, 500)}   # split -> (seed, rows)
FIELDS = ("prompt", "demonstration", "chosen", "rejected")


class AlignToy(tfds.core.GeneratorBasedBuilder):
    """Synthetic instructions with crowd demonstrations and noisily labelled comparison pairs."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "rev/sort/dup over 3-4 letter words; labeller temperature 0.5."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description="lineage_jax alignment toy task: demonstrations and Bradley-Terry labelled pairs.",
            features=tfds.features.FeaturesDict({k: tfds.features.Text() for k in FIELDS}),
            disable_shuffling=True)

    def _split_generators(self, dl_manager):
        del dl_manager   # nothing to download
        return {name: self._generate_examples(seed, n) for name, (seed, n) in SPLITS.items()}

    def _generate_examples(self, seed: int, n: int):
        for i, row in enumerate(task.examples(seed, n)):
            yield i, row


def load(data_dir: str | Path, split: str) -> list[dict[str, str]]:
    """The rows of ``split`` (prepared under ``data_dir`` on first use) as dicts of str."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: allowed {', '.join(SPLITS)}")
    builder = AlignToy(data_dir=str(data_dir), file_format="array_record")
    if not builder.is_prepared():
        tfds.display_progress_bar(False)
        builder.download_and_prepare()
    source = builder.as_data_source(split)
    text = lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v)   # noqa: E731
    return [{k: text(source[i][k]) for k in FIELDS} for i in range(len(source))]


def encode(tokenizer, prompts, responses, length: int) -> dict[str, np.ndarray]:
    """{"tokens" int32 [N, length], "mask" float32 [N, length], "lengths" int32 [N], "prompt_lengths" int32 [N]}:
    prompt + response + end-of-text, right-padded with 0; mask 1 on response and end-of-text tokens."""
    N = len(prompts)
    tokens, mask = np.zeros((N, length), np.int32), np.zeros((N, length), np.float32)
    lengths, plens = np.zeros(N, np.int32), np.zeros(N, np.int32)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        pi, ri = tokenizer.encode(p), tokenizer.encode(r) + [tokenizer.eos_id]
        if len(pi) + len(ri) > length:
            raise ValueError(f"prompt {p!r} + response {r!r} take {len(pi) + len(ri)} tokens; "
                             f"the sequence length is {length}")
        tokens[i, :len(pi) + len(ri)] = pi + ri
        mask[i, len(pi):len(pi) + len(ri)] = 1.0
        lengths[i], plens[i] = len(pi) + len(ri), len(pi)
    return {"tokens": tokens, "mask": mask, "lengths": lengths, "prompt_lengths": plens}


def encode_prompts(tokenizer, prompts, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(prompt ids right-padded [N, length], lengths [N]) for generation."""
    out, lens = np.zeros((len(prompts), length), np.int32), np.zeros(len(prompts), np.int32)
    for i, p in enumerate(prompts):
        ids = tokenizer.encode(p)
        out[i, :len(ids)], lens[i] = ids, len(ids)
    return out, lens


def decode_response(tokenizer, tokens, start: int, eos_id: int) -> str:
    """The text of one row's response: ids from ``start`` up to (not including) the first end-of-text."""
    ids = [int(t) for t in tokens[start:]]
    if eos_id in ids:
        ids = ids[:ids.index(eos_id)]
    return tokenizer.decode(ids)
