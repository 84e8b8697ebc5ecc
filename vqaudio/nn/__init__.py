"""Encoders and decoders: audio (1-D) and image (2-D)."""
