"""Cross-Branch Video Alignment loss (spec 4.3), batched."""
from __future__ import annotations

import torch


def cbva_loss(frames: torch.Tensor, segments: torch.Tensor, labels: torch.Tensor, sizes: torch.Tensor,
              clip_feats: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CBVA loss (batch mean before vl_coef) and the mean segment count."""
    raise NotImplementedError("cbva_loss lands in the next commit")
