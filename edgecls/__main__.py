import sys

from edgecls.cli import main

sys.exit(main())
