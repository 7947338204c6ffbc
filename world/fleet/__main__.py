"""``python -m fleet``: runs the fleet simulator (see ``main``)."""

import sys

from .main import main

sys.exit(main())
