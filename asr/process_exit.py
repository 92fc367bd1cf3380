"""How a command line ends: its exit code, and for a torchrun rank without the interpreter's
teardown. Torch-free, so the edge CLIs can use it."""
from __future__ import annotations

import logging
import os
import sys


def under_torchrun() -> bool:
    """Whether this process is a rank that torchrun started."""
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def exit_command(code: int) -> None:
    """End a command line with ``code``. A torchrun rank ends without the interpreter's
    teardown (stdout, stderr and the logs flushed first): gloo's C++ threads can abort
    there ("terminate called without an active exception", SIGABRT) after a run that
    finished and wrote everything, and torchrun then reports the whole run failed."""
    if not under_torchrun():
        sys.exit(code)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(int(code or 0))
