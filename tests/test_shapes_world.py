"""The shapes world: grammar round-trip, splits, renderer, and the checker's agreement with ground truth.

Rates are measured on thousands of rendered samples and printed (run with -s to see them).
"""

from __future__ import annotations

import io
from collections import Counter, defaultdict
from functools import lru_cache

import numpy as np
import pytest
from PIL import Image, ImageFilter

from raypref.shapes import (
    ATTRIBUTES,
    COLOURS,
    COUNTS,
    HELDOUT_COMBOS,
    PERTURBATIONS,
    POSITIONS,
    RELATIONS,
    SHAPES,
    TEMPLATES,
    Obj,
    Spec,
    all_specs,
    answer,
    check,
    detect,
    parse_prompt,
    prompt_text,
    prompts,
    questions,
    render,
    render_perturbed,
    split_of,
    template_of,
)
from raypref.shapes.draw import shape_mask
from raypref.shapes.checker import relation_holds
from raypref.shapes.render import BORDER, GAP, RELATION_SEP


@lru_cache(maxsize=None)
def _by_template() -> dict[str, list[Spec]]:
    out = defaultdict(list)
    for spec in all_specs():
        out[template_of(spec)].append(spec)
    return dict(out)


def _samples(n: int, start: int = 0, templates=TEMPLATES) -> list[tuple[Spec, int]]:
    """n (spec, seed) pairs cycling over templates, specs drawn with a fixed generator."""
    rng = np.random.default_rng(1234 + start)
    out = []
    for i in range(n):
        pool = _by_template()[templates[i % len(templates)]]
        out.append((pool[int(rng.integers(len(pool)))], start + i))
    return out


def _degrade(img: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    img.filter(ImageFilter.GaussianBlur(0.6)).save(buf, "JPEG", quality=75)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


# ---- vocabulary and grammar -------------------------------------------------------------------


def test_vocabulary_sizes_and_colour_separation():
    assert len(COLOURS) >= 6 and len(SHAPES) == 4 and tuple(COUNTS) == (1, 2, 3, 4)
    assert len(POSITIONS) == 5 and set(RELATIONS) == {"left of", "right of", "above", "below"}
    rgb = np.array(list(COLOURS.values()), dtype=float)
    dists = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1)[np.triu_indices(len(rgb), 1)]
    assert dists.min() >= 150
    assert np.linalg.norm(rgb, axis=1).min() >= 150  # far from the black background too


def test_prompt_round_trip_over_every_spec():
    specs = all_specs()
    texts = [prompt_text(s) for s in specs]
    assert len(set(texts)) == len(texts) == len(set(specs))
    assert all(parse_prompt(t) == s for t, s in zip(texts, specs))
    assert Counter(template_of(s) for s in specs) == {"single": 24, "count": 72, "position": 120, "relation": 1920}
    assert prompt_text(Spec((Obj("red", "circle", 1, "left"),))) == "a red circle on the left"
    assert prompt_text(Spec((Obj("red", "circle"), Obj("blue", "square")), "left of")) == (
        "a red circle left of a blue square"
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a pink circle",
        "a red circles",
        "two red circle",
        "one red circle",
        "A red circle",
        "a  red circle",
        "a red circle ",
        "a red circle on the middle",
        "two red circles on the left",
        "a red circle left of a red square",
        "a red circle left of two blue squares",
        "a red circle near a blue square",
        "a red circle above",
    ],
)
def test_parse_prompt_rejects_text_outside_the_grammar(text):
    with pytest.raises(ValueError) as e:
        parse_prompt(text)
    assert repr(text) in str(e.value)


def test_specs_outside_the_templates_cannot_be_built():
    with pytest.raises(ValueError):
        Obj("pink", "circle")
    with pytest.raises(ValueError):
        Spec((Obj("red", "circle", 2, "left"),))
    with pytest.raises(ValueError):
        Spec((Obj("red", "circle"), Obj("red", "square")), "above")
    with pytest.raises(ValueError):
        Spec((Obj("red", "circle"), Obj("blue", "square")))


# ---- splits -----------------------------------------------------------------------------------


def test_splits_are_disjoint_cover_everything_and_keep_heldout_combos_out_of_train():
    train, align, ev, heldout = (set(prompts(s)) for s in ("train", "align", "eval", "heldout"))
    assert train and align and ev
    assert not (train & align) and not (train & ev) and not (align & ev)
    assert align | ev == heldout
    assert train | heldout == {prompt_text(s) for s in all_specs()}
    for text in train:
        spec = parse_prompt(text)
        assert split_of(spec) == "train"
        assert not any((o.colour, o.shape) in HELDOUT_COMBOS for o in spec.objects)
        assert all(f"{c} {s}" not in text for c, s in HELDOUT_COMBOS)
    for text in heldout:
        assert any((o.colour, o.shape) in HELDOUT_COMBOS for o in parse_prompt(text).objects)
    used = [o for t in train for o in parse_prompt(t).objects]
    assert {o.colour for o in used} == set(COLOURS) and {o.shape for o in used} == set(SHAPES)
    assert {c for c, _ in HELDOUT_COMBOS} < set(COLOURS) and {s for _, s in HELDOUT_COMBOS} == set(SHAPES)
    for half in (align, ev):  # both halves see every template
        assert {template_of(parse_prompt(t)) for t in half} == set(TEMPLATES)
    print(f"\nsplit sizes: train={len(train)} heldout={len(heldout)} align={len(align)} eval={len(ev)}")


def test_splits_are_deterministic_and_filterable():
    for split in ("train", "align", "eval"):
        assert prompts(split) == prompts(split)
    assert prompts("align", templates=["single"]) == [
        t for t in prompts("align") if template_of(parse_prompt(t)) == "single"
    ]
    with pytest.raises(ValueError):
        prompts("test")
    with pytest.raises(ValueError):
        prompts("train", templates=["scene"])


# ---- renderer ---------------------------------------------------------------------------------


def test_templates_fill_their_box_so_bboxes_are_tight():
    for shape in SHAPES:
        for s in range(3, 40):
            m = shape_mask(shape, s, s)
            assert m[0].any() and m[-1].any() and m[:, 0].any() and m[:, -1].any(), (shape, s)


def test_render_is_deterministic_per_seed():
    differ = 0
    for spec, seed in _samples(40):
        a, pa = render(spec, seed)
        b, pb = render(spec, seed)
        c, _ = render(spec, seed + 10_000)
        assert a.tobytes() == b.tobytes() and pa == pb
        assert a.size == (32, 32) and a.mode == "RGB"
        differ += a.tobytes() != c.tobytes()
    assert differ >= 36  # a lone centred object has few layouts, so a rare repeat is fine


def test_render_keeps_objects_inside_the_canvas_and_apart():
    for spec, seed in _samples(400, start=50_000):
        img, placed = render(spec, seed)
        assert len(placed) == sum(o.count for o in spec.objects)
        arr = np.asarray(img)
        outside = np.ones((32, 32), dtype=bool)
        for p in placed:
            x0, y0, x1, y1 = p.bbox
            assert BORDER <= x0 <= x1 <= 31 - BORDER and BORDER <= y0 <= y1 <= 31 - BORDER
            assert (arr[y0 : y1 + 1, x0 : x1 + 1] == COLOURS[p.colour]).all(axis=-1).any()
            outside[y0 : y1 + 1, x0 : x1 + 1] = False
        assert not arr[outside].any()  # nothing drawn outside the recorded boxes
        if spec.relation is not None:
            assert relation_holds(spec.relation, placed[0].centroid, placed[1].centroid, RELATION_SEP)
        for i, p in enumerate(placed):
            for q in placed[i + 1 :]:
                apart_x = p.bbox[2] + GAP < q.bbox[0] or q.bbox[2] + GAP < p.bbox[0]
                apart_y = p.bbox[3] + GAP < q.bbox[1] or q.bbox[3] + GAP < p.bbox[1]
                assert apart_x or apart_y, (spec, seed)


def test_render_perturbed_refuses_what_it_cannot_do():
    single = Spec((Obj("red", "circle"),))
    with pytest.raises(ValueError):
        render_perturbed(single, 0, "moved_object")
    with pytest.raises(ValueError):
        render_perturbed(single, 0, "upside_down")


# ---- checker ----------------------------------------------------------------------------------


def test_checker_agrees_with_ground_truth():
    samples = _samples(2000)
    passed = truth = 0
    for spec, seed in samples:
        img, placed = render(spec, seed)
        passed += check(img, spec)["overall"]
        found = sorted((d.colour, d.shape) for d in detect(img))
        truth += found == sorted((p.colour, p.shape) for p in placed)
    rate, truth_rate = passed / len(samples), truth / len(samples)
    print(f"\nchecker agreement: overall pass {rate:.4f}, detections == ground truth {truth_rate:.4f} (n={len(samples)})")
    assert rate >= 0.99 and truth_rate >= 0.99


_BROKEN = {
    "wrong_colour": "colour",
    "extra_object": "count",
    "wrong_shape": "shape",
    "wrong_count": "count",
    "moved_object": None,  # position or relation, by template
}


@pytest.mark.parametrize("kind", PERTURBATIONS)
def test_checker_rejects_each_perturbation(kind):
    templates = ("position", "relation") if kind == "moved_object" else TEMPLATES
    samples = _samples(300, start=100_000, templates=templates)
    rejected = 0
    for spec, seed in samples:
        img, _ = render_perturbed(spec, seed, kind)
        r = check(img, spec)
        attr = _BROKEN[kind] or template_of(spec)
        rejected += r[attr] is False and r["overall"] is False
    rate = rejected / len(samples)
    print(f"\nrejection of {kind}: {rate:.4f} (n={len(samples)})")
    assert rate >= 0.99


def test_checker_survives_blur_and_jpeg():
    samples = _samples(600, start=200_000)
    passed = sum(check(_degrade(render(spec, seed)[0]), spec)["overall"] for spec, seed in samples)
    rate = passed / len(samples)
    print(f"\nrobustness (blur 0.6 + JPEG q75): overall pass {rate:.4f} (n={len(samples)})")
    assert rate >= 0.90


def test_checker_judges_a_64px_render_alike():
    samples = _samples(100, start=300_000)
    assert sum(check(render(spec, seed, size=64)[0], spec)["overall"] for spec, seed in samples) >= 99


def test_questions_are_answered_yes_on_renders_and_match_check():
    samples = _samples(400, start=400_000)
    all_yes = 0
    for spec, seed in samples:
        img, _ = render(spec, seed)
        qs, ans = questions(spec), answer(img, spec)
        assert len(qs) == len(ans) and all(isinstance(a, bool) for a in ans)
        all_yes += all(ans)
        for img2 in (img, render_perturbed(spec, seed, "wrong_colour")[0]):
            r, ans2 = check(img2, spec), answer(img2, spec)
            for attr in ATTRIBUTES:
                mine = [a for (at, _), a in zip(qs, ans2) if at == attr]
                assert r[attr] == (all(mine) if mine else None)
    rate = all_yes / len(samples)
    print(f"\nquestions answered all-yes on renders: {rate:.4f} (n={len(samples)})")
    assert rate >= 0.99
    for spec, seed in samples[:100]:
        assert not all(answer(render_perturbed(spec, seed, "wrong_colour")[0], spec))


def test_question_wording():
    spec = parse_prompt("a red circle left of a blue square")
    qs = questions(spec)
    assert ("colour", "Is there a red object?") in qs
    assert ("shape", "Is the red object a circle?") in qs
    assert ("relation", "Is the red circle left of the blue square?") in qs
    assert ("count", "Are there exactly three blue squares?") in questions(parse_prompt("three blue squares"))
    assert ("position", "Is the red circle on the left?") in questions(parse_prompt("a red circle on the left"))


@pytest.mark.parametrize(
    "drawn, asked, expected",
    [
        ("a red square on the left", "a red circle on the left",
         {"colour": True, "shape": False, "count": True, "position": True}),
        ("a red circle right of a blue square", "a red circle left of a blue square",
         {"colour": True, "shape": True, "count": True, "relation": False}),
        ("two blue squares", "three blue squares", {"colour": True, "shape": True, "count": False}),
        ("a green circle on the right", "a red circle on the left",
         {"colour": False, "shape": False, "count": False, "position": False}),
        ("a red circle", "a red circle", {"colour": True, "shape": True, "count": True}),
    ],
)
def test_check_on_hand_made_cases(drawn, asked, expected):
    img, _ = render(parse_prompt(drawn), 7)
    r = check(img, parse_prompt(asked))
    for attr in ATTRIBUTES:
        assert r[attr] == expected.get(attr), attr
    assert r["overall"] == all(expected.values())
    assert r["score"] == pytest.approx(sum(expected.values()) / len(expected))


def test_check_on_an_empty_image():
    r = check(Image.new("RGB", (32, 32)), parse_prompt("a red circle left of a blue square"))
    assert r == {"colour": False, "shape": False, "count": False, "position": None, "relation": False,
                 "overall": False, "score": 0.0, "vqa": pytest.approx(1 / 9)}
    # of the 9 questions only "Is every object red or blue?" holds: vacuously, there are none


def test_vqa_fraction_on_a_hand_made_case():
    # asked "a red circle on the left" of a red square on the left, the 6 questions are:
    # red object? yes; every object red? yes; red object a circle? NO; exactly one red circle
    # (one red object)? yes; one object in total? yes; on the left? yes  -> 5/6
    img, _ = render(parse_prompt("a red square on the left"), 7)
    spec = parse_prompt("a red circle on the left")
    assert len(questions(spec)) == 6
    assert check(img, spec)["vqa"] == pytest.approx(5 / 6)
