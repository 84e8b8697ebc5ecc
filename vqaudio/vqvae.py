"""VQVAE(encoder, quantizer, decoder): the same seam for audio (B,1,T) and images (B,C,H,W).

The quantizer sees channels-last ``(B, *S, D)``; ``movedim(1, -1)`` and back is the same call
for sequences and grids. Codes are ``(B, *S)`` or, with residual VQ, ``(B, *S, levels)``.
"""

from __future__ import annotations

import inspect
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqaudio.quantizer import Quantized


class VQVAEOutput(NamedTuple):
    x_hat: Tensor  # same shape as the input
    q: Quantized  # codes, quantizer loss, perplexity, codes used


class VQVAE(nn.Module):
    """An autoencoder with a discrete bottleneck.

    ``hop``: for audio, the encoder's total stride. Inputs are zero-padded at the end to a
    multiple of it and outputs cropped back, so decode(encode(x)) has exactly x's length.
    """

    def __init__(self, encoder: nn.Module, quantizer: nn.Module, decoder: nn.Module, hop: int = 1):
        super().__init__()
        self.encoder, self.quantizer, self.decoder, self.hop = encoder, quantizer, decoder, hop
        self.codes_frozen = False
        # A decoder whose forward takes ``levels`` is told how many code levels made its input
        # (the Fourier decoder's postfilter acts on coarse codes only); the others are not.
        self._tell_levels = "levels" in inspect.signature(decoder.forward).parameters

    def _decode(self, z_q: Tensor, codes: Tensor) -> Tensor:
        """``codes`` (B, *S, levels) made ``z_q``; their last dimension is the level count."""
        return self.decoder(z_q, levels=codes.shape[-1]) if self._tell_levels else self.decoder(z_q)

    def _pad(self, x: Tensor) -> Tensor:
        extra = -x.shape[-1] % self.hop
        return F.pad(x, (0, extra)) if extra else x

    def quantize(self, x: Tensor, levels: int | None = None) -> Quantized:
        z = self.encoder(self._pad(x)).movedim(1, -1)  # (B, *S, D)
        return self.quantizer(z, levels) if levels else self.quantizer(z)

    def freeze_codes(self) -> None:
        """Train the decoder alone from now on (``train.decoder_only``): the encoder and the
        codebooks take no gradient, EMA update, k-means or restart, so every input keeps its
        codes (and priors trained on them stay valid). Quantizer dropout still varies the levels."""
        self.encoder.requires_grad_(False)
        self.quantizer.requires_grad_(False)
        self.codes_frozen = True

    def forward(self, x: Tensor, levels: int | None = None) -> VQVAEOutput:
        if self.codes_frozen:
            with torch.no_grad():  # the quantizer updates its codebooks only with grad enabled
                q = self.quantize(x, levels)
        else:
            q = self.quantize(x, levels)
        x_hat = self._decode(q.z_q.movedim(-1, 1), q.codes)
        return VQVAEOutput(x_hat[..., : x.shape[-1]], q)

    def encode(self, x: Tensor, levels: int | None = None) -> Tensor:
        """Codes for ``x``: (B, *S) or (B, *S, levels)."""
        return self.quantize(x, levels).codes

    def decode(self, codes: Tensor, length: int | None = None, latent_filter=None) -> Tensor:
        """Reconstruction from codes; ``length`` crops audio back to its original samples.
        ``latent_filter`` maps the codes' latent (B, D, *S) before the decoder (the audio
        path's sample smoothing, ``codec.smooth_latent``)."""
        z_q = self.quantizer.lookup(codes).movedim(-1, 1)
        x_hat = self._decode(z_q if latent_filter is None else latent_filter(z_q), codes)
        return x_hat if length is None else x_hat[..., :length]
