"""LoRA on a diffusers UNet through peft, saved and loaded in the format diffusers'
``pipe.load_lora_weights`` reads (pytorch_lora_weights.safetensors)."""

from __future__ import annotations

from pathlib import Path

LORA_FILE = "pytorch_lora_weights.safetensors"


def add_lora(unet, rank: int, alpha: float, targets: list[str]):
    from peft import LoraConfig

    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=targets))
    params = [p for p in unet.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"train.lora_targets {targets} matched no UNet module")
    return params


def save_lora(unet, out_dir: str | Path) -> Path:
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    # the adapter's config (alpha above all) goes in the file's metadata: without it diffusers
    # loads the weights with alpha = rank, at another strength than they trained at
    StableDiffusionPipeline.save_lora_weights(str(out), unet_lora_layers=layers, safe_serialization=True,
                                              unet_lora_adapter_metadata=unet.peft_config["default"].to_dict())
    return out / LORA_FILE


def load_lora_into(unet, lora_dir: str | Path) -> None:
    """Load saved LoRA weights into a UNet that already has the adapter (for resume)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils import set_peft_model_state_dict

    state, _ = StableDiffusionPipeline.lora_state_dict(str(lora_dir))
    unet_state = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
    result = set_peft_model_state_dict(unet, convert_unet_state_dict_to_peft(unet_state), adapter_name="default")
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"{lora_dir}: LoRA keys do not match the UNet: {unexpected[:3]}...")
