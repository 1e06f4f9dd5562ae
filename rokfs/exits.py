"""How the command-line programs (rokfs, rokctl, rokfs-csi) end: an exit code
from the one error table and at most one line on stderr, never a traceback.

Invariants:
- `run_program(prog, body)` returns `body()`'s exit code (or argparse's,
  for usage errors, --help and --version: run parsing inside). A rokfs error
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
    except SystemExit as exc:             # argparse: usage errors, --help, --version
        code = _exit_status(exc.code)
    except KeyboardInterrupt:
        say(prog, "interrupted")
        code = errors.EXIT_INTERRUPTED
    except BaseException as exc:          # noqa: B036 - every way out is answered here
        code = _failed(prog, exc)
    return _flushed(code)


def _exit_status(code):
    """What sys.exit(code) would make the process exit with."""
    if code is None:
        return errors.EXIT_OK
    return code if isinstance(code, int) else 1


def _failed(prog, exc):
    leaf = errors.first_leaf(exc)
    if isinstance(leaf, BrokenPipeError):
        return EXIT_BROKEN_PIPE
    if isinstance(leaf, errors.RokfsError):
        say(prog, f"error: {leaf}")
        return errors.exit_code(leaf)
    log.debug("internal error", exc_info=exc)
    say(prog, f"internal error: {type(leaf).__name__}: {leaf} (a bug: run with -v for "
        "its traceback)")
    return errors.exit_code(leaf)


def _flushed(code):
    """`code`, once what is left for stdout is written; a closed stdout
    makes it EXIT_BROKEN_PIPE, quietly."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = EXIT_BROKEN_PIPE
    if code == EXIT_BROKEN_PIPE:
        _stdout_to_devnull()
    return code


def say(prog, text):
    """One line on stderr, whatever newlines `text` holds."""
    try:
        print(f"{prog}: {' '.join(str(text).split())}", file=sys.stderr, flush=True)
    except BrokenPipeError:               # stderr closed too: nobody to tell
        pass


def _stdout_to_devnull():
    """So that the interpreter's own flush at exit fails no more."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
