"""Delivers journaled tracking writes from a background thread, so that a trial's report
does not wait for the store.

A Tune function trainable's ``report`` blocks until the driver has handled the result,
callbacks included; writing an epoch's metrics to a SQLite store there took ~45 ms per
report (most of the ~60 ms a report stalled its trial). The ``Tracker`` journals such
writes and nudges the courier; everything else it still delivers at once, in order,
under the same lock (``Courier.lock``), which also serializes every exchange with the
store (SQLite has one writer; the MLflow client is not meant for concurrent calls).
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Courier:
    """One daemon thread that runs ``flush`` when nudged, and every ``retry_every()``
    seconds while that returns a number (the store is down and entries wait)."""

    def __init__(self, flush: Callable[[], object], retry_every: Callable[[], float | None]) -> None:
        self.lock = threading.RLock()
        self._flush, self._retry_every = flush, retry_every
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def __getstate__(self) -> dict[str, object]:
        """Tune pickles its callbacks with the Tuner (never to restore them here): no thread
        or lock goes along."""
        return {"_flush": self._flush, "_retry_every": self._retry_every}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(state["_flush"], state["_retry_every"])  # type: ignore[misc]

    def nudge(self) -> None:
        """Deliver soon (starts the thread on first use)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tracking-courier", daemon=True)
            self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(self._retry_every())
            self._wake.clear()
            if self._stopping:
                return
            with self.lock:
                self._flush()

    def stop(self, wait_s: float) -> None:
        """End the thread (waiting up to ``wait_s`` for a delivery in progress); whatever
        it has not delivered stays journaled for the caller's last, bounded sync."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=max(0.0, wait_s))
