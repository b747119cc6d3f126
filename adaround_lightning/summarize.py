"""``python -m adaround_lightning.summarize SWEEP_DIR``: a sweep's summary (see :mod:`.app`)."""

import sys

from adaround_lightning.app.summarize_cli import main

if __name__ == "__main__":
    sys.exit(main())
