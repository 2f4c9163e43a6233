"""``python -m booth_trainer``: see :mod:`booth_trainer.cli` and ``--help``."""

import sys

from .cli import main


def main_entry() -> None:
    """Console-script entry point (``booth-trainer``)."""
    sys.exit(main())


if __name__ == "__main__":
    main_entry()
