"""A generator of rendered near misses for the shapes world: hard negatives for preference data.

For each prompt it draws ``true_renders`` crisp renders of the prompt's spec, then
``num_samples - true_renders`` images that break the spec in one named way
(raypref.shapes.render.PERTURBATIONS: a colour swapped, an extra object, the object moved to the
opposite place or relation, one shape swapped, one copy more or fewer). The diffusion model
seldom draws such controlled contrasts, and a reward model trained on its images alone does not
learn shapes, relations or positions (README, "Reward models"); these pairs isolate each rule.

The images carry no labels: scorers (e.g. the simulated judge) label them as they label any
generator's. No model is loaded; the build's other generator columns are filled with zeros.
"""

from __future__ import annotations

from typing import Annotated, Literal

import pyarrow as pa
from pydantic import Field, NonNegativeInt, PositiveInt

from actors.generators import append_samples, sample_columns, sample_seed
from raypref import images as I
from raypref import quarantine as Q
from raypref import schema as S
from raypref.registry import checked_args
from raypref.shapes.render import PERTURBATIONS

Kinds = Annotated[list[Literal[PERTURBATIONS]], Field(min_length=1)]


class ShapesRenderGenerator:
    loads_model = False  # the build leaves generators[].model empty for it (raypref.build.generator_kwargs)

    @checked_args("generator")
    def __init__(self, name: str = "shapes-render", num_samples: PositiveInt = 8, true_renders: NonNegativeInt = 2,
                 kinds: Kinds | None = None, seed: int = 0, width: PositiveInt | None = None):
        if true_renders > num_samples:  # two args: beyond what one's annotation can say
            raise ValueError(f"generator {name!r}: true_renders must be in [0, num_samples={num_samples}], "
                             f"got {true_renders}")
        self.name, self.n, self.true, self.seed = name, num_samples, true_renders, seed
        self.kinds = list(kinds or PERTURBATIONS)
        self.size = width or 32

    def _kinds_for(self, spec) -> list[str]:
        from raypref.shapes import template_of

        # only a position or a relation can be moved to its opposite
        movable = template_of(spec) in ("position", "relation")
        return [k for k in self.kinds if k != "moved_object" or movable]

    def _draw(self, spec, seed: int, index: int, pid: str):
        from raypref.shapes import render, render_perturbed

        if index < self.true:
            return render(spec, seed, self.size)[0]
        kinds = self._kinds_for(spec)
        if not kinds:
            raise ValueError(f"generator {self.name!r}: no perturbation in {self.kinds} applies to prompt_id {pid!r}")
        first = seed % len(kinds)
        errors = []
        for k in kinds[first:] + kinds[:first]:  # a kind with no room on the canvas yields to the next
            try:
                return render_perturbed(spec, seed, k, self.size)[0]
            except RuntimeError as e:
                errors.append(f"{k}: {e}")
        raise RuntimeError(f"generator {self.name!r}: prompt_id {pid!r}: no perturbation could be drawn ({errors})")

    def __call__(self, batch: pa.Table) -> pa.Table:
        from raypref.shapes import parse_prompt

        pids = batch.column(S.PROMPT_ID).to_pylist()
        prompts = batch.column(S.PROMPT).to_pylist()
        seeds, encoded, counts, notes = [], [], [], []
        for pid, prompt in zip(pids, prompts):
            try:
                spec = parse_prompt(prompt)
            except ValueError as e:  # a prompt it cannot draw: no samples from it, and a note (other generators may draw it)
                counts.append(0)
                notes.append([Q.note("generate", pid, f"{e} (generator {self.name!r} draws none)")])
                continue
            counts.append(self.n)
            notes.append([])
            for i in range(self.n):
                s = sample_seed(self.seed, pid + "|" + self.name, i)
                seeds.append(s)
                encoded.append(I.encode(self._draw(spec, s, i, pid)))
        # no diffusion: steps, guidance and noise are recorded as 0
        batch = append_samples(batch, sample_columns(pids, self.name, counts, seeds, encoded, 0, 0.0, 0.0), counts)
        return Q.add_notes(batch, notes) if any(notes) else batch
