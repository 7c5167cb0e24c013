"""The shapes world: a closed text-to-image world whose images can be checked exactly.

A tiny prompt grammar (colours x shapes x counts x positions x relations), a renderer that draws
ground truth, and a checker that judges any image against a prompt with no learned model, so
alignment gains can be measured without trusting a reward model. See ``world`` for the splits.
"""

from raypref.shapes.checker import ATTRIBUTES, Detected, answer, check, detect, questions
from raypref.shapes.render import PERTURBATIONS, Placed, render, render_perturbed
from raypref.shapes.world import (
    COLOURS,
    COUNTS,
    HELDOUT_COMBOS,
    POSITIONS,
    RELATIONS,
    SHAPES,
    TEMPLATES,
    Obj,
    Spec,
    all_specs,
    parse_prompt,
    prompt_text,
    prompts,
    split_of,
    template_of,
)

__all__ = [
    "ATTRIBUTES",
    "COLOURS",
    "COUNTS",
    "Detected",
    "HELDOUT_COMBOS",
    "Obj",
    "PERTURBATIONS",
    "POSITIONS",
    "Placed",
    "RELATIONS",
    "SHAPES",
    "Spec",
    "TEMPLATES",
    "all_specs",
    "answer",
    "check",
    "detect",
    "parse_prompt",
    "prompt_text",
    "prompts",
    "questions",
    "render",
    "render_perturbed",
    "split_of",
    "template_of",
]
