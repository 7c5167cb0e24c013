"""The benchmark scripts run: a training-step measurement on tiny SD / SDXL pipelines, and the
full-size random pipelines have the released models' parameter counts; parquet_read leaves no temp dir
when it crashes."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("model", ["tiny_sd", "tiny_sdxl"])
@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_dpo_step_measurement_runs_on_sd_and_sdxl(model, finetune, request):
    bench = _load("train_step_memory")
    a = {"finetune": finetune, "loop": "dpo", "model": request.getfixturevalue(model), "kind": "open_clip", "pairs": 2,
         "steps": 1, "lora_rank": 4, "device": "cpu", "precision": "fp32", "checkpointing": False, "micro": 2}
    r = bench.child(a)
    assert r["seconds_per_step"] > 0 and r["saved_bytes"] > 0 and r["trained_params"] > 0
    # a full fine-tune keeps a frozen reference copy as big as the UNet, a LoRA none
    assert (r["state_bytes"] > 4 * r["trained_params"] * 3) == (finetune == "full")


def test_full_fine_tune_measurement_counts_adafactors_factored_state(tiny_sd):
    bench = _load("train_step_memory")
    a = {"finetune": "full", "loop": "dpo", "model": tiny_sd, "kind": "open_clip", "pairs": 2, "steps": 1,
         "lora_rank": 4, "device": "cpu", "precision": "fp32", "checkpointing": False, "micro": 1}
    adamw, adafactor = (bench.child(a | {"optimizer": o}) for o in ("adamw", "adafactor"))
    p = adamw["trained_params"] * 4  # bytes of one fp32 copy of the UNet
    # AdamW: gradients, two moments and the reference copy, 4 copies
    assert adamw["state_bytes"] == 4 * p
    # Adafactor: gradients and the reference copy, no first moment, and each weight's second moment
    # factored over its last two dims into a row (shape[:-1]) and a column (shape[:-2] + shape[-1:]);
    # a vector's is kept whole
    from math import prod

    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet")
    second = sum(prod(w.shape[:-1]) + prod(w.shape[:-2] + w.shape[-1:]) if w.dim() >= 2 else w.numel()
                 for w in unet.parameters())
    assert adafactor["state_bytes"] == 2 * p + 4 * second < 3 * p


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_full_size_pipelines_have_the_released_parameter_counts(arch):
    sizes = _load("full_size_pipelines")
    modules = sizes.parts(arch, "meta")  # shapes only: nothing is allocated
    assert sizes.check_counts(arch, modules) == sizes.EXPECTED_PARAMS[arch]
    assert modules["unet"].config.cross_attention_dim == (768 if arch == "sd15" else 2048)


def test_a_config_slip_is_caught_by_the_count_check():
    sizes = _load("full_size_pipelines")
    modules = sizes.parts("sd15", "meta")
    modules["text_encoder"] = sizes.parts("sdxl", "meta")["text_encoder_2"]
    with pytest.raises(SystemExit, match="not the released model's"):
        sizes.check_counts("sd15", modules)


def test_refl_step_measurement_runs(tiny_sd, tiny_clip):
    bench = _load("train_step_memory")
    a = {"finetune": "lora", "loop": "refl", "model": tiny_sd, "kind": "open_clip", "pairs": 2, "steps": 1,
         "lora_rank": 4, "device": "cpu", "precision": "bf16", "checkpointing": True, "micro": 1,
         "scorer": tiny_clip, "refl_steps": 3}
    r = bench.child(a)
    assert r["seconds_per_step"] > 0 and r["saved_bytes"] > 0 and r["trained_params"] > 0


def test_gpu_checks_halves_run_every_gpu_training_test_once():
    """gpu_checks.sh splits tests/test_gpu_train.py in two parts by -k, so each fits a 10-minute device call: between
    them they must select every test in the file, none twice, as pytest itself selects them."""
    import ast
    import re
    import subprocess

    script = (ROOT / "benchmarks" / "gpu_checks.sh").read_text()
    exprs = re.findall(r'^part gpu_train_\w+ \d+ .*tests/test_gpu_train\.py -k "([^"]+)"', script, re.M)
    assert len(exprs) == 2, exprs
    tree = ast.parse((ROOT / "tests" / "test_gpu_train.py").read_text())
    every = {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}
    procs = [subprocess.Popen([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                               "-m", "gpu", "tests/test_gpu_train.py", "-k", e], cwd=ROOT, stdout=subprocess.PIPE, text=True)
             for e in exprs]
    halves = [{ln.split("::")[1] for ln in p.communicate()[0].splitlines() if "::" in ln} for p in procs]
    # the children reuse this session's dir (token, model cache); only the session that made it removes it
    assert Path(os.environ["RAYPREF_TEST_SESSION_DIR"]).is_dir()
    assert all(halves), halves
    assert halves[0] | halves[1] == every and not halves[0] & halves[1], (halves, every)


def test_gpu_checks_exits_1_naming_a_failed_part(tmp_path):
    import subprocess

    env = {**os.environ, "PARTS": "gpu_tests sd15_build", "PYTHON": "false"}  # a python that fails every part
    p = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_checks.sh"), str(tmp_path)], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"failed: gpu_tests sd15_build (logs in {tmp_path})" in p.stdout
    lines = (tmp_path / "summary.txt").read_text().splitlines()
    assert [ln.split(" in ")[0] for ln in lines] == ["gpu_tests: rc=1", "sd15_build: rc=1"]


def test_scoring_throughput_refuses_more_prompts_than_the_split_holds():
    # its images/s divide by --prompts x --per-prompt: fewer prompts scored would overstate them
    mod = _load("scoring_throughput")
    with pytest.raises(SystemExit, match=r"^--prompts 1509: the shapes-world train split holds 1508 prompts$"):
        mod.groups_table(1509, 1)
    assert mod.groups_table(2, 1).num_rows == 2


def test_parquet_read_removes_its_temp_dir_on_a_crash(ray_session, tmp_path, monkeypatch):
    import tempfile

    mod = _load("parquet_read")

    def crash(root, *a):
        (root / "part-000.parquet").write_bytes(b"half a table")
        raise OSError("disk full")

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(mod, "write_table", crash)
    monkeypatch.setattr(sys, "argv", ["parquet_read.py"])
    import ray

    with pytest.raises(OSError, match="disk full"):
        mod.main()
    assert not list(tmp_path.glob("parquet-read-*"))
    assert ray.is_initialized()  # the session's Ray, which it did not start, still runs for the tests after it
