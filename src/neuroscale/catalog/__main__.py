"""``python -m neuroscale.catalog ...`` runs ``neuroscale catalog ...``."""

from __future__ import annotations

import sys

from neuroscale.catalog.cli import main

if __name__ == "__main__":
    sys.exit(main())
