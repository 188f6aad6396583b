"""``python -m imgstore``: the ``imgstore`` command."""

import sys

from imgstore.cli import main

sys.exit(main())
