"""Shared by the reward-backbone tests: a two-pair numpy batch as the training loop receives it,
and one AdamW Bradley-Terry step through train_reward.forward_pairs."""

import numpy as np
import torch
from PIL import Image

from raypref import images as I
from raypref import schema as S
from raypref.losses import reward_model_loss
from raypref.reward_model import RewardModel
from raypref.train_reward import forward_pairs

ASPECTS = ["prompt_following", "aesthetic"]
PROMPTS = ["a red circle", "a blue square on the left"]


def img(rgb, size=32):
    return Image.new("RGB", (size, size), tuple(int(c) for c in rgb))


def pairs_batch() -> tuple[dict, list[str]]:
    """Two pairs as the training loop receives them (numpy batch), with one judge's aspect columns."""
    cols = [S.score_column("judge", a) for a in ASPECTS]
    return {
        S.PROMPT: np.array(PROMPTS, dtype=object),
        S.CHOSEN_ID: np.array(["c0", "c1"], dtype=object),
        S.REJECTED_ID: np.array(["r0", "r1"], dtype=object),
        S.CHOSEN_IMAGE: np.array([I.encode(img((250, 10, 10))), I.encode(img((10, 10, 250)))], dtype=object),
        S.REJECTED_IMAGE: np.array([I.encode(img((20, 20, 20))), I.encode(img((200, 200, 0)))], dtype=object),
        S.LABEL: np.array([1.0, 1.0], dtype=np.float32),
        S.chosen_column(cols[0]): np.array([8.0, 7.0]), S.rejected_column(cols[0]): np.array([3.0, 2.0]),
        S.chosen_column(cols[1]): np.array([6.0, np.nan]), S.rejected_column(cols[1]): np.array([4.0, 5.0]),
    }, cols


def bt_step(model: RewardModel) -> dict[str, torch.Tensor]:
    """One AdamW step on the Bradley-Terry loss (overall + aspects), as train_reward.reward_loop takes it."""
    batch, cols = pairs_batch()
    groups = [{"params": model.head_parameters(), "lr": 1e-2}]
    if model.backbone_parameters():
        groups.append({"params": model.backbone_parameters(), "lr": 1e-3})
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    model.train()
    oc, orj, ac, ar, label, target, mask = forward_pairs(model, model.backbone, batch, cols, "cpu")
    for out in (oc, orj):
        assert set(out) == {"", *ASPECTS}
        assert all(v.shape == (2,) and torch.isfinite(v).all() for v in out.values())
    loss, m = reward_model_loss(oc[""], orj[""], label, ac, ar, target, mask, 1.0)
    assert torch.isfinite(loss) and "loss_aspects" in m
    opt.zero_grad(set_to_none=True)
    loss.backward()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    # DDP needs a gradient for every trainable parameter: none may sit outside the forward
    assert [n for n in trainable if dict(model.named_parameters())[n].grad is None] == []
    opt.step()
    return {n: p.detach() for n, p in model.named_parameters()}
