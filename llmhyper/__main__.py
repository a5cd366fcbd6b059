import sys

from llmhyper.cli import main

sys.exit(main())
