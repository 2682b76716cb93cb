"""``python -m services.gateway api|worker|migrate|rebuild``."""

import sys

from libs.events.service import main

from .main import SPEC

sys.exit(main(SPEC))
