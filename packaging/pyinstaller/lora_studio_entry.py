"""The bundle's entry point: the same ``lora-studio`` command as the installed console script.

``freeze_support`` lets a frozen executable serve as its own multiprocessing child (the dataset
code may fork workers); without it a child would start a second copy of the app.
"""

import multiprocessing
import sys

from lora_studio.cli import main

if __name__ == "__main__":
    multiprocessing.freeze_support()
    sys.exit(main())
