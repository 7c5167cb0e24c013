"""SFT on the build's top images (the self-reward recipe): the selection and the loss on hand
values, then training in Ray Train with resume and the LoRA export."""

import json
import math

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch

from raypref import schema as S
from raypref.losses import diffusion_sft_loss
from raypref.train_sft import top_images


def test_top_images_keeps_exactly_the_best_with_ties_broken_by_id():
    ids = ["d", "a", "c", "b", "e"]
    scores = [0.5, 0.9, float("nan"), 0.5, 0.1]
    # 4 finite scores, p = 0.5: K = 2, a (0.9), then the tie at 0.5 goes to b before d
    keep, c = top_images(ids, scores, 0.5)
    assert keep.tolist() == [False, True, False, True, False]
    assert c == {"n": 5, "valid": 4, "eligible": 4, "kept": 2, "cut": 0.5}
    # the row order does not change the set
    perm = [4, 2, 0, 3, 1]
    keep2, _ = top_images([ids[i] for i in perm], [scores[i] for i in perm], 0.5)
    assert {ids[i] for i, k in zip(perm, keep2) if k} == {"a", "b"}
    assert top_images(ids, scores, 1.0)[0].tolist() == [True, True, False, True, True]  # NaN never kept
    assert top_images(ids, scores, 0.01)[1]["kept"] == 1  # any p > 0 keeps one
    # K is ceil(p x n) on p's decimal value: 0.07 of 100 is 7 (float math, ceil(7.000000000000001), gives 8)
    assert top_images([f"s{i}" for i in range(100)], list(range(100)), 0.07)[1]["kept"] == 7
    # per_prompt 1: each prompt's best image only (p: a; q: e), then the top p of those
    prompts = ["p", "p", "p", "p", "q"]
    keep, c = top_images(ids, scores, 1.0, prompts, per_prompt=1)
    assert keep.tolist() == [False, True, False, False, True] and (c["valid"], c["eligible"]) == (4, 2)
    keep, c = top_images(ids, scores, 0.5, prompts, per_prompt=2)  # p: a, b; q: e -> 3 eligible, K = 2: a, b
    assert keep.tolist() == [False, True, False, True, False] and (c["eligible"], c["kept"], c["cut"]) == (3, 2, 0.5)
    nothing, c = top_images(["x"], [float("nan")], 0.5)
    assert not nothing.any() and c["kept"] == 0 and c["cut"] is None
    with pytest.raises(ValueError, match=r"sft_top_p must be in \(0, 1\]"):
        top_images(ids, scores, 0.0)


def test_sft_loss_hand_values():
    # Ho et al. 2020 Eq. 14 per image, then the mean: image 0 errs by 1 everywhere (error 1), image 1
    # by 2 on one of two elements (error (4 + 0) / 2 = 2): loss 1.5
    pred = torch.zeros(2, 1, 2, 1)
    target = torch.tensor([[[[1.0], [1.0]]], [[[2.0], [0.0]]]])
    loss, m = diffusion_sft_loss(pred, target)
    assert loss.item() == pytest.approx(1.5) and m["err_spread"].item() == pytest.approx(1.0)


@pytest.mark.slow
def test_sft_trains_on_the_top_images_and_exports(built_run, tmp_path, capsys):
    from raypref import stages
    from raypref.config import validate
    from raypref.lora import LORA_FILE
    from tests.test_train_eval import _lora_b_norm

    base, _ = built_run
    d = base.model_dump(mode="json")
    d["output_dir"] = str(tmp_path / "r")
    d["train"].update(samples=str(base.stage_dir("build") / "samples"), sft_score="score_clip", sft_top_p=0.5,
                      max_steps=2, checkpoint_every=1, num_workers=2, hflip=0.5)  # a LoRA under DDP, images mirrored
    s = stages.train_sft(validate(d))
    samples = pads.dataset(str(base.stage_dir("build") / "samples")).to_table(columns=[S.SAMPLE_ID, "score_clip"])
    clip = samples.column("score_clip").to_numpy()
    k = math.ceil(0.5 * np.isfinite(clip).sum())
    assert s["method"] == "sft" and s["images"] == k and s["final_step"] == 2 and s["workers"] == 2
    # the listed images are exactly the k best by CLIP score
    chosen = pq.read_table(tmp_path / "r" / "train" / "sft_selected.parquet")
    best = set(np.asarray(samples.column(S.SAMPLE_ID).to_pylist())[np.argsort(-clip)[:k]])
    assert set(chosen.column(S.SAMPLE_ID).to_pylist()) == best
    assert min(chosen.column(S.SELECTED_SCORE).to_pylist()) == pytest.approx(s["score_cut"])
    # and the images training reads are exactly those
    from raypref.train_sft import kept_images

    rows = kept_images(base.stage_dir("build") / "samples", chosen, 64, 0.5).take_all()
    assert sorted(r[S.SAMPLE_ID] for r in rows) == sorted(best) and all(r[S.IMAGE] for r in rows)
    assert f"[train] sft (lora) on {k} images" in capsys.readouterr().out
    lora = tmp_path / "r" / "train" / "lora" / LORA_FILE
    assert _lora_b_norm(lora) > 0  # B starts at zero: the adapter learned
    hist = [json.loads(x) for x in (tmp_path / "r" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist] == [1, 2] and all(np.isfinite(h["loss"]) for h in hist)

    # DPO after SFT in the same output_dir exports to the same train/lora: it says so before training,
    # naming both methods and the dir, and its export then records DPO
    from raypref.train_checkpoint import exported_by

    assert exported_by(lora.parent) == "sft"
    dpo = {**d, "train": {**d["train"], "pairs": str(base.stage_dir("build") / "pairs"), "max_steps": 1,
                          "num_workers": 1}}
    stages.train_dpo(validate(dpo))
    out = capsys.readouterr().out
    assert f"[train] warning: {lora.parent} holds the sft run's export; this dpo run replaces it" in out
    assert "another output_dir" in out and exported_by(lora.parent) == "dpo"

    # (a longer budget resumes: the loop is DPO's, whose test resumes it; tests/test_gpu_train.py resumes
    # SFT on a GPU)
    # another score column is another run: not resumed from these checkpoints
    d["train"]["sft_score"] = S.SCORE
    with pytest.raises(ValueError, match=r"sft: .* other settings \(train\.sft_score: 'score_clip' -> 'score'\)"):
        stages.train_sft(validate(d))
    # a column the samples lack is named, in a fresh output_dir as over these checkpoints (checked first)
    d["train"]["sft_score"] = "score_nope"
    with pytest.raises(ValueError, match=r"train.sft_score: no column 'score_nope' in .*score columns: \[.*'score_clip'"):
        stages.train_sft(validate(d))


def test_sft_summary_line_says_how_images_were_chosen():
    from raypref.report import summary_line

    s = {"finetune": "lora", "images": 4, "prompts": 4, "top_p": 1.0, "images_scored": 16, "images_eligible": 4,
         "images_unscored": 0, "per_prompt": 1, "score": "score", "score_cut": 0.5, "workers": 1, "final_step": 3,
         "first_loss": 1.0, "last_loss": 0.9, "seconds": 2.0, "weights": "w", "method": "sft"}
    assert "(top 1 of each prompt's best 1, 4 of 16 by score, cut 0.5000; 0 unscored)" in summary_line("train", s, "x")
    assert "(top 1 of 16 by score" in summary_line("train", {**s, "per_prompt": None}, "x")


def test_samples_without_a_column_the_run_reads_are_refused_before_ray(tmp_path, ray_refused):
    import pyarrow as pa

    from raypref.config import validate
    from raypref.train_sft import run_train_sft
    from tests.conftest import tiny_config_dict

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    samples = tmp_path / "scores_only"  # a scores table without its images: the selection works, the loop cannot
    samples.mkdir()
    pq.write_table(pa.table({S.SAMPLE_ID: ["s1"], S.PROMPT_ID: ["p1"], S.PROMPT: ["a red circle"], S.SCORE: [1.0]}),
                   samples / "part-0.parquet")
    d = tiny_config_dict(tmp_path / "run", prompts)
    d["train"].update({"method": "sft", "samples": str(samples), "sft_score": S.SCORE})
    with pytest.raises(ValueError, match=r"train.samples: .*scores_only has no column\(s\) \['image'\]"):
        run_train_sft(validate(d))
