"""How the command-line programs (rokfs, rokctl, rokfs-csi) end: an exit code
from the one error table and at most one line on stderr, never a traceback.

Invariants:
- `run_program(prog, body)` returns `body()`'s exit code. A rokfs error
  (also the first one inside an exception group) becomes one line,
  `PROG: error: MESSAGE`, and the exit code of its row in
  rokfs.errors.ERRORS. Anything else is a bug: one line, `PROG: internal
  error: ...`, exit 1, and its traceback logged at debug level (-v).
- A closed stdout (`rokctl volume ls | head -1`) ends the program quietly:
  nothing on stderr, exit EXIT_BROKEN_PIPE, the status a shell reports for
  a program killed by SIGPIPE. stdout is flushed inside, so a late write
  to a closed pipe is caught too.
- Ctrl-C prints `PROG: interrupted` and exits 130.
- Imports rokfs.errors only: a client program loads nothing more for it.
"""

import logging
import os
import sys

from . import errors

EXIT_BROKEN_PIPE = 141          # 128 + SIGPIPE
log = logging.getLogger("rokfs")


def run_program(prog, body):
    """Run `body() -> exit code` and end the way the invariants say."""
    try:
        code = body()
        sys.stdout.flush()
        return code
    except KeyboardInterrupt:
        say(prog, "interrupted")
        return errors.EXIT_INTERRUPTED
    except BaseException as exc:          # noqa: B036 - every way out is answered here
        return _failed(prog, exc)


def _failed(prog, exc):
    if isinstance(exc, SystemExit):
        raise exc                         # argparse usage errors, --help, --version
    leaf = errors.first_leaf(exc)
    if isinstance(leaf, BrokenPipeError):
        return _quiet_broken_pipe()
    if isinstance(leaf, errors.RokfsError):
        say(prog, f"error: {leaf}")
        return errors.exit_code(leaf)
    log.debug("internal error", exc_info=exc)
    say(prog, f"internal error: {type(leaf).__name__}: {leaf} (a bug: run with -v or "
        "log level debug for the traceback)")
    return errors.exit_code(leaf)


def say(prog, text):
    """One line on stderr, whatever newlines `text` holds."""
    print(f"{prog}: {' '.join(str(text).split())}", file=sys.stderr, flush=True)


def _quiet_broken_pipe():
    """Point stdout at /dev/null so that the exit's own flush fails no more."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE
