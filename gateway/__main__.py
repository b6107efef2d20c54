"""`python -m gateway VERB …` — see gateway/cli.py."""

import sys

from gateway.cli import main

sys.exit(main(sys.argv[1:]))
