"""What a diffusion fine-tune trains (train.finetune): a LoRA on the UNet, or every UNet weight.

Both write the same places: a checkpoint holds ``export_name(finetune)`` and the run exports it to
<output_dir>/train/<that>. A LoRA is in the format diffusers' ``load_lora_weights`` reads; a full
fine-tune is a diffusers UNet directory (config.json + safetensors) that ``UNet2DConditionModel.
from_pretrained`` loads and a generator's ``unet`` key puts in place of the pipeline's own.
"""

from __future__ import annotations

import copy
from pathlib import Path

from raypref.lora import LORA_FILE

FINETUNES = ("lora", "full")
_EXPORTS = {"lora": ("lora", LORA_FILE), "full": ("unet", "diffusion_pytorch_model.safetensors")}


def export_name(finetune: str) -> str:
    """The directory a checkpoint and the export keep the trained weights in: lora or unet."""
    return _EXPORTS[_check(finetune)][0]


def export_file(finetune: str) -> str:
    """The weights file inside export_name(finetune)."""
    return _EXPORTS[_check(finetune)][1]


def _check(finetune: str) -> str:
    if finetune not in FINETUNES:
        raise ValueError(f"train.finetune must be one of {FINETUNES}, got {finetune!r}")
    return finetune


def make_trainable(unet, c: dict, reference: bool):
    """(trainable params, frozen reference UNet or None). LoRA: the adapter's weights, and no copy, since
    the reference is the same UNet with the adapter off. Full: every weight, and when ``reference``
    (DPO) a frozen copy taken before training moves them, in bf16 when c["precision"] is bf16."""
    if _check(c.get("finetune", "lora")) == "lora":
        from raypref.lora import add_lora

        return add_lora(unet, c["lora_rank"], c["lora_alpha"], c["lora_targets"]), None
    frozen = copy.deepcopy(unet).requires_grad_(False).eval() if reference else None
    if frozen is not None and c.get("precision") == "bf16":
        import torch

        # under bf16 autocast its matrix products run in bf16 anyway: a bf16 copy gives them the same
        # weights at half the memory (Wallace et al. keep their reference in fp16)
        frozen.to(torch.bfloat16)
    unet.requires_grad_(True)
    return list(unet.parameters()), frozen


class Reference:
    """The DPO reference's prediction, ref(x_t, t, **unet kwargs) -> tensor: the frozen copy (``frozen``) when
    there is one, else the same UNet with its adapter switched off for the call."""

    def __init__(self, unet, frozen):
        self.unet, self.frozen = unet, frozen

    def __call__(self, *a, **kw):
        if self.frozen is not None:
            return self.frozen(*a, **kw).sample
        self.unet.disable_adapters()
        try:
            return self.unet(*a, **kw).sample
        finally:
            self.unet.enable_adapters()


# diffusers shards a UNet over 10 GB (SDXL's in fp32) by default; one file keeps the export's
# path the same for every model (run summaries and eval name it)
_ONE_SHARD = "1000GB"


def save_trained(unet, ckpt_dir: str | Path, finetune: str) -> Path:
    """Write the trained weights into ``ckpt_dir``/export_name(finetune); the file's path."""
    out = Path(ckpt_dir) / export_name(finetune)
    if finetune == "lora":
        from raypref.lora import save_lora

        return save_lora(unet, out)
    unet.save_pretrained(str(out), safe_serialization=True, max_shard_size=_ONE_SHARD)
    return out / export_file(finetune)


def _read_unet_weights(src: Path, finetune: str) -> dict:
    """A full fine-tune's state dict: its one safetensors file, or every shard its index names
    (how diffusers saves a large UNet, e.g. a checkpoint written before _ONE_SHARD)."""
    import json

    from safetensors.torch import load_file

    one = src / export_file(finetune)
    index = src / (export_file(finetune) + ".index.json")
    if one.is_file() or not index.is_file():
        return load_file(str(one))
    state = {}
    for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
        state.update(load_file(str(src / shard)))
    return state


def load_trained(unet, ckpt_dir: str | Path, finetune: str) -> None:
    """Put a checkpoint's trained weights back into a UNet made ready by make_trainable (resume)."""
    src = Path(ckpt_dir) / export_name(finetune)
    if finetune == "lora":
        from raypref.lora import load_lora_into

        load_lora_into(unet, src)
        return
    missing, unexpected = unet.load_state_dict(_read_unet_weights(src, finetune), strict=False)
    if missing or unexpected:
        raise ValueError(f"{src}: UNet weights do not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
