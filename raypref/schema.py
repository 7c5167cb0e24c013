"""The one place that spells column names and Arrow schemas.

Tables (DESIGN.md of the shared design notes, "Data model"):
- prompts: one row per prompt.
- groups: one row per prompt with its samples as list columns. This is the row the build
  pipeline streams (generators append samples, scorers add score lists, pairing is a row-local
  map), and the resumable staging table the build writes first.
- samples: one row per image (groups exploded).
- pairs: one row per preference pair, images inline so training streams without a join.
- quarantine: rows that could not be used, with the reason.

Score columns are named ``score_<scorer name>``, and a scorer with several outputs (aspects of
a judge, attributes of a checker) adds ``score_<scorer name>_<aspect>`` beside it; the aggregate
is ``score``.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

# prompts
PROMPT_ID = "prompt_id"
PROMPT = "prompt"
SOURCE = "source"
CLASS_LABEL = "class_label"

# samples
SAMPLE_ID = "sample_id"
GENERATOR = "generator"
SEED = "seed"
STEPS = "num_inference_steps"
GUIDANCE = "guidance_scale"
NOISE_SIGMA = "embedding_noise_sigma"
IMAGE = "image"
SCORE = "score"  # weighted aggregate of the scorer columns
SELECTED_SCORE = "score"  # train/sft_selected.parquet: the train.sft_score value each kept image was chosen on
SCORE_PREFIX = "score_"
RATIONALE_PREFIX = "rationale_"  # a judge's free-text reason, one string per sample
JUDGE_EVENTS_PREFIX = "judge_events_"  # a judge's request events (JSON counts), one string per sample

# groups: the sample fields above as list columns, one list element per sample
SAMPLE_LIST_FIELDS = (SAMPLE_ID, GENERATOR, SEED, STEPS, GUIDANCE, NOISE_SIGMA, IMAGE)

# groups: pairs as index lists into the group's samples (written by the row-local pairing map)
PAIR_CHOSEN = "pair_chosen"
PAIR_REJECTED = "pair_rejected"
PAIR_MARGIN = "pair_margin"
PAIR_LABEL = "pair_label"
QUARANTINE_NOTES = "quarantine"  # groups: list of {stage, row, reason} for the row's unusable parts

# pairs
CHOSEN_ID = "chosen_id"
REJECTED_ID = "rejected_id"
CHOSEN_IMAGE = "chosen_image"
REJECTED_IMAGE = "rejected_image"
CHOSEN_SCORE = "chosen_score"
REJECTED_SCORE = "rejected_score"
MARGIN = "margin"
QUALITY = "quality"
LABEL_SOURCE = "label_source"
LABEL = "label"  # P(chosen preferred): 1.0 for a strict preference, 0.5 for a tie (human data)
STRICT, TIE = 1.0, 0.5  # the two values a pairs row's LABEL may hold
CHOSEN_GENERATOR = "chosen_generator"
REJECTED_GENERATOR = "rejected_generator"
SOURCE_LABEL = "source_label"  # re-labelled pairs: the imported (e.g. human) label, as P(this chosen preferred)
SOURCE_LABEL_SOURCE = "source_label_source"  # re-labelling's groups: the imported pairs' label_source
IMPORT_ROW = "import_row"  # re-labelled pairs: the pair's row in relabel/imported, the key a resumed relabel skips by
PAIR_ORDER = "pair_order"  # transient, reward training only: the seeded sort key that interleaves pairs dirs
CHOSEN_PREFIX = "chosen_"  # + a score column: that scorer's (aspect's) score of the chosen image
REJECTED_PREFIX = "rejected_"

# quarantine
REASON = "reason"
STAGE = "stage"
ROW = "row"

PROMPTS_SCHEMA = pa.schema(
    [
        pa.field(PROMPT_ID, pa.string(), nullable=False),
        pa.field(PROMPT, pa.string(), nullable=False),
        pa.field(SOURCE, pa.string()),
        pa.field(CLASS_LABEL, pa.string()),
    ]
)

SAMPLE_FIELDS = [
    pa.field(SAMPLE_ID, pa.string(), nullable=False),
    pa.field(GENERATOR, pa.string()),
    pa.field(SEED, pa.int64()),
    pa.field(STEPS, pa.int32()),
    pa.field(GUIDANCE, pa.float32()),
    pa.field(NOISE_SIGMA, pa.float32()),
    pa.field(IMAGE, pa.binary()),
]

PAIRS_SCHEMA = pa.schema(
    [
        pa.field(PROMPT_ID, pa.string(), nullable=False),
        pa.field(PROMPT, pa.string(), nullable=False),
        pa.field(CHOSEN_ID, pa.string(), nullable=False),
        pa.field(REJECTED_ID, pa.string(), nullable=False),
        pa.field(CHOSEN_IMAGE, pa.binary(), nullable=False),
        pa.field(REJECTED_IMAGE, pa.binary(), nullable=False),
        pa.field(CHOSEN_SCORE, pa.float32()),
        pa.field(REJECTED_SCORE, pa.float32()),
        pa.field(MARGIN, pa.float32()),
        pa.field(QUALITY, pa.float32()),
        pa.field(LABEL_SOURCE, pa.string()),
        pa.field(LABEL, pa.float32()),
        pa.field(CHOSEN_GENERATOR, pa.string()),
        pa.field(REJECTED_GENERATOR, pa.string()),
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field(STAGE, pa.string()),
        pa.field(ROW, pa.string()),
        pa.field(REASON, pa.string()),
    ]
)
QUARANTINE_NOTE_TYPE = pa.struct(list(QUARANTINE_SCHEMA))


def score_column(scorer_name: str, aspect: str | None = None) -> str:
    """Column holding one scorer's raw output (or one aspect of it)."""
    return SCORE_PREFIX + scorer_name + (f"_{aspect}" if aspect else "")


def is_score_column(name: str) -> bool:
    return name.startswith(SCORE_PREFIX)


def rationale_column(scorer_name: str) -> str:
    return RATIONALE_PREFIX + scorer_name


def judge_events_column(scorer_name: str) -> str:
    return JUDGE_EVENTS_PREFIX + scorer_name


def score_columns(names) -> list[str]:
    return [score_column(n) for n in names]


def chosen_column(score_col: str) -> str:
    """Pairs column: the chosen image's value of one score column (e.g. chosen_score_clip)."""
    return CHOSEN_PREFIX + score_col


def rejected_column(score_col: str) -> str:
    return REJECTED_PREFIX + score_col


def base_column(score_col: str) -> str:
    """eval/scores.parquet: the base model's image's value of one score column (e.g. base_score_clip)."""
    return "base_" + score_col


def tuned_column(score_col: str) -> str:
    return "tuned_" + score_col


def pair_score_columns(column_names) -> list[str]:
    """The score columns a pairs table carries per side (chosen_score_x / rejected_score_x), by score column."""
    names = set(column_names)
    return [c[len(CHOSEN_PREFIX):] for c in column_names
            if c.startswith(CHOSEN_PREFIX + SCORE_PREFIX) and rejected_column(c[len(CHOSEN_PREFIX):]) in names]


def main_score_columns(score_cols) -> list[str]:
    """The scorers' own score columns (score_<name>) among score columns, without their aspects
    (score_<name>_<aspect>). A scorer always writes its main column beside its aspects, so a column
    that extends another one given by '_<aspect>' is an aspect; exact because no scorer name extends
    another's by '_' (build.scorers checks it)."""
    cols = list(score_cols)
    return [c for c in cols if not any(c.startswith(m + "_") for m in cols if m != c)]


def pairs_schema(score_cols=()) -> pa.Schema:
    """Pairs table: PAIRS_SCHEMA, then chosen_/rejected_ float32 columns for each score column given
    (every scorer and aspect), so pairs can be re-ranked and re-labelled per scorer without a join."""
    extra = []
    for c in score_cols:
        extra += [pa.field(chosen_column(c), pa.float32()), pa.field(rejected_column(c), pa.float32())]
    return pa.schema(list(PAIRS_SCHEMA) + extra)


def samples_schema(scorer_names, aspect_columns=(), rationale_columns=()) -> pa.Schema:
    """Samples table: prompt fields, sample fields, one float32 column per scorer (and per scorer
    aspect, in the order given), aggregate, then judges' rationales."""
    scores = [pa.field(c, pa.float32()) for c in score_columns(scorer_names) + list(aspect_columns)]
    return pa.schema(
        [PROMPTS_SCHEMA.field(PROMPT_ID), PROMPTS_SCHEMA.field(PROMPT)]
        + SAMPLE_FIELDS
        + scores
        + [pa.field(SCORE, pa.float32())]
        + [pa.field(c, pa.string()) for c in rationale_columns]
    )


def stable_id(*parts) -> str:
    """A stable hash id (16 hex chars), the same on every machine and run."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8"))
    return h.hexdigest()[:16]


def unit_hash(*parts) -> float:
    """stable_id read as a number in [0, 1): a seeded coin the same on every machine and run."""
    return int(stable_id(*parts), 16) / 16**16


def prompt_id(prompt: str) -> str:
    return stable_id("prompt", prompt)


def sample_id(pid: str, generator: str, seed: int) -> str:
    return stable_id("sample", pid, generator, seed)
