"""SIGTERM handled as Ctrl-C, so that ``timeout``, schedulers and ``kill`` stop a run as cleanly as a user does.

Python turns SIGINT into ``KeyboardInterrupt`` in the main thread; SIGTERM, by default, ends the
process at once and loses the work since the last checkpoint. Inside ``sigterm_as_interrupt()``
SIGTERM raises ``KeyboardInterrupt`` instead, so the code that writes a resumable checkpoint on
Ctrl-C runs for both.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises ``KeyboardInterrupt`` in the main thread; the previous handler
    is restored on exit.

    Only the first SIGTERM raises: later ones (a scheduler repeating itself while the checkpoint is
    being written) are ignored, so they cannot cut the clean-up short. Outside the main thread, where
    Python cannot install handlers, the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal raised
        if raised:
            return
        raised = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        # None: a handler installed outside Python; the default is the closest we can restore.
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
