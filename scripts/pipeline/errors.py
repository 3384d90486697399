"""One error type for everything a user can fix, and a main() wrapper that reports it cleanly."""
from __future__ import annotations

import sys
from typing import Callable, NoReturn


class PipelineError(Exception):
    """A failure the user can act on; the message names the file (and line) involved."""


def fail(message: str) -> NoReturn:
    raise PipelineError(message)


def run_main(main: Callable[[], int | None]) -> NoReturn:
    """Run a script's main(): PipelineError -> 'error: ...' on stderr and exit 1; Ctrl-C -> 130."""
    try:
        status = main()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)
