"""Pure text matching for VQA and caption scorers: answer normalisation, TIFA's score, token F1.

Normalisation (``normalize_text``): lowercase; every character that is not a letter or digit
becomes a space; the articles a/an/the are dropped; number words zero..twenty become digits.
So "Two." == "2", "a red" == "red", "The Circle" == "circle". Colour spellings are not merged.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

ARTICLES = frozenset({"a", "an", "the"})
NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
}
# Function words a caption and a prompt share without saying anything about the image.
STOPWORDS = frozenset(
    {"of", "on", "in", "at", "with", "and", "is", "are", "there", "to", "its", "it", "this", "that", "some"}
)
_NON_WORD = re.compile(r"[^0-9a-z]+")


def normalize_tokens(text: str) -> list[str]:
    words = _NON_WORD.sub(" ", str(text).lower()).split()
    return [NUMBER_WORDS.get(w, w) for w in words if w not in ARTICLES]


def normalize_text(text: str) -> str:
    return " ".join(normalize_tokens(text))


def answer_matches(answer: str, expected: str) -> bool:
    """A VQA answer is correct iff it normalises to the expected answer."""
    return normalize_text(answer) == normalize_text(expected)


def tifa_score(answers: Sequence[str], expected: Sequence[str]) -> float:
    """TIFA (Hu et al., ICCV 2023, Eq. 1): score = (1/N) * sum_i 1[VQA(image, q_i) == a_i];
    NaN when a prompt has no questions."""
    if len(answers) != len(expected):
        raise ValueError(f"{len(answers)} answers for {len(expected)} questions")
    if not expected:
        return math.nan
    return sum(answer_matches(a, e) for a, e in zip(answers, expected)) / len(expected)  # Hu et al. 2023 (TIFA), Eq. 1


def content_tokens(text: str) -> list[str]:
    return [t for t in normalize_tokens(text) if t not in STOPWORDS]


def token_f1(candidate: str, reference: str) -> tuple[float, float, float]:
    """(precision, recall, F1) of the candidate's content tokens against the reference's, counted
    as multisets as in SQuAD's token F1 (Rajpurkar et al., 2016): overlap = |C ∩ R|,
    P = overlap/|C|, R = overlap/|R|, F1 = 2PR/(P+R); 0 where a side is empty or nothing overlaps."""
    cand, ref = Counter(content_tokens(candidate)), Counter(content_tokens(reference))
    overlap = sum((cand & ref).values())  # SQuAD token F1 (Rajpurkar et al. 2016)
    if overlap == 0:
        return 0.0, 0.0, 0.0
    p = overlap / sum(cand.values())
    r = overlap / sum(ref.values())
    return p, r, 2 * p * r / (p + r)
