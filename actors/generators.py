"""Generators: diffusers text-to-image pipelines (Stable Diffusion 1.x / 2.x, SDXL) that append N
samples to each prompt group.

On a cluster pass a hub name (e.g. 'stable-diffusion-v1-5/stable-diffusion-v1-5') or a local
pipeline directory; the pipeline is loaded once per actor with from_pretrained.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import torch
from pydantic import NonNegativeFloat, PositiveInt

from raypref import images as I
from raypref import quarantine as Q
from raypref import schema as S
from raypref.models import check_model_ref
from raypref.registry import checked_args
from raypref.scoring import pick_device

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def sample_seed(base_seed: int, pid: str, index: int) -> int:
    """Per-sample seed: the same prompt, base seed and index give the same image everywhere."""
    return int(S.stable_id("seed", base_seed, pid, index), 16) % (2**31 - 1)


def _list_column(values: list[list], typ: pa.DataType) -> pa.Array:
    return pa.array(values, type=pa.list_(typ))


class DiffusersGenerator:
    # the ranges GeneratorConf declares, here too: a generator built directly (or from a conf copied past
    # validation) has no config to check them, and took num_samples: 0 unchecked
    @checked_args("generator")
    def __init__(
        self,
        model: str,
        name: str = "sd",
        lora: str | None = None,
        unet: str | None = None,
        num_samples: PositiveInt = 8,
        num_inference_steps: PositiveInt = 20,
        guidance_scale: float = 7.5,
        height: PositiveInt | None = None,
        width: PositiveInt | None = None,
        embedding_noise_sigma: NonNegativeFloat = 0.0,
        seed: int = 0,
        dtype: Literal["float32", "float16", "bfloat16"] = "float32",
        num_gpus: float = 0.0,
    ):
        from diffusers import DiffusionPipeline
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()  # per-actor load bars drown the stage progress

        check_model_ref(model, what=f"generator {name!r} model")
        self.device = pick_device(num_gpus)
        parts = {}
        if unet:  # a full fine-tune's UNet in place of the pipeline's own
            from diffusers import UNet2DConditionModel

            check_model_ref(unet, what=f"generator {name!r} unet")
            parts["unet"] = UNet2DConditionModel.from_pretrained(unet, dtype=_DTYPES[dtype])
        self.pipe = DiffusionPipeline.from_pretrained(model, dtype=_DTYPES[dtype], **parts)
        if lora:
            check_model_ref(lora, what=f"generator {name!r} lora")
            self.pipe.load_lora_weights(lora)
        self.pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.name, self.n = name, num_samples
        self.steps, self.guidance = num_inference_steps, guidance_scale
        self.height, self.width = height, width
        self.sigma, self.seed = embedding_noise_sigma, seed

    @torch.no_grad()
    def _embeds(self, prompts: list[str], seeds: list[int]) -> dict:
        """The pipeline's own prompt encoding of self.n samples a prompt (in order), as keyword
        arguments of its __call__: SD's encode_prompt gives (prompt_embeds, negative_prompt_embeds),
        SDXL's also the two pooled embeddings (called with keywords: SDXL's takes prompt_2 second)."""
        out = self.pipe.encode_prompt(
            prompt=prompts, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=self.guidance > 1.0
        )
        if len(out) not in (2, 4):
            raise ValueError(f"generator {self.name!r}: {type(self.pipe).__name__}.encode_prompt gave {len(out)} "
                             "outputs; generators support Stable Diffusion 1.x / 2.x and SDXL pipelines")
        names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
        kw = dict(zip(names, out))
        if self.sigma > 0:
            # AGFSync: a prompt's samples see its embedding plus N(0, sigma^2) noise, seeded per
            # sample, all but the first, which keeps the clean embedding (as AGFSync's released
            # generator does); on SDXL the pooled embedding too, as there
            gens = [torch.Generator().manual_seed(s ^ 0x5EED) for s in seeds]
            clean = torch.tensor([i % self.n == 0 for i in range(len(seeds))])
            for key in ("prompt_embeds", "pooled_prompt_embeds")[:len(out) // 2]:
                x = kw[key]
                noise = torch.stack([torch.randn(x.shape[1:], generator=g) for g in gens])
                noise[clean] = 0
                kw[key] = x + self.sigma * noise.to(x.device, x.dtype)
        return kw

    def __call__(self, batch: pa.Table) -> pa.Table:
        pids = batch.column(S.PROMPT_ID).to_pylist()
        prompts = batch.column(S.PROMPT).to_pylist()
        flat_prompts, seeds = [], []
        for pid, prompt in zip(pids, prompts):
            for i in range(self.n):
                flat_prompts.append(prompt)
                seeds.append(sample_seed(self.seed, pid + "|" + self.name, i))
        out = self.pipe(
            **self._embeds(flat_prompts, seeds),
            num_inference_steps=self.steps,
            guidance_scale=self.guidance,
            height=self.height,
            width=self.width,
            generator=[torch.Generator().manual_seed(s) for s in seeds],
            output_type="pil",
        )
        # a pipeline's safety checker (SD 1.x ships one) blanks the images it flags: black images
        # would be scored, paired and trained on (and win on some scores), so they are left out
        # of their group and noted for the quarantine table instead
        flagged = getattr(out, "nsfw_content_detected", None) or [False] * len(seeds)
        keep = [not f for f in flagged]
        encoded = [I.encode(im) for im, k in zip(out.images, keep) if k]
        kept_seeds = [s for s, k in zip(seeds, keep) if k]
        counts = [sum(keep[r * self.n:(r + 1) * self.n]) for r in range(len(pids))]
        new = sample_columns(pids, self.name, counts, kept_seeds, encoded, self.steps, self.guidance, self.sigma)
        batch = append_samples(batch, new, counts)
        if all(keep):
            return batch
        notes = [[Q.note("generate", S.sample_id(pid, self.name, seeds[i]),
                         f"safety checker: generator {self.name!r} blanked the image, left out")
                  for i in range(r * self.n, (r + 1) * self.n) if not keep[i]] for r, pid in enumerate(pids)]
        return Q.add_notes(batch, notes)


def sample_columns(pids: list[str], name: str, n: int | list[int], seeds: list[int], encoded: list[bytes], steps: int,
                   guidance: float, sigma: float) -> dict[str, list]:
    """A generator's new samples as append_samples takes them: n per prompt id (or n[i] for the
    i-th), in order."""
    k = len(seeds)
    return {
        S.SAMPLE_ID: [S.sample_id(pid, name, s) for pid, s in zip(np.repeat(pids, n), seeds)],
        S.GENERATOR: [name] * k,
        S.SEED: seeds,
        S.STEPS: [steps] * k,
        S.GUIDANCE: [guidance] * k,
        S.NOISE_SIGMA: [sigma] * k,
        S.IMAGE: encoded,
    }


def append_samples(batch: pa.Table, new: dict[str, list], n: int | list[int]) -> pa.Table:
    """Append n new samples per group (or n[i] to the i-th) to the group's list columns (creating
    them if absent), so several generator pools can each add their samples to the same row."""
    fields = {f.name: f.type for f in S.SAMPLE_FIELDS}
    per = np.broadcast_to(np.asarray(n), batch.num_rows)
    ends = np.cumsum(per)
    starts = ends - per
    for name in S.SAMPLE_LIST_FIELDS:
        chunks = [new[name][a:b] for a, b in zip(starts, ends)]
        if name in batch.column_names:
            old = batch.column(name).to_pylist()
            chunks = [a + b for a, b in zip(old, chunks)]
            batch = batch.drop_columns([name])
        batch = batch.append_column(name, _list_column(chunks, fields[name]))
    return batch
