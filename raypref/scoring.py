"""The scorer interface: load once in __init__, __call__(groups batch) adds one score list column.

A scorer subclass implements ``score(images, prompts) -> float32 array``, one value per image.
The base class handles the prompt-group rows the build pipeline streams: it flattens every
group's images into one call, then splits the scores back into a list column per group.
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
        values = np.asarray(self.score(flat_images, flat_prompts), dtype=np.float32) if flat_images else np.zeros(0, np.float32)
        if values.shape != (len(flat_images),):
            raise ValueError(f"scorer {self.name!r} returned shape {values.shape} for {len(flat_images)} images")
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        col = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.float32()))
        if self.column in batch.column_names:
            raise ValueError(f"two scorers write {self.column!r}: scorer names must be unique")
        return batch.append_column(self.column, col)


def pick_device(num_gpus: float = 0.0) -> str:
    import torch

    return "cuda" if torch.cuda.is_available() and num_gpus > 0 else "cpu"
