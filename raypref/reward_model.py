"""A VisionPrefer / ImageReward-style reward model: a vision-language backbone, fused image-text
features, an overall head and one head per aspect. No Ray here.

Backbone (``kind``):
- 'film': an open_clip text tower whose embedding conditions a conv image tower trained from
  scratch (raypref.reward_film): early fusion, for attribute binding.
- 'open_clip': an open_clip model by reference (built-in name + pretrained tag, 'hf-hub:...' or
  'local-dir:/path', as actors/clip_score.py loads it). The image and text embeddings (unit norm)
  are fused as [img, txt, img * txt].
- 'blip': a transformers BLIP image-text-matching checkpoint by hub name or path
  (raypref.reward_blip): the text encoder cross-attends to the image patches, ImageReward's fused
  feature.
The backbone's feature goes through LayerNorm -> Linear -> GELU (a shared trunk), then a linear
overall head and one linear head per aspect; each outputs a scalar reward.

Export (``save``): a directory with
    reward_config.json   format tag, backbone kind and source, heads, aspects, preprocessing
    model.safetensors    every weight: backbone.* and the heads
    backbone/            open_clip: open_clip_config.json (architecture and preprocessing);
                         blip: config.json and the BlipProcessor's files; weights are in model.safetensors
``RewardModel.load(dir)`` rebuilds it with no network and no pickle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from raypref import schema as S

ASPECTS = ("prompt_following", "fidelity", "aesthetic", "harmlessness")  # VisionPrefer's rubric
CONFIG_FILE = "reward_config.json"
WEIGHTS_FILE = "model.safetensors"
BACKBONE_DIR = "backbone"
FORMAT = "raypref-reward-model"
FREEZE_MODES = ("none", "all", "all_but_last")
# open_clip parameters after a tower's blocks (final norm, projection): trainable with its last blocks
_TOWER_OUTPUTS = {"ln_post", "proj", "ln_final", "text_projection"}
# open_clip parameters the reward never uses: always frozen (DDP rejects unused trainable ones)
_UNUSED = {"logit_scale", "logit_bias"}


class OpenClipBackbone(nn.Module):
    kind = "open_clip"
    fusion = "layernorm([img, txt, img*txt]) -> linear -> gelu"

    def __init__(self, clip, preprocess, tokenizer, model_cfg: dict, source: str):
        super().__init__()
        self.clip = clip
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.model_cfg = model_cfg
        self.source = source
        self.embed_dim = int(model_cfg["embed_dim"])
        self.feature_dim = 3 * self.embed_dim
        for name, p in clip.named_parameters():
            if name.split(".")[-1] in _UNUSED:
                p.requires_grad_(False)

    @classmethod
    def from_ref(cls, ref: str, pretrained: str | None = None) -> "OpenClipBackbone":
        import open_clip

        from raypref.models import open_clip_model

        clip, preprocess, cfg = open_clip_model(ref, pretrained)
        if cfg is None:
            raise ValueError(f"reward backbone {ref!r}: open_clip has no config for it")
        source = ref + (f" (pretrained={pretrained})" if pretrained else "")
        return cls(clip, preprocess, open_clip.get_tokenizer(ref), cfg, source)

    @classmethod
    def from_export(cls, d: Path, source: str, preprocess: dict | None = None) -> "OpenClipBackbone":
        import open_clip

        from raypref.models import quiet_missing_weights

        ref = "local-dir:" + str(d)
        # the weights are the reward model's safetensors, loaded next (RewardModel.load)
        with quiet_missing_weights():
            clip, _, preprocess = open_clip.create_model_and_transforms(ref, load_weights=False, pretrained_text=False)
        return cls(clip, preprocess, open_clip.get_tokenizer(ref), open_clip.get_model_config(ref), source)

    def save_arch(self, d: Path) -> None:
        """open_clip_config.json (and an HF tokenizer's files, for towers that use one)."""
        from open_clip.tokenizer import HFTokenizer

        d.mkdir(parents=True, exist_ok=True)
        cfg = {"model_cfg": self.model_cfg, "preprocess_cfg": self.preprocess_cfg()}
        (d / "open_clip_config.json").write_text(json.dumps(cfg, indent=2))
        if isinstance(self.tokenizer, HFTokenizer):
            self.tokenizer.tokenizer.save_pretrained(str(d))

    def inputs(self, images: Sequence, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """PIL images and prompts -> (pixels, tokens) on the CPU."""
        return torch.stack([self.preprocess(im) for im in images]), self.tokenizer(list(prompts))

    def forward(self, pixels: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        img = nn.functional.normalize(self.clip.encode_image(pixels).float(), dim=-1)
        txt = nn.functional.normalize(self.clip.encode_text(tokens).float(), dim=-1)
        return img, txt

    def features(self, pixels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        img, txt = self(pixels, tokens)
        return torch.cat([img, txt, img * txt], dim=-1)

    def preprocess_cfg(self) -> dict:
        return dict(self.clip.visual.preprocess_cfg)

    def text_inputs(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts -> tokens, as inputs() makes them (for images that are tensors, not PIL)."""
        return self.tokenizer(list(prompts))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each transformer block in the backward pass (open_clip's own switch, non-reentrant)."""
        for tower in (getattr(self.clip, "visual", None), getattr(self.clip, "text", None)):
            if tower is not None and hasattr(tower, "set_grad_checkpointing"):
                tower.set_grad_checkpointing(enable)
        if getattr(self.clip, "transformer", None) is not None:
            self.clip.transformer.grad_checkpointing = enable

    def freeze(self, mode: str, unfrozen_blocks: int = 1) -> None:
        """'none': all trainable; 'all': none; 'all_but_last': the last ``unfrozen_blocks``
        residual blocks of each tower and what follows them (final norm, projection)."""
        if mode not in FREEZE_MODES:
            raise ValueError(f"reward.freeze: {mode!r} is not one of {FREEZE_MODES}")
        if mode == "none":
            return
        self.clip.requires_grad_(False)
        if mode == "all":
            return
        for name, module in self.clip.named_modules():
            if name.endswith("resblocks") and isinstance(module, nn.ModuleList) and unfrozen_blocks > 0:
                for block in module[-unfrozen_blocks:]:
                    block.requires_grad_(True)
        for name, p in self.clip.named_parameters():
            if set(name.split(".")) & _TOWER_OUTPUTS:
                p.requires_grad_(True)


def _backbone_class(kind: str, what: str = "reward.backbone_kind") -> type:
    if kind == "open_clip":
        return OpenClipBackbone
    if kind == "blip":
        from raypref.reward_blip import BlipBackbone

        return BlipBackbone
    if kind == "film":
        from raypref.reward_film import FilmBackbone

        return FilmBackbone
    raise ValueError(f"{what}: {kind!r} is not supported (open_clip, blip, film)")


class RewardModel(nn.Module):
    def __init__(self, backbone: nn.Module, aspects: Sequence[str] = ASPECTS, hidden: int = 256):
        super().__init__()
        self.backbone = backbone
        self.aspects = tuple(aspects)
        self.hidden = hidden
        d = backbone.feature_dim
        self.trunk = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, hidden), nn.GELU())
        self.overall = nn.Linear(hidden, 1)
        self.aspect_heads = nn.ModuleDict({a: nn.Linear(hidden, 1) for a in self.aspects})

    @classmethod
    def create(cls, backbone: str, pretrained: str | None = None, aspects: Sequence[str] = ASPECTS, hidden: int = 256,
               freeze: str = "none", unfrozen_blocks: int = 1, kind: str = "open_clip",
               film: dict | None = None) -> "RewardModel":
        """``film``: the FiLM tower's settings (raypref.reward_film), for kind='film' only."""
        bb = _backbone_class(kind).from_ref(backbone, pretrained, **({"film": film} if kind == "film" else {}))
        bb.freeze(freeze, unfrozen_blocks)
        return cls(bb, aspects, hidden)

    def forward(self, pixels: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """{'': overall reward (B,), aspect: reward (B,) for each aspect}."""
        h = self.trunk(self.backbone.features(pixels, tokens))
        out = {"": self.overall(h).squeeze(-1)}
        out.update({a: head(h).squeeze(-1) for a, head in self.aspect_heads.items()})
        return out

    def _scratch(self) -> list[nn.Parameter]:
        """Backbone parameters that start untrained (the FiLM tower): they learn at the heads' rate."""
        return list(getattr(self.backbone, "scratch_parameters", list)())

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("backbone.")] + self._scratch()

    def backbone_parameters(self) -> list[nn.Parameter]:
        scratch = {id(p) for p in self._scratch()}
        return [p for p in self.backbone.parameters() if p.requires_grad and id(p) not in scratch]

    def pixels_from_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """RGB images in [0, 1], (B, 3, H, W) -> the backbone's pixels, differentiably (reward feedback
        learning backpropagates through it), as its PIL preprocessing makes them (raypref.pixels)."""
        from raypref.pixels import preprocess_cfg_pixels

        return preprocess_cfg_pixels(self.backbone.preprocess_cfg(), images)

    @torch.no_grad()
    def score(self, images: Sequence, prompts: Sequence[str], batch_size: int = 64) -> dict[str, np.ndarray]:
        """Rewards of PIL images for their prompts: {'': overall, aspect: ...}, float32 arrays."""
        self.eval()
        device = next(self.parameters()).device
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("",) + self.aspects}
        for i in range(0, len(images), batch_size):
            pix, tok = self.backbone.inputs(images[i:i + batch_size], prompts[i:i + batch_size])
            for k, v in self(pix.to(device), tok.to(device)).items():
                parts[k].append(v.float().cpu().numpy())
        return {k: (np.concatenate(v) if v else np.zeros(0)).astype(np.float32) for k, v in parts.items()}

    def config(self) -> dict:
        return {
            "format": FORMAT,
            "version": 1,
            "backbone": {"kind": self.backbone.kind, "source": self.backbone.source, "dir": BACKBONE_DIR,
                         "embed_dim": self.backbone.embed_dim},
            "fusion": self.backbone.fusion,
            "hidden": self.hidden,
            "heads": ["overall", *self.aspects],
            "aspects": list(self.aspects),
            "preprocess": self.backbone.preprocess_cfg(),
        }

    def save(self, d: str | Path) -> Path:
        from safetensors.torch import save_file

        d = Path(d)
        d.mkdir(parents=True, exist_ok=True)
        self.backbone.save_arch(d / BACKBONE_DIR)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(d / WEIGHTS_FILE), metadata={"format": FORMAT})
        (d / CONFIG_FILE).write_text(json.dumps(self.config(), indent=2) + "\n")
        return d

    @classmethod
    def load(cls, d: str | Path, device: str | torch.device = "cpu") -> "RewardModel":
        from safetensors.torch import load_file

        d = Path(d)
        cfg_path = d / CONFIG_FILE
        if not cfg_path.is_file():
            raise FileNotFoundError(f"reward model: no {CONFIG_FILE} in {d} (export one with `raypref train reward`)")
        cfg = json.loads(cfg_path.read_text())
        if cfg.get("format") != FORMAT:
            raise ValueError(f"reward model {cfg_path}: format {cfg.get('format')!r}, expected {FORMAT!r}")
        bb = cfg["backbone"]
        backbone = _backbone_class(bb["kind"], f"reward model {cfg_path}: backbone kind")
        model = cls(backbone.from_export(d / bb["dir"], bb["source"], cfg.get("preprocess")), cfg["aspects"], cfg["hidden"])
        model.load_state_dict(load_file(str(d / WEIGHTS_FILE)))
        return model.to(device).eval()

    def load_weights(self, d: str | Path) -> None:
        """Load an export's weights into this (same-architecture) model: resuming a run."""
        from safetensors.torch import load_file

        self.load_state_dict(load_file(str(Path(d) / WEIGHTS_FILE)))


def preference_targets(chosen: Sequence[float], rejected: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-aspect Bradley-Terry targets from one aspect's scores of both images of each pair:
    1.0 where chosen scored higher, 0.0 where lower, 0.5 where equal (a tie: trained towards equal
    rewards, see losses.bradley_terry_loss); weight 0 (masked out) where either score is NaN."""
    c = np.asarray(chosen, dtype=np.float64)
    r = np.asarray(rejected, dtype=np.float64)
    known = ~(np.isnan(c) | np.isnan(r))
    target = np.where(c > r, 1.0, np.where(c < r, 0.0, 0.5))
    return np.where(known, target, 0.5).astype(np.float32), known.astype(np.float32)


def aspect_score_columns(scorer: str, aspects: Sequence[str]) -> list[str]:
    """The pairs table's score columns that label each aspect: score_<scorer>_<aspect>."""
    return [S.score_column(scorer, a) for a in aspects]


def batch_targets(batch: dict, aspect_columns: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(overall label (B,), aspect targets (B, A), aspect mask (B, A)) from a numpy batch of pairs;
    aspects are None when there are no aspect columns."""
    label = torch.as_tensor(np.asarray(batch[S.LABEL], dtype=np.float32))
    if not aspect_columns:
        return label, None, None
    pairs = [preference_targets(batch[S.chosen_column(c)], batch[S.rejected_column(c)]) for c in aspect_columns]
    target = torch.as_tensor(np.stack([t for t, _ in pairs], axis=1))
    mask = torch.as_tensor(np.stack([m for _, m in pairs], axis=1))
    return label, target, mask
