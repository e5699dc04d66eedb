import sys

from edgecls.cli import COMMANDS, main

sys.exit(main(commands={"bench": COMMANDS["bench"]}, prog="python -m benchmarks"))
