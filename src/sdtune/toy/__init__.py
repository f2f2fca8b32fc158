"""The toy world and the toy Stable Diffusion that sdtune pretrains and ships (see world.py, pretrain.py)."""
