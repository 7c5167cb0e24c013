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
    inside = -0.5 * beta * (model_diff - ref_diff)
    loss = -F.logsigmoid(inside).mean()  # mean of per-pair terms, not logsigmoid of a batch mean
    metrics = {
        "implicit_acc": (inside > 0).float().mean().detach(),
        "inside_term": inside.mean().detach(),
        "model_err_w": model_err_w.mean().detach(),
        "model_err_l": model_err_l.mean().detach(),
    }
    return loss, metrics
