"""The scorer interface: load once in __init__, __call__(groups batch) adds score list columns.

A scorer subclass implements ``score(images, prompts)``, returning one value per image: a float32
array, or a dict {aspect: array} whose "" entry is the main score (column ``score_<name>``) and
whose other entries become ``score_<name>_<aspect>`` columns; a "rationale" entry (one string per
image) becomes the ``rationale_<name>`` column. NaN marks a value the scorer could not give
(counted in the build summary, never paired on). The base class handles the prompt-group rows
the build pipeline streams: it flattens every group's images into one call, then splits the
scores back into a list column per group.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from raypref import images as I
from raypref import schema as S


class Scorer:
    def __init__(self, name: str):
        self.name = name
        self.column = S.score_column(name)

    def score(self, images: list, prompts: list[str]) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def __call__(self, batch: pa.Table) -> pa.Table:
        images_col = batch.column(S.IMAGE).to_pylist()
        prompts_col = batch.column(S.PROMPT).to_pylist()
        flat_images, flat_prompts, counts = [], [], []
        for imgs, prompt in zip(images_col, prompts_col):
            counts.append(len(imgs))
            flat_images.extend(I.decode(b) for b in imgs)
            flat_prompts.extend([prompt] * len(imgs))
        out = self.score(flat_images, flat_prompts) if flat_images else np.zeros(0, np.float32)
        outputs = out if isinstance(out, dict) else {"": out}
        if "" not in outputs:
            raise ValueError(f"scorer {self.name!r} returned aspects {sorted(outputs)} but no main score ('')")
        offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
        for aspect, vals in outputs.items():
            text = aspect == "rationale"
            values = pa.array(list(vals), pa.string()) if text else pa.array(np.asarray(vals, dtype=np.float32))
            if len(values) != len(flat_images):
                raise ValueError(f"scorer {self.name!r} returned {len(values)} {aspect or 'score'} values for {len(flat_images)} images")
            column = S.rationale_column(self.name) if text else S.score_column(self.name, aspect)
            if column in batch.column_names:
                raise ValueError(f"two scorers write {column!r}: scorer names must be unique")
            batch = batch.append_column(column, pa.ListArray.from_arrays(offsets, values))
        return batch


def pick_device(num_gpus: float = 0.0) -> str:
    import torch

    return "cuda" if torch.cuda.is_available() and num_gpus > 0 else "cpu"
