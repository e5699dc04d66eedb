import sys

from edge_app.cli import EDGE_COMMANDS, main

sys.exit(main(EDGE_COMMANDS, prog="python -m edge_app"))
