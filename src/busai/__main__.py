import sys

from busai.cli import main

sys.exit(main())
