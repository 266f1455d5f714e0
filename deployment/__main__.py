"""``python -m deployment list | promote | rollback``: see :mod:`deployment.cli`."""

import sys

from deployment.cli import main

sys.exit(main())
