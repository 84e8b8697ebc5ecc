"""Gated PixelCNN prior over code grids (B, H, W), with no blind spot (arXiv:1606.05328).

Two stacks run side by side. The vertical stack sees every row above the current one, across
the receptive field's full width; the horizontal stack sees the current row left of the
current position, and takes the vertical stack's features through a 1x1 conv at every layer.
Together they see every earlier position in raster order, including those up and to the
right that the masked-conv PixelCNN misses (its "blind spot", §2.2 of the paper).

Causality comes from padding, not masks: the inputs are shifted once (the vertical stack down
a row, the horizontal stack right a column), after which vertical convs pad only the top (and
both sides) and horizontal convs only the left, so the logits at (r, c) depend only on codes at
positions before r * W + c.

Sampling reuses that split: the vertical stack runs once per row and only the horizontal
stack once per position, making the same draws as ``sampling.reference_sample``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqaudio.errors import VqaudioError
from vqaudio.priors.sampling import Controls, Sampler, guide, guided_labels


def _gate(x: Tensor) -> Tensor:
    """Gated activation tanh(a) * sigmoid(b) over the two channel halves (paper eq. 2)."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    """One layer of both stacks, (v, h) (B, C, H, W) each -> (v', h'), in two halves: the
    vertical half feeds the horizontal one through a link and never the other way round."""

    def __init__(self, channels: int, kernel: int, num_labels: int):
        super().__init__()
        c, self.p = channels, kernel // 2
        # Vertical: rows r-p .. r of its input, columns c-p .. c+p (centred: no blind spot).
        self.v_conv = nn.Conv2d(c, 2 * c, (self.p + 1, kernel))
        # Horizontal: columns c-p .. c of its input, in the same row.
        self.h_conv = nn.Conv2d(c, 2 * c, (1, self.p + 1))
        self.v_to_h = nn.Conv2d(2 * c, 2 * c, 1)
        self.h_out = nn.Conv2d(c, c, 1)
        # Class conditioning: a learned per-label bias inside both gates (paper eq. 4).
        self.cond = nn.Embedding(num_labels, 4 * c) if num_labels else None

    def vertical(self, v: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        """v (B, C, H, W) -> (next v, the link into the horizontal stack (B, 2C, H, W))."""
        p = self.p
        v_pre = self.v_conv(F.pad(v, (p, p, p, 0)))  # (B, 2C, H, W), pads left, right, top
        if self.cond is not None:
            v_pre = v_pre + self.cond(labels)[:, : v_pre.shape[1], None, None]
        # The vertical input was shifted down once, so v_pre at row r has seen rows < r only
        # and can feed the horizontal stack at the same position.
        return _gate(v_pre), self.v_to_h(v_pre)

    def horizontal(self, h: Tensor, link: Tensor, labels: Tensor | None) -> Tensor:
        """h (B, C, H, W) and this layer's link -> next h. Each row is computed on its own."""
        h_pre = self.h_conv(F.pad(h, (self.p, 0))) + link  # pads left only
        if self.cond is not None:
            h_pre = h_pre + self.cond(labels)[:, h_pre.shape[1]:, None, None]
        return h + self.h_out(_gate(h_pre))  # residual in the horizontal stack


class GatedPixelCNN(nn.Module):
    """Autoregressive prior over codes (B, H, W) in [0, num_codes): logits (B, H, W, K).

    Args:
        num_codes: K, the codebook size.
        channels: width of both stacks.
        layers: number of gated layers; the receptive field reaches ``layers * (kernel // 2)``
            rows up and columns left (8 layers of kernel 3 cover a 7x7 grid).
        kernel: odd kernel size (3 or 5).
        num_labels: > 0 for a class-conditional prior (labels in [0, num_labels)).
        null_label: one more label, ``num_labels`` = "no label", which training with label
            dropout teaches and classifier-free guidance samples with.
    """

    def __init__(self, num_codes: int, channels: int = 64, layers: int = 8, kernel: int = 3,
                 num_labels: int = 0, null_label: bool = False):
        super().__init__()
        if kernel < 3 or kernel % 2 == 0:
            raise ValueError(f"kernel must be odd and at least 3, got {kernel}")
        self.num_codes, self.num_labels = num_codes, num_labels
        self.null_label = bool(num_labels and null_label)
        # Embeds the code indices, not the VQ-VAE's codebook vectors: the prior is trained on
        # codes alone and stays valid whatever the codebook's scale.
        self.embed = nn.Embedding(num_codes, channels)
        self.layers = nn.ModuleList(GatedLayer(channels, kernel, num_labels + self.null_label) for _ in range(layers))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(),
                                  nn.Conv2d(channels, num_codes, 1))
        # Zero logits at step 0: the loss starts at exactly log K (a uniform guess).
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, codes: Tensor, labels: Tensor | None = None) -> Tensor:
        """codes (B, H, W) long, labels (B,) long or None -> logits (B, H, W, K)."""
        if codes.ndim != 3:
            raise ValueError(f"expected codes of shape (B, H, W), got {tuple(codes.shape)}")
        self._check_labels(labels, len(codes))
        links = self._links(codes, labels)
        return self._logits(codes, links, labels)

    def _links(self, codes: Tensor, labels: Tensor | None) -> list[Tensor]:
        """The vertical stack: codes (B, H, W) -> one link (B, 2C, H, W) per layer; row r of
        every link depends on the code rows before r only."""
        x = self.embed(codes).permute(0, 3, 1, 2)  # (B, C, H, W)
        v = F.pad(x, (0, 0, 1, 0))[:, :, :-1]  # shift down a row: row r holds row r-1
        links = []
        for layer in self.layers:
            v, link = layer.vertical(v, labels)
            links.append(link)
        return links

    def _logits(self, codes: Tensor, links: list[Tensor], labels: Tensor | None) -> Tensor:
        """The horizontal stack and head: codes (B, h, W) with the links of the same rows ->
        logits (B, h, W, K). Rows are independent here, so h may be one row of the grid."""
        x = self.embed(codes).permute(0, 3, 1, 2)  # (B, C, h, W)
        h = F.pad(x, (1, 0))[:, :, :, :-1]  # shift right a column: (r, c) holds (r, c-1)
        for layer, link in zip(self.layers, links):
            h = layer.horizontal(h, link, labels)
        return self.head(h).permute(0, 2, 3, 1)  # (B, h, W, K)

    @torch.no_grad()
    def sample(self, batch: int, shape: tuple[int, int] = (7, 7), controls: Controls | None = None,
               labels: Tensor | int | None = None) -> Tensor:
        """Draw ``batch`` code grids (B, H, W) in raster order; ``labels`` is one label for the
        whole batch or one per grid.

        The draws equal :func:`reference_sample` on ``self(codes, labels)`` (same noise, same
        order), but the vertical stack runs once per row instead of once per position, since
        it sees only the rows above: about 7x less work on a 7x7 grid. A guided draw
        (``controls.guidance``) runs every grid twice, with its label and with the null label.
        """
        device = self.embed.weight.device
        if isinstance(labels, int):
            labels = torch.full((batch,), labels, dtype=torch.long, device=device)
        elif labels is not None:
            labels = labels.to(device=device, dtype=torch.long)
        self._check_labels(labels, batch)
        bad = labels[(labels < 0) | (labels >= self.num_labels)] if labels is not None else []
        if len(bad):
            raise VqaudioError(
                f"label {int(bad[0])} is out of range: this prior knows labels 0 to {self.num_labels - 1}")
        height, width = shape
        controls = controls or Controls()
        sampler = Sampler(controls, batch, height * width)
        labels = guided_labels(controls, self.num_labels, self.null_label, labels)
        rows = 2 * batch if controls.guided else batch  # guided: each grid twice, the second unlabelled
        codes = torch.zeros((rows, height, width), dtype=torch.long, device=device)
        for r in range(height):
            # Rows after r are still zeros and cannot reach row r: compute on rows <= r only.
            links = [link[:, :, r: r + 1] for link in self._links(codes[:, : r + 1], labels)]
            for c in range(width):
                logits = self._logits(codes[:, r: r + 1], links, labels)[:, 0, c]  # (rows, K)
                if controls.guided:
                    logits = guide(logits[:batch], logits[batch:], controls.guidance)
                codes[:, r, c] = sampler(logits, r * width + c).repeat(rows // batch)
        return codes[:batch]

    def _check_labels(self, labels: Tensor | None, batch: int) -> None:
        if self.num_labels and labels is None:
            raise VqaudioError(f"this prior is class-conditional; give a label between 0 and {self.num_labels - 1}")
        if not self.num_labels and labels is not None:
            raise VqaudioError("this prior was trained without labels; drop the label")
        if labels is not None and labels.shape != (batch,):
            raise ValueError(f"expected labels of shape ({batch},), got {tuple(labels.shape)}")
