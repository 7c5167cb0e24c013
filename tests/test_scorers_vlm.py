"""VQA (TIFA), captioner, OWL-ViT and Haar-face scorers: pure helpers on hand values, then each
actor loaded by path from its tiny random checkpoint (mechanics, not answer quality)."""

import math

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from raypref import images as I
from raypref import schema as S
from raypref.answer_match import answer_matches, normalize_text, tifa_score, token_f1
from raypref.prompt_nouns import detection_class, subject_phrase
from raypref.vqa_questions import ELEMENTS, Question, QuestionCache, generic_questions, load_generator, template_questions
from raypref.registry import resolve

Q = Question
YN = ("yes", "no")  # the template questions' multiple-choice options
COLOURS = ("red", "green", "blue", "yellow", "purple", "cyan")
COUNTS = ("1", "2", "3", "4")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core box their spinning
    costs ~30x per forward; restored afterwards for the other test modules."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- pure: questions and matching


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("a red circle", [Q("Is there a circle?", "yes", "object", YN), Q("What color is the circle?", "red", "colour", COLOURS)]),
        (
            "three blue squares",
            [
                Q("Are there squares?", "yes", "object", YN),
                Q("What color are the squares?", "blue", "colour", COLOURS),
                Q("How many squares are there?", "3", "count", COUNTS),
            ],
        ),
        (
            "a yellow triangle at the top",
            [
                Q("Is there a triangle?", "yes", "object", YN),
                Q("What color is the triangle?", "yellow", "colour", COLOURS),
                Q("Is the triangle at the top?", "yes", "position", YN),
            ],
        ),
        (
            "a red circle left of a blue square",
            [
                Q("Is there a circle?", "yes", "object", YN),
                Q("What color is the circle?", "red", "colour", COLOURS),
                Q("Is there a square?", "yes", "object", YN),
                Q("What color is the square?", "blue", "colour", COLOURS),
                Q("Is the red circle left of the blue square?", "yes", "relation", YN),
            ],
        ),
        (
            "a green cross above a purple cross",
            [
                Q("Is there a green cross?", "yes", "colour", YN),
                Q("Is there a purple cross?", "yes", "colour", YN),
                Q("Is the green cross above the purple cross?", "yes", "relation", YN),
            ],
        ),
        ("a photo of a dog on a sofa.", [Q("Is there a dog on a sofa?", "yes", "object", YN)]),
        ("two cats sleeping", [Q("Are there two cats sleeping?", "yes", "object", YN)]),
        ("a red circle on the moon", [Q("Is there a red circle on the moon?", "yes", "object", YN)]),  # off-grammar
    ],
)
def test_template_questions(prompt, expected):
    assert template_questions(prompt) == expected


def test_generic_question_edge_cases():
    assert generic_questions("") == []
    assert generic_questions("An image of ...") == []
    assert generic_questions("1 apple") == [Q("Is there 1 apple?", "yes", "object", YN)]


def test_answer_normalisation():
    assert normalize_text("An Apple, please!") == "apple please"
    assert normalize_text("Two.") == "2"
    assert answer_matches("two", "2") and answer_matches("3 ", "three")
    assert answer_matches("The Circle", "circle") and answer_matches("a red", "red")
    assert not answer_matches("yes", "no")
    assert not answer_matches("red circle", "red")  # extra words are wrong, not partly right
    assert not answer_matches("grey", "gray")  # spellings are not merged (documented)


def test_tifa_score_is_fraction_correct():
    # answers vs expected, by hand: yes=yes, Red=red, 2=two, no!=yes -> 3/4
    assert tifa_score(["yes", "Red", "2", "no"], ["yes", "red", "two", "yes"]) == 0.75
    assert tifa_score(["no"], ["yes"]) == 0.0
    assert math.isnan(tifa_score([], []))
    with pytest.raises(ValueError, match="2 answers for 1 questions"):
        tifa_score(["a", "b"], ["a"])


def test_token_f1_hand_values():
    # content tokens: caption {red, circle, black, background}, reference {red, circle, left}: overlap 2
    p, r, f = token_f1("A red circle on a black background.", "a red circle on the left")
    assert (p, r) == (0.5, pytest.approx(2 / 3)) and f == pytest.approx(4 / 7)
    # multisets: caption {2, dogs, dog}, reference {dog, dog, dog}: overlap 1
    assert token_f1("two dogs and a dog", "dog dog dog") == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert token_f1("a cat", "a dog") == (0.0, 0.0, 0.0)
    assert token_f1("", "a dog") == (0.0, 0.0, 0.0)
    assert token_f1("three dogs", "3 dogs") == (1.0, 1.0, 1.0)


def test_subject_and_detection_class():
    assert subject_phrase("A photo of a dog.") == "a dog"
    assert subject_phrase("a red circle") == "a red circle"
    assert detection_class("a photo of a dog") == "dog"
    assert detection_class("A picture of two golden retrievers.") == "golden retrievers"
    assert detection_class("a red circle") == "red circle"
    assert detection_class("...") is None
    classes = ["dog", "hot dog", "cat"]
    assert detection_class("a photo of a hot dog", classes) == "hot dog"  # longest wins
    assert detection_class("three cats on a mat", classes) == "cat"  # plural
    assert detection_class("a dog chasing a cat", classes) == "dog"  # same length: earliest in the prompt
    assert detection_class("a bird", classes) is None


def test_question_hook_and_cache(tmp_path, monkeypatch):
    (tmp_path / "my_questions.py").write_text(
        "calls = []\n"
        "def ask(prompt):\n"
        "    calls.append(prompt)\n"
        "    return [('Is it ' + prompt + '?', 'yes'), ('How many?', 'two', 'count'),\n"
        "            {'question': 'Mood?', 'answer': 'calm', 'element': 'vibe'}]\n"
        "def bad(prompt):\n"
        "    return [('only a question',)]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    gen = load_generator("my_questions:ask")
    assert gen("x") == [Q("Is it x?", "yes", "other"), Q("How many?", "two", "count"), Q("Mood?", "calm", "other")]
    cache = QuestionCache(gen, max_prompts=2)
    for p in ["a", "b", "a", "c", "a", "b"]:
        cache(p)
    assert cache.misses == 4  # a, b, c, then b again after it was evicted (max 2 prompts)
    with pytest.raises(ValueError, match="'only a question'.*prompt 'p'"):
        load_generator("my_questions:bad")("p")
    # multiple choice: the expected answer (as normalised) must be among the choices
    (tmp_path / "mc_questions.py").write_text(
        "def ok(prompt):\n"
        "    return [{'question': 'How many?', 'answer': 'two', 'element': 'count', 'choices': ['1', '2', '3']}]\n"
        "def missing(prompt):\n"
        "    return [{'question': 'Colour?', 'answer': 'red', 'choices': ['blue', 'green']}]\n"
        "def text(prompt):\n"
        "    return [{'question': 'Colour?', 'answer': 'red', 'choices': 'red'}]\n"
    )
    assert load_generator("mc_questions:ok")("x") == [Q("How many?", "two", "count", ("1", "2", "3"))]
    with pytest.raises(ValueError, match=r"choices \['blue', 'green'\] without the expected answer 'red' for prompt 'x'"):
        load_generator("mc_questions:missing")("x")
    with pytest.raises(ValueError, match="expected a list of strings"):
        load_generator("mc_questions:text")("x")
    with pytest.raises(ValueError, match="cannot load the question generator"):
        load_generator("my_questions:missing")
    with pytest.raises(ValueError, match="expected 'template' or 'module:function'"):
        load_generator("nonsense")
    # the actor loads it before its model (none given here), and the error names the scorer and key
    with pytest.raises(ValueError, match=r"scorer 't': args.questions='my_questions:missing': cannot load"):
        resolve("tifa_vqa")(name="t", model="", questions="my_questions:missing")


def test_count_detections_hand_boxes():
    from actors.owlvit import count_detections

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [40, 40, 50, 50]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.5, 0.05])
    # boxes 0 and 1 overlap with IoU 81/119 = 0.68 > 0.3 -> one; box 2 alone; box 3 below threshold
    assert count_detections(scores, boxes, threshold=0.1, nms_iou=0.3) == 2
    assert count_detections(scores, boxes, threshold=0.1, nms_iou=0.7) == 3  # 0.68 < 0.7: both kept
    assert count_detections(scores, boxes, threshold=0.95, nms_iou=0.3) == 0


# ---------------------------------------------------------------- actors on tiny checkpoints


def _images():
    from raypref.shapes import parse_prompt, render

    return [
        render(parse_prompt("a red circle"), seed=0)[0],
        render(parse_prompt("three blue squares"), seed=1)[0],
        Image.new("RGB", (40, 48), (30, 160, 60)),
    ]


PROMPTS = ["a red circle", "three blue squares", "a photo of a dog"]


@pytest.fixture(scope="module")
def tiny_path():
    from raypref.models import resolve_model

    return lambda kind: resolve_model(f"tiny:{kind}")  # a plain directory path


def test_tifa_vqa_actor(tiny_path):
    from raypref.answer_match import tifa_score as fraction

    vqa = resolve("tifa_vqa")(name="tifa", model=tiny_path("blip_vqa"), max_new_tokens=3, answers="generate")
    imgs = _images()
    out = vqa.score(imgs, PROMPTS)
    assert set(out) == {"", "rationale", *ELEMENTS}
    assert out[""].dtype == np.float32 and out[""].shape == (3,)
    # the score is the fraction of the model's own answers that match, question by question
    pixels = vqa.processor(images=imgs, return_tensors="pt")["pixel_values"]
    for i, prompt in enumerate(PROMPTS):
        qs = template_questions(prompt)
        got = [vqa.answer(pixels[i : i + 1], q.text)[0] for q in qs]  # one image, one question
        assert out[""][i] == pytest.approx(fraction(got, [q.answer for q in qs]))
        assert out["rationale"][i].split(" | ")[0].startswith(f"{qs[0].text} -> {got[0]!r}")
    assert np.isnan(out["count"][0]) and not np.isnan(out["count"][1])  # only 'three ...' asks how many
    assert np.isnan(out["position"]).all()
    assert vqa.questions.misses == 3
    again = vqa.score(imgs, PROMPTS)
    assert np.array_equal(again[""], out[""]) and vqa.questions.misses == 3  # deterministic, cached

    # expected answers set to what this model really says score 1; a wrong one halves it
    said = vqa.answer(pixels[:1], "What color is the circle?")[0]
    vqa.questions = QuestionCache(lambda p: [Q("What color is the circle?", said), Q("Is there a circle?", said + " x")])
    assert vqa.score(imgs[:1], ["anything"])[""][0] == 0.5

    # through the Scorer interface: a groups row with two images
    batch = pa.table({S.PROMPT: ["a red circle"], S.SAMPLE_ID: [["s0", "s1"]], S.IMAGE: [[I.encode(imgs[0]), I.encode(imgs[1])]]})
    vqa.questions = QuestionCache(template_questions)
    cols = vqa(batch)
    assert len(cols.column(S.score_column("tifa"))[0]) == 2
    assert cols.column(S.rationale_column("tifa"))[0][0].as_py().startswith("Is there a circle? -> ")
    assert S.score_column("tifa", "colour") in cols.column_names


def test_tifa_choice_log_probabilities_are_the_decoders(tiny_path):
    vqa = resolve("tifa_vqa")(name="tifa", model=tiny_path("blip_vqa"))
    pixels = vqa.processor(images=_images(), return_tensors="pt")["pixel_values"]
    bos = vqa.model.config.text_config.bos_token_id
    for i, question in enumerate(["What color is the circle?", "How many squares are there?"]):
        # greedy decoding's own per-step log-probabilities of the tokens it chose, summed ...
        tok = vqa.processor.tokenizer([question], return_tensors="pt", return_token_type_ids=False)
        g = vqa.model.generate(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"],
                               pixel_values=pixels[i : i + 1], max_new_tokens=3, do_sample=False,
                               output_scores=True, return_dict_in_generate=True)
        seq = g.sequences
        assert seq[0, 0] == bos  # generation starts from [DEC], as the ranking does
        steps = sum(float(torch.log_softmax(sc.float(), -1)[0, seq[0, t + 1]]) for t, sc in enumerate(g.scores))
        # ... equal the ranking's log-probability of that sequence
        got = vqa.sequence_logprobs(pixels[i : i + 1], question, seq, torch.ones_like(seq))
        assert got.shape == (1, 1) and float(got[0, 0]) == pytest.approx(steps, abs=1e-4)
    choices = ("red", "green", "blue", "light blue")  # unequal lengths: padding must not count
    lp = vqa.choice_logprobs(pixels, "What color is the circle?", choices)
    assert lp.shape == (3, 4) and (lp < 0).all()
    for j, c in enumerate(choices):  # each choice alone, no padding, gives the same figure
        alone = vqa.choice_logprobs(pixels, "What color is the circle?", (c,))
        np.testing.assert_allclose(alone[:, 0].numpy(), lp[:, j].numpy(), rtol=1e-5, atol=1e-5)
    assert vqa.rank(pixels, "What color is the circle?", choices) == [choices[int(k)] for k in lp.argmax(1)]


def test_vqascore_is_the_decoders_first_token_probability_of_yes(tiny_path):
    vs = resolve("vqascore")(name="vs", model=tiny_path("blip_vqa"))
    imgs, prompts = _images(), ["a red circle", "a red circle", "two squares"]
    out = vs.score(imgs, prompts)
    tok = vs.processor.tokenizer
    yes, no = (tok(w, add_special_tokens=False)["input_ids"] for w in ("yes", "no"))
    assert len(yes) == len(no) == 1 and yes != no
    pixels = vs.processor(images=imgs, return_tensors="pt")["pixel_values"]
    for i, p in enumerate(prompts):  # generate's own first step, as a distribution over the vocabulary
        q = tok([f'Does this figure show "{p}"? Please answer yes or no.'], return_tensors="pt", return_token_type_ids=False)
        g = vs.model.generate(input_ids=q["input_ids"], attention_mask=q["attention_mask"], pixel_values=pixels[i : i + 1],
                              max_new_tokens=1, do_sample=False, output_scores=True, return_dict_in_generate=True)
        first = torch.softmax(g.scores[0].float(), -1)[0]
        assert out[""][i] == pytest.approx(float(first[yes[0]]), rel=1e-4)
        assert out["no"][i] == pytest.approx(float(first[no[0]]), rel=1e-4)
    assert ((out[""] > 0) & (out[""] + out["no"] <= 1)).all()
    assert out["rationale"][2].startswith('Does this figure show "two squares"? Please answer yes or no. -> P(yes) ')
    with pytest.raises(ValueError, match="needs a '{}' for the prompt"):
        resolve("vqascore")(name="vs", model=tiny_path("blip_vqa"), question_template="Is it good?")
    # one that format() cannot fill failed only at scoring time, in every batch; now at start, before the model
    for bad in ('Does it show "{}" or "{}"?', "Is {0} {x}?", 'Does it show {"{}"}?'):
        with pytest.raises(ValueError, match=r"scorer 'vs': question_template .* needs a '\{\}' for the prompt, once"):
            resolve("vqascore")(name="vs", model="", question_template=bad)
        with pytest.raises(ValueError, match=r"scorer 'o': query_template .* needs a '\{\}' for the class, once"):
            resolve("owlvit")(name="o", model="", query_template=bad)
    assert vs.score(imgs[:1], ["p"])[""].shape == (1,)
    braces = resolve("vqascore")(name="vs", model=tiny_path("blip_vqa"), question_template='{{Q}} Does it show "{}"?')
    assert braces.score(imgs[:1], ["a cat"])["rationale"][0].startswith('{Q} Does it show "a cat"? -> P(yes)')



def test_blip_vqa_questions_are_cut_to_the_text_positions(tiny_path):
    # VQAScore's question holds the whole prompt: past the encoder's positions it failed the whole batch
    vs = resolve("vqascore")(name="vs", model=tiny_path("blip_vqa"))
    limit = vs.model.config.text_config.max_position_embeddings
    long = "a photo of a " + " ".join(["majestic elephant walking slowly"] * limit)
    imgs = _images()[:2]
    out = vs.score(imgs, [long, "a red circle"])
    assert np.isfinite(out[""]).all() and np.isfinite(out["no"]).all()
    assert out[""][1] == pytest.approx(vs.score(imgs[1:], ["a red circle"])[""][0], rel=1e-5)  # a short one as before
    # the cut is said where the score is read, the long question's own token count given
    n = len(vs.processor.tokenizer(vs.template.format(long))["input_ids"])
    assert n > limit and out["rationale"][0].endswith(f" [question cut to its first {limit} of {n} tokens]")
    assert "cut" not in out["rationale"][1]
    tifa = resolve("tifa_vqa")(name="t", model=tiny_path("blip_vqa"), answers="generate", max_new_tokens=2)
    assert len(tifa.answer(vs.processor(images=imgs[:1], return_tensors="pt")["pixel_values"], long + "?")) == 1
    # TIFA's question about a long subject ("Is there a photo of a majestic ...?") the same way
    (q,) = tifa.questions(long)
    m = len(vs.processor.tokenizer(q.text)["input_ids"])
    assert m > limit and tifa.score(imgs[:1], [long])["rationale"][0].endswith(f" [question cut to its first {limit} of {m} tokens]")
    assert "cut" not in tifa.score(imgs[:1], ["a red circle"])["rationale"][0]

def test_tifa_vqa_answers_by_ranking_the_choices(tiny_path):
    from raypref.answer_match import tifa_score as fraction

    vqa = resolve("tifa_vqa")(name="tifa", model=tiny_path("blip_vqa"))  # answers='choices' by default
    imgs = _images()
    out = vqa.score(imgs, PROMPTS)
    pixels = vqa.processor(images=imgs, return_tensors="pt")["pixel_values"]
    for i, prompt in enumerate(PROMPTS):
        qs = template_questions(prompt)
        got = [vqa.rank(pixels[i : i + 1], q.text, q.choices)[0] for q in qs]  # one image, one question
        assert all(a in q.choices for a, q in zip(got, qs))
        assert out[""][i] == pytest.approx(fraction(got, [q.answer for q in qs]))
        assert out["rationale"][i].split(" | ")[0].startswith(f"{qs[0].text} -> {got[0]!r}")
    # the expected answer set to the model's likeliest choice scores 1; a question without
    # choices is still answered by generation
    said = vqa.rank(pixels[:1], "Is there a circle?", ("yes", "no"))[0]
    free = vqa.answer(pixels[:1], "What is it?")[0]
    vqa.questions = QuestionCache(lambda p: [Q("Is there a circle?", said, "object", ("yes", "no")), Q("What is it?", free)])
    assert vqa.score(imgs[:1], ["anything"])[""][0] == 1.0
    with pytest.raises(ValueError, match=r"^scorer 'tifa': answers: Input should be 'choices' or 'generate', got 'vote'"):
        resolve("tifa_vqa")(name="tifa", model=tiny_path("blip_vqa"), answers="vote")


def test_captioner_actor(tiny_path):
    cap = resolve("captioner")(name="cap", model=tiny_path("blip_caption"), max_new_tokens=8, batch_size=2)
    imgs = _images()
    out = cap.score(imgs, PROMPTS)
    captions = out["rationale"]
    assert len(captions) == 3 and all(isinstance(c, str) and c for c in captions)
    cap.batch_size = 32
    assert cap.caption(imgs) == captions  # chunking does not change captions
    for i, (c, p) in enumerate(zip(captions, PROMPTS)):
        pr, rc, f1 = token_f1(c, subject_phrase(p))
        assert (out["precision"][i], out["recall"][i], out[""][i]) == pytest.approx((pr, rc, f1))
    assert all(x.dtype == np.float32 for k, x in out.items() if k != "rationale")
    assert ((out[""] >= 0) & (out[""] <= 1)).all()


def test_owlvit_actor(tiny_path):
    det = resolve("owlvit")(name="owl", model=tiny_path("owlvit"), threshold=0.0)
    imgs = _images()
    prompts = ["a photo of a dog", "a red circle", "..."]
    out = det.score(imgs, prompts)
    assert np.isnan(out[""][2]) and np.isnan(out["count"][2])  # no class in the prompt
    assert out["rationale"][0].startswith("'a photo of a dog': best")
    assert out["rationale"][1].startswith("'a photo of a red circle': best")
    # the score is the best sigmoid class logit of the model for the prompt's own query
    inputs = det.processor(text=[["a photo of a dog"]], images=[imgs[0]], return_tensors="pt")
    with torch.no_grad():
        logits = det.model(**inputs).logits
    assert out[""][0] == pytest.approx(float(torch.sigmoid(logits).max()), abs=1e-6)
    r = det.detect([imgs[1]], ["a photo of a red circle"])[0]
    from actors.owlvit import count_detections

    assert out["count"][1] == count_detections(r["scores"], r["boxes"], 0.0, 0.3) > 0
    strict = resolve("owlvit")(name="owl", model=tiny_path("owlvit"), threshold=1.0).score(imgs[:1], prompts[:1])
    assert strict["count"][0] == 0 and strict[""][0] == out[""][0]
    only = resolve("owlvit")(name="owl", model=tiny_path("owlvit"), classes=["circle"]).score(imgs[:2], prompts[:2])
    assert np.isnan(only[""][0]) and only["rationale"][1].startswith("'a photo of a circle'")
    # a group's class_label is the class looked for; a numeric label (an index) falls back to the prompt
    batch = pa.table({S.PROMPT: ["a majestic elephant walking at sunset", "a photo of a dog", "..."],
                      S.CLASS_LABEL: ["elephant", "3", None], S.IMAGE: [[I.encode(im)] for im in imgs]})
    why = det(batch).column(S.rationale_column("owl")).to_pylist()
    assert why[0][0].startswith("'a photo of a elephant': best") and why[1][0].startswith("'a photo of a dog': best")
    assert why[2][0] == "no object class found in the prompt"



def test_owlvit_cuts_a_query_longer_than_its_text_positions(tiny_path):
    # a long prompt's subject is the query: past OWL-ViT's 16 text positions it failed the whole batch
    det = resolve("owlvit")(name="owl", model=tiny_path("owlvit"))
    imgs = _images()[:2]
    long = "a photo of a " + " ".join(["majestic elephant walking slowly"] * 6)
    out = det.score(imgs, [long, "a photo of a dog"])
    assert np.isfinite(out[""]).all() and np.isfinite(out["count"]).all()
    assert out[""][1] == pytest.approx(det.score(imgs[1:], ["a photo of a dog"])[""][0], abs=1e-6)  # a short one as before
    assert out[""][0] == pytest.approx(det.score(imgs[:1], [long + " and more words after the cut"])[""][0], abs=1e-6)
    # and the rationale says so, with the query's whole length; a query that fits gets no note
    from raypref.prompt_nouns import detection_class

    query = det.template.format(detection_class(long, None))
    n = len(det.processor.tokenizer(query, verbose=False)["input_ids"])
    assert n > 16 and out["rationale"][0].startswith(repr(query))
    assert out["rationale"][0].endswith(f" after NMS [query cut to its first 16 of {n} tokens]")
    assert out["rationale"][1].endswith(" after NMS")

def _face(size: int = 100) -> Image.Image:
    """A drawn face: light oval, dark brows, eyes and mouth, lighter nose (what Haar features look for)."""
    im = Image.new("L", (size, size), 40)
    d = ImageDraw.Draw(im)
    s = size / 100
    d.ellipse([20 * s, 10 * s, 80 * s, 95 * s], fill=200)
    d.rectangle([27 * s, 32 * s, 45 * s, 36 * s], fill=60)
    d.rectangle([55 * s, 32 * s, 73 * s, 36 * s], fill=60)
    d.ellipse([30 * s, 40 * s, 43 * s, 48 * s], fill=30)
    d.ellipse([57 * s, 40 * s, 70 * s, 48 * s], fill=30)
    d.polygon([(50 * s, 45 * s), (45 * s, 65 * s), (55 * s, 65 * s)], fill=170)
    d.ellipse([38 * s, 72 * s, 62 * s, 80 * s], fill=70)
    return im.filter(ImageFilter.GaussianBlur(s)).convert("RGB")


def test_haar_faces_actor(tmp_path):
    from actors.haar_faces import default_cascade_path

    faces = resolve("haar_faces")(name="faces")
    two = Image.new("RGB", (200, 100), (40, 40, 40))
    two.paste(_face(), (0, 0))
    two.paste(_face(), (100, 0))
    imgs = [_face(), two, _face().transpose(Image.Transpose.FLIP_TOP_BOTTOM), Image.new("RGB", (64, 64), (128,) * 3), _images()[0]]
    out = faces.score(imgs, [""] * len(imgs))
    # one face, two faces; the same face upside down, a flat grey image and a shapes image: none
    assert out[""].tolist() == [1.0, 2.0, 0.0, 0.0, 0.0]
    assert out["present"].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]
    by_path = resolve("haar_faces")(name="faces", model=default_cascade_path())
    assert by_path.score(imgs[:2], ["", ""])[""].tolist() == [1.0, 2.0]
    (tmp_path / "bad.xml").write_text("<not a cascade/>")
    with pytest.raises(ValueError, match="cannot load a Haar cascade"):
        resolve("haar_faces")(name="faces", model=str(tmp_path / "bad.xml"))
    # a bare name is no file (the resolver passes it as a hub name): said so, not called malformed
    with pytest.raises(ValueError, match=r"^scorer 'faces' model: the Haar cascade file 'haarcascade_frontalface_alt2\.xml' "
                                         r"does not exist \(give the path of a cascade XML file; OpenCV's own are in "):
        resolve("haar_faces")(name="faces", model="haarcascade_frontalface_alt2.xml")


def test_a_haar_cascade_that_is_no_file_is_named_before_ray(tmp_path, monkeypatch):
    import re
    import shutil

    from actors.haar_faces import default_cascade_path
    from raypref.build import scorer_kwargs
    from raypref.config import ScorerConf

    monkeypatch.chdir(tmp_path)
    shutil.copy(default_cascade_path(), tmp_path / "faces.xml")

    def faces(model):
        return ScorerConf(name="f", cls="haar_faces", model=model)

    # a cascade is a file, not a model reference: on the driver a directory passed, and a bare or relative name
    # passed as a hub name (or, offline, was called missing from the hub cache); each failed in every actor
    for model, problem in [(str(tmp_path), "is a directory, not a cascade XML file"),
                           ("haarcascade_frontalface_alt2.xml", "does not exist"),
                           ("cascades/faces.xml", "does not exist"),
                           (str(tmp_path / "nope.xml"), "does not exist")]:
        with pytest.raises(ValueError, match=rf"^scorer 'f' model: the Haar cascade file {re.escape(repr(model))} "
                                             rf"{problem} \(give the path of a cascade XML file; OpenCV's own are in "):
            scorer_kwargs(faces(model))
    # a file reaches the actors absolute (their cwd is not the driver's); none leaves OpenCV's default to the actor
    assert scorer_kwargs(faces("faces.xml"))["model"] == str((tmp_path / "faces.xml").resolve())
    assert scorer_kwargs(faces(""))["model"] == ""
    # built directly, the actor checks it itself, a directory too
    with pytest.raises(ValueError, match=r"^scorer 'f' model: the Haar cascade file '.*' is a directory, not a cascade"):
        resolve("haar_faces")(name="f", model=str(tmp_path))


@pytest.mark.parametrize("cls, kind, model_cls", [
    ("captioner", "blip_caption", "BlipForConditionalGeneration"),
    ("tifa_vqa", "blip_vqa", "BlipForQuestionAnswering"),
    ("owlvit", "owlvit", "OwlViTForObjectDetection"),
    ("pickscore", "pickscore", "CLIPModel"),
])
def test_a_checkpoint_saved_in_fp16_scores_in_fp32(cls, kind, model_cls, tiny_path, tmp_path):
    # transformers keeps a checkpoint's stored dtype: an fp16-saved model got the processor's
    # float32 pixels and failed (or, where they are cast, ran in half precision on a CPU); the
    # scorers load float32 whatever is stored
    import shutil

    import transformers

    src = tiny_path(kind)
    shutil.copytree(src, tmp_path / "m")
    getattr(transformers, model_cls).from_pretrained(src, dtype=torch.float16).save_pretrained(str(tmp_path / "m"))
    assert getattr(transformers, model_cls).from_pretrained(str(tmp_path / "m")).dtype == torch.float16
    scorer = resolve(cls)(name="s", model=str(tmp_path / "m"))
    assert {p.dtype for p in scorer.model.parameters()} == {torch.float32}
    out = scorer.score(_images(), PROMPTS)
    assert np.isfinite(out[""] if isinstance(out, dict) else out).all()
