"""``python -m provisioning``: see :mod:`provisioning.cli`."""

import sys

from provisioning.cli import main

if __name__ == "__main__":
    sys.exit(main())
