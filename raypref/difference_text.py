"""Difference texts for PC-CLIP: how image a differs from image b, written from their prompts.

PC-CLIP has a language model write these; a generator here is any function (prompt_a, prompt_b)
-> text, or None when the prompts do not differ (the pair is then skipped). Built in:
- ``shapes``: for two shapes-world prompts, the attributes that change, a's value first
  ("red instead of blue, a square instead of a circle"); two prompts of different templates
  fall back to ``template``.
- ``template``: "<prompt a> instead of <prompt b>", for any prompts.
Any other name is an import path, 'module:function', with the same signature (e.g. one that asks
an LLM, as the paper does).
"""

from __future__ import annotations

from typing import Callable


def template(a: str, b: str) -> str | None:
    return None if a == b else f"{a} instead of {b}"


def shapes(a: str, b: str) -> str | None:
    from raypref.shapes import parse_prompt
    from raypref.shapes.world import COUNT_WORDS, POSITIONS, template_of

    if a == b:
        return None
    try:
        sa, sb = parse_prompt(a), parse_prompt(b)
    except ValueError:
        return template(a, b)
    if template_of(sa) != template_of(sb):
        return template(a, b)
    parts = []
    for oa, ob in zip(sa.objects, sb.objects):
        if oa.count != ob.count:
            parts.append(f"{COUNT_WORDS[oa.count]} instead of {COUNT_WORDS[ob.count]}")
        if oa.colour != ob.colour:
            parts.append(f"{oa.colour} instead of {ob.colour}")
        if oa.shape != ob.shape:
            parts.append(f"a {oa.shape} instead of a {ob.shape}")
        if oa.position != ob.position:
            parts.append(f"{POSITIONS[oa.position]} instead of {POSITIONS[ob.position]}")
    if sa.relation != sb.relation:
        parts.append(f"{sa.relation} instead of {sb.relation}")
    return ", ".join(parts) or template(a, b)


BUILT_IN: dict[str, Callable[[str, str], str | None]] = {"shapes": shapes, "template": template}


def resolve(name: str) -> Callable[[str, str], str | None]:
    """A built-in generator by name, or 'module:function'; a clear error names what is missing."""
    from raypref.registry import import_attr

    if name in BUILT_IN:
        return BUILT_IN[name]
    if ":" not in name:
        raise ValueError(f"pcclip.text_generator: {name!r} is neither built in ({', '.join(BUILT_IN)}) nor 'module:function'")
    return import_attr(name, f"pcclip.text_generator {name!r}")
