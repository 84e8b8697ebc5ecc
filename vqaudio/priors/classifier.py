"""Which label a code sequence says: a small classifier over the codes a label-conditioned prior
models, trained on the same files' codes (``vqaudio train --stage classifier``).

``vqaudio sample --candidates N`` draws N clips from the prior and keeps the one this
classifier finds most likely the label asked, the way DALL-E reranked its samples with CLIP.
The prior cannot judge its own samples well: ranked by the prior's own Bayes posterior the
best of 4 was heard as asked less often than the plain draw (bench/RESULTS.md). A model
trained only to tell labels apart, on real recordings' codes, does better; it never sees a
listener's verdict.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqaudio.priors.wavenet import code_vector_rows


class CodeClassifier(nn.Module):
    """``forward(codes (B, T, L)) -> logits (B, num_labels)``: the summed embeddings of each
    frame's levels, residual dilated convolutions (receptive field 1 + 4·(1+2+…+2^(layers-1))
    frames), then the maximum and the mean over time, so the clip's length and where in it
    the word is said do not matter."""

    def __init__(self, num_codes: int, levels: int, num_labels: int, channels: int = 128, layers: int = 4):
        super().__init__()
        self.num_codes, self.levels, self.num_labels = num_codes, levels, num_labels
        self.embed = nn.Embedding(levels * num_codes, channels)  # level l's code c is row l·K + c
        self.register_buffer("offsets", torch.arange(levels) * num_codes, persistent=False)
        self.convs = nn.ModuleList(nn.Conv1d(channels, channels, 5, padding=2 * 2 ** i, dilation=2 ** i)
                                   for i in range(layers))
        self.out = nn.Linear(2 * channels, num_labels)

    @torch.no_grad()
    def embed_codebooks(self, codebooks: list[Tensor]) -> None:
        """Start the code embeddings from the codec's code vectors (one (K, D) per level), as
        the prior's (``WaveNetPrior.embed_codebooks``): a frame's embedding starts as its
        quantized latent, codes that sound alike start alike. D != channels goes through a
        fixed random projection."""
        projection = torch.Generator().manual_seed(0)
        for level, vectors in enumerate(codebooks[: self.levels]):
            rows = slice(level * self.num_codes, (level + 1) * self.num_codes)
            self.embed.weight[rows] = code_vector_rows(vectors, self.embed.weight.shape[1], projection).to(self.embed.weight)

    def forward(self, codes: Tensor) -> Tensor:
        if codes.dim() != 3 or codes.shape[-1] != self.levels:
            raise ValueError(f"codes must be (B, T, {self.levels}), got {tuple(codes.shape)}")
        x = self.embed(codes + self.offsets).sum(-2).transpose(1, 2)  # (B, C, T)
        for conv in self.convs:
            x = x + F.gelu(conv(x))
        return self.out(torch.cat([x.amax(-1), x.mean(-1)], dim=-1))
