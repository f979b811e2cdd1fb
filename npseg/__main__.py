"""`python -m npseg ...` is the `npseg` command."""
import sys

from .cli import main

sys.exit(main())
