"""``python -m learndrop``: the command line (also what ``torchrun -m learndrop`` runs)."""

import sys

from learndrop.cli import main

sys.exit(main())
