"""VQAScore (Lin et al., ECCV 2024): the probability that a VQA model answers "yes" when asked
whether the image shows the prompt, answered by a BLIP VQA model.

Score = P("yes" | image, question) for question = ``question_template.format(prompt)`` (the
paper's 'Does this figure show "{}"? Please answer yes or no.'): the answer decoder's probability
of the token "yes" as its first answer token, 0..1. Unlike the TIFA score (``tifa_vqa``) it needs
no question generator and is continuous, so two images that both pass or both fail every TIFA
question still differ. The paper's own model is CLIP-FlanT5; this is the same measure read from
BLIP (the paper also reports it for BLIP-2 and InstructBLIP, with lower agreement with humans).

Outputs: main score = P(yes); aspect 'no' = P(no), so P(yes) / (P(yes) + P(no)) can be formed
downstream; rationale = the question and both probabilities, and a note where the question (the
whole prompt in it) was cut to the text encoder's 512 tokens, the score then being of its first part.

On a cluster pass model='Salesforce/blip-vqa-base' or 'Salesforce/blip-vqa-capfilt-large' (or a
local save_pretrained directory); locally 'tiny:blip_vqa' (random weights: meaningless values).
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import PositiveInt

from actors.tifa_vqa import TifaVQA
from raypref.registry import checked_args

DEFAULT_QUESTION = 'Does this figure show "{}"? Please answer yes or no.'


class VQAScore(TifaVQA):
    outputs = ("no", "rationale")

    @checked_args("scorer")
    def __init__(self, name: str = "vqascore", model: str = "", pretrained: str | None = None, num_gpus: float = 0.0,
                 question_template: str = DEFAULT_QUESTION, batch_size: PositiveInt = 32):
        from raypref.scoring import check_template

        check_template(question_template, f"scorer {name!r}", "question_template", "prompt")
        super().__init__(name=name, model=model, num_gpus=num_gpus, batch_size=batch_size)
        self.template = question_template
        tok = self.processor.tokenizer
        ids = [tok(w, add_special_tokens=False)["input_ids"] for w in ("yes", "no")]
        if any(len(i) != 1 for i in ids):
            raise ValueError(f"scorer {name!r}: the model's tokenizer splits 'yes' or 'no' into several tokens")
        bos = self.model.config.text_config.bos_token_id  # [DEC], the answer decoder's start
        self.answer_ids = torch.tensor([[bos, ids[0][0]], [bos, ids[1][0]]])

    @torch.no_grad()
    def yes_no(self, pixel_values: torch.Tensor, question: str) -> torch.Tensor:
        """(images, 2): P(first answer token = yes) and P(= no) for each image."""
        return self.sequence_logprobs(pixel_values, question, self.answer_ids, torch.ones_like(self.answer_ids)).exp()

    def score(self, images, prompts):
        n = len(images)
        pixels = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        pixels = pixels.to(self.device, self.model.dtype)
        yes, no = np.full(n, np.nan, np.float32), np.full(n, np.nan, np.float32)
        by_prompt: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            by_prompt.setdefault(p, []).append(i)
        questions = {p: self.template.format(p) for p in by_prompt}
        cuts = {p: self.cut_note(q) for p, q in questions.items()}
        for prompt, idx in by_prompt.items():  # one question a batch: no padding reaches the decoder
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start : start + self.batch_size]
                probs = self.yes_no(pixels[chunk], questions[prompt]).float().cpu().numpy()
                yes[chunk], no[chunk] = probs[:, 0], probs[:, 1]
        reasons = [f"{questions[p]} -> P(yes) {y:.4f}, P(no) {x:.4f}{cuts[p]}" for p, y, x in zip(prompts, yes, no)]
        return {"": yes, "no": no, "rationale": reasons}
