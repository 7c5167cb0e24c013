"""The shapes world behind the scorer interfaces: VQA, detector, simulated judge (no Ray)."""

import math

import numpy as np
import pyarrow as pa
import pytest

from raypref import images as I
from raypref import schema as S
from raypref.registry import resolve
from raypref.shapes import parse_prompt, render, render_perturbed


def _groups(rows):
    """rows: [(prompt, [PIL images])] -> a groups batch as the build pipeline streams it."""
    return pa.table({
        S.PROMPT_ID: [S.prompt_id(p) for p, _ in rows],
        S.PROMPT: [p for p, _ in rows],
        S.IMAGE: pa.array([[I.encode(im) for im in ims] for _, ims in rows], pa.list_(pa.binary())),
    })


def test_shapes_vqa_scores_and_aspects():
    good, _ = render(parse_prompt("a red circle on the left"), 1)
    moved, _ = render_perturbed(parse_prompt("a red circle on the left"), 1, "moved_object")
    rel, _ = render(parse_prompt("a blue square above a green cross"), 2)
    out = resolve("shapes_vqa")(name="vqa")(_groups([
        ("a red circle on the left", [good, moved]),
        ("a blue square above a green cross", [rel]),
        ("not a shapes prompt", [good]),
    ]))
    main = out.column(S.score_column("vqa")).to_pylist()
    assert main[0][0] == 1.0 and main[0][1] == pytest.approx(5 / 6)  # only the position question fails
    assert main[1] == [1.0] and math.isnan(main[2][0])
    pos = out.column(S.score_column("vqa", "position")).to_pylist()
    assert pos[0] == [1.0, 0.0] and math.isnan(pos[1][0])  # not applicable to a relation prompt
    assert out.column(S.score_column("vqa", "relation")).to_pylist()[1] == [1.0]
    assert out.column(S.score_column("vqa", "overall")).to_pylist()[0] == [1.0, 0.0]


def test_shapes_detector_scores_the_prompt_object():
    circle, _ = render(parse_prompt("a red circle"), 3)
    wrong, _ = render_perturbed(parse_prompt("a red circle"), 3, "wrong_shape")
    out = resolve("shapes_detector")(name="det")(_groups([("a red circle", [circle, wrong])]))
    hit, miss = out.column(S.score_column("det")).to_pylist()[0]
    assert hit > 0.8 and miss == 0.0


def test_simulated_judge_rubric_rationale_and_noise():
    img, _ = render(parse_prompt("two cyan squares"), 4)
    bad, _ = render_perturbed(parse_prompt("two cyan squares"), 4, "wrong_count")
    batch = _groups([("two cyan squares", [img, bad])])
    out = resolve("simulated_judge")(name="judge", noise=0.0)(batch)
    pf = out.column(S.score_column("judge", "prompt_following")).to_pylist()[0]
    assert pf[0] == 10.0 and pf[1] < 10.0
    for aspect in ("fidelity", "aesthetic", "harmlessness"):
        vals = out.column(S.score_column("judge", aspect)).to_pylist()[0]
        assert all(1.0 <= v <= 10.0 and v == round(v) for v in vals)
    main = out.column(S.score_column("judge")).to_pylist()[0]
    aspects = [out.column(S.score_column("judge", a)).to_pylist()[0][0] for a in
               ("prompt_following", "fidelity", "aesthetic", "harmlessness")]
    assert main[0] == pytest.approx(np.mean(aspects))
    reasons = out.column(S.rationale_column("judge")).to_pylist()[0]
    assert all(r.startswith("[simulated judge]") for r in reasons) and "count" in reasons[1]
    # noise moves the scores of distinct images (all of which pass); the same seed moves them the same way
    renders = [render(parse_prompt("two cyan squares"), s)[0] for s in range(16)]
    noisy = [resolve("simulated_judge")(name="judge", noise=3.0, seed=s)(_groups([("two cyan squares", renders)]))
             for s in (0, 0, 1)]
    cols = [n.column(S.score_column("judge", "prompt_following")).to_pylist()[0] for n in noisy]
    assert cols[0] == cols[1] and cols[0] != cols[2] and min(cols[0]) < 10.0
    with pytest.raises(ValueError, match=r"^scorer 'judge': noise: Input should be greater than or equal to 0, got -1"):
        resolve("simulated_judge")(name="judge", noise=-1)


JUDGE_COLUMNS = [S.score_column("judge")] + [S.score_column("judge", a)
                                             for a in ("prompt_following", "fidelity", "aesthetic", "harmlessness")]


def _judged(judge, rows, names):
    """Score rows [(prompt, [images])] with judge -> {name of (prompt, image): (main, four aspects)}."""
    out = judge(_groups(rows))
    cols = [out.column(c).to_pylist() for c in JUDGE_COLUMNS]
    return {names[p, im.tobytes()]: tuple(c[r][i] for c in cols)
            for r, (p, ims) in enumerate(rows) for i, im in enumerate(ims)}


def test_simulated_judge_noise_depends_on_image_prompt_and_seed_not_on_order_or_batches():
    rows = [(p, [render(parse_prompt(p), s)[0] for s in range(6)]
             + [render_perturbed(parse_prompt(p), s, k)[0] for s, k in enumerate(("wrong_count", "wrong_colour"))])
            for p in ("two cyan squares", "a red circle on the left")]
    names = {(p, im.tobytes()): f"{p} #{i}" for p, ims in rows for i, im in enumerate(ims)}
    assert len({im.tobytes() for _, ims in rows for im in ims}) == 16  # distinct images
    judge = resolve("simulated_judge")
    whole = _judged(judge(name="judge", noise=2.0, seed=5), rows, names)
    # reversed rows and images, on a fresh actor
    backwards = _judged(judge(name="judge", noise=2.0, seed=5), [(p, ims[::-1]) for p, ims in rows[::-1]],
                        names)
    # split into three calls on an actor that has already judged other images (a resume, another actor)
    warm = judge(name="judge", noise=2.0, seed=5)
    warm(_groups([("two blue circles", [render(parse_prompt("two blue circles"), 9)[0]] * 3)]))
    split = {}
    for part in ([(rows[1][0], rows[1][1][5:])], [(rows[0][0], rows[0][1])], [(rows[1][0], rows[1][1][:5])]):
        split.update(_judged(warm, part, names))
    assert whole == backwards == split
    # the same image twice in one batch gets the same scores
    img = rows[0][1][0]
    twice = judge(name="judge", noise=2.0, seed=5)(_groups([(rows[0][0], [img, img])]))
    assert all(out[0] == out[1] for out in (twice.column(c).to_pylist()[0] for c in JUDGE_COLUMNS))
    # the noise moves scores, and another seed or another prompt moves them otherwise
    clean = _judged(judge(name="judge", noise=0.0, seed=5), rows, names)
    other_seed = _judged(judge(name="judge", noise=2.0, seed=6), rows, names)
    assert whole != clean and whole != other_seed
    asked_otherwise = judge(name="judge", noise=2.0, seed=5)(_groups([("two cyan circles", rows[0][1])]))
    assert asked_otherwise.column(S.score_column("judge", "harmlessness")).to_pylist()[0] != \
        [whole[f"{rows[0][0]} #{i}"][4] for i in range(8)]
