"""sdtune: teach Stable Diffusion new concepts and new people, and prove it did."""

__version__ = "0.1.0"
