"""On a CUDA GPU, through Ray Train with ``use_gpu``: the DPO, SFT, ReFL, reward-model and PC-CLIP loops train on
the worker's GPU (their checkpointed optimizer state is on the GPU), checkpoint, and resume there: the reward loop
loads a checkpoint's optimizer state after moving its model to the GPU, or the state would stay on the CPU and fail
the first step after a resume. A full DPO fine-tune under bf16 (its reference a bf16 copy: test_finetune.py) starts
from log 2 on the GPU.
Skipped without a GPU (the CPU paths are tested in their own modules)."""

import json

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def gpu_ray(ray_session):
    # without a GPU in Ray's resources a use_gpu trainer would wait for one forever
    assert ray_session.cluster_resources().get("GPU", 0) >= 1, "Ray found no GPU on this machine"
    return ray_session


def _steps(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x]


def _optimizer_devices(stage) -> set[str]:
    """The device types of the optimizer state in a stage's latest Ray Train checkpoint, as it was saved:
    'cuda' where the loop trained on the GPU."""
    latest = max(stage.glob("ray/*/checkpoint_*/optimizer.pt"), key=lambda f: f.stat().st_mtime_ns)
    state = torch.load(latest, weights_only=True)["state"]
    return {t.device.type for s in state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0}


def test_dpo_lora_trains_and_resumes_on_the_gpu(gpu_ray, built_run, tmp_path):
    from test_train_eval import _cfg, _lora_b_norm

    from raypref.lora import LORA_FILE
    from raypref.train_dpo import run_train_dpo

    s1 = run_train_dpo(_cfg(built_run, tmp_path / "r", max_steps=2, checkpoint_every=1, use_gpu=True))
    assert s1["final_step"] == 2
    s2 = run_train_dpo(_cfg(built_run, tmp_path / "r", max_steps=4, checkpoint_every=1, use_gpu=True))
    hist = _steps(tmp_path / "r" / "train" / "metrics.jsonl")
    assert s2["final_step"] == 4 and [h["step"] for h in hist] == [1, 2, 3, 4]
    assert hist[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # the model is its reference at step 1
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in hist)
    assert _lora_b_norm(tmp_path / "r" / "train" / "lora" / LORA_FILE) > 0  # the adapter learned
    assert _optimizer_devices(tmp_path / "r" / "train") == {"cuda"}  # it trained on the GPU


def test_dpo_full_bf16_reference_on_the_gpu(gpu_ray, built_run, tmp_path):
    from test_train_eval import _cfg

    from raypref.train_dpo import run_train_dpo

    cfg = _cfg(built_run, tmp_path / "f", max_steps=2, checkpoint_every=2, use_gpu=True, finetune="full",
               precision="bf16", learning_rate=1e-5)
    s = run_train_dpo(cfg)
    hist = _steps(tmp_path / "f" / "train" / "metrics.jsonl")
    assert s["final_step"] == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in hist)
    # the bf16 reference equals the bf16-cast model at step 1: the loss starts within bf16's rounding of log 2
    assert hist[0]["loss"] == pytest.approx(0.6931, abs=5e-3)
    assert _optimizer_devices(tmp_path / "f" / "train") == {"cuda"}


def test_reward_model_trains_and_resumes_on_the_gpu(gpu_ray, tmp_path):
    from test_reward_model import _cfg, _history, synthetic_pairs

    from raypref.train_reward import run_train_reward

    synthetic_pairs(tmp_path / "pairs")
    out = tmp_path / "run"
    pairs = str(tmp_path / "pairs" / "a")
    s1 = run_train_reward(_cfg(out, pairs, max_steps=4, eval_every=4, checkpoint_every=2, use_gpu=True))
    assert s1["final_step"] == 4
    # the resumed optimizer's AdamW moments must be on the GPU with the weights for step 5 to run
    s2 = run_train_reward(_cfg(out, pairs, max_steps=6, eval_every=4, checkpoint_every=2, use_gpu=True))
    hist = _history(out)
    assert s2["final_step"] == 6 and [h["step"] for h in hist] == list(range(7))
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in hist[1:])
    assert _optimizer_devices(out / "reward") == {"cuda"}


def _lora_run(built_run, out, **train):
    base, _ = built_run
    d = base.model_dump(mode="json")
    d["output_dir"] = str(out)
    d["train"].update(use_gpu=True, checkpoint_every=1, **train)
    return d


def test_sft_and_refl_train_and_resume_on_the_gpu(gpu_ray, built_run, tmp_path):
    from raypref import stages
    from raypref.config import validate

    base, _ = built_run
    runs = {"sft": _lora_run(built_run, tmp_path / "sft", samples=str(base.stage_dir("build") / "samples"),
                             sft_score="score_clip", sft_top_p=0.5, max_steps=2),
            "refl": _lora_run(built_run, tmp_path / "refl", max_steps=2, batch_size=2,
                              refl={"scorer": "clip", "num_inference_steps": 3, "last_steps": [1, 2], "margin": 100.0})}
    for method, d in runs.items():
        train = getattr(stages, f"train_{method}")
        assert train(validate(d))["final_step"] == 2
        d["train"]["max_steps"] = 3  # resumed at step 2 on the GPU
        s = train(validate(d))
        hist = _steps(tmp_path / method / "train" / "metrics.jsonl")
        assert s["final_step"] == 3 and [h["step"] for h in hist] == [1, 2, 3], method
        assert all(torch.isfinite(torch.tensor(h["loss"])) for h in hist), method
        assert _optimizer_devices(tmp_path / method / "train") == {"cuda"}, method


def test_pcclip_trains_and_resumes_on_the_gpu(gpu_ray, tmp_path, tiny_clip):
    from test_pcclip import _render_samples

    from raypref import stages
    from raypref.config import validate

    cfg = {"output_dir": str(tmp_path / "run"),
           "pcclip": {"samples": str(_render_samples(tmp_path / "samples")), "model": tiny_clip, "pretrained": None,
                      "text_generator": "shapes", "learning_rate": 1e-3, "warmup_steps": 0, "batch_size": 16,
                      "max_steps": 2, "checkpoint_every": 2, "heldout_fraction": 0.25, "shuffle_buffer": 64,
                      "use_gpu": True}}
    assert stages.train_pcclip(validate(cfg))["final_step"] == 2
    cfg["pcclip"]["max_steps"] = 3
    s = stages.train_pcclip(validate(cfg))
    hist = _steps(tmp_path / "run" / "pcclip" / "metrics.jsonl")
    assert s["final_step"] == 3 and [h["step"] for h in hist] == [0, 1, 2, 3]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in hist[1:])
    assert _optimizer_devices(tmp_path / "run" / "pcclip") == {"cuda"}
