"""Datasets that turn files on disk into training tensors."""
