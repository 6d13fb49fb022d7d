import sys

from docxy.cli import main

sys.exit(main())
