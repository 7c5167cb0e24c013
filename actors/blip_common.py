"""The set-up the BLIP generating scorers share (captioner, TIFA VQA): the
processor and the model from one checkpoint, greedy generation settings."""

from __future__ import annotations

from raypref.scoring import pick_device


def load_blip(scorer: str, model: str, model_cls, num_gpus: float, max_new_tokens: int, num_beams: int,
              batch_size: int):
    """(device, BlipProcessor, model in eval mode, generate kwargs) for scorer ``scorer``."""
    import torch
    from transformers import BlipProcessor

    from raypref.models import check_model_ref

    ref = check_model_ref(model, what=f"scorer {scorer!r} model")
    device = pick_device(num_gpus)
    processor = BlipProcessor.from_pretrained(ref)
    # float32 whatever the checkpoint stores: the processor's pixels are float32, and transformers
    # would keep an fp16-saved model in fp16
    net = model_cls.from_pretrained(ref, dtype=torch.float32).to(device).eval()
    return device, processor, net, {"max_new_tokens": max_new_tokens, "num_beams": num_beams, "do_sample": False}
