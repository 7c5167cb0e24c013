"""The shared optimizer step (raypref.train_step): gradient accumulation, DDP's no_sync, bf16
autocast; and gradient checkpointing of the DPO UNet and of each reward backbone. No Ray: the
loops' step is tested directly."""

import contextlib

import pytest
import torch

from raypref.train_step import accumulate, autocast, micro_groups


def test_micro_groups_mark_the_last_and_stream_with_one_batch_of_look_ahead():
    steps = [list(g) for g in micro_groups(range(5), 2)]
    assert steps == [[(0, False), (1, True)], [(2, False), (3, True)], [(4, True)]]  # the last step is short
    assert [list(g) for g in micro_groups(range(2), 1)] == [[(0, True)], [(1, True)]]
    assert list(micro_groups([], 3)) == []
    pulled = []

    def source():
        for i in range(100):
            pulled.append(i)
            yield i

    first = next(micro_groups(source(), 50))
    assert next(first) == (0, False) and pulled == [0, 1]  # not 50 batches held for one step
    with pytest.raises(ValueError, match="grad_accum_steps"):
        list(micro_groups(range(3), 0))


def _group(batches):
    """All of ``batches`` as the micro-batches of one optimizer step."""
    return next(micro_groups(batches, len(batches)))


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g)


def _mse(model):
    return lambda b: (((model(b[0]) - b[1]) ** 2).mean(), {"n": torch.tensor(float(len(b[0])))})


def test_two_micro_batches_give_the_gradient_of_their_mean_loss():
    x, y = _data()
    torch.manual_seed(0)
    one = torch.nn.Linear(3, 1)
    two = torch.nn.Linear(3, 1)
    two.load_state_dict(one.state_dict())
    loss_one, _, n_one = accumulate(one, _group([(x, y)]), _mse(one), "cpu", "fp32")
    loss_two, m, n_two = accumulate(two, _group([(x[:4], y[:4]), (x[4:], y[4:])]), _mse(two), "cpu", "fp32")
    assert (n_one, n_two) == (1, 2)
    # equal halves: the mean of the two halves' mean losses is the whole batch's mean loss
    assert loss_two == pytest.approx(loss_one, rel=1e-6)
    assert m == {"n": 4.0}  # metrics are averaged over the micro-batches
    for a, b in zip(one.parameters(), two.parameters()):
        torch.testing.assert_close(a.grad, b.grad)


def test_a_metric_is_averaged_over_the_micro_batches_that_report_it():
    # ReFL with pretraining alternates micro-batches that report a reward and ones that report a
    # denoising loss: each metric's mean is over its own micro-batches, not over all of them
    x, y = _data()
    model = torch.nn.Linear(3, 1)
    values = iter([{"reward": torch.tensor(3.0)}, {"pretrain_loss": torch.tensor(0.5)},
                   {"reward": torch.tensor(5.0)}, {"pretrain_loss": torch.tensor(1.5)}])
    forward = lambda b: (((model(b[0]) - b[1]) ** 2).mean(), next(values))
    _, m, n = accumulate(model, _group([(x[:2], y[:2]), (x[2:4], y[2:4]), (x[4:6], y[4:6]), (x[6:], y[6:])]),
                         forward, "cpu", "fp32")
    assert n == 4 and m == {"reward": 4.0, "pretrain_loss": 1.0}


def test_ddp_all_reduces_only_on_the_last_micro_batch():
    class FakeDDP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 1)
            self.in_no_sync = False

        @contextlib.contextmanager
        def no_sync(self):
            self.in_no_sync = True
            try:
                yield
            finally:
                self.in_no_sync = False

        def forward(self, t):
            return self.lin(t)

    ddp, seen = FakeDDP(), []
    x, y = _data()

    def forward(b):
        seen.append(ddp.in_no_sync)
        return _mse(ddp)(b)

    accumulate(ddp, _group([(x[:3], y[:3]), (x[3:6], y[3:6]), (x[6:], y[6:])]), forward, "cpu", "fp32")
    assert seen == [True, True, False]


def test_bf16_autocast_computes_in_bf16_and_keeps_fp32_gradients():
    x, y = _data()
    torch.manual_seed(0)
    ref, half = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
    half.load_state_dict(ref.state_dict())
    dtypes = []

    def forward(b):
        out = half(b[0])
        dtypes.append(out.dtype)
        return ((out.float() - b[1]) ** 2).mean(), {}

    accumulate(ref, _group([(x, y)]), _mse(ref), "cpu", "fp32")
    accumulate(half, _group([(x, y)]), forward, "cpu", "bf16")
    assert dtypes == [torch.bfloat16]
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in half.parameters())
    for a, b in zip(ref.parameters(), half.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=0.05, atol=0.02)  # bf16 keeps ~3 significant digits
    with pytest.raises(ValueError, match="precision"):
        autocast("cpu", "fp16")


def test_dpo_gradient_checkpointing_recomputes_and_gives_the_same_gradients(tiny_sd, monkeypatch):
    import torch.utils.checkpoint as ckpt

    from raypref.train_dpo import dpo_step, load_for_training

    calls = []
    real = ckpt.checkpoint

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(ckpt, "checkpoint", counting)
    c = {"base_model": tiny_sd, "lora_rank": 2, "lora_alpha": 2.0, "lora_targets": ["to_q", "to_v"]}
    grads = {}
    for on in (False, True):
        torch.manual_seed(0)
        _, _, sched, unet, params, reference = load_for_training({**c, "gradient_checkpointing": on}, "cpu")
        g = torch.Generator().manual_seed(1)
        latents = torch.randn(4, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size, generator=g)
        enc = torch.randn(4, 77, unet.config.cross_attention_dim, generator=g)
        before = len(calls)
        loss, _ = dpo_step(unet, reference, latents, enc, sched, 5000.0, g)
        loss.backward()
        assert (len(calls) > before) == on  # recomputed blocks only when asked
        grads[on] = [p.grad.clone() for p in params]
    assert any(g.abs().sum() > 0 for g in grads[False])
    for a, b in zip(grads[False], grads[True]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def _last_mlps(model, kind):
    """The MLP in the last transformer block of each tower: with checkpointing it runs again in the
    backward pass. (Counted at a child module: transformers recomputes a layer's unwrapped forward.)"""
    bb = model.backbone
    if kind == "blip":
        return [bb.vision_model.encoder.layers[-1].mlp, bb.text_encoder.encoder.layer[-1].intermediate]
    blocks = [bb.clip.transformer.resblocks[-1].mlp]
    if bb.clip.visual is not None:  # film drops the image tower
        blocks.append(bb.clip.visual.transformer.resblocks[-1].mlp)
    return blocks


@pytest.mark.parametrize("kind,ref,freeze", [("open_clip", "tiny:clip", "none"), ("film", "tiny:clip", "none"),
                                             ("blip", "tiny:blip_itm", "all_but_last")])
def test_reward_gradient_checkpointing_recomputes_and_gives_the_same_gradients(kind, ref, freeze):
    import copy

    from raypref.losses import reward_model_loss
    from raypref.models import resolve_model
    from raypref.reward_model import RewardModel
    from raypref.train_reward import forward_pairs
    from reward_steps import ASPECTS, pairs_batch

    torch.manual_seed(0)
    plain = RewardModel.create(resolve_model(ref), aspects=ASPECTS, hidden=16, freeze=freeze, kind=kind)
    ckpt = copy.deepcopy(plain)
    grads, runs = {}, {}
    for name, model in (("plain", plain), ("ckpt", ckpt)):
        model.train()
        if name == "ckpt":
            model.backbone.set_grad_checkpointing(True)
        calls = []
        for block in _last_mlps(model, kind):  # count forward runs (the recompute skips module hooks)
            block.forward = (lambda f: lambda *a, **k: calls.append(1) or f(*a, **k))(block.forward)
        batch, cols = pairs_batch()
        oc, orj, ac, ar, label, target, mask = forward_pairs(model, model.backbone, batch, cols, "cpu")
        reward_model_loss(oc[""], orj[""], label, ac, ar, target, mask, 1.0)[0].backward()
        runs[name] = len(calls)
        grads[name] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    n_towers = len(_last_mlps(plain, kind))
    assert runs == {"plain": n_towers, "ckpt": 2 * n_towers}  # forward, then the recompute
    assert grads["plain"].keys() == grads["ckpt"].keys()
    assert all(g is not None for g in grads["ckpt"].values())  # unfrozen last layers still get gradients
    for n, g in grads["plain"].items():
        torch.testing.assert_close(grads["ckpt"][n], g, rtol=1e-4, atol=1e-6, msg=n)


def test_a_bad_image_in_a_dpo_batch_names_its_pair(tiny_sd):
    from PIL import Image

    from raypref import schema as S
    from raypref.images import encode
    from raypref.train_dpo import load_frozen_parts, pair_batch_to_latents

    texts, vae, _, _ = load_frozen_parts(tiny_sd, "cpu")
    good = encode(Image.new("RGB", (16, 16), (200, 30, 30)))
    batch = {S.PROMPT: ["a red circle", "a blue square"], S.CHOSEN_ID: ["p0-a", "p1-a"],
             S.CHOSEN_IMAGE: [good, good], S.REJECTED_IMAGE: [good, b"\x89PNG broken"]}
    with pytest.raises(ValueError, match=r"pairs row chosen_id='p1-a', rejected_image: undecodable image bytes"):
        pair_batch_to_latents(batch, texts, vae, 16, "cpu")
    batch[S.REJECTED_IMAGE][1] = good
    latents, enc = pair_batch_to_latents(batch, texts, vae, 16, "cpu")
    assert latents.shape[0] == 4 and enc.hidden.shape[0] == 4 and enc.pooled is None


def test_export_replaces_only_its_own_exports_whole(tmp_path):
    from raypref.train_checkpoint import EXPORT_MARK, export_dir

    src = tmp_path / "ckpt" / "model"
    src.mkdir(parents=True)
    (src / "weights.safetensors").write_text("v1")
    run_root, export = tmp_path / "run", tmp_path / "models" / "rm"
    export_dir(src, export, run_root)
    assert (export / "weights.safetensors").read_text() == "v1" and (export / EXPORT_MARK).is_file()
    (src / "weights.safetensors").write_text("v2")
    (export / "stale.txt").write_text("from the earlier export")
    export_dir(src, export, run_root)  # its own export: replaced whole
    assert (export / "weights.safetensors").read_text() == "v2" and not (export / "stale.txt").exists()
    assert sorted(p.name for p in export.parent.iterdir()) == ["rm"]  # no .new / .old left behind
    # the same weights again (a finished run's rerun) leave the export untouched: its files keep their times
    before = {p.name: p.stat().st_mtime_ns for p in export.iterdir()}
    export_dir(src, export, run_root)
    assert {p.name: p.stat().st_mtime_ns for p in export.iterdir()} == before
    # so do the same tensors under other header metadata (how a finished run's rerun saves them); other tensors do not
    import torch
    from safetensors.torch import save_file

    t = {"w": torch.arange(4.0)}
    save_file(t, str(src / "lora.safetensors"), metadata={"a": "1"})
    export_dir(src, export, run_root)
    save_file(t, str(src / "lora.safetensors"), metadata={"format": "pt", "a": "1"})
    before = {p.name: p.stat().st_mtime_ns for p in export.iterdir()}
    export_dir(src, export, run_root)
    assert {p.name: p.stat().st_mtime_ns for p in export.iterdir()} == before
    save_file({"w": torch.arange(4.0) + 1}, str(src / "lora.safetensors"))
    export_dir(src, export, run_root)
    assert {p.name: p.stat().st_mtime_ns for p in export.iterdir()} != before
    (src / "lora.safetensors").unlink()
    # a user's folder is never deleted
    mine = tmp_path / "my_models"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"export_dir: .*my_models is a directory raypref did not export to"):
        export_dir(src, mine, run_root)
    assert (mine / "keep.txt").read_text() == "mine"
    # one inside the run's own dirs (an export from before the mark) is replaced
    legacy = run_root / "reward" / "model"
    legacy.mkdir(parents=True)
    (legacy / "old.bin").write_text("x")
    export_dir(src, legacy, run_root)
    assert sorted(p.name for p in legacy.iterdir()) == [EXPORT_MARK, "weights.safetensors"]


def test_an_export_records_its_run_and_another_run_replacing_it_is_warned_of(tmp_path, capsys):
    from raypref.train_checkpoint import EXPORT_MARK, export_dir, exported_by, warn_if_another_run

    src = tmp_path / "ckpt" / "lora"
    src.mkdir(parents=True)
    (src / "weights.bin").write_text("dpo")
    run_root = tmp_path / "run"
    export = run_root / "train" / "lora"
    warn_if_another_run(export, "dpo", False)  # nothing exported yet
    export_dir(src, export, run_root, "dpo")
    assert exported_by(export) == "dpo"
    warn_if_another_run(export, "dpo", False)  # the same method again: its own export
    assert "[train] warning" not in capsys.readouterr().out
    # another method would replace it (train sft after train dpo: both export train/lora)
    warn_if_another_run(export, "sft", False)
    out = capsys.readouterr().out
    assert f"[train] warning: {export} holds the dpo run's export; this sft run replaces it when it finishes" in out
    assert "To keep both, copy" in out and "run sft with another output_dir\n" in out
    warn_if_another_run(export, "pcclip", True)  # a stage with an export_dir says so
    assert "run pcclip with another output_dir or export_dir\n" in capsys.readouterr().out
    (src / "weights.bin").write_text("sft")
    export_dir(src, export, run_root, "sft")
    assert exported_by(export) == "sft" and (export / "weights.bin").read_text() == "sft"
    # an export from before the record (its mark a line of text) names no run: no warning, replaced as before
    (export / EXPORT_MARK).write_text("exported by raypref; a re-export replaces this directory\n")
    assert exported_by(export) is None
    warn_if_another_run(export, "dpo", False)
    assert "[train] warning" not in capsys.readouterr().out
    (src / "weights.bin").write_text("dpo")
    export_dir(src, export, run_root, "dpo")
    assert exported_by(export) == "dpo" and (export / "weights.bin").read_text() == "dpo"


def test_orphaned_resume_copies_are_removed_and_live_ones_kept(tmp_path):
    import os
    import subprocess
    import sys

    from raypref.train_checkpoint import COPY_PREFIX, remove_orphaned_copies

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f"{COPY_PREFIX}{gone.stdout.strip()}-abc"
    live = tmp_path / f"{COPY_PREFIX}{os.getpid()}-def"
    other = tmp_path / f"{COPY_PREFIX}xyz"  # not one of ours: no pid in its name
    for d in (dead, live, other):
        (d / "lora").mkdir(parents=True)
    assert remove_orphaned_copies(tmp_path) == 1
    assert not dead.exists() and live.exists() and other.exists()


@pytest.mark.slow
def test_a_failed_worker_is_restarted_from_the_latest_checkpoint_when_asked(ray_session, tmp_path):
    from types import SimpleNamespace

    import ray.cloudpickle
    import flaky_train
    from raypref.train_checkpoint import fit_and_export

    ray.cloudpickle.register_pickle_by_value(flaky_train)  # the workers cannot import tests/ modules
    flaky_loop = flaky_train.flaky_loop

    def run(where, max_failures):
        out = tmp_path / where / "flaky"
        out.mkdir(parents=True)
        scale = SimpleNamespace(num_workers=1, use_gpu=False, cpus_per_worker=1.0, max_failures=max_failures)
        return fit_and_export(flaky_loop, scale, {"marker": str(tmp_path / where / "marker")}, out, "flaky", "model",
                              out / "model", section="flaky"), out

    # the first attempt checkpoints step 1 and dies; the restart resumes there and runs step 2
    hist, out = run("restarted", 1)
    assert hist == [{"step": 1, "attempt": 0}, {"step": 2, "attempt": 1}]
    assert (out / "model" / "weights.txt").read_text() == "2"
    # (with max_failures 0, Ray Train's default, the same failure ends the run: see test_train_eval's bad image)


def test_skip_groups_reads_past_the_groups_a_checkpoint_trained_on():
    from raypref.train_step import skip_groups

    read = []
    batches = (read.append(i) or i for i in range(5))  # records each batch as it is read
    left = [[b for b, _ in g] for g in skip_groups(micro_groups(batches, 2), 1)]
    assert left == [[2, 3], [4]] and read == [0, 1, 2, 3, 4]  # the first group was read, not yielded


def test_a_progress_line_shows_once_under_ray_trains_print(monkeypatch, capsys):
    import builtins
    import logging
    import sys

    import ray.train
    from ray.train.v2._internal.logging.patch_print import redirected_print

    from raypref.train_checkpoint import REPORT_EVERY, report_step

    # a Ray Train worker: print is Train's, sys.stdout is Ray's log file (not sys.__stdout__), and the
    # root logger shows INFO on a console handler
    root, handler = logging.getLogger(), logging.StreamHandler(sys.stdout)
    monkeypatch.setattr(builtins, "print", redirected_print)
    monkeypatch.setattr(ray.train, "report", lambda *a, **k: None)
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        report_step(0, {"phase": 1, "step": REPORT_EVERY}, [], {}, None)
        report_step(1, {"phase": 1, "step": REPORT_EVERY}, [], {}, None)  # only rank 0 shows it
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert capsys.readouterr().out.count(f'{{"phase": 1, "step": {REPORT_EVERY}}}') == 1


def test_the_step_history_is_strict_json_and_a_resume_reads_its_nan_back(monkeypatch, tmp_path, capsys):
    import json
    import math
    import shutil

    import ray.train

    from raypref.train_checkpoint import METRICS_FILE, load_state, report_step

    def strict(text):  # json.loads alone takes a bare NaN
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"not JSON: {c} in {text!r}"))

    saved = tmp_path / "ckpt"
    monkeypatch.setattr(ray.train, "report", lambda m, checkpoint=None: shutil.copytree(checkpoint.path, saved))
    history = [{"step": 1, "loss": 0.5, "eval_accuracy": float("nan")},
               {"step": 2, "loss": float("inf"), "eval_accuracy": 1.0}]
    report_step(0, history[-1], history, {"step": 2}, lambda d: None)
    lines = (saved / METRICS_FILE).read_text().splitlines()
    assert [strict(x) for x in lines] == [{"step": 1, "loss": 0.5, "eval_accuracy": None},
                                          {"step": 2, "loss": None, "eval_accuracy": 1.0}]
    assert strict(capsys.readouterr().out.splitlines()[-1]) == {"step": 2, "loss": None, "eval_accuracy": 1.0}

    class Ckpt:  # what ray.train.get_checkpoint() gives a resumed worker
        def to_directory(self, d):
            shutil.copytree(saved, d, dirs_exist_ok=True)

    _, resumed, _ = load_state(Ckpt())
    assert math.isnan(resumed[0]["eval_accuracy"]) and math.isnan(resumed[1]["loss"])  # as the loop had them
    assert resumed[0]["loss"] == 0.5 and resumed[1]["step"] == 2
