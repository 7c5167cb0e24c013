"""TIFA-style VQA score (Hu et al., ICCV 2023) answered by a BLIP VQA model.

Questions with expected answers come from the prompt (``raypref.vqa_questions``): ``questions=
'template'`` (shapes-world templates, else one "is there <subject>?" question) or a
``'module:function'`` generator, e.g. one that asks an LLM as TIFA does. They are cached per
prompt. TIFA's questions are multiple choice, and so, with ``answers='choices'`` (the default), a
question that has choices is answered by ranking them: the choice whose tokens the VQA model's
answer decoder gives the highest summed log-probability (BLIP's own 'rank' inference) is the
answer. A question without choices, and every question with ``answers='generate'``, is answered by
generating a short answer. Either way an answer is correct iff it normalises to the expected one
(``raypref.answer_match``: lowercase, no articles or punctuation, number words as digits).

Outputs: main score = fraction of questions answered correctly (0..1, NaN for a prompt with no
questions); one aspect per element type (object, colour, count, position, relation, other: that
type's fraction correct, NaN where the prompt asks none); rationale = each question, the model's
answer and the expected one.

On a cluster pass model='Salesforce/blip-vqa-base' (BlipForQuestionAnswering + BlipProcessor) or
'Salesforce/blip-vqa-capfilt-large', or a local save_pretrained directory of either. Locally,
'tiny:blip_vqa' is the same architecture with random weights (its answers are meaningless).

A question past the text encoder's positions (512 tokens for BLIP) is cut to them, and its rationale
says so. Each image is preprocessed once; each distinct question is then asked of all the images that
need it in one batch, so every batch is one question with no padding (BLIP's answer decoder
attends to every question position, padding included).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import PositiveInt

from raypref.registry import checked_args
from raypref.scoring import Scorer, cut_note
from raypref.vqa_questions import ELEMENTS


class TifaVQA(Scorer):
    outputs = (*ELEMENTS, "rationale")

    @checked_args("scorer")
    def __init__(self, name: str = "tifa", model: str = "", pretrained: str | None = None, num_gpus: float = 0.0,
                 questions: str = "template", answers: Literal["choices", "generate"] = "choices",
                 max_new_tokens: PositiveInt = 10, num_beams: PositiveInt = 1, batch_size: PositiveInt = 32):
        from transformers import BlipForQuestionAnswering

        from actors.blip_common import load_blip
        from raypref.vqa_questions import QuestionCache, load_generator

        super().__init__(name)
        self.answers = answers
        try:  # before the model loads: a wrong generator path fails at once, naming the scorer
            generator = load_generator(questions)
        except ValueError as e:
            raise ValueError(f"scorer {name!r}: args.{e}") from e
        self.device, self.processor, self.model, self.generate_kwargs = load_blip(
            name, model, BlipForQuestionAnswering, num_gpus, max_new_tokens, num_beams, batch_size)
        self.questions = QuestionCache(generator)
        self.batch_size = batch_size

    def question_tokens(self, question: str, n: int):
        """The question for ``n`` images, cut to the text encoder's positions (512 for BLIP): a question that
        holds a very long prompt (VQAScore's does) failed the whole batch."""
        return self.processor.tokenizer([question] * n, return_tensors="pt", return_token_type_ids=False, truncation=True,
                                        max_length=self.model.config.text_config.max_position_embeddings)

    def cut_note(self, question: str) -> str:
        """The rationale's note where question_tokens cuts ``question`` (raypref.scoring.cut_note)."""
        return cut_note(self.processor.tokenizer, question, self.model.config.text_config.max_position_embeddings,
                        "question")

    @torch.no_grad()
    def answer(self, pixel_values: torch.Tensor, question: str) -> list[str]:
        """The model's answers to one question about each image in ``pixel_values``."""
        tok = self.question_tokens(question, len(pixel_values))
        out = self.model.generate(
            input_ids=tok["input_ids"].to(self.device),
            attention_mask=tok["attention_mask"].to(self.device),
            pixel_values=pixel_values,
            **self.generate_kwargs,
        )
        return [a.strip() for a in self.processor.batch_decode(out, skip_special_tokens=True)]

    @torch.no_grad()
    def sequence_logprobs(self, pixel_values: torch.Tensor, question: str, ids: torch.Tensor,
                          mask: torch.Tensor) -> torch.Tensor:
        """(images, sequences): the summed log-probability of each answer sequence's tokens after
        its first, under the answer decoder; ``ids`` start with BLIP's [DEC] token, as generate()'s
        output does, and ``mask`` marks their real tokens."""
        n, k = len(pixel_values), len(ids)
        tok = self.question_tokens(question, n).to(self.device)
        image = self.model.vision_model(pixel_values=pixel_values)[0]
        image_mask = torch.ones(image.shape[:-1], dtype=torch.long, device=self.device)
        q = self.model.text_encoder(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"],
                                    encoder_hidden_states=image, encoder_attention_mask=image_mask)[0]
        ids, mask = ids.to(self.device).repeat(n, 1), mask.to(self.device).repeat(n, 1)
        logits = self.model.text_decoder(
            input_ids=ids, attention_mask=mask, encoder_hidden_states=q.repeat_interleave(k, 0),
            encoder_attention_mask=tok["attention_mask"].repeat_interleave(k, 0), return_dict=True,
        ).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
        return (logp * mask[:, 1:]).sum(-1).view(n, k)

    def choice_logprobs(self, pixel_values: torch.Tensor, question: str, choices: tuple[str, ...]) -> torch.Tensor:
        """(images, choices): each choice's summed token log-probability, its [SEP] included."""
        ans = self.processor.tokenizer(list(choices), padding=True, return_tensors="pt", return_token_type_ids=False)
        ids = ans["input_ids"].clone()
        ids[:, 0] = self.model.config.text_config.bos_token_id  # [CLS] -> [DEC], the decoder's start
        return self.sequence_logprobs(pixel_values, question, ids, ans["attention_mask"])

    def rank(self, pixel_values: torch.Tensor, question: str, choices: tuple[str, ...]) -> list[str]:
        """The likeliest choice for each image (ties: the first listed)."""
        best = self.choice_logprobs(pixel_values, question, choices).argmax(dim=1)
        return [choices[int(j)] for j in best]

    def score(self, images, prompts):
        from raypref.answer_match import answer_matches, tifa_score

        n = len(images)
        qsets = [self.questions(p) for p in prompts]
        pixels = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        pixels = pixels.to(self.device, self.model.dtype)
        # one batch per distinct (question, choices): the same words with other options are another question
        def key(q) -> tuple[str, tuple[str, ...]]:
            return q.text, q.choices if self.answers == "choices" else ()

        asks: dict[tuple[str, tuple[str, ...]], list[int]] = {}
        for i, qs in enumerate(qsets):
            for q in qs:
                idx = asks.setdefault(key(q), [])
                if not idx or idx[-1] != i:  # a question repeated for one image is asked once
                    idx.append(i)
        answers: dict[tuple[int, str, tuple[str, ...]], str] = {}
        for (text, choices), idx in asks.items():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start : start + self.batch_size]
                got = self.rank(pixels[chunk], text, choices) if choices else self.answer(pixels[chunk], text)
                answers.update(zip(((i, text, choices) for i in chunk), got))

        out = {"": np.full(n, np.nan, np.float32), **{e: np.full(n, np.nan, np.float32) for e in ELEMENTS}}
        cuts = {text: self.cut_note(text) for text, _ in asks}
        reasons = []
        for i, qs in enumerate(qsets):
            got = [answers[(i, *key(q))] for q in qs]
            out[""][i] = tifa_score(got, [q.answer for q in qs])
            for e in ELEMENTS:
                mine = [(a, q.answer) for a, q in zip(got, qs) if q.element == e]
                if mine:
                    out[e][i] = tifa_score([a for a, _ in mine], [x for _, x in mine])
            reasons.append(
                " | ".join(
                    f"{q.text} -> {a!r} " + ("(correct)" if answer_matches(a, q.answer) else f"(expected {q.answer!r})")
                    + cuts[q.text] for q, a in zip(qs, got)
                )
                or "no questions for this prompt"
            )
        out["rationale"] = reasons
        return out
