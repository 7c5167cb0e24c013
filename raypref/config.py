"""Typed, documented configuration, loaded from YAML with dotted command-line overrides.

One experiment is one ``Config``: the stages (build, train, eval) each read their own section.
``raypref config --doc`` prints every field with its description.
"""

from __future__ import annotations

import copy
import json
import shutil
import os
import re
import subprocess
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, get_origin

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from raypref import schema as S
from raypref.difference_text import DEFAULT_INSTRUCTION, NEEDS_SERVER, check_instruction
from raypref.judge_http import HttpJudgeConf
from raypref.parquet_read import V1_READ_MAX_MB

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "demo.yaml"


class ConfigError(ValueError):
    """A config file, key or value is wrong; the message names it."""


_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _local_path(p: str | None) -> str | None:
    # a URI would be taken as a relative directory named 's3:' on each node, silently
    if p is not None and (m := _URI.match(p)):
        raise ValueError(f"a URI ({m.group(0)}...); outputs go to a filesystem path. On a cluster, use one every node "
                         "mounts (NFS, EFS, a ReadWriteMany volume, or an object store mounted as a filesystem)")
    return p


LocalPath = Annotated[str, AfterValidator(_local_path)]

# raypref.shapes.world.SPLITS, spelt here so that loading a config does not import the shapes world (a test
# checks that the two agree)
SHAPES_SPLITS = ("train", "heldout", "align", "eval")


def _prompts_source(p: str | None) -> str | None:
    # a 'shapes:' split needs no file to check: a typo fails at config load, naming the key
    if p is not None and p.startswith("shapes:"):
        unknown = [s for s in p[len("shapes:"):].split("+") if s not in SHAPES_SPLITS]
        if unknown:
            raise ValueError(f"{p!r}: unknown shapes split {unknown[0]!r} (known: {', '.join(SHAPES_SPLITS)}; "
                             "a union such as 'shapes:train+align')")
    return p


PromptsSource = Annotated[str, AfterValidator(_prompts_source)]


class _Strict(BaseModel):
    # Unknown keys are errors: a typo must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RayConf(_Strict):
    address: str | None = Field(
        None,
        description="Ray cluster to join ('auto', 'ray://host:10001', ...). None: the RAY_ADDRESS "
        "environment variable if set, else a new local Ray.",
    )
    num_cpus: int | None = Field(None, description="CPUs for a new local Ray (None: all).")
    include_dashboard: bool = Field(True, description="Start the dashboard with a local Ray, on dashboard_host. Ray's state API needs it, and Ray Train polls that API (without it, a training run logs 'Failed to query Ray Train Controller actor state' about once a second).")
    dashboard_host: str = Field(
        "127.0.0.1", description="Dashboard bind address; loopback unless you open it on purpose."
    )
    parquet_footer_actors: int | None = Field(
        1, ge=1, description="Footer-reader actors Ray Data's Parquet reader (V2, Ray 2.60's default) "
        "starts for each read, set through RAY_DATA_PARQUET_FOOTER_NUM_ACTORS in the driver. Ray's "
        "default, 32, made every read of a small local table take about 4 s more on a 2-core machine "
        "(benchmarks/parquet_read.py). Raise it to list very many files on cloud storage in parallel; "
        "None leaves Ray's default (or the variable as set).",
    )
    v1_read_max_mb: float = Field(
        V1_READ_MAX_MB, ge=0, description="Parquet inputs on local disk under this many MiB in all are read with Ray "
        "Data's V1 reader, which starts no footer-reader actor: read -> map -> write of a 0.2 MiB table took 1.16 s "
        "with V2 and 0.55 s with V1 here (benchmarks/parquet_read.py; README, Ray Data's Parquet reader). Larger or "
        "remote inputs use the DataContext's reader (V2 by default); 0: always the DataContext's.",
    )
    data_context: dict[str, Any] = Field(
        default_factory=dict,
        description="Ray Data DataContext attributes set in the driver before any stage reads, e.g. "
        "{target_max_block_size: 134217728} or {use_datasource_v2: false} for Ray Data's V1 Parquet reader.",
    )


class PoolConf(_Strict):
    """One Ray Data actor pool: its size, batch size and per-actor resources."""

    concurrency: int = Field(1, ge=1, description="Number of actors in the pool.")
    batch_size: int = Field(4, ge=1, description="Rows per call (prompts for generators, prompt groups for scorers).")
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per actor (fractional allowed).")
    num_gpus: float = Field(0.0, ge=0, description="GPUs reserved per actor (fractional allowed, e.g. 0.25).")


class GeneratorConf(_Strict):
    name: str = Field("sd", description="Generator name recorded in the 'generator' column.")
    cls: str = Field("diffusers", description="Actor class: registry name (diffusers, shapes_render) or 'module:Class' import path.")
    model: str = Field("", description="Hub name (e.g. 'stable-diffusion-v1-5/stable-diffusion-v1-5') or local directory; "
                       "empty for a generator that loads none (shapes_render).")
    lora: str | None = Field(None, description="Optional LoRA weights directory loaded with load_lora_weights.")
    unet: str | None = Field(None, description="Optional fine-tuned UNet directory (diffusers format, e.g. a full "
                             "fine-tune's train/unet) that replaces the pipeline's own.")
    num_samples: int = Field(8, ge=1, description="Images per prompt (N).")
    num_inference_steps: int = Field(20, ge=1, description="Denoising steps.")
    guidance_scale: float = Field(7.5, description="Classifier-free guidance scale.")
    # ge=1: 0 was read as the default only by the generators' `width or default`; shapes_render now refuses it
    height: int | None = Field(None, ge=1, description="Image height in pixels (None: the model's default).")
    width: int | None = Field(None, ge=1, description="Image width in pixels (None: the model's default).")
    embedding_noise_sigma: float = Field(
        0.0, ge=0, description="AGFSync: std of Gaussian noise added to the prompt embedding (SDXL: and "
        "the pooled one) of each sample but a prompt's first, which keeps the clean embedding (AGFSync's "
        "released generator; its default is 0.1)."
    )
    seed: int = Field(0, description="Base seed; per-sample seeds derive from it and the prompt id.")
    dtype: Literal["float32", "float16", "bfloat16"] = Field("float32", description="Weights dtype.")
    args: dict[str, Any] = Field(default_factory=dict, description="Extra keyword arguments for the actor "
                                 "(shapes_render: true_renders, kinds).")
    pool: PoolConf = Field(default_factory=PoolConf)


class ScorerConf(_Strict):
    name: str = Field(..., description="Scorer name; its column is 'score_<name>'.")
    cls: str = Field(..., description="Actor class: registry name (clip_score, jpeg_compressibility) or 'module:Class'.")
    model: str = Field("", description="Weights: hub name, open_clip name, or 'local-dir:/path'.")
    pretrained: str | None = Field(None, description="open_clip pretrained tag or weights file, for built-in names.")
    weight: float = Field(1.0, description="Weight in the aggregate score.")
    normalize: Literal["raw", "rescale100", "zscore", "rank"] = Field(
        "raw", description="Normalisation before weighting: raw, rescale100 (needs value_range), per-prompt zscore or rank."
    )
    value_range: tuple[float, float] | None = Field(None, description="[lo, hi] of the raw score, for rescale100.")
    args: dict[str, Any] = Field(default_factory=dict, description="Extra keyword arguments for the actor.")
    pool: PoolConf = Field(default_factory=PoolConf)

    @model_validator(mode="after")
    def _range_for_rescale(self):  # else the aggregate fails only after every image is made and scored
        if self.normalize == "rescale100":
            if self.value_range is None:
                raise ValueError(f"scorer {self.name!r}: normalize rescale100 needs value_range: [lo, hi]")
            lo, hi = self.value_range
            if not hi > lo:
                raise ValueError(f"scorer {self.name!r}: value_range must have hi > lo, got [{lo}, {hi}]")
        return self


class PairConf(_Strict):
    strategy: Literal["best_vs_worst", "top_k_vs_bottom_k", "all_pairs"] = Field(
        "best_vs_worst", description="How pairs are formed per prompt: best_vs_worst (AGFSync), top_k_vs_bottom_k "
        "(k x k pairs) or all_pairs (every two samples, n(n-1)/2).")
    k: int = Field(2, ge=1, description="For top_k_vs_bottom_k: how many of the best and of the worst samples pair up.")
    min_margin: float = Field(0.0, ge=0, description="Drop strict pairs whose score margin is below this.")
    tie_tolerance: float = Field(0.0, ge=0, description="Scores this close (or closer) are tied.")
    keep_ties: bool = Field(False, description="Keep tied pairs with label 0.5 (chosen = earlier sample) instead of dropping them.")
    generator_rule: Literal["any", "across", "within"] = Field(
        "any", description="Pair any two samples of a prompt, only samples of different generators (across), or of the same one (within).")
    on: str | None = Field(
        None, description="Pair on this one score column (e.g. 'score_judge_fidelity' for per-aspect pairs) "
        "instead of the weighted aggregate of build.scorers.")

class BuildConf(_Strict):
    prompts: PromptsSource = Field("", description="Prompts file: .txt (one per line), .jsonl or .parquet with a 'prompt' column; or 'shapes:<split>' (train, align, eval), or a union such as 'shapes:train+align'.")
    generators: list[GeneratorConf] = Field(
        default_factory=lambda: [GeneratorConf()], description="Generators; one actor pool each, each appends samples."
    )
    shard_size: int = Field(64, ge=1, description="Prompts per input shard: the unit of parallel reading, writing and resume, unless a pool's batch_size is larger (Ray Data then joins shards into that pool's batches, which become the unit; the build warns).")
    scorers: list[ScorerConf] = Field(default_factory=list, description="Judges; one actor pool each.")
    pairs: PairConf = Field(default_factory=PairConf)
    limit: int | None = Field(None, description="Use only the first N prompts.")
    task_cpus: float = Field(0.5, gt=0, description="CPUs per Ray Data task for the cheap stages (pairing, writing).")

    @model_validator(mode="after")
    def _unique_scorers(self):  # two scorers of one name would write one column (caught only mid-build)
        names = [s.name for s in self.scorers]
        if len(set(names)) != len(names):
            raise ValueError(f"scorer names must be unique (each names its score column), got {names}")
        # score_<a>_x reads as an aspect of scorer a: a name that extends another by '_' is ambiguous
        clash = [(a, b) for a in names for b in names if b.startswith(a + "_")]
        if clash:
            a, b = clash[0]
            raise ValueError(f"scorer name {b!r} extends {a!r} by '_': its column {S.score_column(b)!r} would read as an "
                             f"aspect of {a!r}; rename one (e.g. without the '_')")
        on = self.pairs.on
        if on and names and not any(on == S.score_column(n) or on.startswith(S.score_column(n) + "_") for n in names):
            raise ValueError(f"pairs.on: {on!r} is no scorer's column (score_<name> or score_<name>_<aspect>, "
                             f"scorers: {names})")
        return self


class _RayTrainScale(_Strict):
    """Ray Train scaling: shared by every training section."""

    num_workers: int = Field(1, ge=1, description="Ray Train data-parallel workers.")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs per worker (Ray sets the worker's torch threads from it).")
    use_gpu: bool = Field(False, description="One GPU per worker.")
    max_failures: int = Field(
        0, ge=-1, description="Times Ray Train restarts the workers after one fails (an error, an out-of-memory kill, a "
        "lost node), each time from the latest checkpoint; -1: without limit. 0: a failure ends the run, and a rerun "
        "resumes it. An input error is retried like any other before it is reported. (Preempted nodes are retried "
        "either way: Ray Train's default.)")


class _StepConf(_Strict):
    """How an optimizer step is taken: shared by the DPO and reward-model loops (raypref.train_step)."""

    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="Forward compute precision: fp32, or bf16 autocast (weights, gradients and optimizer "
        "state stay fp32; bf16 needs no loss scaling). For GPUs with bf16 (Ampere and later); on a CPU it pays only "
        "where the CPU has bf16 instructions and the model is large (benchmarks/train_step_memory.py measures it).")
    grad_accum_steps: int = Field(
        1, ge=1, description="Micro-batches of batch_size pairs per optimizer step (gradient accumulation): each "
        "step learns from batch_size x grad_accum_steps x num_workers pairs; DDP all-reduces once per step. "
        "max_steps and the *_every keys count optimizer steps.")


class ReflConf(_Strict):
    """Reward feedback learning (`raypref train refl`; raypref.train_refl): the UNet learns from a
    differentiable scorer's gradient on the images it draws."""

    scorer: str = Field("", description="Name of the build scorer whose score is raised; its class must have "
                        "differentiable_score: clip_score, aesthetic, pickscore, hpsv2, image_reward, or reward_model "
                        "(a `raypref train reward` export).")
    head: str = Field("", description="Which of the scorer's outputs is the reward: '' the main score, or an aspect (a reward model's prompt_following, ...).")
    prompts: PromptsSource | None = Field(None, description="Prompts file or 'shapes:<split>' the images are drawn for (None: build.prompts).")
    limit: int | None = Field(None, ge=1, description="Use only the first N prompts.")
    sampler: Literal["ddpm", "ddim"] = Field(
        "ddpm", description="How each drawing is sampled: ddpm (ancestral, stochastic; ImageReward's ReFL scripts) or "
        "ddim (deterministic, as raypref's generators draw), with the pipeline's own scheduler config.")
    num_inference_steps: int | None = Field(40, ge=1, description="Sampling steps of each drawing (ImageReward: 40; None: build.generators[0]'s).")
    guidance_scale: float | None = Field(
        1.0, description="Classifier-free guidance of each drawing (1: none, one UNet call a step, as ImageReward's "
        "ReFL scripts draw; None: build.generators[0]'s).")
    last_steps: tuple[int, int] = Field(
        (1, 10), description="[lo, hi]: the step that gets the gradient is drawn uniformly among the last lo..hi "
        "steps (1 = the last); the steps before it run without gradient, and its x0 prediction is decoded and "
        "scored (ImageReward uses the last 10 of 40).")
    margin: float = Field(2.0, description="phi(r) = ReLU(margin - r): rewards above the margin give no gradient. "
                          "2 suits ImageReward's normalised reward; set it above the scorer's range to raise every "
                          "reward (e.g. 100 for clip_score, 100 x cosine).")
    weight: float = Field(1e-3, gt=0, description="lambda, the reward loss's scale (ImageReward's grad scale).")
    pretrain_weight: float = Field(
        0.0, ge=0, description="ImageReward's L_pre: > 0 adds, to every ReFL micro-batch, a micro-batch of the plain "
        "denoising loss on pretrain_samples' images, times this weight, which holds the model near that data "
        "(the two gradients are averaged). 0: ReFL alone.")
    pretrain_samples: str | None = Field(None, description="Samples Parquet dir (sample_id, prompt and image columns) of "
                                         "pretrain_weight's denoising loss (None: this run's build/samples).")


class TrainConf(_RayTrainScale, _StepConf):
    pairs: str | None = Field(None, description="Pairs Parquet dir (None: this run's build/pairs).")
    base_model: str | None = Field(None, description="Diffusers pipeline dir or hub name (None: build.generators[0].model).")
    method: Literal["dpo", "sft", "refl"] = Field("dpo", description="Training objective, set by the command that runs: dpo (`raypref train dpo`, on pairs), sft (`raypref train sft`, on the top images of the samples table) or refl (`raypref train refl`, on prompts, from a scorer's gradient).")
    samples: str | None = Field(None, description="sft: samples Parquet dir, with sample_id, prompt_id, prompt, image and the train.sft_score column (None: this run's build/samples).")
    sft_score: str = Field(S.SCORE, description="sft: the samples column the images are ranked by (the build's aggregate 'score', or one scorer's 'score_<name>').")
    sft_top_p: float = Field(0.1, gt=0, le=1, description="sft: keep exactly the top ceil(p * n) images by sft_score over the whole table (n: images with a finite score; ties at the cut by sample_id).")
    sft_per_prompt: int | None = Field(None, ge=1, description="sft: first keep only each prompt's best k images by sft_score (ties by sample_id), then the top p of those; 1 is the self-reward authors' best-of-N per prompt. None: the top p over all images.")
    finetune: Literal["lora", "full"] = Field(
        "lora", description="What trains: lora (an adapter on lora_targets; the DPO reference is the same UNet with "
        "the adapter off; exports train/lora) or full (every UNet weight; the DPO reference is a frozen copy, so the "
        "UNet's weights are held twice and AdamW keeps two moments per weight; exports train/unet).")
    refl: ReflConf = Field(default_factory=ReflConf, description="refl: the reward model and how images are drawn.")
    beta: float = Field(5000.0, gt=0, description="Diffusion-DPO beta (Wallace et al. use 5000 for SD1.5).")
    lora_rank: int = Field(4, ge=1, description="LoRA rank.")
    lora_alpha: float = Field(4.0, gt=0, description="LoRA alpha.")
    lora_targets: list[str] = Field(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"], description="UNet modules that get LoRA."
    )
    learning_rate: float | None = Field(
        None, gt=0, description="Peak learning rate. None: 1e-4 for a LoRA, 1e-5 for a full fine-tune (Wallace et al. "
        "trained the whole SD1.5 UNet at 1e-8 x their batch of 2048 pairs, about 2e-5, after 500 warm-up steps).")
    lr_schedule: Literal["constant", "constant_with_warmup", "linear", "cosine"] = Field(
        "constant", description="Learning-rate schedule over max_steps (diffusers.optimization.get_scheduler); "
        "Wallace et al. use constant_with_warmup.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps of the schedule (ignored by 'constant'; "
                              "Wallace et al.: 500 for SD1.5, 200 for SDXL).")
    optimizer: Literal["adamw", "adafactor"] = Field(
        "adamw", description="adamw (torch's, weight decay 0.01), or adafactor (transformers' Adafactor at the set "
        "learning rate: no relative step or parameter scaling, update clipping at 1.0, no first moment and a factored "
        "second one, so far less optimizer state; Wallace et al. use it for SDXL).")
    batch_size: int = Field(4, ge=1, description="Pairs (dpo), images (sft) or prompts (refl) per worker per micro-batch (one step: grad_accum_steps of them).")
    max_steps: int = Field(100, ge=1, description="Optimizer steps in total.")
    checkpoint_every: int = Field(25, ge=1, description="Steps between checkpoints.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the trained weights' gradient norm to this, as Wallace et al. and the diffusers scripts do (None: no clipping).")
    shuffle_buffer: int = Field(
        256, ge=0, description="Ray Data local shuffle buffer per worker (rows: pairs, images or prompts), reseeded "
        "every epoch, so that a batch mixes prompts (a build writes each prompt's pairs together) and the epochs' "
        "batches differ. 0: file order, the same batches every epoch.")
    empty_prompt_fraction: float = Field(
        0.0, ge=0, lt=1, description="dpo, sft: the share of training rows whose prompt is replaced by '' (drawn per "
        "row from the training seed), so the model keeps its unconditional prediction for classifier-free guidance; "
        "Wallace et al. use 0.2. refl: unused.")
    hflip: float = Field(
        0.0, ge=0, le=1, description="dpo, sft (and refl's pretraining images): the probability that a training row is "
        "mirrored left-right, a pair's two images together (drawn per row from the training seed), with the prompt's "
        "hflip_swap words swapped to match, so a prompt that names a side stays true. 0: off. (Wallace et al.'s "
        "train.py mirrors each image on its own with probability 0.5 unless --no_hflip, and leaves the prompt as it is.)")
    hflip_swap: dict[str, str] = Field(default_factory=lambda: {"left": "right", "right": "left"},
                                       description="Whole words swapped in the prompt of a mirrored row (hflip).")
    gradient_checkpointing: bool = Field(
        False, description="Recompute the UNet's activations in the backward pass instead of keeping them "
        "(diffusers' enable_gradient_checkpointing; in refl also the VAE decode it backpropagates through): less "
        "memory, more compute, the same gradients.")
    seed: int = Field(0, description="Training seed (noise, timesteps, shuffling, dropped prompts, mirroring).")
    cache_pairs_max_mb: float = Field(
        1024.0, ge=0, description="Pairs whose Parquet files total less than this are read once into Ray's object "
        "store (each epoch of a small dataset would otherwise restart the streaming read); larger ones stream.")

    @property
    def lr(self) -> float:
        """learning_rate, or its default for what trains (resolved where it is used, so a config
        dumped and edited, as a sweep point is, still gets the default of its own finetune)."""
        if self.learning_rate is not None:
            return self.learning_rate
        return 1e-4 if self.finetune == "lora" else 1e-5

    def dump(self, **kw) -> dict:
        """model_dump (``kw``: its arguments) with learning_rate resolved (lr): what a loop trains with
        and a resume compares."""
        return {**self.model_dump(**kw), "learning_rate": self.lr}


class EvalConf(_Strict):
    prompts: PromptsSource = Field("", description="Held-out prompts file, or 'shapes:eval'.")
    limit: int | None = Field(None, description="Use only the first N prompts.")
    lora: str | None = Field(None, description="LoRA to evaluate (None: this run's train/lora when train.finetune is lora).")
    unet: str | None = Field(None, description="Fine-tuned UNet directory to evaluate instead of a LoRA (None: this "
                             "run's train/unet when train.finetune is full).")
    num_samples: int = Field(2, ge=1, description="Images per prompt per model, same seeds for base and tuned.")
    scorer: str = Field("", description="Name of a build scorer used to judge base vs tuned.")
    tie_tolerance: float = Field(1e-6, ge=0, description="Scores closer than this count as a tie.")
    shard_size: int = Field(16, ge=1, description="Prompts per shard: the unit written, and skipped by a resumed eval, unless the generator's or scorer's pool.batch_size is larger (then that batch is; an eval that generates warns).")


_SHAPES_SPLITS = "^({0})(\\+({0}))*$".format("|".join(SHAPES_SPLITS))


class PretrainT2IConf(_RayTrainScale):
    """Pretraining the shapes world's text-to-image model (VAE, then UNet + text encoder)."""

    split: str = Field("train", pattern=_SHAPES_SPLITS,
                       description="Shapes-world prompt split rendered as training data (train, heldout, align, eval), or a union such as 'train+align'.")
    image_size: int = Field(32, ge=8, description="Image side in pixels (latents are half).")
    hidden: int = Field(32, ge=8, description="Text encoder width = UNet cross-attention width.")
    unet_channels: list[int] = Field(default_factory=lambda: [32, 64, 64], description="UNet block widths, one per resolution level.")
    unet_attention: list[bool] = Field(default_factory=lambda: [False, True, True], description="Which levels have self/cross-attention (full resolution costs most on a CPU).")
    text_layers: int = Field(2, ge=1, description="Text encoder transformer layers.")
    max_length: int = Field(16, ge=4, description="Tokenizer / text encoder context (shapes prompts need <= 12 tokens).")
    beta_schedule: str = Field("linear", description="Noise schedule (diffusers name) of the saved scheduler.")
    beta_start: float = Field(1e-4, gt=0, description="First beta of the noise schedule.")
    beta_end: float = Field(0.02, gt=0, description="Last beta of the noise schedule.")
    vae_steps: int = Field(400, ge=0, description="VAE reconstruction steps (phase 1).")
    vae_lr: float = Field(2e-3, gt=0, description="VAE AdamW learning rate.")
    vae_kl_weight: float = Field(1e-6, ge=0, description="KL weight of the VAE loss.")
    unet_steps: int = Field(3000, ge=0, description="Denoising steps for UNet + text encoder (phase 2).")
    learning_rate: float = Field(1e-3, gt=0, description="Phase-2 peak AdamW learning rate (cosine after warmup).")
    warmup_steps: int = Field(100, ge=0, description="Linear warmup steps of both phases.")
    ema_decay: float = Field(0.995, ge=0, lt=1, description="EMA decay of the phase-2 weights that are saved (0: no EMA).")
    cfg_dropout: float = Field(0.1, ge=0, le=1, description="Fraction of prompts replaced by '' so guidance works.")
    batch_size: int = Field(48, ge=1, description="Images per worker per step.")
    checkpoint_every: int = Field(500, ge=1, description="Steps between checkpoints (each phase).")
    seed: int = Field(0, description="Initialisation and data seed.")
    export_dir: LocalPath | None = Field(None, description="Where the StableDiffusionPipeline directory goes (None: <output_dir>/pretrain/sd).")


class PretrainClipConf(_RayTrainScale):
    """Contrastive pretraining of the shapes world's tiny open_clip model."""

    split: str = Field("train", pattern=_SHAPES_SPLITS,
                       description="Shapes-world prompt split rendered as training data (train, heldout, align, eval), or a union such as 'train+align'.")
    image_size: int = Field(32, ge=8, description="Image side in pixels.")
    embed_dim: int = Field(64, ge=8, description="Joint embedding width.")
    vision_width: int = Field(64, ge=8, description="ViT width.")
    patch_size: int = Field(4, ge=1, description="ViT patch size.")
    text_width: int = Field(32, ge=8, description="Text transformer width.")
    layers: int = Field(2, ge=1, description="Layers of each tower.")
    context_length: int = Field(16, ge=4, description="Text context length.")
    steps: int = Field(1500, ge=1, description="Optimizer steps.")
    learning_rate: float = Field(1e-3, gt=0, description="Peak AdamW learning rate (cosine after warmup).")
    warmup_steps: int = Field(100, ge=0, description="Linear warmup steps.")
    batch_size: int = Field(64, ge=2, description="Image-text pairs per worker per step (in-batch negatives, distinct prompts).")
    checkpoint_every: int = Field(500, ge=1, description="Steps between checkpoints.")
    seed: int = Field(0, description="Initialisation and data seed.")
    export_dir: LocalPath | None = Field(None, description="Where the open_clip directory goes (None: <output_dir>/pretrain/clip).")


class PretrainConf(_Strict):
    t2i: PretrainT2IConf = Field(default_factory=PretrainT2IConf)
    clip: PretrainClipConf = Field(default_factory=PretrainClipConf)


class RepairConf(_Strict):
    groups: str | None = Field(
        None, description="Stored groups to re-pair with build.scorers' weights and build.pairs (None: this run's build/groups)."
    )


class RankConf(_Strict):
    """Quality-aware pair ranking: keep the global top p% of a pairs dataset by a quality metric."""

    input: str | None = Field(None, description="Pairs Parquet dir to rank (None: this run's build/pairs).")
    metric: str = Field(
        "margin", description="Quality metric: margin, chosen_quality, combined, agreement, random (a seeded random subset, the baseline; metric_args {seed: 0}) (raypref.quality), or 'module:function'."
    )
    metric_args: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of the metric, e.g. {column: score_clip} or {margin_weight: 1, chosen_weight: 0.5}."
    )
    top_p: float = Field(0.0533, gt=0, le=1, description="Fraction of the pairs with a valid (non-NaN) quality to keep, exactly ceil(p * n).")
    output: str = Field("pairs", description="Subdirectory of <output_dir>/rank for the selected pairs.")
    batch_mb: float = Field(256.0, gt=0, description="Approximate uncompressed size of one batch of rows read at a time (bounds memory).")


class FilmConf(_Strict):
    """The FiLM image tower of reward.backbone_kind=film (raypref.reward_film), trained from scratch."""

    width: int = Field(32, ge=1, description="Channels of every conv block.")
    blocks: int = Field(4, ge=1, description="FiLM-conditioned residual blocks (a 2x max-pool after the first half).")
    coords: bool = Field(True, description="Add x/y coordinate channels to the input, so positions and relations are readable.")
    stride: Literal[1, 2] = Field(2, description="Stride of the stem's second conv: 2 halves the resolution of the blocks; 1 keeps it (about 2.7x the compute).")


class PcClipConf(_RayTrainScale):
    """PC-CLIP: fine-tune an open_clip model so image-embedding differences match difference texts (raypref.train_pcclip)."""

    samples: str | None = Field(None, description="Images with their prompts: a samples Parquet dir (None: this run's build/samples). Each step pairs every image of its batch with another of a different prompt.")
    model: str = Field("ViT-L-14", description="The open_clip model to fine-tune: a built-in name (with pretrained), 'hf-hub:...', 'local-dir:/path', 'tiny:clip' or 'shapes:clip'.")
    pretrained: str | None = Field("openai", description="open_clip pretrained tag, for built-in names.")
    text_generator: str = Field("template", description="Writes how image a differs from image b from their prompts: 'shapes' (the attributes that change), 'template' ('<a> instead of <b>'), 'llm' (a language model behind pcclip.llm, as in the paper) or 'module:function' (prompt_a, prompt_b) -> text or None (raypref/difference_text.py).")
    llm: HttpJudgeConf | None = Field(None, description="text_generator 'llm': the OpenAI-compatible chat-completions server that writes the difference texts (base_url, model, api_key_env, retries...; the same keys as an http judge's). Each pair of prompts is asked about once per worker; a pair whose request fails is skipped and counted.")
    llm_instruction: str = Field(DEFAULT_INSTRUCTION, description="text_generator 'llm': the request's text, with {a} and {b} for the two prompts; the answer's first line is the difference text.")
    loss: Literal["contrastive", "squared", "hinge"] = Field("contrastive", description="How differences meet their texts (losses.difference_alignment_loss): in-batch InfoNCE, squared distance, or sum of hinges.")
    margin: float = Field(0.2, ge=0, description="hinge: the margin.")
    logit_scale: float | None = Field(None, gt=0, description="contrastive: the scale of the difference loss's cosine logits. None: the model's own exp(logit_scale) (about 100 for CLIP); 1: the PC-CLIP authors' code (temperature 1).")
    train_towers: Literal["both", "text"] = Field("both", description="What trains: both towers, or the text tower only with the image tower frozen (the PC-CLIP authors' code, which embeds images once).")
    clip_weight: float = Field(1.0, ge=0, description="Weight of CLIP's own image-prompt contrastive loss on the same batch, beside the difference loss (keeps the embedding aligned with the prompts); 0: differences only.")
    learning_rate: float = Field(1e-5, gt=0, description="AdamW learning rate, cosine schedule with warmup.")
    warmup_steps: int = Field(10, ge=0, description="Linear warmup steps.")
    batch_size: int = Field(64, ge=2, description="Images per worker per step (each is paired once: batch_size difference pairs at most).")
    max_steps: int = Field(200, ge=1, description="Optimizer steps.")
    checkpoint_every: int = Field(100, ge=1, description="Steps between checkpoints (and held-out evaluations).")
    heldout_fraction: float = Field(0.2, gt=0, lt=1, description="Fraction of prompts (hash of prompt_id) held out: the before/after retrieval accuracies are measured on them.")
    shuffle_buffer: int = Field(2048, ge=0, description="Ray Data local shuffle buffer (images), so that a batch mixes prompts; 0: file order.")
    eval_images: int = Field(1024, ge=2, description="At most this many held-out images are measured (they travel to the rank-0 worker with the loop's config).")
    cache_samples_max_mb: float = Field(1024.0, ge=0, description="Samples whose Parquet files, times the training share, total less than this are read once into Ray's object store; larger ones stream from the files every epoch. The held-out split is never held: only its first eval_images rows are read.")
    comparatives_per_class: int = Field(8, ge=0, description="Comparative prompting in the held-out image -> prompt measure: each prompt's embedding is mixed with estimates from its k nearest other prompts (by text embedding), each prompt's embedding minus that of the text_generator's text for how it differs (raypref/comparative_prompting.py); 0: not measured.")
    comparative_alpha: float = Field(0.8, ge=0, le=1, description="Comparative prompting: the weight of a prompt's own embedding; 1 - alpha goes to the mean of its comparative estimates (0.8, as in the authors' code).")

    seed: int = Field(0, description="Seed for the pairing, the shuffle and the held-out split.")
    export_dir: LocalPath | None = Field(None, description="Where the fine-tuned open_clip directory goes (None: <output_dir>/pcclip/model); a clip_score scorer loads it as 'local-dir:<dir>'.")

    @model_validator(mode="after")
    def _llm_complete(self):
        if self.text_generator == "llm" and self.llm is None:
            raise ValueError(NEEDS_SERVER)
        check_instruction(self.llm_instruction)
        return self


class RewardConf(_RayTrainScale, _StepConf):
    """Reward model training (raypref.train_reward): backbone + overall and per-aspect heads, Bradley-Terry loss."""

    pairs: str | list[str] | None = Field(None, description="Pairs Parquet dir, or a list of them trained on as one dataset (None: this run's build/pairs).")
    backbone: str = Field("ViT-L-14", description="Backbone checkpoint. open_clip: built-in name (with backbone_pretrained), 'hf-hub:...', 'local-dir:/path', 'tiny:clip' or 'shapes:clip'; blip: a BlipForImageTextRetrieval hub name or path (e.g. Salesforce/blip-itm-base-coco) or 'tiny:blip_itm'.")
    backbone_pretrained: str | None = Field("openai", description="open_clip pretrained tag or weights file, for built-in names (ignored by hf-hub:/local-dir: and by backbone_kind=blip).")
    backbone_kind: Literal["open_clip", "blip", "film"] = Field("open_clip", description="Backbone family: open_clip (image and text embeddings fused as [img, txt, img*txt]), blip (transformers BLIP; the text encoder cross-attends to the image, ImageReward's fused feature), or film (reward.backbone's open_clip text tower conditions a conv image tower trained from scratch; see reward.film).")
    film: FilmConf = Field(default_factory=FilmConf, description="The conv image tower of backbone_kind=film.")
    freeze: Literal["none", "all", "all_but_last"] = Field("none", description="Backbone freezing: none, all, or all but the last unfrozen_blocks blocks of each tower (and their final norm/projection; for blip the ViT's final LayerNorm). For film it applies to the text tower; the conv tower always trains.")
    unfrozen_blocks: int = Field(1, ge=0, description="For freeze=all_but_last: trainable residual blocks (blip: encoder layers) at the end of each tower.")
    hidden: int = Field(256, ge=1, description="Width of the shared head trunk over the fused [img, txt, img*txt] features.")
    aspects: list[str] = Field(default_factory=lambda: ["prompt_following", "fidelity", "aesthetic", "harmlessness"],
                               description="Aspect heads (VisionPrefer's rubric), labelled from aspect_scorer's columns.")
    aspect_scorer: str | None = Field(None, description="Scorer whose aspect columns (score_<scorer>_<aspect>) label the aspect heads; None: no aspect heads.")
    aspect_weight: float = Field(1.0, ge=0, description="Weight of the pooled aspect loss beside the overall loss.")
    learning_rate: float = Field(1e-3, gt=0, description="AdamW learning rate of the heads.")
    backbone_learning_rate: float = Field(1e-5, gt=0, description="AdamW learning rate of the unfrozen backbone.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    lr_schedule: Literal["constant", "constant_with_warmup", "linear", "cosine"] = Field(
        "constant", description="Learning-rate schedule over max_steps (diffusers.optimization.get_scheduler), both parameter groups.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps of the schedule (ignored by 'constant').")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient norm clip.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute the backbone's transformer blocks in the backward pass instead of keeping "
        "their activations (open_clip's set_grad_checkpointing; transformers' for blip; film: its text tower, "
        "not the conv tower): less memory, more compute, the same gradients.")
    hflip: float = Field(0.0, ge=0, le=1, description="Training augmentation: the probability that a prompt's pairs in a batch are mirrored left-right (both images of each, drawn once per prompt), the prompt's hflip_swap words swapped to match. Only for prompts whose meaning the swap keeps (e.g. the shapes world); 0 turns it off.")
    hflip_swap: dict[str, str] = Field(default_factory=lambda: {"left": "right", "right": "left"}, description="Whole words swapped in the prompt of a mirrored pair (hflip).")
    batch_size: int = Field(32, ge=1, description="Pairs per worker per micro-batch (one step: grad_accum_steps of them).")
    max_steps: int = Field(500, ge=1, description="Optimizer steps in total.")
    eval_every: int = Field(100, ge=1, description="Steps between held-out evaluations (also at step 0 and the last step).")
    checkpoint_every: int = Field(100, ge=1, description="Steps between checkpoints.")
    heldout_fraction: float = Field(0.1, gt=0, lt=1, description="Fraction of prompts (hash of prompt_id) whose pairs are held out for eval.")
    train_fraction: float = Field(1.0, gt=0, le=1, description="Train on the pairs of only this fraction of the training prompts (a second seeded hash of prompt_id; the held-out split is unchanged). The data-size knob of scaling sweeps: the subsets are nested, a prompt kept at 0.1 is kept at 0.2.")
    shuffle_buffer: int = Field(256, ge=0, description="Local shuffle buffer (pairs) per worker, row by row (it splits a prompt's pairs apart); 0: no row shuffle.")
    prompt_shuffle_buffer: int = Field(0, ge=0, description="Shuffle whole prompts instead (raypref.prompt_shuffle): hold at least this many pairs per worker and fill each batch with whole prompts drawn from them in a seeded order that differs every epoch, so a batch still encodes each image once but the epochs' batches differ. 0: off. Needs shuffle_buffer 0.")
    interleave: bool = Field(False, description="Sort the pairs once, before training, by a seeded hash of (pairs dir, prompt id): the dirs in reward.pairs interleave prompt by prompt instead of following each other, and each prompt's pairs stay together (with shuffle_buffer 0 a batch holds whole prompts). The sorted order is the same every epoch; prompt_shuffle_buffer reshuffles it prompt by prompt.")
    seed: int = Field(0, description="Initialisation, split and shuffle seed.")
    cache_pairs_max_mb: float = Field(1024.0, ge=0, description="Pairs smaller than this on disk are read once into the object store.")
    export_dir: LocalPath | None = Field(None, description="Where the exported model goes (None: <output_dir>/reward/model).")


IMAGE_ROOT_DOC = ("The folder the image paths of an HPD v2 JSON are relative to, where the images are kept elsewhere "
                  "than HPSv2's layout (<json dir>/<json stem>/ beside {key}'s train.json / test.json). format hpdv2 "
                  "only; None: that layout. Its files count as the input's (a changed image is seen on a rerun).")


def _check_image_root(image_root: str | None, fmt: str, section: str) -> None:
    # only the HPD v2 reader takes it: the others find their images from the data itself
    if image_root is not None and fmt != "hpdv2":
        raise ValueError(f"{section}.image_root: only {section}.format 'hpdv2' reads it, not {fmt!r} (its images are "
                         "found from its own files); unset it")


def format_options(section: "AccuracyConf | RelabelConf") -> dict:
    """The format reader options a stage's section sets (HPD v2's image_root), for raypref.formats."""
    return {} if section.image_root is None else {"image_root": section.image_root}


class AccuracyConf(_Strict):
    """Preference-prediction accuracy of scorers on a pairs dataset (raypref.pref_accuracy)."""

    pairs: str = Field("", description="Pairs dataset: a raypref pairs Parquet dir, or a file/dir in the given format.")
    format: Literal["raypref", "pickapic", "hpdv2", "imagereward_db", "agfsync"] = Field("raypref", description="Format of the pairs dataset (raypref.formats).")
    scorers: list[ScorerConf] = Field(default_factory=list, description="Scorers to compare, as build scorers (cls, model, args, pool); e.g. cls=reward_model, model=<export dir>.")
    aspects: bool = Field(True, description="Also a row for each aspect output of a scorer (score_<name>_<aspect>).")
    tie_tolerance: float = Field(0.0, ge=0, description="A scorer whose two scores differ by <= this ties (counted as half correct).")
    limit: int | None = Field(None, ge=1, description="Use only the first N pairs.")
    shard_size: int = Field(256, ge=1, description="Pairs per staged Parquet shard: the unit scored, written, and skipped by a resumed run.")
    image_root: str | None = Field(None, description=IMAGE_ROOT_DOC.format(key="accuracy.pairs"))

    @model_validator(mode="after")
    def _image_root_read(self):
        _check_image_root(self.image_root, self.format, "accuracy")
        return self


class RelabelConf(_Strict):
    """AI re-labelling: score imported pairs (e.g. human Pick-a-Pic pairs) with build.scorers' pools."""

    input: str = Field("", description="Pairs dataset to re-label: a file or directory in relabel.format.")
    format: Literal["raypref", "pickapic", "hpdv2", "imagereward_db", "agfsync"] = Field(
        "pickapic", description="Layout of relabel.input (raypref.formats): raypref pairs Parquet, Pick-a-Pic v2 Parquet, "
        "HPD v2 JSON + images, ImageRewardDB JSON + images, or AGFSync Parquet.")
    shard_size: int = Field(256, ge=1, description="Imported pairs per Parquet shard (the unit Ray Data scores in parallel).")
    limit: int | None = Field(None, ge=1, description="Import only the first N usable pairs.")
    orient: Literal["ai", "source"] = Field(
        "ai", description="Which label the pairs keep. ai: the AI's (its preferred image chosen, label_source 'ai:...', "
        "the imported label in source_label). source: the imported one (the imported chosen image stays chosen, its "
        "label and label_source kept), with the scorers' columns for both sides and margin = s(chosen) - s(rejected), "
        "negative where the AI disagrees, and the AI's label in source_label: quality-aware ranking of human pairs "
        "(raypref rank by margin) then trains on the human labels.")
    image_root: str | None = Field(None, description=IMAGE_ROOT_DOC.format(key="relabel.input"))

    @model_validator(mode="after")
    def _image_root_read(self):
        _check_image_root(self.image_root, self.format, "relabel")
        return self


class ReportConf(_Strict):
    input: str | None = Field(
        None, description="A stage dir holding samples/ and/or pairs/ (e.g. runs/x/build, runs/x/rank); None: this run's build.")


SWEEP_STAGES = ("build", "pair", "rank", "relabel", "train_dpo", "train_sft", "train_refl", "train_reward", "train_pcclip", "accuracy", "eval", "report")


class SweepMetric(_Strict):
    """One number read from every point's outputs (raypref.sweep.select)."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="Column name in the results table and plot file name.")
    value: str = Field(..., description="'<file under the point's output_dir>:<path>', e.g. 'accuracy/accuracy.json:rows[scorer=reward,output=overall].accuracy' (keys by '.', list items by index or [key=value,...]).")
    low: str | None = Field(None, description="The same for the lower end of an interval (an error bar), e.g. ...ci95_low.")
    high: str | None = Field(None, description="The same for the upper end of the interval.")
    fit: Literal["power_law", "saturating_power_law"] | None = Field(None, description="Fit a scaling law to this metric against the plots' x (raypref/scaling.py), one fit per line: power_law y = a*x^b, or saturating_power_law y = c + a*(x/x0)^b with b < 0 (c: where it levels off). Points weigh by their low/high interval, read as a 95% one, where given. Written to sweep/fits.json and drawn on the plot.")


class SweepConf(_Strict):
    """A grid of config overrides; at every point the stages run in a point dir and the metrics are collected."""

    stages: list[Literal[SWEEP_STAGES]] = Field(default_factory=list, description=f"Stages to run at every point, in order, each as its CLI command would: {', '.join(SWEEP_STAGES)}.")
    set: dict[str, Any] = Field(default_factory=dict, description="Dotted key -> value set at every point before the grid's own (e.g. a shorter reward.max_steps, or accuracy.scorers naming '{point}/reward/model'); not part of the point names.")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="Dotted key -> values; the points are every combination (the first key varies slowest). Each point runs in <output_dir>/sweep/points/<key=value,...>; '{point}' in any string of the config is that dir, e.g. reward.pairs: '{point}/rank/pairs'.")
    metrics: list[SweepMetric] = Field(default_factory=list, description="Numbers to read from every point's outputs into results.{csv,md,json}; one plot each.")
    x: str | None = Field(None, description="The plots' x axis: a grid key, or a metric name (e.g. the number of pairs a point trained on), which then stands in for the first grid key; None: the first grid key. The other grid keys make one line each.")
    log_x: bool = Field(False, description="Log-scale x axis (scaling curves).")
    concurrency: int = Field(1, ge=1, description="Points run at once. 1: one after another in this process. N > 1: each point is a Ray task (0 CPUs: it only drives its stages, which ask for their own resources), at most N in flight; on a multi-node cluster output_dir must be on storage every node sees.")


class Config(_Strict):
    output_dir: LocalPath = Field("runs/demo", description="Run directory: build/, train/, eval/ go under it. A filesystem path, not a URI (on a cluster, one every node mounts).")
    ray: RayConf = Field(default_factory=RayConf)
    build: BuildConf = Field(default_factory=BuildConf)
    train: TrainConf = Field(default_factory=TrainConf)
    eval: EvalConf = Field(default_factory=EvalConf)
    pretrain: PretrainConf = Field(default_factory=PretrainConf)
    pair: RepairConf = Field(default_factory=RepairConf)
    report: ReportConf = Field(default_factory=ReportConf)
    rank: RankConf = Field(default_factory=RankConf)
    reward: RewardConf = Field(default_factory=RewardConf)
    pcclip: PcClipConf = Field(default_factory=PcClipConf)
    accuracy: AccuracyConf = Field(default_factory=AccuracyConf)
    relabel: RelabelConf = Field(default_factory=RelabelConf)
    sweep: SweepConf = Field(default_factory=SweepConf)

    def stage_dir(self, stage: str) -> Path:
        return Path(self.output_dir) / stage

    def scorer(self, name: str, what: str = "eval.scorer") -> ScorerConf:
        for s in self.build.scorers:
            if s.name == name:
                return s
        known = [s.name for s in self.build.scorers]
        raise ConfigError(f"{what}: no build scorer named {name!r} (known: {known})")


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2 booleans: only true/false are bools. PyYAML's 1.1 rules would turn the
    key ``on`` (build.pairs.on) and values such as ``no`` or ``off`` into booleans."""


_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in rs if tag != "tag:yaml.org,2002:bool"]
    for ch, rs in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _unique_keys(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    """A mapping whose keys are unique: PyYAML keeps a repeated key's last value, so a second `train:`
    section would silently replace the first."""
    seen = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *anchor' merges a mapping in; it is no key
            continue
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, (str, int, float, bool, type(None))):
            raise yaml.constructor.ConstructorError(None, None, f"a key must be a plain value, not {type(key).__name__}",
                                                    key_node.start_mark)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r} (first on line "
                                                    f"{seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_keys)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def _no_entry(key: str, parts: list[str], i: int, node: list | None, source: str) -> ConfigError:
    """The error for an override that indexes (``parts[i]``) a list entry ``source`` lacks (``node``: the
    list there, None where there is none): an override changes an entry, it cannot make one."""
    lst, idx = ".".join(parts[:i]), parts[i]
    if node is None:
        has = f"{lst} has no list in {source} (an override changes an entry the file holds, not a default's)"
    else:
        n = len(node)
        has = f"{lst} has {n} entr{'y' if n == 1 else 'ies'} in {source}" + (
            " (index 0)" if n == 1 else f" (indices 0-{n - 1})" if n else "")
    if not idx.isdigit():
        return ConfigError(f"override {key}: {lst} takes a list and {idx!r} is not an index; {has}")
    return ConfigError(f"override {key}: {has}, so there is no entry {idx} to change; add the entry to the file,"
                       f" or set the whole list ({lst}=[...])")


def _set_dotted(data: dict, key: str, value: Any, source: str = "the config file") -> None:
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise _no_entry(key, parts, i, node, source)
            node = node[int(part)]
        elif part not in node and _is_list_key(parts[: i + 1]):
            # setdefault would make a dict of it, which validation then reports as "not a valid list"
            raise _no_entry(key, parts, i + 1, None, source)
        else:
            node = node.setdefault(part, {})
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"override {key!r}: {where!r} is a value, not a section")
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise _no_entry(key, parts, len(parts) - 1, node, source)
        node[int(last)] = value
    else:
        node[last] = value


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """'a.b=3' -> ('a.b', 3). Values are parsed as YAML, so 'x=[1,2]' and 'x=null' work; a value holding
    ' #', which YAML would cut there as a comment, is taken as the text it is."""
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item.split('=')[0]!r}: expected key=value")
        key, raw = item.split("=", 1)
        if raw == "" or " #" in raw or raw.startswith("#"):
            out.append((key.strip(), raw))
            continue
        try:
            out.append((key.strip(), _yaml(raw)))
        except yaml.YAMLError as e:  # the value is not echoed: it may be a secret
            where = getattr(e, "problem_mark", None)
            raise ConfigError(f"override {key.strip()}: its value is not valid YAML"
                              + (f" (column {where.column + 1}: {e.problem})" if where is not None else "")
                              + "; quote it to give a string") from None
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load YAML (default: the embedded demo config), apply dotted overrides, validate."""
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = _yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    data = copy.deepcopy(data)
    given = []
    for key, value in parse_overrides(overrides or []):
        _set_dotted(data, key, value)
        given.append(key)
    return validate(data, source=str(path), overrides=given)


def _section_model(annotation) -> type[BaseModel] | None:
    """The config section model a field's annotation holds: list[X], X | None, Annotated[X, ...] unwrapped
    to X; None where it holds none (a dict of free args, a plain value)."""
    import typing

    todo = [annotation]
    while todo:
        t = todo.pop()
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
        todo.extend(typing.get_args(t))
    return None


def _field(model: type[BaseModel] | None, loc):
    """The field that following ``loc`` (list indices skipped) from ``model`` reaches, or None where the
    path leaves the typed models (a dict of free args)."""
    field = None
    for part in loc:
        if isinstance(part, int) or str(part).isdigit():
            continue
        if field is not None:
            model = _section_model(field.annotation)
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return None
    return field


def _is_list_key(loc: list[str]) -> bool:
    """Whether the config key at ``loc`` is typed a list (list[X], or list[X] | None)."""
    import typing

    field = _field(Config, loc)
    ann = field.annotation if field is not None else None
    return ann is not None and any(get_origin(t) is list for t in (ann, *typing.get_args(ann)))


def _field_names(model: type[BaseModel], loc) -> list[str]:
    """The keys a config section takes, the section found by following ``loc`` from ``model`` (list
    indices skipped); [] where the path leaves the typed models (a dict of free args)."""
    if not loc:
        return list(model.model_fields)
    field = _field(model, loc)
    section = _section_model(field.annotation) if field is not None else None
    return list(section.model_fields) if section is not None else []


# a number out of range is worth seeing; one of the wrong kind is not (a key pasted where a name goes)
_RANGE_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "multiple_of", "finite_number")


def validation_lines(e: ValidationError, prefix: str = "", overrides=(), model: type[BaseModel] | None = None) -> list[str]:
    """One '  key: problem' line per error; keys and messages, and the offending value only where it is a number
    out of range (a value of the wrong kind may be a secret pasted in the wrong place). An unknown
    key names the likeliest one meant (of ``model``'s, where given); a key set by one of ``overrides``
    (the command line's dotted keys) says so, since the file named above it does not hold it."""
    import difflib

    lines = []
    for err in e.errors():
        key = (prefix + ".".join(str(p) for p in err["loc"])).rstrip(".")
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        if err["type"] in _RANGE_ERRORS and type(err.get("input")) in (int, float):  # as actor args show theirs
            msg += f", got {err['input']}"
        if err["type"] == "extra_forbidden" and model is not None and err["loc"]:
            near = difflib.get_close_matches(str(err["loc"][-1]), _field_names(model, err["loc"][:-1]), n=1)
            msg += f" (did you mean {key.rpartition('.')[0] + '.' if '.' in key else ''}{near[0]}?)" if near else ""
        if any(key == o or key.startswith(o + ".") or o.startswith(key + ".") for o in overrides):
            msg += " [from a command-line override]"
        lines.append(f"  {key}: {msg}")
    return lines


def validate(data: dict, source: str = "config", overrides=()) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{source}: invalid config\n" + "\n".join(validation_lines(e, overrides=overrides, model=Config))) from None


def git_sha() -> str:
    """The commit of the raypref checkout in use, '+dirty' if it has changes. Code without git metadata
    (a `ray job submit` working_dir, which leaves .git/ behind; the cluster image) reports
    RAYPREF_GIT_SHA, set where the commit was known (README, "On a cluster"); else 'unknown'."""
    repo = Path(__file__).resolve().parent.parent
    fallback = os.environ.get("RAYPREF_GIT_SHA", "").strip() or "unknown"
    try:
        sha = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        if not sha:
            return fallback
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):  # no git on this node
        return fallback


def _flat(v, key: str) -> dict:
    """{dotted key: leaf value} of nested dicts and lists (list items by index, as in overrides)."""
    if isinstance(v, dict) and v:
        return {k2: x for k, item in v.items() for k2, x in _flat(item, f"{key}.{k}" if key else str(k)).items()}
    if isinstance(v, list) and v and all(isinstance(x, (dict, list)) for x in v):
        return {k2: x for i, item in enumerate(v) for k2, x in _flat(item, f"{key}.{i}").items()}
    return {key: v}


def record_settings(record: Path, settings: dict, ignore=()) -> None:
    """Write the settings a stage's resumable work is made with (see settings_changed), less the dotted
    keys in ``ignore``, atomically."""
    from raypref.resume import write_atomic

    record.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(record, json.dumps(_without(_flat(settings, ""), ignore), indent=1, sort_keys=True) + "\n")


_NO_DEFAULT = object()
# keys added with a default other than what the code did before them: a record without such a key
# was made the earlier way, not the new default's
_BEFORE_KEY = {"train.refl.sampler": "ddim"}


def _config_default(key: str):
    """The JSON value of the Config field a dotted key names (e.g. 'pcclip.train_towers'), or
    _NO_DEFAULT where the key names no field with a default."""
    from pydantic_core import to_jsonable_python

    model: Any = Config
    parts = key.split(".")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return _NO_DEFAULT
        if field.is_required():
            return _NO_DEFAULT
        if i < len(parts) - 1 and isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            model = field.annotation
            continue
        # the field's default, and within it (a dict's or list's default, e.g. train.hflip_swap.left) the rest
        value = to_jsonable_python(field.get_default(call_default_factory=True))
        for rest in parts[i + 1:]:
            if isinstance(value, dict) and rest in value:
                value = value[rest]
            elif isinstance(value, list) and rest.isdigit() and int(rest) < len(value):
                value = value[int(rest)]
            else:
                return _NO_DEFAULT
        return value
    return _NO_DEFAULT


def changed_keys(theirs: dict, mine: dict) -> list[str]:
    """The dotted keys whose values differ between two flat configs (_flat's), less the keys ``theirs``
    lacks while ``mine`` holds their default (or, for a key in _BEFORE_KEY, what the code did before it)."""
    return sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k)
                  and not (k not in theirs and mine[k] == _BEFORE_KEY.get(k, _config_default(k))))


def config_changes(recorded: dict, current: dict) -> list[str]:
    """changed_keys of two nested configs (model_dump's)."""
    return changed_keys(_flat(recorded, ""), _flat(current, ""))


def _under(key: str, keys) -> bool:
    """Whether the dotted ``key`` is one of ``keys`` or under one."""
    return any(key == i or key.startswith(i + ".") for i in keys)


def _without(flat: dict, ignore) -> dict:
    """A flat config less the dotted keys in ``ignore`` and every key under them."""
    return {k: v for k, v in flat.items() if not _under(k, ignore)}


# a key an earlier record lacks (added= of settings_changed and record_added)
NOT_RECORDED = object()


def _earlier(theirs: dict, added) -> tuple[str, ...]:
    """The keys of ``added`` (settings_changed's) that a flat record ``theirs`` was made before."""
    added = added if isinstance(added, dict) else dict.fromkeys(added, NOT_RECORDED)
    return tuple(k for k, then in added.items()
                 if (then is NOT_RECORDED and not any(_under(t, (k,)) for t in theirs))
                 or (then is not NOT_RECORDED and k in theirs and theirs[k] == then))


def _shown(flat: dict, k: str) -> str:
    return repr(str(flat[k])[:60]) if k in flat else "(not set)"


def _compared(record: Path, settings: dict, ignore, added):
    """What settings_changed and record_added read: (the record as written, this run's flat settings
    less ``ignore``, the keys of ``added`` the record was made before, the keys that differ), or None
    where nothing was recorded."""
    if not record.is_file():
        return None
    recorded = json.loads(record.read_text())
    theirs, mine = _without(recorded, ignore), _without(_flat(settings, ""), ignore)
    earlier = _earlier(theirs, added)
    return recorded, theirs, mine, earlier, changed_keys(_without(theirs, earlier), _without(mine, earlier))


def settings_changed(record: Path, settings: dict, ignore=(), added=()) -> str | None:
    """How ``settings`` differ from those record_settings wrote to ``record`` ("key: old -> new; ...",
    a key one side lacks shown as "(not set)"), or None when they are the same or nothing was recorded
    (work from before records were kept). It writes nothing.
    A config key the record lacks (work from before the key existed) is the same while it holds
    its default (or, for a key in _BEFORE_KEY, what the code did before it), so adding a key with a
    default does not refuse every earlier run's rerun. The dotted keys in ``ignore`` (settings this
    run does not read) are left out of the record too, which may hold them from an earlier run.
    ``added``: settings keys a stage began to record later (a fingerprint of files), which a record made
    before cannot compare: the dotted keys such a record lacks (nor any key under them), or
    {key: the value such a record holds there} where the key's value was once worked out otherwise
    (NOT_RECORDED: lacks it). A record made before one is compared without it, once: a stage that keeps
    the work then calls record_added, so the next rerun compares it."""
    c = _compared(record, settings, ignore, added)
    if c is None:
        return None
    _, theirs, mine, _, changed = c
    if not changed:
        return None
    said = "; ".join(f"{k}: {_shown(theirs, k)} -> {_shown(mine, k)}" for k in changed[:4])
    return said + ("; ..." if len(changed) > 4 else "")


def record_added(record: Path, settings: dict, ignore=(), added=()) -> None:
    """Where ``record`` was made before keys of ``added`` and nothing else changed (settings_changed
    with the same arguments is None), write this run's values of those keys to it, the rest as it was,
    so the next rerun compares them; otherwise leave it as it is."""
    c = _compared(record, settings, ignore, added)
    if c is None:
        return
    recorded, _, mine, earlier, changed = c
    if earlier and not changed:
        from raypref.resume import write_atomic

        now = {**_without(recorded, earlier), **{k: v for k, v in mine.items() if _under(k, earlier)}}
        write_atomic(record, json.dumps(now, indent=1, sort_keys=True) + "\n")


def guard_rerun(record: Path, settings: dict, has_work: bool, refusal: str, ignore=(), added=(),
                write: bool = True) -> None:
    """Before a stage writes anything: if it already holds work (``has_work``) made with settings
    other than ``settings`` (as recorded in ``record``; the dotted keys in ``ignore``, which this run
    does not read, neither compared nor recorded; a record from before a key of ``added`` compared
    without it, as settings_changed does), a rerun would resume or mix another run's work, so
    raise ``refusal`` with its {changed} filled in; otherwise record ``settings`` (whole: record_added's
    keys among them), unless not ``write`` (a refusal ahead of checks that must pass before the record)."""
    changed = settings_changed(record, settings, ignore, added) if has_work else None
    if changed:
        raise ValueError(refusal.replace("{changed}", changed))  # not format(): a path may hold braces
    if write:
        record_settings(record, settings, ignore)


def renew_if_changed(record: Path, settings: dict, what: str, ignore=()) -> None:
    """For derived work that a rerun may simply redo (eval's sides, accuracy's scorers): if the
    directory of ``record`` holds work made with settings other than ``settings`` (less the dotted
    keys in ``ignore``), remove it, saying so; then record ``settings``. (Work worth keeping is
    refused instead: guard_rerun.)"""
    changed = settings_changed(record, settings, ignore)
    if changed:
        print(f"{what}: the stored scores were made with other settings ({changed}); scoring again", flush=True)
        shutil.rmtree(record.parent)
    record_settings(record, settings, ignore)


def stage_scorers(cfg: Config, stage: str | None) -> list[ScorerConf]:
    """The scorers a stage (write_run_meta's name for it) runs actors of."""
    if stage in ("build", "relabel"):
        return list(cfg.build.scorers)
    if stage == "accuracy":
        return list(cfg.accuracy.scorers)
    if stage == "eval":
        return [s for s in cfg.build.scorers if s.name == cfg.eval.scorer]
    return []


def check_scorer_args(cfg: Config, stage: str | None = None, stored: Callable[[ScorerConf], bool] | None = None) -> None:
    """Each configured scorer whose class checks its own args (registry.constructor_kwargs: the LLM judge
    refuses a pasted key or a URL holding credentials) checks them now, so that no stage writes a config
    that holds a secret, whether or not it runs that scorer. A built-in without such a check is not
    imported (a stage that runs no model need not load torch); a class of one's own that cannot be
    imported here is left to the stages that run it, which stop on it. The scorers ``stage`` runs also
    check this machine's environment, where their class has ``check_env(where, args, local_ray)`` (the
    judge's API key variable): only a stage that runs a scorer needs what it needs. ``stored`` (asked only
    of such a class's scorers) tells those whose scores the stage already holds in full: it runs none of
    their actors, so their environment is not checked."""
    from raypref.registry import BUILTIN, CHECK_ARGS, resolve

    runs = {id(s) for s in stage_scorers(cfg, stage)}
    for s in cfg.build.scorers + cfg.accuracy.scorers:
        if s.cls in BUILTIN and s.cls not in CHECK_ARGS:
            continue
        try:
            cls = resolve(s.cls, "scorer", f"scorer {s.name!r} cls")
        except ValueError:
            continue
        check = getattr(cls, "check_args", None)
        if check is not None:
            check(f"scorer {s.name!r}", s.args)
        check_env = getattr(cls, "check_env", None)
        if check_env is not None and id(s) in runs and not (stored is not None and stored(s)):
            from raypref.session import ray_is_local

            check_env(f"scorer {s.name!r}", s.args, ray_is_local(cfg.ray))


def write_run_meta(cfg: Config, stage_dir: str | Path, stage: str,
                   stored: Callable[[ScorerConf], bool] | None = None,
                   guard: Callable[[], None] | None = None) -> Path:
    """Write the resolved config and the git SHA next to a stage's outputs (its scorers' args checked
    first; ``stored``: see check_scorer_args). ``guard`` (a rerun's check, which records the settings
    it passes: guard_rerun) runs between the two, so that a refused run writes nothing. A stage calls
    this once its own inputs are checked."""
    check_scorer_args(cfg, stage, stored)
    if guard is not None:
        guard()
    d = Path(stage_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    meta = {"stage": stage, "git_sha": git_sha()}
    (d / "run_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return d


def describe(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """One line per field: dotted key, type, default, description."""
    lines = []
    for name, field in model.model_fields.items():
        key = prefix + name
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            lines.append(f"{key}:  ({ann.__name__})")
            lines.extend(describe(ann, key + "."))
            continue
        default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
        tname = getattr(ann, "__name__", str(ann)).replace("typing.", "")
        lines.append(f"{key}  [{tname}] = {default}  {field.description or ''}")
        args = getattr(ann, "__args__", ())
        for a in args:
            if isinstance(a, type) and issubclass(a, BaseModel):  # list[M]: key.<i>.field; M | None: key.field
                lines.extend(describe(a, key + (".<i>." if get_origin(ann) is list else ".")))
    return lines
