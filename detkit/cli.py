"""The shared entry point of the command-line tools in ``tools/``.

Library code raises; a CLI turns a user error into one ``error: ...`` line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from detkit.errors import USER_ERRORS, one_line


def run_cli(main: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run ``main(args)``; a user error (bad config, missing file, unavailable weights, ...) prints one line, returns 2.

    Errors outside :data:`detkit.errors.USER_ERRORS` are bugs and keep their traceback.
    """
    try:
        return main(args)
    except USER_ERRORS as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
