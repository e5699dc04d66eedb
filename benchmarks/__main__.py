import sys

from edge_app.cli import main
from edgecls.cli import COMMANDS

sys.exit(main({"bench": COMMANDS["bench"]}, prog="python -m benchmarks"))
