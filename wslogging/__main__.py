"""``python -m wslogging``: the same command line as the ``wslogging`` script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m wslogging"))
