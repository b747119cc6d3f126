"""``python -m adaround_lightning.verify RUN_DIR``: the grid check (see :mod:`.app.verify`)."""

import sys

from adaround_lightning.app.verify_cli import main

if __name__ == "__main__":
    sys.exit(main())
