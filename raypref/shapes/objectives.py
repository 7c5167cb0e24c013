"""Pretraining objectives as modules whose forward returns the loss.

Data-parallel wrappers (DDP, which Ray Train's prepare_model applies) synchronise gradients for
what runs inside forward(); calling vae.encode / unet directly on the wrapped model would bypass
that. No Ray and no torch.distributed here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class VAEReconstruction(nn.Module):
    """AutoencoderKL loss: MSE reconstruction + kl_weight * KL(q(z|x) || N(0, I)) (Kingma & Welling 2014, Eq. 10)."""

    def __init__(self, vae, kl_weight: float):
        super().__init__()
        self.vae = vae
        self.kl_weight = kl_weight

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        posterior = self.vae.encode(pixels).latent_dist
        recon = self.vae.decode(posterior.sample()).sample
        return F.mse_loss(recon, pixels) + self.kl_weight * posterior.kl().mean()  # Kingma & Welling 2014, Eq. 10


class TextToImageDenoising(nn.Module):
    """Epsilon-prediction loss of a text-conditioned UNet, text encoder trained jointly
    (Ho et al. 2020, Eq. 14, the 'simple' loss)."""

    def __init__(self, unet, text_encoder):
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, input_ids: torch.Tensor,
                target: torch.Tensor) -> torch.Tensor:
        text = self.text_encoder(input_ids)[0]
        pred = self.unet(noisy, timesteps, text).sample
        return F.mse_loss(pred.float(), target.float())  # Ho et al. 2020, Eq. 14 (L_simple)


class ContrastiveCLIP(nn.Module):
    """Symmetric InfoNCE over in-batch negatives (Radford et al. 2021, Fig. 3), via open_clip's ClipLoss."""

    def __init__(self, model):
        super().__init__()
        import open_clip

        self.model = model
        self.loss = open_clip.ClipLoss()  # Radford et al. 2021, Fig. 3; world_size 1: negatives from this worker's batch

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        out = self.model(images, texts)
        if isinstance(out, dict):
            return self.loss(out["image_features"], out["text_features"], out["logit_scale"])
        return self.loss(*out[:3])
