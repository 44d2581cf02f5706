import sys

from fewshot_gui.cli import main

sys.exit(main())
