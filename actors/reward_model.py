"""A trained raypref reward model (raypref.reward_model) as a scorer: ``model`` is the export
directory that `raypref train reward` writes (<output_dir>/reward/model). The main score is the
overall head; each aspect head adds a ``score_<name>_<aspect>`` column."""

from __future__ import annotations

from pydantic import PositiveInt

from raypref.registry import checked_args
from raypref.scoring import Scorer, pick_device


class RewardModelScorer(Scorer):
    @checked_args("scorer")  # batch_size: a non-int or one below 1 failed range() in every batch
    def __init__(self, name: str = "reward", model: str = "", num_gpus: float = 0.0, batch_size: PositiveInt = 64):
        from raypref.models import check_model_ref
        from raypref.reward_model import RewardModel

        super().__init__(name)
        path = check_model_ref(model, what=f"scorer {name!r} model")
        self.batch_size = batch_size
        self.model = RewardModel.load(path, device=pick_device(num_gpus))
        self.outputs = self.model.aspects  # the export's aspect heads

    def score(self, images, prompts):
        return self.model.score(images, prompts, batch_size=self.batch_size)

    def differentiable_score(self, images, prompts):
        device = next(self.model.parameters()).device
        return self.model(self.model.pixels_from_tensor(images.to(device)), self.model.backbone.text_inputs(prompts).to(device))
