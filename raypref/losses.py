"""Training losses (pure functions of tensors; no Ray, no torch.distributed)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def diffusion_dpo_loss(
    model_err_w: torch.Tensor,
    model_err_l: torch.Tensor,
    ref_err_w: torch.Tensor,
    ref_err_l: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Diffusion-DPO (Wallace et al. 2023, Eq. 14), one term per pair, averaged over pairs.

    Each argument is a per-pair denoising error ||eps - eps_(.)(x_t, t)||^2 (mean over pixels) for
    the winner (w) or loser (l) under the trained model or the frozen reference, at the SAME noise
    and timestep for w and l. With the constant T*omega(lambda_t) folded into beta (as the
    authors' code does, with a factor 1/2):

        L = -mean_i log sigmoid( -beta/2 * [ (e^w_i - e^w_ref,i) - (e^l_i - e^l_ref,i) ] )

    Returns the loss and detached diagnostics: implicit accuracy (fraction of pairs whose inside
    term is > 0, i.e. the model prefers the winner more than the reference does) and the mean
    inside term.
    """
    model_diff = model_err_w - model_err_l
    ref_diff = ref_err_w - ref_err_l
    inside = -0.5 * beta * (model_diff - ref_diff)  # Wallace et al. 2023, Eq. 14 (T*omega(lambda_t) in beta)
    loss = -F.logsigmoid(inside).mean()  # Eq. 14's -log sigma per pair, then the mean (not of a batch-mean inside)
    metrics = {
        "implicit_acc": (inside > 0).float().mean().detach(),
        "inside_term": inside.mean().detach(),
        "model_err_w": model_err_w.mean().detach(),
        "model_err_l": model_err_l.mean().detach(),
    }
    return loss, metrics


def diffusion_sft_loss(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Supervised fine-tuning of a diffusion model on kept images: the simple denoising objective
    (Ho et al. 2020, Eq. 14, L_simple = E ||eps - eps_theta(x_t, t)||^2; ``target`` is the noise, or
    the velocity for a v-prediction model), the squared error averaged over each image's elements
    and then over images, so every image counts alike. Returns the loss and the detached per-image
    error's spread (max - min) as a diagnostic."""
    err = ((pred.float() - target.float()) ** 2).flatten(1).mean(dim=1)  # Ho et al. 2020, Eq. 14 (L_simple), per image
    return err.mean(), {"err_spread": (err.max() - err.min()).detach()}


def refl_loss(reward: torch.Tensor, margin: float, weight: float) -> torch.Tensor:
    """Reward feedback learning's reward loss (Xu et al. 2023, ImageReward, Sec. 4.2:
    L_reward = lambda * E_y[phi(r(y, g_theta(y)))]), with phi(r) = ReLU(margin - r): an image whose
    reward already exceeds ``margin`` adds no gradient. ``reward`` holds one reward per image."""
    return weight * torch.relu(margin - reward.float()).mean()  # Xu et al. 2023 (ImageReward), Sec. 4.2


def bradley_terry_loss(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Pairwise Bradley-Terry loss of a reward model, any shape (pairs, or pairs x aspects).

    The Bradley-Terry model (Rafailov et al. 2023, DPO, Eq. 1) says
    P(chosen > rejected) = sigmoid(r_c - r_r); its negative log-likelihood (DPO Eq. 2, the reward
    model loss of Ouyang et al. 2022, InstructGPT, Eq. 1) is -log sigmoid(r_c - r_r). With a soft
    target y = P(chosen preferred) it is the binary cross-entropy

        l_i = -[ y_i log sigmoid(d_i) + (1 - y_i) log sigmoid(-d_i) ],   d_i = r_c,i - r_r,i

    so y = 1 (a strict preference) gives DPO Eq. 2 and y = 0.5 (a tie) is minimal at d = 0,
    pulling both rewards together, as PickScore trains on Pick-a-Pic ties (Kirstain et al. 2023,
    Sec. 4: target 0.5/0.5). ``weight`` (0 or 1) masks entries without a label (an aspect the
    pair has no scores for): L = sum_i w_i l_i / sum_i w_i, and 0 (still a graph) if no weight.

    Returns the loss and detached metrics: accuracy on the strict entries (y != 0.5; a reward tie
    d = 0 counts half) and their number.
    """
    d = r_chosen - r_rejected
    w = torch.ones_like(d) if weight is None else weight.to(d.dtype)
    # Rafailov et al. 2023 (DPO), Eq. 2 at y = 1 (Ouyang et al. 2022, Eq. 1); y = 0.5 as Kirstain et al. 2023, Sec. 4
    per = F.binary_cross_entropy_with_logits(d, target.to(d.dtype), reduction="none")
    loss = (w * per).sum() / w.sum().clamp_min(1e-12)  # no weight: numerator 0, loss 0
    with torch.no_grad():
        strict = (w > 0) & (target != 0.5)
        right = torch.where(target > 0.5, d > 0, d < 0).to(d.dtype) + 0.5 * (d == 0).to(d.dtype)
        n = strict.sum()
        acc = (right * strict).sum() / n.clamp_min(1) if n > 0 else torch.tensor(float("nan"))
    return loss, {"accuracy": acc, "strict_pairs": n.to(d.dtype)}


def reward_model_loss(
    overall_c: torch.Tensor,
    overall_r: torch.Tensor,
    label: torch.Tensor,
    aspects_c: torch.Tensor | None = None,
    aspects_r: torch.Tensor | None = None,
    aspect_target: torch.Tensor | None = None,
    aspect_mask: torch.Tensor | None = None,
    aspect_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Overall head plus per-aspect heads, each a Bradley-Terry loss (``bradley_terry_loss``):

        L = L_BT(overall; label) + aspect_weight * L_BT(aspects (B, A); per-aspect targets, mask)

    The aspect term pools every labelled (pair, aspect) entry, so an aspect missing from a batch
    neither counts nor rescales the others. Aspect tensors are all None when the model has none.
    """
    loss, m = bradley_terry_loss(overall_c, overall_r, label)
    metrics = {"loss_overall": loss.detach(), "accuracy": m["accuracy"]}
    if aspects_c is not None:
        a_loss, am = bradley_terry_loss(aspects_c, aspects_r, aspect_target, aspect_mask)
        loss = loss + aspect_weight * a_loss
        metrics.update({"loss_aspects": a_loss.detach(), "accuracy_aspects": am["accuracy"]})
    return loss, metrics


def difference_alignment_loss(
    img_diff: torch.Tensor,
    txt_diff: torch.Tensor,
    kind: str,
    logit_scale: float | torch.Tensor = 100.0,
    margin: float = 0.2,
    text_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PC-CLIP (Sam et al. 2024): the difference of two images' embeddings, f(x_a) - f(x_b), should
    point where the embedding of a text describing how a differs from b points. Row i of
    ``img_diff`` (B, D) goes with row i of ``txt_diff`` (B, D); both are L2-normalised here, s = d u^T.

    - contrastive: CLIP's symmetric InfoNCE over the batch (Radford et al. 2021, Fig. 3), logits
      ``logit_scale`` * s, the matching row the positive and the other rows the negatives;
    - squared: mean_i ||d_i - u_i||^2 (= 2 - 2 s_ii), no negatives;
    - hinge: the sum-of-hinges ranking loss (Faghri et al. 2018, VSE++, Eq. 2), both directions,
      sum over negatives j != i of [margin - s_ii + s_ij]_+ + [margin - s_ii + s_ji]_+, mean over i.
    ``text_ids`` (B,), when given, says which rows share a text (equal ids): another row with the
    same text is not a negative (it is left out of the softmax and the hinges) and counts as a
    right retrieval, since a batch often holds one difference text twice ("red instead of blue").
    Returns the loss and the detached retrieval accuracy (row i's best text is text i)."""
    d = F.normalize(img_diff.float(), dim=-1)
    u = F.normalize(txt_diff.float(), dim=-1)
    sim = d @ u.T
    n = sim.shape[0]
    labels = torch.arange(n, device=sim.device)
    eye = torch.eye(n, dtype=torch.bool, device=sim.device)
    same = eye if text_ids is None else text_ids[:, None].to(sim.device) == text_ids[None, :].to(sim.device)
    negative = ~same
    if kind == "contrastive":
        logits = (logit_scale * sim).masked_fill(same & ~eye, float("-inf"))
        loss = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))  # Radford et al. 2021, Fig. 3
    elif kind == "squared":
        loss = ((d - u) ** 2).sum(-1).mean()
    elif kind == "hinge":
        pos = sim.diag()
        # Faghri et al. 2018 (VSE++), Eq. 2: image-to-text and text-to-image hinges
        cost = (margin - pos[:, None] + sim).clamp_min(0) + (margin - pos[None, :] + sim).clamp_min(0)
        loss = (cost * negative).sum() / n
    else:
        raise ValueError(f"pcclip.loss: unknown kind {kind!r} (contrastive, squared, hinge)")
    hit = same[labels, sim.argmax(dim=1)]
    return loss, {"retrieval_acc": hit.float().mean().detach()}

