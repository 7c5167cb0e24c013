"""FiLM backbone for the reward model: the prompt's open_clip text embedding conditions a small
conv image tower (Perez et al. 2018, "FiLM: Visual Reasoning with a General Conditioning Layer").
No Ray here.

Why it exists: the open_clip backbone fuses two global embeddings ([img, txt, img*txt]), which
cannot say *which* object has which colour, count or place; FiLM lets the prompt steer every conv
block, so the image is read for what this prompt asks. In the shapes world it is level with the
open_clip backbone on the held-out eval pairs (README, "Reward models", measured).

Each block: conv -> ReLU -> conv -> GroupNorm (no affine) -> x (1 + gamma(t)) + beta(t) -> ReLU,
added to its input; gamma and beta are linear in the unit-norm text embedding t. The input gets two
coordinate channels (x, y in [-1, 1]) so positions and relations are readable. The tower is
trained from scratch; the text tower is open_clip's (any open_clip reference, e.g. shapes:clip) and
``freeze`` applies to it alone. The image tower of that CLIP is dropped: it is never used.
The feature is [max-pool, mean-pool, t] of the last block, into RewardModel's trunk and heads.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
from torch import nn

from raypref.reward_model import OpenClipBackbone

FILM_FILE = "film_config.json"  # in the export's backbone/ dir, beside open_clip_config.json


class FilmBlock(nn.Module):
    def __init__(self, width: int, text_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        groups = next(g for g in (8, 4, 2, 1) if width % g == 0)
        self.norm = nn.GroupNorm(groups, width, affine=False)
        self.film = nn.Linear(text_dim, 2 * width)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.film(t).chunk(2, dim=-1)
        h = self.norm(self.conv2(torch.relu(self.conv1(x))))
        return x + torch.relu(h * (1 + gamma[:, :, None, None]) + beta[:, :, None, None])


class FilmTower(nn.Module):
    """Stem (two convs, the second with ``stride``), ``blocks`` FiLM blocks with one 2x max-pool half-way.
    Stride 1 keeps the blocks at full resolution: about 2.7x the compute, for pixel-sized decisions."""

    def __init__(self, text_dim: int, width: int = 32, blocks: int = 4, coords: bool = True, stride: int = 2):
        super().__init__()
        if width < 1 or blocks < 1 or stride not in (1, 2):
            raise ValueError(f"reward.film: width and blocks must be >= 1 and stride 1 or 2, got width={width}, "
                             f"blocks={blocks}, stride={stride}")
        self.coords = coords
        self.stem = nn.Sequential(nn.Conv2d(3 + 2 * coords, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1, stride=stride), nn.ReLU())
        self.blocks = nn.ModuleList(FilmBlock(width, text_dim) for _ in range(blocks))
        self.pool_after = blocks // 2 - 1  # -1 (no pool) for a single block

    def forward(self, pixels: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = pixels
        if self.coords:
            b, _, h, w = x.shape
            ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
            xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype).view(1, 1, 1, w).expand(b, 1, h, w)
            x = torch.cat([x, xs, ys], dim=1)
        h = self.stem(x)
        for i, block in enumerate(self.blocks):
            h = block(h, t)
            if i == self.pool_after:
                h = nn.functional.max_pool2d(h, 2)
        return torch.cat([h.amax(dim=(2, 3)), h.mean(dim=(2, 3))], dim=-1)


# the tower's settings and their defaults, read off its signature (text_dim comes from the CLIP)
DEFAULTS = {k: p.default for k, p in inspect.signature(FilmTower).parameters.items() if k != "text_dim"}


class FilmBackbone(OpenClipBackbone):
    kind = "film"
    fusion = "FiLM: the text embedding scales and shifts each conv block; [max-pool, mean-pool, txt]"

    def __init__(self, clip, preprocess, tokenizer, model_cfg: dict, source: str, film: dict | None = None):
        self._preprocess_cfg = dict(clip.visual.preprocess_cfg)
        clip.visual = None  # the reward reads images with the FiLM tower only
        super().__init__(clip, preprocess, tokenizer, model_cfg, source)
        unknown = set(film or {}) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"reward.film: unknown keys {sorted(unknown)} (known: {sorted(DEFAULTS)})")
        self.film_cfg = {**DEFAULTS, **(film or {})}
        self.tower = FilmTower(self.embed_dim, **self.film_cfg)
        self.feature_dim = 2 * self.film_cfg["width"] + self.embed_dim

    @classmethod
    def from_ref(cls, ref: str, pretrained: str | None = None, film: dict | None = None) -> "FilmBackbone":
        base = OpenClipBackbone.from_ref(ref, pretrained)
        return cls(base.clip, base.preprocess, base.tokenizer, base.model_cfg, base.source, film)

    @classmethod
    def from_export(cls, d: Path, source: str, preprocess: dict | None = None) -> "FilmBackbone":
        base = OpenClipBackbone.from_export(d, source, preprocess)
        film = json.loads((Path(d) / FILM_FILE).read_text())
        return cls(base.clip, base.preprocess, base.tokenizer, base.model_cfg, source, film)

    def save_arch(self, d: Path) -> None:
        super().save_arch(d)
        (d / FILM_FILE).write_text(json.dumps(self.film_cfg, indent=2))

    def preprocess_cfg(self) -> dict:
        return dict(self._preprocess_cfg)

    def scratch_parameters(self) -> list[nn.Parameter]:
        """The conv tower starts untrained: RewardModel trains it at the heads' learning rate."""
        return list(self.tower.parameters())

    def features(self, pixels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        txt = nn.functional.normalize(self.clip.encode_text(tokens).float(), dim=-1)
        return torch.cat([self.tower(pixels.float(), txt), txt], dim=-1)
