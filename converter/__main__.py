import sys

from edgecls.cli import COMMANDS, main

sys.exit(main(commands={"convert": COMMANDS["convert"]}, prog="python -m converter"))
