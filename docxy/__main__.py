import sys

from docxy.cli.main import main

sys.exit(main())
