"""One exception type for problems a user can fix, and the CLI edge that prints them."""
from __future__ import annotations

import sys
from typing import Callable


class InputError(Exception):
    """Bad input the user can fix (missing path, wrong scale, corrupt file).

    The message names the culprit and the fix; CLIs print it as a single line.
    """


def run_cli(main: Callable[[], object]) -> None:
    """Run ``main`` and turn an InputError into one line on stderr and exit code 2."""
    try:
        main()
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
