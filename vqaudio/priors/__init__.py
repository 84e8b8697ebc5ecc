"""Autoregressive priors over code tensors: WaveNet for sequences, PixelCNN for grids.

Contract shared by both: ``prior(codes, labels) -> logits`` with codes ``(B, *S)`` long and
logits ``(B, *S, K)``; flattening ``S`` in row-major order gives the sampling order, and the
logits at flattened position i depend only on codes at positions before i.
"""
