"""``python -m adaround_lightning``."""

from adaround_lightning.cli import main

main()
