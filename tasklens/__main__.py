"""``python -m tasklens`` is the ``tasklens`` command."""

import sys

from tasklens.cli import main

sys.exit(main())
