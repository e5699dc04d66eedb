import sys

from edge_app.cli import main
from edgecls.cli import COMMANDS

sys.exit(main({"convert": COMMANDS["convert"]}, prog="python -m converter"))
