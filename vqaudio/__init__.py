"""vqaudio: discrete codes for audio and images with VQ-VAEs, and priors that generate from them.

Importing the package is cheap: torch is imported only by the modules that need it.
"""

__version__ = "0.1.0"
