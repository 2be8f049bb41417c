"""``python -m generator.cli``: the ``tokenflow`` command."""

import sys

from generator.cli.main import main

sys.exit(main())
