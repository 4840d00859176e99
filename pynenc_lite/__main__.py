"""`python -m pynenc_lite <command>`: the admin command line (see `pynenc_lite.admin`)."""

import sys

from pynenc_lite.admin import main

if __name__ == "__main__":
    sys.exit(main())
