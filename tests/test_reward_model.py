"""Reward model: Bradley-Terry loss on hand values, the model's export, training in Ray Train (1 worker,
then resumed on 2), the export as a build scorer, and the preference-accuracy harness."""

import json
import logging
import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from raypref import images as I
from raypref import schema as S
from raypref.losses import bradley_terry_loss, reward_model_loss
from raypref.pref_accuracy import groups_to_sides, pairs_to_groups, preference_accuracy
from raypref.reward_model import CONFIG_FILE, WEIGHTS_FILE, RewardModel, preference_targets
from raypref.train_reward import heldout_mask

ASPECTS = ["prompt_following", "aesthetic"]
LN3 = math.log(3.0)  # sigmoid(ln 3) = 3/4


# -- pure functions, hand values ---------------------------------------------------------------


def test_bradley_terry_strict_and_tie_hand_values():
    rc = torch.tensor([0.0, LN3, 0.0, LN3])
    rr = torch.zeros(4)
    y = torch.tensor([1.0, 1.0, 0.5, 0.5])
    loss, m = bradley_terry_loss(rc, rr, y)
    # strict: -log sigmoid(d): ln 2, -ln(3/4); tie: -(ln sigmoid(d) + ln sigmoid(-d)) / 2: ln 2, -(ln 3/4 + ln 1/4)/2
    per = [math.log(2), -math.log(0.75), math.log(2), -(math.log(0.75) + math.log(0.25)) / 2]
    assert float(loss) == pytest.approx(sum(per) / 4, abs=1e-6)
    assert float(m["strict_pairs"]) == 2
    assert float(m["accuracy"]) == pytest.approx(0.75)  # d = 0 on a strict pair is half right, d > 0 right


def test_bradley_terry_mask_and_empty_mask():
    rc = torch.tensor([LN3, -LN3, 5.0])
    rr = torch.zeros(3)
    y = torch.tensor([1.0, 1.0, 0.0])
    loss, m = bradley_terry_loss(rc, rr, y, weight=torch.tensor([1.0, 0.0, 0.0]))
    assert float(loss) == pytest.approx(-math.log(0.75), abs=1e-6)  # only the first entry counts
    assert float(m["strict_pairs"]) == 1 and float(m["accuracy"]) == 1.0
    # nothing labelled: the loss is 0 but still a graph (DDP needs every head in the backward)
    w = torch.tensor([0.3], requires_grad=True)
    loss, _ = bradley_terry_loss(w * 2, torch.zeros(1), torch.ones(1), weight=torch.zeros(1))
    loss.backward()
    assert float(loss.detach()) == 0.0 and w.grad is not None and float(w.grad) == 0.0


def test_bradley_terry_gradient_raises_chosen():
    rc = torch.zeros(2, requires_grad=True)
    loss, _ = bradley_terry_loss(rc, torch.zeros(2), torch.tensor([1.0, 0.5]))
    loss.backward()
    assert rc.grad[0] < 0  # descending raises the chosen reward
    assert float(rc.grad[1]) == 0.0  # a tie at equal rewards is already at its minimum


def test_reward_model_loss_adds_pooled_aspects():
    oc, orr, label = torch.tensor([LN3]), torch.zeros(1), torch.ones(1)
    ac = torch.tensor([[LN3, 0.0, 9.0]])
    ar = torch.zeros(1, 3)
    target = torch.tensor([[1.0, 0.5, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, m = reward_model_loss(oc, orr, label, ac, ar, target, mask, aspect_weight=2.0)
    aspects = (-math.log(0.75) + math.log(2)) / 2  # the masked third aspect does not count
    assert float(m["loss_aspects"]) == pytest.approx(aspects, abs=1e-6)
    assert float(loss) == pytest.approx(-math.log(0.75) + 2 * aspects, abs=1e-6)
    only, m2 = reward_model_loss(oc, orr, label)
    assert float(only) == pytest.approx(-math.log(0.75), abs=1e-6) and "loss_aspects" not in m2


def test_preference_targets_ties_and_nan():
    t, w = preference_targets([7, 3, 5, np.nan, 2], [4, 3, 6, 1, np.nan])
    assert t.tolist() == [1.0, 0.5, 0.0, 0.5, 0.5]
    assert w.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_preference_accuracy_tie_rule():
    chosen = [0.9, 0.2, 0.5, 0.7, np.nan, 0.1, 0.3]
    rejected = [0.1, 0.8, 0.5, 0.2, 0.4, 0.9, 0.3]
    labels = [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.5]
    r = preference_accuracy(chosen, rejected, labels)
    # agree: pairs 0, 3 and 5 (label 0: the rejected side is preferred and scored higher);
    # disagree: 1; scorer tie: 2 (half); unscored: 4; tie-labelled: 6 (excluded)
    assert (r["agree"], r["disagree"], r["scorer_ties"], r["unscored"], r["tie_labelled"]) == (3, 1, 1, 1, 1)
    assert r["pairs"] == 5 and r["accuracy"] == pytest.approx(3.5 / 5)
    assert r["ci95_low"] < 0.7 < r["ci95_high"]
    wide = preference_accuracy(chosen, rejected, labels, tie_tolerance=0.65)
    assert (wide["agree"], wide["scorer_ties"], wide["disagree"]) == (2, 3, 0)  # |d| 0.6 and 0.5 now tie too
    # pairs of one prompt share its images: clustered by prompt, the interval takes the design effect
    # of the scored pairs' outcomes (pairs 0, 1, 2, 3, 5: 1, 0, 0.5, 1, 1 over prompts p, q, q, p, r)
    from raypref.metrics import design_effect, wilson_interval

    prompts = ["p", "q", "q", "p", "x", "r", "r"]
    c = preference_accuracy(chosen, rejected, labels, clusters=prompts)
    deff = design_effect([1, 0, 0.5, 1, 1], ["p", "q", "q", "p", "r"])
    assert c["design_effect"] == pytest.approx(deff) and deff > 1
    assert (c["ci95_low"], c["ci95_high"]) == pytest.approx(wilson_interval(3.5, 5, deff=deff))


def test_swap_words_whole_words_only():
    from raypref.mirroring import swap_words

    swap = {"left": "right", "right": "left"}
    assert swap_words("a red circle left of a blue square", swap) == "a red circle right of a blue square"
    assert swap_words("a red circle on the right", swap) == "a red circle on the left"
    assert swap_words("a leftover rightward circle", swap) == "a leftover rightward circle"
    # beside punctuation, and in any case
    assert swap_words("Left, a circle; right.", swap) == "Right, a circle; left."
    assert swap_words("LEFT of (right)", swap) == "RIGHT of (left)"


def test_distinct_images_hand_values():
    from raypref.train_reward import distinct_images

    # three pairs over images a, b, c of prompt p (all_pairs of 3), and one pair of prompt q whose
    # id "a" is another image (ids are only unique with their prompt)
    order, ci, ri = distinct_images(["a", "a", "b", "a"], ["b", "c", "c", "x"], ["p", "p", "p", "q"])
    # chosen side first, rows in order: a|p (0), b|p (1), a|q (2); then c|p (3), x|q (4)
    assert order == [(0, 0), (0, 2), (0, 3), (1, 1), (1, 3)]
    assert ci.tolist() == [0, 0, 1, 2] and ri.tolist() == [1, 3, 3, 4]


def test_forward_pairs_encodes_each_image_once_and_mirrors_pairs(tiny_clip):
    from PIL import ImageOps

    from raypref.train_reward import forward_pairs

    torch.manual_seed(0)
    model = RewardModel.create(tiny_clip, aspects=[], hidden=8).eval()
    ims = [_img((250, 0, 0)), _img((0, 0, 250)), _img((0, 250, 0))]
    ims[0].paste((255, 255, 0), (0, 0, 10, 10))  # not mirror-symmetric
    prompts = ["a red circle on the left"] * 3
    batch = {S.PROMPT: np.array(prompts, dtype=object), S.CHOSEN_ID: np.array(["a", "a", "b"], dtype=object),
             S.REJECTED_ID: np.array(["b", "c", "c"], dtype=object), S.LABEL: np.ones(3, dtype=np.float32),
             S.CHOSEN_IMAGE: np.array([I.encode(ims[i]) for i in (0, 0, 1)], dtype=object),
             S.REJECTED_IMAGE: np.array([I.encode(ims[i]) for i in (1, 2, 2)], dtype=object)}
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    with torch.no_grad():
        oc, orj, *_ = forward_pairs(model, model.backbone, batch, [], "cpu")
        direct = model.score(ims, prompts)[""]
        assert seen[0] == 3  # three pairs, three distinct images: each encoded once
        np.testing.assert_allclose(oc[""].numpy(), direct[[0, 0, 1]], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(orj[""].numpy(), direct[[1, 2, 2]], rtol=1e-5, atol=1e-6)
        # pairs 0 and 1 mirrored: their images are scored mirrored, with the prompt's words swapped
        flip = np.array([True, True, False])
        fc, fr, *_ = forward_pairs(model, model.backbone, batch, [], "cpu", flip, {"left": "right", "right": "left"})
        mirrored = model.score([ImageOps.mirror(im) for im in ims], ["a red circle on the right"] * 3)[""]
    np.testing.assert_allclose(fc[""].numpy()[:2], mirrored[[0, 0]], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fr[""].numpy(), [mirrored[1], mirrored[2], direct[2]], rtol=1e-5, atol=1e-6)
    assert not np.allclose(mirrored[0], direct[0])  # the flip is visible to the model
    assert seen[-2] == 5  # a, b, c mirrored + b, c plain (the score() calls come after)


def test_heldout_mask_is_deterministic_and_by_prompt():
    ids = [S.prompt_id(f"prompt {i}") for i in range(400)]
    m1, m2 = heldout_mask(ids, 0.25, seed=0), heldout_mask(ids, 0.25, seed=0)
    assert (m1 == m2).all() and 0.15 < m1.mean() < 0.35
    assert (heldout_mask(ids + ids[:5], 0.25)[-5:] == m1[:5]).all()  # same prompt, same side
    assert (heldout_mask(ids, 0.25, seed=1) != m1).any()


# -- the model and its export (no Ray) ---------------------------------------------------------


def _img(rgb, size=32):
    return Image.new("RGB", (size, size), tuple(int(c) for c in rgb))


def test_freeze_modes_and_export_roundtrip(tiny_clip, tmp_path, caplog):
    full = RewardModel.create(tiny_clip, aspects=ASPECTS, hidden=16)
    assert all(p.requires_grad for n, p in full.backbone.clip.named_parameters() if n != "logit_scale")
    frozen = RewardModel.create(tiny_clip, aspects=ASPECTS, hidden=16, freeze="all")
    assert frozen.backbone_parameters() == []
    part = RewardModel.create(tiny_clip, aspects=ASPECTS, hidden=16, freeze="all_but_last", unfrozen_blocks=1)
    trainable = {n for n, p in part.backbone.clip.named_parameters() if p.requires_grad}
    assert any("visual.transformer.resblocks.1." in n for n in trainable)
    assert any(n.startswith("transformer.resblocks.1.") for n in trainable)
    assert not any(".resblocks.0." in n for n in trainable)
    assert {"visual.proj", "text_projection", "ln_final.weight"} <= trainable
    assert "token_embedding.weight" not in trainable and "visual.conv1.weight" not in trainable

    images = [_img((255, 0, 0)), _img((0, 0, 255)), _img((30, 200, 30))]
    prompts = ["a red circle", "a blue square", "two green stars"]
    before = full.score(images, prompts, batch_size=2)
    assert set(before) == {"", *ASPECTS} and before[""].shape == (3,)
    d = full.save(tmp_path / "rm")
    assert sorted(p.name for p in d.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE, "backbone"])
    cfg = json.loads((d / CONFIG_FILE).read_text())
    assert cfg["aspects"] == ASPECTS and cfg["backbone"]["kind"] == "open_clip" and cfg["heads"][0] == "overall"
    with caplog.at_level(logging.WARNING):
        loaded = RewardModel.load(d)
    # the backbone dir holds no weights of its own (they are in the export's safetensors): no
    # "initialized randomly" warning from open_clip, which would mislead
    assert not [r for r in caplog.records if "weights" in r.getMessage()]
    after = loaded.score(images, prompts)
    for k in before:
        np.testing.assert_allclose(after[k], before[k], rtol=1e-5, atol=1e-5)
    with pytest.raises(FileNotFoundError, match=CONFIG_FILE):
        RewardModel.load(tmp_path)



@pytest.mark.parametrize("batch_size", [0, -1, 2.5])
def test_reward_model_scorer_refuses_a_batch_size_below_one_naming_the_key(batch_size, tmp_path):
    # checked before the model loads: else range() failed in every batch with no scorer named
    from raypref.registry import resolve

    with pytest.raises(ValueError, match=r"^scorer 'rm': batch_size: Input should be "):
        resolve("reward_model")(name="rm", model=str(tmp_path), batch_size=batch_size)

def test_pairs_to_groups_keeps_chosen_first():
    from actors.compressibility import JpegCompressibility

    rng = np.random.default_rng(0)
    noisy = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(3)]
    flat = [_img((9, 9, 9)) for _ in range(3)]
    pairs = pa.table({S.IMPORT_ROW: [7, 8, 9], S.PROMPT_ID: ["a", "b", "c"], S.PROMPT: ["x", "y", "z"], S.CHOSEN_ID: ["c0", "c1", "c2"],
                      S.REJECTED_ID: ["r0", "r1", "r2"], S.CHOSEN_IMAGE: [I.encode(im) for im in flat],
                      S.REJECTED_IMAGE: [I.encode(im) for im in noisy], S.LABEL: pa.array([1.0, 1.0, 0.5], pa.float32())})
    sides = groups_to_sides(JpegCompressibility("jpeg")(pairs_to_groups(pairs)))
    direct = JpegCompressibility("jpeg")
    np.testing.assert_allclose(sides.column("chosen_score_jpeg").to_numpy(), direct.score(flat, ["x"] * 3))
    np.testing.assert_allclose(sides.column("rejected_score_jpeg").to_numpy(), direct.score(noisy, ["x"] * 3))
    assert sides.column(S.LABEL).to_pylist() == [1.0, 1.0, 0.5]
    assert sides.column(S.IMPORT_ROW).to_pylist() == [7, 8, 9]  # the key a resumed run's scores join on


# -- Ray Train, the build and the harness ------------------------------------------------------


def synthetic_pairs(d, n_prompts=48, per_prompt=2, seed=0):
    """A learnable pairs set: the chosen image is bright, the rejected dark; every 6th pair a tie.
    Aspect columns of a 'judge': prompt_following follows the label, aesthetic has ties and NaN."""
    rng = np.random.default_rng(seed)
    rows = {k: [] for k in (S.PROMPT_ID, S.PROMPT, S.CHOSEN_ID, S.REJECTED_ID, S.CHOSEN_IMAGE, S.REJECTED_IMAGE, S.LABEL)}
    cols = [S.score_column("judge", a) for a in ASPECTS]
    side = {f(c): [] for c in cols for f in (S.chosen_column, S.rejected_column)}
    k = 0
    for p in range(n_prompts):
        prompt = f"a shape number {p}"
        for j in range(per_prompt):
            tie = k % 6 == 5
            hi = rng.integers(170, 256, 3)
            lo = hi if tie else rng.integers(0, 70, 3)
            rows[S.PROMPT_ID].append(S.prompt_id(prompt))
            rows[S.PROMPT].append(prompt)
            rows[S.CHOSEN_ID].append(f"c{k}")
            rows[S.REJECTED_ID].append(f"r{k}")
            rows[S.CHOSEN_IMAGE].append(I.encode(_img(hi)))
            rows[S.REJECTED_IMAGE].append(I.encode(_img(lo)))
            rows[S.LABEL].append(0.5 if tie else 1.0)
            side[S.chosen_column(cols[0])].append(5.0 if tie else 8.0)
            side[S.rejected_column(cols[0])].append(5.0 if tie else 3.0)
            side[S.chosen_column(cols[1])].append(np.nan if k % 4 == 0 else 6.0)
            side[S.rejected_column(cols[1])].append(6.0)
            k += 1
    base = {f.name: rows.get(f.name, [None] * k) for f in S.PAIRS_SCHEMA}
    table = pa.table({**base, **side}).cast(S.pairs_schema(cols))
    for i, part in enumerate(("a", "b")):  # two pairs dirs: reward.pairs may be a list
        (d / part).mkdir(parents=True, exist_ok=True)
        pq.write_table(table.slice(0, k // 2) if i == 0 else table.slice(k // 2), d / part / "part-0.parquet")
    return table


def _cfg(out, pairs, **reward):
    from raypref.config import validate

    r = {"pairs": pairs if isinstance(pairs, list) else str(pairs), "backbone": "tiny:clip", "backbone_pretrained": None, "aspects": ASPECTS,
         "aspect_scorer": "judge", "hidden": 32, "learning_rate": 3e-3, "backbone_learning_rate": 1e-4,
         "batch_size": 8, "heldout_fraction": 0.25, "shuffle_buffer": 16,
         "lr_schedule": "cosine", "warmup_steps": 5}
    r.update(reward)
    return validate({"output_dir": str(out), "ray": {"num_cpus": 8}, "reward": r})


def _history(out):
    return [json.loads(x) for x in (out / "reward" / "metrics.jsonl").read_text().splitlines() if x]


@pytest.mark.slow
def test_train_resume_two_workers_export_score_in_build_and_accuracy(ray_session, tmp_path, tiny_clip, prompts_file,
                                                                     monkeypatch):
    from safetensors.torch import load_file

    from raypref.build import run_build
    from raypref.config import validate
    from raypref.pref_accuracy import run_accuracy
    from raypref.train_reward import run_train_reward
    from tests.conftest import tiny_config_dict

    pairs = tmp_path / "pairs"
    table = synthetic_pairs(pairs)
    out = tmp_path / "run"
    # hflip: the mirrored pairs keep their brightness labels, so learning is unchanged; the path runs
    # the pairs given as a list of two dirs, read as one dataset
    s1 = run_train_reward(_cfg(out, [str(pairs / "a"), str(pairs / "b")], max_steps=30, eval_every=15,
                               checkpoint_every=30, hflip=0.5))
    hist1 = _history(out)
    held = int(heldout_mask(table.column(S.PROMPT_ID).to_pylist(), 0.25, 0).sum())
    assert s1["final_step"] == 30 and (s1["pairs_train"], s1["pairs_heldout"]) == (table.num_rows - held, held)
    assert [h["step"] for h in hist1] == list(range(31))
    evals = [h for h in hist1 if "eval_loss" in h]
    assert [h["step"] for h in evals] == [0, 15, 30]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 0.05  # held-out loss fell
    assert evals[-1]["eval_accuracy"] >= 0.9
    assert {f"eval_accuracy_{c}" for c in ["score_judge_prompt_following", "score_judge_aesthetic"]} <= set(evals[-1])
    export = out / "reward" / "model"
    trained = load_file(str(export / WEIGHTS_FILE))
    fresh = RewardModel.create(tiny_clip, aspects=ASPECTS, hidden=32).state_dict()
    assert not torch.equal(trained["overall.weight"], fresh["overall.weight"])
    assert not torch.equal(trained["backbone.clip.visual.proj"], fresh["backbone.clip.visual.proj"])

    # a rerun with a longer budget, now data-parallel on 2 workers, resumes at step 30: the history
    # continues, not restarts
    # whole prompts shuffled per epoch: both workers still take the same number of steps (it crosses an epoch)
    # and now 2 micro-batches a step under bf16 autocast, with gradient checkpointing: the schedule still
    # counts optimizer steps
    # and as large pairs are read: cache_pairs_max_mb=0 holds nothing in the object store, both splits stream
    # from the files every epoch, counted from the prompt ids alone, and ray.v1_read_max_mb=0 reads them with
    # Ray Data's V2 reader; they come out as the cached run's did
    cfg2 = _cfg(out, [str(pairs / "a"), str(pairs / "b")], max_steps=36, eval_every=15,
                checkpoint_every=30, num_workers=2, hflip=0.5, shuffle_buffer=0, prompt_shuffle_buffer=16,
                grad_accum_steps=2, precision="bf16", gradient_checkpointing=True, cache_pairs_max_mb=0)
    cfg2.ray.v1_read_max_mb = 0
    monkeypatch.setenv("RAYPREF_V1_READ_MAX_MB", os.environ["RAYPREF_V1_READ_MAX_MB"])  # put back after the test
    s2 = run_train_reward(cfg2)
    hist2 = _history(out)
    assert s2["workers"] == 2 and s2["final_step"] == 36
    assert s1["pairs_cached"] is True and s2["pairs_cached"] is False
    assert {h["micro_batches"] for h in hist2[1:31]} == {1} and {h["micro_batches"] for h in hist2[31:]} <= {1, 2}
    assert sum(h["micro_batches"] == 2 for h in hist2[31:]) >= 4  # only an epoch's last step may be short
    assert (s2["pairs_train"], s2["pairs_heldout"]) == (s1["pairs_train"], s1["pairs_heldout"])
    assert [h["step"] for h in hist2] == list(range(37))
    assert hist2[:31] == hist1
    # the cosine schedule warmed up, decayed, and was replayed to the resumed step over the new
    # max_steps (a longer curve: the rate rises again). Each step records the rate it took: step 6
    # the peak after 5 warm-up steps, step 31 of 36 lr * (1 + cos(pi * (30 - 5) / (36 - 5))) / 2
    assert hist1[1]["lr"] < hist1[6]["lr"] == pytest.approx(3e-3) and hist1[30]["lr"] < hist1[10]["lr"]
    assert hist1[1]["lr"] == 0.0
    assert hist2[31]["lr"] == pytest.approx(3e-3 * (1 + math.cos(math.pi * 25 / 31)) / 2, rel=1e-6)
    last = hist2[-1]
    assert math.isfinite(last["loss"]) and last["eval_loss"] < evals[0]["eval_loss"]
    # the held-out pairs are split between the workers and their sums all-reduced: every pair counted
    # once (an equal split may leave out fewer than one per worker)
    assert s2["pairs_heldout"] - 1 <= last["eval_pairs"] <= s2["pairs_heldout"]

    # the export scores images inside a build, as the 'reward_model' scorer
    d = tiny_config_dict(tmp_path / "build", prompts_file)
    d["build"]["generators"] = [{"name": "render", "cls": "shapes_render", "num_samples": 4}]  # no model to load
    d["build"]["scorers"] = [{"name": "rm", "cls": "reward_model", "model": str(export), "pool": {"batch_size": 4, "num_cpus": 0.5}}]
    d["build"]["limit"] = 2  # the file's first two prompts, both in the shapes grammar
    bs = run_build(validate(d))
    assert bs["samples"] == 8 and bs["samples_without_score"] == 0 and bs["pairs"] > 0
    samples = pq.read_table(tmp_path / "build" / "build" / "samples")
    model = RewardModel.load(export)
    direct = model.score([I.decode(b) for b in samples.column(S.IMAGE).to_pylist()], samples.column(S.PROMPT).to_pylist())
    np.testing.assert_allclose(samples.column("score_rm").to_numpy(), direct[""], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(samples.column("score_rm_aesthetic").to_numpy(), direct["aesthetic"], rtol=1e-4, atol=1e-5)

    # the accuracy harness: the trained model's outputs side by side on the pairs (scorers side by side:
    # test_accuracy_resume.py)
    a = validate({"output_dir": str(tmp_path / "acc"), "accuracy": {"pairs": str(pairs), "format": "raypref", "scorers": [
        {"name": "rm", "cls": "reward_model", "model": str(export), "pool": {"batch_size": 16, "num_cpus": 0.5}}]}})
    r = run_accuracy(a)
    n_tie = int((table.column(S.LABEL).to_numpy() == 0.5).sum())
    assert r["tie_labelled"] == n_tie and r["strict_pairs"] == table.num_rows - n_tie
    rows = {(x["scorer"], x["output"]): x for x in r["rows"]}
    assert set(rows) == {("rm", "overall"), ("rm", "prompt_following"), ("rm", "aesthetic")}
    assert all(x["pairs"] == table.num_rows - n_tie for x in rows.values())
    assert rows[("rm", "overall")]["accuracy"] >= 0.9  # it learned brightness (training + held-out pairs)
    md = (tmp_path / "acc" / "accuracy" / "accuracy.md").read_text()
    assert "| rm | overall |" in md and "| rm | aesthetic |" in md and "Tie rule" in md
    csv_lines = (tmp_path / "acc" / "accuracy" / "accuracy.csv").read_text().splitlines()
    assert csv_lines[0].startswith("scorer,output,pairs") and len(csv_lines) == 4
    # every pair scored once, streamed from a staged copy that is gone once scored
    scored = pq.read_table(tmp_path / "acc" / "accuracy" / "scores.parquet")
    assert sorted(scored.column(S.CHOSEN_ID).to_pylist()) == sorted(table.column(S.CHOSEN_ID).to_pylist())
    assert not (tmp_path / "acc" / "accuracy" / "staged").exists()


@pytest.mark.slow
def test_a_short_run_says_how_many_steps_its_loss_means_average(ray_session, tmp_path):
    from raypref.train_reward import run_train_reward, summary_text

    pairs = tmp_path / "pairs"
    synthetic_pairs(pairs, n_prompts=16)
    s = run_train_reward(_cfg(tmp_path / "run", [str(pairs / "a"), str(pairs / "b")], max_steps=3, eval_every=3,
                              checkpoint_every=3, warmup_steps=0, aspect_scorer=None))
    losses = [h["loss"] for h in _history(tmp_path / "run") if h["step"] > 0 and "loss" in h]
    # under 20 steps, each of the two means is of every step there is
    assert len(losses) == 3 and s["loss_mean_of"] == 3
    assert s["loss"] == pytest.approx([sum(losses) / 3] * 2)
    text = summary_text(s)
    assert f"step 3: loss (mean of 3 steps) {s['loss'][0]:.4f} -> {s['loss'][1]:.4f};" in text
    assert "mean of 20" not in text
    assert "loss (mean of 20 steps)" in summary_text({**s, "loss_mean_of": 20})
    assert "loss (mean of 1 step) " in summary_text({**s, "loss_mean_of": 1})
    assert "step 3: loss n/a;" in summary_text({**s, "loss": None, "loss_mean_of": 0})


def test_prompt_shuffle_needs_no_row_shuffle(tmp_path):
    from raypref.train_reward import run_train_reward

    synthetic_pairs(tmp_path / "pairs", n_prompts=4)
    with pytest.raises(ValueError, match=r"prompt_shuffle_buffer=32 needs reward.shuffle_buffer=0 \(got 16\)"):
        run_train_reward(_cfg(tmp_path / "run", tmp_path / "pairs", prompt_shuffle_buffer=32))


def test_order_key_groups_a_prompt_within_a_dir_and_parts_dirs():
    from raypref.train_reward import _order_key

    t = pa.table({S.PROMPT_ID: ["p", "p", "q"]})
    a = _order_key(t, source=0, seed=0).column(S.PAIR_ORDER).to_pylist()
    b = _order_key(t, source=1, seed=0).column(S.PAIR_ORDER).to_pylist()
    c = _order_key(t, source=0, seed=1).column(S.PAIR_ORDER).to_pylist()
    assert a[0] == a[1] != a[2]  # one key per prompt: a sort keeps its pairs together
    assert a[0] != b[0] and a[0] != c[0]  # another dir, another seed: another place


def test_interleave_mixes_pairs_dirs_and_keeps_prompts_whole(ray_session, tmp_path):
    from raypref.train_reward import _read_pairs

    table = synthetic_pairs(tmp_path)  # dir a: the first 24 prompts, dir b: the last 24
    paths = [str(tmp_path / "a"), str(tmp_path / "b")]
    first_b = set(table.column(S.PROMPT_ID).to_pylist()[table.num_rows // 2:])
    mixed = _read_pairs(paths, [], 64, interleave_seed=0).take_all()  # small: sorted in this process
    again = _read_pairs(paths, [], 64, interleave_seed=0).take_all()
    spread = _read_pairs(paths, [], 0, interleave_seed=0).take_all()  # over the cache limit: Ray Data's sort
    pid = lambda rows: [r[S.PROMPT_ID] for r in rows]
    assert sorted(r[S.CHOSEN_ID] for r in mixed) == sorted(table.column(S.CHOSEN_ID).to_pylist())  # nothing lost
    assert sorted(r[S.CHOSEN_ID] for r in spread) == sorted(table.column(S.CHOSEN_ID).to_pylist())
    assert pid(mixed) == pid(again) == pid(spread)  # seeded, either way: a resumed run sees the same order
    runs = [p for i, p in enumerate(pid(mixed)) if i == 0 or pid(mixed)[i - 1] != p]
    assert len(runs) == len(set(runs)) == 48  # each prompt's pairs in one run
    half = pid(mixed)[: len(mixed) // 2]
    assert 0 < sum(p in first_b for p in half) < len(half)  # both dirs in the first half
