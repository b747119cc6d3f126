"""Building the user's network from settings.

:mod:`.model_builder` (``ModelConfig``, ``build_model``, checkpoints), :mod:`.zoo_sources`
(timm, Hugging Face, any importable class), :mod:`.preprocessing` (that of pretrained weights).
"""
