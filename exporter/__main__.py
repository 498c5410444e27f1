"""``python -m exporter`` is the ``failure-predictor`` command."""

import sys

from exporter.cli import main

sys.exit(main())
