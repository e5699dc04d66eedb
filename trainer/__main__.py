import sys

from edgecls.cli import COMMANDS, main

sys.exit(main(commands={"train": COMMANDS["train"]}, prog="python -m trainer"))
