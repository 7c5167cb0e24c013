"""The shapes world's vocabulary, its four prompt templates, and its train/align/eval splits.

The world is closed on purpose: every prompt comes from a tiny grammar, so a scorer that only
sees the prompt text can recover the exact structured spec (``parse_prompt``) and the checker
can judge an image against it without any learned model.

Templates (``template_of``):
    single    "a red circle"
    count     "three blue squares"                 (count 2..4, no position)
    position  "a red circle on the left"
    relation  "a red circle left of a blue square"  (two single objects, different colours)

Splits measure compositional generalisation. ``HELDOUT_COMBOS`` holds one (colour, shape)
combination per shape, spread over four colours, so every colour and every shape still appears
in training. A spec is "heldout" if any of its objects uses a held-out combination, else
"train". The heldout prompts are then cut, deterministically (sha256 of the prompt text, within
each template), into two disjoint halves: "align" (alignment fine-tuning may use them) and
"eval" (only ever evaluated). ``prompts("train")``, ``prompts("align")`` and ``prompts("eval")``
are pairwise disjoint and together cover ``all_specs()``.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from typing import Iterable

COLOURS: dict[str, tuple[int, int, int]] = {
    # Corners of the RGB cube and a bluish purple: every pair is >= 170 apart, every colour is
    # >= 255 from the black background, so nearest-colour classification has wide margins.
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "purple": (170, 0, 255),
    "cyan": (0, 255, 255),
}
BACKGROUND: tuple[int, int, int] = (0, 0, 0)

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
SHAPE_PLURALS: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}

COUNTS: tuple[int, ...] = (1, 2, 3, 4)
COUNT_WORDS: dict[int, str] = {1: "a", 2: "two", 3: "three", 4: "four"}

POSITIONS: dict[str, str] = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")

TEMPLATES: tuple[str, ...] = ("single", "count", "position", "relation")

HELDOUT_COMBOS: frozenset[tuple[str, str]] = frozenset(
    {("red", "triangle"), ("blue", "cross"), ("yellow", "circle"), ("green", "square")}
)
SPLITS: tuple[str, ...] = ("train", "heldout", "align", "eval")


@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str
    count: int = 1
    position: str | None = None

    def __post_init__(self) -> None:
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}; expected one of {sorted(COLOURS)}")
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {list(SHAPES)}")
        if self.count not in COUNTS:
            raise ValueError(f"count {self.count!r} outside {list(COUNTS)}")
        if self.position is not None and self.position not in POSITIONS:
            raise ValueError(f"unknown position {self.position!r}; expected one of {list(POSITIONS)}")


@dataclass(frozen=True)
class Spec:
    objects: tuple[Obj, ...]
    relation: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "objects", tuple(self.objects))
        template_of(self)  # a Spec outside the four templates cannot exist


def template_of(spec: Spec) -> str:
    """Which of the four templates a spec instantiates; ValueError for anything else."""
    objs, rel = spec.objects, spec.relation
    if len(objs) == 1 and rel is None:
        (o,) = objs
        if o.count == 1 and o.position is None:
            return "single"
        if o.count > 1 and o.position is None:
            return "count"
        if o.count == 1 and o.position is not None:
            return "position"
    if len(objs) == 2 and rel is not None:
        a, b = objs
        if rel not in RELATIONS:
            raise ValueError(f"unknown relation {rel!r}; expected one of {list(RELATIONS)}")
        if all(o.count == 1 and o.position is None for o in objs) and a.colour != b.colour:
            return "relation"
    raise ValueError(f"spec fits none of the templates {list(TEMPLATES)}: {spec!r}")


def _phrase(o: Obj) -> str:
    noun = o.shape if o.count == 1 else SHAPE_PLURALS[o.shape]
    return f"{COUNT_WORDS[o.count]} {o.colour} {noun}"


def prompt_text(spec: Spec) -> str:
    template = template_of(spec)
    if template == "relation":
        a, b = spec.objects
        return f"{_phrase(a)} {spec.relation} {_phrase(b)}"
    (o,) = spec.objects
    text = _phrase(o)
    return f"{text} {POSITIONS[o.position]}" if template == "position" else text


_WORD_COUNTS = {w: n for n, w in COUNT_WORDS.items()}
_NOUNS = {**{s: (s, 1) for s in SHAPES}, **{p: (s, 2) for s, p in SHAPE_PLURALS.items()}}
_PHRASE_POSITIONS = {tuple(p.split()): k for k, p in POSITIONS.items()}
_RELATION_WORDS = {tuple(r.split()): r for r in RELATIONS}


def _take_obj(words: list[str], text: str) -> tuple[Obj, list[str]]:
    if len(words) < 3 or words[0] not in _WORD_COUNTS or words[1] not in COLOURS or words[2] not in _NOUNS:
        raise ValueError(f"not a shapes-world prompt: {text!r}")
    count = _WORD_COUNTS[words[0]]
    shape, number = _NOUNS[words[2]]
    if (count == 1) != (number == 1):
        raise ValueError(f"count and noun disagree in shapes-world prompt: {text!r}")
    return Obj(words[1], shape, count), words[3:]


def parse_prompt(text: str) -> Spec:
    """The exact inverse of ``prompt_text``: scorers only ever see the text."""
    if not isinstance(text, str):
        raise ValueError(f"not a shapes-world prompt: {text!r}")
    obj, rest = _take_obj(text.split(" "), text)
    try:
        if not rest:
            spec = Spec((obj,))
        elif tuple(rest) in _PHRASE_POSITIONS:
            spec = Spec((Obj(obj.colour, obj.shape, obj.count, _PHRASE_POSITIONS[tuple(rest)]),))
        else:
            n = 1 if tuple(rest[:1]) in _RELATION_WORDS else 2
            if tuple(rest[:n]) not in _RELATION_WORDS:
                raise ValueError
            other, tail = _take_obj(rest[n:], text)
            if tail:
                raise ValueError
            spec = Spec((obj, other), _RELATION_WORDS[tuple(rest[:n])])
    except ValueError as e:
        raise ValueError(f"not a shapes-world prompt: {text!r}") from e
    if prompt_text(spec) != text:  # guards the inverse: one spelling per spec
        raise ValueError(f"not a shapes-world prompt: {text!r}")
    return spec


def all_specs() -> list[Spec]:
    """Every spec of the four templates, in a fixed order (templates, then vocabulary order)."""
    objs = [Obj(c, s) for c in COLOURS for s in SHAPES]
    out = [Spec((o,)) for o in objs]
    out += [Spec((Obj(o.colour, o.shape, n),)) for o in objs for n in COUNTS if n > 1]
    out += [Spec((Obj(o.colour, o.shape, 1, p),)) for o in objs for p in POSITIONS]
    out += [
        Spec((a, b), r)
        for a, b in itertools.product(objs, objs)
        if a.colour != b.colour
        for r in RELATIONS
    ]
    return out


def split_of(spec: Spec) -> str:
    """'heldout' if any object uses a held-out (colour, shape) combination, else 'train'."""
    return "heldout" if any((o.colour, o.shape) in HELDOUT_COMBOS for o in spec.objects) else "train"


def _stable_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _heldout_halves() -> dict[str, str]:
    """prompt -> 'align' | 'eval'; halves per template so both halves see every template."""
    by_template: dict[str, list[str]] = {t: [] for t in TEMPLATES}
    for spec in all_specs():
        if split_of(spec) == "heldout":
            by_template[template_of(spec)].append(prompt_text(spec))
    half: dict[str, str] = {}
    for texts in by_template.values():
        ordered = sorted(texts, key=_stable_key)
        cut = (len(ordered) + 1) // 2
        half.update({t: ("align" if i < cut else "eval") for i, t in enumerate(ordered)})
    return half


def prompts(split: str, templates: Iterable[str] | None = None) -> list[str]:
    """Prompt texts of a split ('train', 'heldout', 'align' or 'eval'), in all_specs() order; or
    of a union of splits ('train+align'), split after split, each prompt once.

    ``templates`` optionally restricts to some of TEMPLATES.
    """
    parts = split.split("+")
    unknown = [p for p in parts if p not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split {unknown[0]!r} in {split!r}; expected one of {list(SPLITS)}, or a union of them")
    wanted = set(TEMPLATES if templates is None else templates)
    if not wanted <= set(TEMPLATES):
        raise ValueError(f"unknown templates {sorted(wanted - set(TEMPLATES))}; expected from {list(TEMPLATES)}")
    halves = _heldout_halves() if {"align", "eval"} & set(parts) else {}
    specs = [(split_of(spec), prompt_text(spec)) for spec in all_specs() if template_of(spec) in wanted]
    out = [text for part in parts for base, text in specs
           if part == base or (base == "heldout" and halves.get(text) == part)]
    return list(dict.fromkeys(out))
