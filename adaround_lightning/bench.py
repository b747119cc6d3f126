"""``python -m adaround_lightning.bench``: ms/step of the fit, per layer (:mod:`.app.bench`)."""

import sys

from adaround_lightning.app.bench_cli import main

if __name__ == "__main__":
    sys.exit(main())
