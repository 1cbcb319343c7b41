import sys

from scdl.cli import main

sys.exit(main())
