"""Building the user's network from settings.

:mod:`.model_builder` (torchvision builders, checkpoints, ``ModelConfig``).
"""
