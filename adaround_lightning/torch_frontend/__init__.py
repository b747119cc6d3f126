"""The PyTorch front end: layer inputs sampled from nn.Modules, block by block.

Modules: torch_adaround, torch_walk, plan, networks, torch_result, load_run.
"""
