import sys

from edge_app.cli import main
from edgecls.cli import COMMANDS

sys.exit(main({"train": COMMANDS["train"]}, prog="python -m trainer"))
