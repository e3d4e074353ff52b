"""The tracking journal and outage reporting: what keeps a study going when MLflow does not
answer. No MLflow here (``study.tracking`` delivers the entries).

Every tracking write (metrics, tags, status, JSON artifacts) is appended to a JSONL file in
the study folder before it is sent; the file is emptied once every entry has been
delivered. Entries left in it (the store was down, or the driver died) are replayed, in
order, by the next attempt or the next invocation; replay is idempotent (metrics are
keyed by run, key and step; tags and statuses overwrite).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

JOURNAL_NAME = "tracking-journal.jsonl"


class Journal:
    """Entries not yet delivered, in order; mirrored to ``path`` (None: memory only)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.pending: list[dict[str, Any]] = []
        self._file: TextIO | None = None
        self._disk_error = ""
        self._lock = threading.Lock()  # the driver adds while the courier delivers
        if path is not None and path.is_file():
            for line in path.read_text().splitlines():
                try:
                    self.pending.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by a crash or a full disk
                    continue

    def __getstate__(self) -> dict[str, Any]:
        """Pickled with the Tracker when Tune pickles its callbacks: no lock, no open file."""
        return {**self.__dict__, "_lock": None, "_file": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def add(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._add(entry)

    def _add(self, entry: dict[str, Any]) -> None:
        self.pending.append(entry)
        if self.path is None or self._disk_error:
            return
        try:
            if self._file is None:
                cut = _ends_mid_line(self.path)
                self._file = open(self.path, "a")  # noqa: SIM115 - kept open for the session
                if cut:
                    self._file.write("\n")  # never glue an entry to a line cut by a crash
            self._file.write(json.dumps(entry, default=str) + "\n")
            self._file.flush()
        except OSError as exc:
            self._disk_error = exc.strerror or str(exc)
            print(f"tracking journal {self.path} cannot be written ({self._disk_error}); "
                  "undelivered entries are kept in memory only", flush=True)

    def delivered(self, n: int) -> None:
        """The first ``n`` pending entries reached the store; empty the file when all did."""
        with self._lock:
            self._delivered(n)

    def _delivered(self, n: int) -> None:
        del self.pending[:n]
        if self.pending or self.path is None:
            return
        try:
            if self._file is not None:
                self._file.close()
                self._file = None
            if self.path.exists():
                self.path.unlink()
            self._disk_error = ""
        except OSError:
            pass

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def _ends_mid_line(path: Path) -> bool:
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) != b"\n"


class Outage:
    """One line when the store stops answering, a reminder every ``remind_every`` seconds,
    one line when it is back; ``due`` paces the retries while it is down."""

    def __init__(self, uri: str, journal: Path | None, retry_every: float = 10.0,
                 remind_every: float = 300.0, slow_after: float = 5.0) -> None:
        self.uri, self.journal = uri, journal
        self.retry_every, self.remind_every, self.slow_after = retry_every, remind_every, slow_after
        self.down_since: float | None = None
        self._last_try = 0.0
        self._last_line = 0.0
        self._exchange = 0.0
        self.outages = 0

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def due(self) -> bool:
        return self.down_since is None or time.monotonic() - self._last_try >= self.retry_every

    def tried(self) -> None:
        self._last_try = time.monotonic()

    def waited(self) -> float:
        return 0.0 if self.down_since is None else time.monotonic() - self.down_since

    def failed(self, exc: BaseException, pending: int) -> None:
        now = time.monotonic()
        self._last_try = now
        where = f"journaled in {self.journal}" if self.journal else "kept in memory"
        if self.down_since is None:
            self._last_line = now
            self.down_since = min(now, self._exchange or now)  # from the call that hung
            self.outages += 1
            print(f"MLflow tracking at {self.uri} is unavailable ({first_line(exc)}); the study "
                  f"goes on: {pending} entr{'y' if pending == 1 else 'ies'} {where}, retrying every "
                  f"{self.retry_every:g} s", flush=True)
        elif now - self._last_line >= self.remind_every:
            self._last_line = now
            print(f"MLflow tracking at {self.uri} still unavailable after "
                  f"{self.waited() / 60:.1f} min; {pending} entries {where}", flush=True)

    def recovered(self, replayed: int) -> None:
        if self.down_since is None:
            return
        print(f"MLflow tracking at {self.uri} is back after {self.waited():.0f} s; "
              f"replayed {replayed} journaled entr{'y' if replayed == 1 else 'ies'}", flush=True)
        self.down_since = None

    @contextmanager
    def watch(self, what: str) -> Iterator[None]:
        """Say so when one exchange with the store takes longer than ``slow_after`` seconds
        (a hung server: MLflow's own timeout and retries then bound the wait)."""
        self._exchange = time.monotonic()
        if self.down:
            yield
            return
        limit = http_bound()
        timer = threading.Timer(self.slow_after, lambda: print(
            f"MLflow tracking at {self.uri} has not answered for {self.slow_after:g} s ({what}); "
            f"giving up after ~{limit:.0f} s", flush=True))
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()


def http_bound() -> float:
    """Worst-case seconds of one MLflow HTTP call under the MLFLOW_HTTP_REQUEST_* settings."""
    timeout = float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "120"))
    retries = int(os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7"))
    factor = float(os.environ.get("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "2"))
    return timeout * (retries + 1) + sum(factor * 2 ** i for i in range(retries))


def first_line(exc: BaseException) -> str:
    """The root cause's first line (e.g. "database or disk is full", "Connection refused")."""
    root, seen = exc, 0
    while (root.__cause__ or root.__context__) is not None and seen < 10:
        root, seen = root.__cause__ or root.__context__, seen + 1  # type: ignore[assignment]
    lines = [line.strip() for line in str(root).splitlines() if line.strip()
             and not line.strip().startswith("(raised as a result of")]
    text = lines[0] if lines else type(root).__name__
    return text.split("Caused by ", 1)[-1].strip("()'\" ")[:200]
