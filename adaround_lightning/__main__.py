"""``python -m adaround_lightning``."""

from adaround_lightning.app.cli import main

main()
