"""Turn a batch of pixels and token ids into what the UNet trains on: latents and text embeddings.

This is the seam for caching: when neither the VAE nor the text encoder is trained, both encodings could be
computed once per image/caption and read back here instead (a later feature, together with aspect-ratio
bucketing). Everything the loop needs from the frozen encoders goes through :class:`Conditioner`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Conditioner:
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    weight_dtype: torch.dtype
    train_text_encoder: bool

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    def latents(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """VAE latents (sampled from the posterior, as SD training does), scaled."""
        with torch.no_grad():
            dist = self.vae.encode(pixel_values.to(self.vae.device, self.weight_dtype)).latent_dist
            return dist.sample() * self.scaling_factor

    def text_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        input_ids = input_ids.to(self.text_encoder.device)
        if self.train_text_encoder:
            return self.text_encoder(input_ids, return_dict=False)[0]
        with torch.no_grad():
            return self.text_encoder(input_ids, return_dict=False)[0]
