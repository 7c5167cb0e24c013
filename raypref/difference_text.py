"""Difference texts for PC-CLIP: how image a differs from image b, written from their prompts.

PC-CLIP has a language model write these; a generator here is any function (prompt_a, prompt_b)
-> text, or None when the prompts do not differ (the pair is then skipped). Built in:
- ``shapes``: for two shapes-world prompts, the attributes that change, a's value first
  ("red instead of blue, a square instead of a circle"); two prompts of different templates
  fall back to ``template``.
- ``template``: "<prompt a> instead of <prompt b>", for any prompts.
- ``llm``: a language model behind an OpenAI-compatible chat-completions server writes them, as
  in the paper (``LLMDifferences``; ``pcclip.llm`` names the server).
Any other name is an import path, 'module:function', with the same signature.

A generator may also have ``many(pairs) -> texts``, for a whole batch of (prompt a, prompt b)
at once; callers use it when it is there (the LLM's requests then run concurrently).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from raypref.judge_http import HttpJudgeConf

DEFAULT_INSTRUCTION = (
    "Two images have these captions.\nImage A: {a}\nImage B: {b}\n"
    "In a few words, say how image A differs from image B, e.g. 'a dog instead of a cat' or "
    "'brighter and more crowded'. Answer with the difference only, on one line."
)


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


NEEDS_SERVER = "text_generator 'llm' needs pcclip.llm: the chat-completions server (base_url, model, ...)"


def check_instruction(instruction: str) -> str:
    """The LLM's request text, which must name both prompts; a clear error otherwise."""
    if "{a}" not in instruction or "{b}" not in instruction:
        raise ValueError("llm_instruction needs both {a} and {b} (the two prompts)")
    return instruction


def first_line(body) -> str:
    """The difference from a chat-completions body: the answer's first non-empty line, without
    list markers or quotes. An empty answer is malformed (the pair then goes without a text)."""
    from raypref.judge_rubric import MalformedAnswer, answer_text

    for line in answer_text(body).splitlines():
        line = line.strip().lstrip("-*").strip().strip("\"'`").strip()
        if line:
            return line
    raise MalformedAnswer("no difference in the answer")


class LLMDifferences:
    """Difference texts written by a language model, one chat request per (a, b) prompt pair.

    Answers are kept for the life of the object, so each pair of prompts is asked about once
    (a training run meets the same pairs again, and evaluations reuse theirs). A request that
    fails after the client's retries gives None for its pair, which callers skip; ``events``
    counts requests, answers, failures and cache hits. The API key comes from the environment
    variable that ``conf.api_key_env`` names, as for the LLM judge.
    """

    def __init__(self, conf: "HttpJudgeConf", instruction: str = DEFAULT_INSTRUCTION):
        from raypref.judge_http import ChatClient

        self.instruction = check_instruction(instruction)
        self.client = ChatClient(conf)
        self.cache: dict[tuple[str, str], str] = {}
        self.events: Counter = Counter()

    def __repr__(self) -> str:
        return f"LLMDifferences({self.client!r})"

    def __call__(self, a: str, b: str) -> str | None:
        return self.many([(a, b)])[0]

    def close(self) -> None:
        """End the client's threads and connections (a training worker lives on after its loop in Ray
        Train's worker process); no request after."""
        self.client.close()

    def many(self, pairs: list[tuple[str, str]]) -> list[str | None]:
        todo = list(dict.fromkeys(p for p in pairs if p[0] != p[1] and p not in self.cache))
        self.events["cache_hits"] += sum(p[0] != p[1] and p not in todo for p in pairs)
        messages = [[{"role": "user", "content": [{"type": "text", "text": self.instruction.format(a=a, b=b)}]}]
                    for a, b in todo]
        for pair, out in zip(todo, self.client.complete_all([(m, first_line) for m in messages])):
            self.events.update(out.events)
            if out.value is not None:
                self.cache[pair] = out.value
        return [None if a == b else self.cache.get((a, b)) for a, b in pairs]


def close_quietly(generator: LLMDifferences) -> None:
    """Close an LLM generator at the end of a training loop: its client's threads and sockets, which
    would last as long as the worker process; a failure to close is logged, never raised over the
    loop's own outcome (a training error in flight)."""
    try:
        generator.close()
    except Exception as e:  # noqa: BLE001 - whatever it is, the loop's own error matters more
        logging.getLogger(__name__).warning("pcclip: closing %r failed: %s", generator, e)


def texts_for(generator, pairs: list[tuple[str, str]]) -> list[str | None]:
    """The generator's texts for many pairs: its ``many`` when it has one, else one call a pair."""
    many = getattr(generator, "many", None)
    return many(pairs) if many else [generator(a, b) for a, b in pairs]


BUILT_IN: dict[str, Callable[[str, str], str | None]] = {"shapes": shapes, "template": template}


def resolve(name: str, llm: "HttpJudgeConf | dict | None" = None,
            instruction: str = DEFAULT_INSTRUCTION) -> Callable[[str, str], str | None]:
    """A built-in generator by name, 'llm' (with ``llm``, the server), or 'module:function'; a
    clear error names what is missing."""
    from raypref.registry import import_attr

    if name in BUILT_IN:
        return BUILT_IN[name]
    if name == "llm":
        from raypref.judge_http import HttpJudgeConf

        if llm is None:
            raise ValueError(NEEDS_SERVER)
        return LLMDifferences(llm if isinstance(llm, HttpJudgeConf) else HttpJudgeConf(**llm), instruction)
    if ":" not in name:
        raise ValueError(f"pcclip.text_generator: {name!r} is neither built in ({', '.join(BUILT_IN)}, llm) nor 'module:function'")
    return import_attr(name, f"pcclip.text_generator {name!r}")
