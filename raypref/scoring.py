"""The scorer interface: load once in __init__, __call__(groups batch) adds score list columns.

A scorer subclass implements ``score(images, prompts)``, returning one value per image: a float32
array, or a dict {aspect: array} whose "" entry is the main score (column ``score_<name>``) and
whose other entries become ``score_<name>_<aspect>`` columns; the text entries in TEXT_OUTPUTS
(one string per image) become their own columns: "rationale" -> ``rationale_<name>``,
"judge_events" -> ``judge_events_<name>`` (a judge's request event counts, JSON). NaN marks a
value the scorer could not give (counted in the build summary, never paired on). A scorer that
returns more than the main score names those entries in ``outputs`` (in the order score() returns
them; a class attribute, or set in __init__ where its config decides them): a batch with no image to
score (none decoded, or a safety checker left none) still gets every column, as NaN or '', so all of
a run's files share one schema. Declared, it is held to: an entry score() returns that ``outputs``
does not name, or one it names that score() leaves out, is an error. Undeclared (None), whatever
score() returns is taken, and a batch with no image gets the entries the actor has seen so far, with a
warning once that ``outputs`` would keep every batch's columns the same. The base class
handles the prompt-group rows the build pipeline streams: it flattens every group's images into
one call, then splits the scores back into a list column per group.

A scorer that sets ``wants_class_labels = True`` is called as ``score(images, prompts,
class_labels=...)``, one label per image: its prompt's ``class_label`` (the prompts table's
optional column; None where a prompt has none, or the groups have no such column), so a
class-conditional prompt's detector looks for the class the prompt was written for.

A scorer whose score is a differentiable function of the pixels may also implement
``differentiable_score(images, prompts) -> {aspect: tensor}``: the same scores (the "" entry is the
main one) of a (B, 3, H, W) float tensor in [0, 1], with the graph kept, its preprocessing done on
tensors (raypref.pixels). Reward feedback learning (raypref.train_refl) trains a diffusion model
through it; the scorer's own weights stay frozen.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from raypref import images as I
from raypref import schema as S


# non-score outputs a scorer may return: entry -> its column (one string per image)
TEXT_OUTPUTS = {"rationale": S.rationale_column, "judge_events": S.judge_events_column}


class Scorer:
    wants_class_labels = False
    outputs: tuple[str, ...] | None = None  # what score() returns besides the main score (None: undeclared)
    _seen: tuple[str, ...] = ()  # an undeclared scorer's entries, as far as this actor has seen them

    def __init__(self, name: str):
        self.name = name
        self.column = S.score_column(name)

    def score(self, images: list, prompts: list[str]) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def __call__(self, batch: pa.Table) -> pa.Table:
        from raypref import quarantine as Q

        images_col = batch.column(S.IMAGE).to_pylist()
        prompts_col = batch.column(S.PROMPT).to_pylist()
        # sample ids name the rows in quarantine notes; a hand-made batch without them gets positions
        ids_col = (batch.column(S.SAMPLE_ID).to_pylist() if S.SAMPLE_ID in batch.column_names
                   else [[f"row {r} image {i}" for i in range(len(x))] for r, x in enumerate(images_col)])
        labels_col = (batch.column(S.CLASS_LABEL).to_pylist()
                      if self.wants_class_labels and S.CLASS_LABEL in batch.column_names else [None] * batch.num_rows)
        flat_images, flat_prompts, flat_labels, counts, ok, notes = [], [], [], [], [], []
        for imgs, prompt, label, ids in zip(images_col, prompts_col, labels_col, ids_col):
            counts.append(len(imgs))
            row_notes = []
            for b, sid in zip(imgs, ids):
                try:
                    flat_images.append(I.decode(b))
                    flat_prompts.append(prompt)
                    flat_labels.append(label)
                    ok.append(True)
                except Exception as e:  # an undecodable image gets NaN scores and a quarantine note
                    ok.append(False)
                    row_notes.append(Q.note(f"score:{self.name}", sid, f"undecodable image: {type(e).__name__}: {e}"))
            notes.append(row_notes)
        extra = {"class_labels": flat_labels} if self.wants_class_labels else {}
        declared = self.outputs
        if flat_images:
            out = self.score(flat_images, flat_prompts, **extra)
        else:  # nothing to score: every column still comes, so this block's schema is the others'
            out = {"": np.zeros(0, np.float32), **{a: [] for a in (self._seen if declared is None else declared)}}
        outputs = out if isinstance(out, dict) else {"": out}
        if "" not in outputs:
            raise ValueError(f"scorer {self.name!r} returned aspects {sorted(outputs)} but no main score ('')")
        if declared is None:
            new = tuple(a for a in outputs if a and a not in self._seen)
            if new and flat_images:
                if not self._seen:
                    logging.getLogger(__name__).warning(
                        "scorer %r (%s) returns %s besides its main score but declares no `outputs`: a batch with no "
                        "image to score may then lack those columns; set `outputs` to them", self.name,
                        type(self).__qualname__, sorted(new))
                self._seen = self._seen + new
        elif set(outputs) != {"", *declared}:
            raise ValueError(f"scorer {self.name!r} ({type(self).__qualname__}) returned {sorted(k for k in outputs if k)} "
                             f"besides its main score, but its `outputs` names {sorted(declared)}: set `outputs` to "
                             "what score() returns, so that a batch with no image to score gets the same columns")
        else:
            outputs = {a: outputs[a] for a in ("", *declared)}  # one column order in every block
        for aspect, vals in outputs.items():
            if len(vals) != len(flat_images):
                raise ValueError(f"scorer {self.name!r} returned {len(vals)} {aspect or 'score'} values for {len(flat_images)} images")
        if not all(ok):
            outputs = {a: _spread(v, ok, a in TEXT_OUTPUTS) for a, v in outputs.items()}
            batch = Q.add_notes(batch, notes)
        offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
        for aspect, vals in outputs.items():
            text = aspect in TEXT_OUTPUTS
            values = pa.array(list(vals), pa.string()) if text else pa.array(np.asarray(vals, dtype=np.float32))
            column = TEXT_OUTPUTS[aspect](self.name) if text else S.score_column(self.name, aspect)
            if column in batch.column_names:
                raise ValueError(f"two scorers write {column!r}: scorer names must be unique")
            batch = batch.append_column(column, pa.ListArray.from_arrays(offsets, values))
        return batch


def _spread(values, ok: list[bool], text: bool) -> list:
    """Scores of the decodable images -> one value per image, NaN (or '') where it did not decode."""
    it = iter(list(values))
    return [next(it) if good else ("" if text else float("nan")) for good in ok]


def check_template(template: str, where: str, key: str, fills: str) -> None:
    """A template with one '{}' that format() fills: else it failed only at scoring time, in every batch."""
    try:
        ok = "{}" in template and template.format("\0").count("\0") == 1
    except (IndexError, KeyError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{where}: {key} {template!r} needs a '{{}}' for the {fills}, once (other braces doubled: '{{{{')")


def cut_note(tokenizer, text: str, limit: int, what: str) -> str:
    """'' for a ``text`` that fits a text encoder's ``limit`` positions; else the rationale's note that it
    was cut to them (``what``: "question", "query"), so a score of its first part alone is not taken for
    the whole's."""
    n = len(tokenizer(text, verbose=False)["input_ids"])  # verbose: no warning of the length
    return f" [{what} cut to its first {limit} of {n} tokens]" if n > limit else ""


def pick_device(num_gpus: float = 0.0) -> str:
    import torch

    return "cuda" if torch.cuda.is_available() and num_gpus > 0 else "cpu"
