"""Ctrl-C during `evolve run`: the first stops proposing and lets what is in flight finish, the second
stops now (what is in flight stays pending for --resume)."""

from __future__ import annotations

import signal
import sys


def install_interrupt(controller) -> None:
    """First Ctrl-C: stop proposing and finish what is in flight. Second: stop now (left pending)."""

    def handler(signum, frame):
        if controller.stop_requested:
            controller.force_stop = True
            print("\nstopping now; candidates in flight stay pending for --resume", file=sys.stderr)
        else:
            controller.request_stop("interrupted (Ctrl-C)")
            print(
                "\nstopping: finishing the evaluations in flight (Ctrl-C again to stop now)", file=sys.stderr
            )

    signal.signal(signal.SIGINT, handler)
