"""`python -m chattune ...` runs the CLI (what torchrun and accelerate launch start with `-m chattune`)."""

import sys

from chattune.cli import main

sys.exit(main())
