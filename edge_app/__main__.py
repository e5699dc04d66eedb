import sys

from edgecls.cli import EDGE_COMMANDS, main

sys.exit(main(commands=EDGE_COMMANDS, prog="python -m edge_app"))
