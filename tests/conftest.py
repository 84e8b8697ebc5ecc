import torch

# Two cores: one thread per test process keeps the small tests fast and deterministic.
torch.set_num_threads(1)
