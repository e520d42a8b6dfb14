"""How the example scripts end: a user's mistake is one line on stderr, not a traceback.

A script's ``main`` raises ``ValueError`` (bad config, bad flag, bad data) or ``OSError`` (a missing
file, a full disk, a permission) with a message that says what was wrong and what is allowed.
:func:`run` prints ``<script>: error: <message>`` and exits with status 1. Set ``HIER_AE_TRACEBACK=1``
to get the full traceback instead (for a bug report). Any other exception is a bug in ``hier_ae``
and keeps its traceback.

Example::

    if __name__ == "__main__":
        run(main)  # "train.py: error: data.batch_size=0 is invalid: ..." and exit status 1
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

USER_ERRORS = (ValueError, OSError)


def run(main: Callable[[], Any], prog: str | None = None) -> NoReturn:
    """Call ``main()``; exit 0 when it returns, 1 with a one-line message on a user error."""
    prog = prog or Path(sys.argv[0]).name
    try:
        main()
    except USER_ERRORS as e:
        if os.environ.get("HIER_AE_TRACEBACK", "") not in ("", "0"):
            raise
        sys.exit(f"{prog}: error: {e}")
    sys.exit(0)
