import sys

from qac.cli import main

sys.exit(main())
