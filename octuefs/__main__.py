import sys

from octuefs.cli import main

sys.exit(main())
