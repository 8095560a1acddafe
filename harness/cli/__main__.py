"""`python -m harness.cli ...` is `reidbench ...`."""

import sys

from harness.cli import main

sys.exit(main())
