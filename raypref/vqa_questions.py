"""Question generators for TIFA-style VQA scoring: prompt -> [(question, expected answer, element)].

``questions='template'`` (the default) uses ``template_questions``:
- shapes-world prompts (``raypref.shapes.parse_prompt`` succeeds), per object:
  "Is there a circle?" -> yes (object), "What color is the circle?" -> red (colour),
  and for counts > 1 "How many squares are there?" -> 3 (count); "Is the circle on the left?"
  -> yes (position); "Is the red circle left of the blue square?" -> yes (relation). When both
  objects of a relation share a shape, the object and colour questions become "Is there a red
  circle?" -> yes (colour), since "the circle" would be ambiguous.
- any other prompt: one question about the whole subject phrase (``raypref.prompt_nouns``):
  "a photo of a dog on a sofa" -> "Is there a dog on a sofa?" -> yes (object); "Are there ..."
  when the phrase starts with a count word.

Each template question carries TIFA's multiple-choice options: yes/no, the world's six colours,
or the counts 1-4 (the generic question: yes/no).

``questions='module:function'`` plugs any generator, e.g. one that asks an LLM as TIFA does. The
function takes the prompt text and returns an iterable of Question, (question, answer) or
(question, answer, element) tuples, or {"question", "answer", "element", "choices"} dicts
(choices optional; when given, the expected answer must be one of them). Elements outside
ELEMENTS are reported as "other".
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable

from raypref.answer_match import answer_matches

ELEMENTS = ("object", "colour", "count", "position", "relation", "other")
_PLURAL_LEAD = frozenset({"two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "many", "several", "some"})


YES_NO = ("yes", "no")


@dataclass(frozen=True)
class Question:
    text: str
    answer: str
    element: str = "other"
    # TIFA's multiple-choice options, the expected answer among them; () leaves the question free-form
    choices: tuple[str, ...] = ()


def shapes_questions(spec) -> list[Question]:
    from raypref.shapes.world import COLOURS, COUNTS, POSITIONS, SHAPE_PLURALS

    colours = tuple(COLOURS)
    counts = tuple(str(n) for n in COUNTS)
    shapes = [o.shape for o in spec.objects]
    out: list[Question] = []
    for o in spec.objects:
        shared = shapes.count(o.shape) > 1
        if o.count == 1:
            if shared:
                out.append(Question(f"Is there a {o.colour} {o.shape}?", "yes", "colour", YES_NO))
            else:
                out.append(Question(f"Is there a {o.shape}?", "yes", "object", YES_NO))
                out.append(Question(f"What color is the {o.shape}?", o.colour, "colour", colours))
        else:
            plural = SHAPE_PLURALS[o.shape]
            out.append(Question(f"Are there {plural}?", "yes", "object", YES_NO))
            out.append(Question(f"What color are the {plural}?", o.colour, "colour", colours))
            # expected in digits, as VQA models answer counts (matching also maps number words)
            out.append(Question(f"How many {plural} are there?", str(o.count), "count", counts))
        if o.position is not None:
            out.append(Question(f"Is the {o.shape} {POSITIONS[o.position]}?", "yes", "position", YES_NO))
    if spec.relation is not None:
        a, b = spec.objects
        out.append(Question(f"Is the {a.colour} {a.shape} {spec.relation} the {b.colour} {b.shape}?", "yes", "relation",
                            YES_NO))
    return out


def generic_questions(prompt: str) -> list[Question]:
    from raypref.prompt_nouns import subject_phrase

    phrase = subject_phrase(prompt)
    if not phrase:
        return []
    first = phrase.split()[0].lower()
    verb = "Are" if first in _PLURAL_LEAD or (first.isdigit() and first != "1") else "Is"
    return [Question(f"{verb} there {phrase}?", "yes", "object", YES_NO)]


def template_questions(prompt: str) -> list[Question]:
    from raypref.shapes import parse_prompt

    try:
        spec = parse_prompt(prompt)
    except ValueError:
        return generic_questions(prompt)
    return shapes_questions(spec)


def _as_question(item, prompt: str, where: str) -> Question:
    if isinstance(item, Question):
        q = item
    elif isinstance(item, dict):
        choices = item.get("choices") or ()
        if isinstance(choices, str) or not all(isinstance(c, str) for c in choices):
            raise ValueError(f"{where} gave choices {choices!r} for prompt {prompt!r}: expected a list of strings")
        q = Question(str(item.get("question", "")), str(item.get("answer", "")), str(item.get("element", "other")),
                     tuple(choices))
    elif isinstance(item, (tuple, list)) and len(item) in (2, 3):
        q = Question(*(str(x) for x in item))
    else:
        raise ValueError(f"{where} gave {item!r} for prompt {prompt!r}: expected Question, (question, answer[, element]) or a dict")
    if not q.text.strip() or not q.answer.strip():
        raise ValueError(f"{where} gave an empty question or answer for prompt {prompt!r}: {q}")
    if q.choices and not any(answer_matches(c, q.answer) for c in q.choices):
        raise ValueError(f"{where} gave choices {list(q.choices)} without the expected answer {q.answer!r} "
                         f"for prompt {prompt!r}: {q.text!r}")
    return q if q.element in ELEMENTS else Question(q.text, q.answer, "other", q.choices)


def load_generator(spec: str) -> Callable[[str], list[Question]]:
    """'template' or 'module:function'; the result returns validated Questions for a prompt."""
    if spec == "template":
        return template_questions
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"questions={spec!r}: expected 'template' or 'module:function'")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"questions={spec!r}: cannot load the question generator: {e}") from e

    def generate(prompt: str) -> list[Question]:
        items: Iterable = fn(prompt)
        return [_as_question(x, prompt, f"question generator {spec!r}") for x in items]

    return generate


class QuestionCache:
    """Questions per prompt, generated once: a prompt's images arrive together and often again."""

    def __init__(self, generate: Callable[[str], list[Question]], max_prompts: int = 10_000):
        self.generate = generate
        self.max_prompts = max_prompts
        self.misses = 0
        self._memo: OrderedDict[str, tuple[Question, ...]] = OrderedDict()

    def __call__(self, prompt: str) -> tuple[Question, ...]:
        if prompt in self._memo:
            self._memo.move_to_end(prompt)
            return self._memo[prompt]
        self.misses += 1
        qs = tuple(self.generate(prompt))
        self._memo[prompt] = qs
        if len(self._memo) > self.max_prompts:
            self._memo.popitem(last=False)
        return qs
