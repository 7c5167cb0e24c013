"""Open-vocabulary object detection for class-conditional prompts (self-reward) with OWL-ViT.

The class to look for is the prompt's ``class_label`` (the prompts table's optional column) when
it has one that is a name, not a number: the class a class-conditional prompt was written for,
whatever else the prompt says ("a majestic elephant walking at sunset", label "elephant"). Else it
comes from the prompt (``raypref.prompt_nouns.detection_class``): with ``classes=[...]`` the listed
class named in the prompt (longest match, plural allowed), else the prompt's subject minus a
leading article or count word ("a photo of a dog" -> "dog"). It is queried as
``query_template.format(class)`` ("a photo of a {}", the OWL-ViT paper's prompt), cut to the text
encoder's 16 tokens when longer (a long prompt's subject), which its rationale notes.

Outputs: main score = the highest detection confidence (sigmoid of OWL-ViT's class logit over
all predicted boxes, 0..1); aspect 'count' = detections with confidence >= ``threshold`` left
after non-maximum suppression at IoU ``nms_iou``; rationale = the query and both numbers, and
'[query cut to its first 16 of N tokens]' where it was cut (the score is then the cut query's). A
prompt with no class to look for gets NaN.

On a cluster pass model='google/owlvit-base-patch32' (or owlvit-base-patch16 / owlvit-large-
patch14): OwlViTForObjectDetection + OwlViTProcessor, or a local save_pretrained directory.
Locally, 'tiny:owlvit' is the same architecture with random weights (meaningless boxes).
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch
from pydantic import Field, PositiveInt

from raypref.registry import checked_args
from raypref.scoring import Scorer, check_template, cut_note, pick_device

Unit = Annotated[float, Field(ge=0, le=1)]


def count_detections(scores: torch.Tensor, boxes: torch.Tensor, threshold: float, nms_iou: float) -> int:
    """Boxes (x0, y0, x1, y1) scoring >= threshold that survive greedy NMS at IoU > nms_iou."""
    from torchvision.ops import nms

    keep = scores >= threshold
    if not bool(keep.any()):
        return 0
    return int(nms(boxes[keep].float(), scores[keep].float(), nms_iou).numel())


def _label_class(label) -> str | None:
    """A class label usable as a text query: a name, not an index such as ImageNet's "3"."""
    text = str(label).strip() if label is not None else ""
    return text if text and not text.lstrip("-").isdigit() else None


class OwlViTDetector(Scorer):
    wants_class_labels = True
    outputs = ("count", "rationale")

    @checked_args("scorer")
    def __init__(self, name: str = "owlvit", model: str = "", pretrained: str | None = None, num_gpus: float = 0.0,
                 classes: list[str] | None = None, query_template: str = "a photo of a {}", threshold: Unit = 0.1,
                 nms_iou: Unit = 0.3, batch_size: PositiveInt = 16):
        from transformers import OwlViTForObjectDetection, OwlViTProcessor

        from raypref.models import check_model_ref

        super().__init__(name)
        check_template(query_template, f"scorer {name!r}", "query_template", "class")
        ref = check_model_ref(model, what=f"scorer {name!r} model")
        self.device = pick_device(num_gpus)
        self.processor = OwlViTProcessor.from_pretrained(ref)
        self.model = OwlViTForObjectDetection.from_pretrained(ref, dtype=torch.float32).to(self.device).eval()
        self.classes = list(classes) if classes else None
        self.template, self.threshold, self.nms_iou, self.batch_size = query_template, threshold, nms_iou, batch_size

    @torch.no_grad()
    def detect(self, images, queries: list[str]) -> list[dict]:
        """Per image: scores and boxes (pixels) of every predicted box for its own text query."""
        # a query longer than the text encoder's positions (16 for OWL-ViT) is cut to them, as CLIP-style
        # encoders take prompts: else a long prompt's subject failed the whole batch
        inputs = self.processor(text=[[q] for q in queries], images=[im.convert("RGB") for im in images], return_tensors="pt",
                                truncation=True, max_length=self.model.config.text_config.max_position_embeddings)
        outputs = self.model(**inputs.to(self.device))
        sizes = [(im.height, im.width) for im in images]
        return self.processor.post_process_grounded_object_detection(outputs, threshold=0.0, target_sizes=sizes)

    def cut_note(self, query: str) -> str:
        """The rationale's note where detect cuts ``query`` (raypref.scoring.cut_note)."""
        return cut_note(self.processor.tokenizer, query, self.model.config.text_config.max_position_embeddings, "query")

    def score(self, images, prompts, class_labels=None):
        from raypref.prompt_nouns import detection_class

        n = len(images)
        labels = class_labels or [None] * n
        best, count = np.full(n, np.nan, np.float32), np.full(n, np.nan, np.float32)
        reasons = ["no object class found in the prompt"] * n
        todo = [(i, c) for i, c in ((i, _label_class(lab) or detection_class(p, self.classes))
                                    for i, (p, lab) in enumerate(zip(prompts, labels))) if c]
        # a batch often asks one query of many images: each tokenized once, for the rationale's note
        notes = {q: self.cut_note(q) for q in {self.template.format(c) for _, c in todo}}
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            queries = [self.template.format(c) for _, c in chunk]
            for (i, _), query, r in zip(chunk, queries, self.detect([images[i] for i, _ in chunk], queries)):
                scores, boxes = r["scores"].float().cpu(), r["boxes"].float().cpu()
                best[i] = float(scores.max()) if scores.numel() else 0.0
                count[i] = count_detections(scores, boxes, self.threshold, self.nms_iou)
                reasons[i] = (f"{query!r}: best {best[i]:.3f}, {int(count[i])} box(es) >= {self.threshold:g} after NMS"
                              f"{notes[query]}")
        return {"": best, "count": count, "rationale": reasons}
