"""``python -m realism``: runs the EC2 realism layer (see ``main``)."""

import sys

from .main import main

sys.exit(main())
