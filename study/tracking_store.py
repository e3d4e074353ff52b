"""The study's own SQLite tracking store, built ahead: MLflow's imports cost ~2.4 s of CPU
and a new store's schema migrations ~0.9 s, so ``open_session`` runs ``preload`` in a
thread while Ray starts, and a new study adopts the finished store (``adopt_empty_store``).
The migrated empty store is kept once per MLflow version in the user's cache
(``template_path``), so later studies copy it instead of migrating again."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import time
import uuid
from pathlib import Path

CACHE_ENV = "SEGAN_CACHE_DIR"
"""Folder for what the study runner caches per user (default ``$XDG_CACHE_HOME/segan-study``
or ``~/.cache/segan-study``); ``off`` caches nothing."""


def cache_dir() -> Path | None:
    named = os.environ.get(CACHE_ENV, "").strip()
    if named.lower() == "off":
        return None
    if named:
        return Path(named)
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or Path.home() / ".cache"
    return Path(base) / "segan-study"


def template_path(mlflow_version: str) -> Path | None:
    """Where the migrated empty store of ``mlflow_version`` is cached (None: no cache)."""
    root = cache_dir()
    return None if root is None else root / f"mlflow-{mlflow_version}-empty.db"


def preload(empty_store: Path | None = None, artifact_root: Path | None = None) -> None:
    """Import what a ``Tracker`` needs (MLflow, SQLAlchemy and Alembic modules) and, given
    ``empty_store``, put an empty SQLite store there whose default experiment keeps its
    artifacts under ``artifact_root``: a copy of the cached template, or a new store (every
    Alembic migration), then cached. ``adopt_empty_store`` copies the result into a new
    study folder. Touches nothing of the study: ``open_session`` runs this in a thread while
    Ray starts."""
    with contextlib.suppress(Exception):  # a broken install fails again, in the Tracker, clearly
        import mlflow
        import mlflow.tracking  # noqa: F401
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore  # noqa: F401

        if empty_store is not None and artifact_root is not None:
            template = template_path(mlflow.__version__)
            building = empty_store.with_name(empty_store.name + ".building")
            if not (template and _copy_template(template, building, artifact_root)):
                _build(building, artifact_root)
                if template is not None:
                    _cache(building, template)
            os.replace(building, empty_store)  # a failed build leaves no store to adopt


def _build(path: Path, artifact_root: Path) -> None:
    """A new store at ``path``: MLflow creates its tables and runs every migration."""
    import logging

    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    store = SqlAlchemyStore(f"sqlite:///{path.as_posix()}", artifact_root.resolve().as_uri())
    store.engine.dispose()  # every connection closed: the file is complete


def _copy_template(template: Path, path: Path, artifact_root: Path) -> bool:
    """``template`` copied to ``path`` with its default experiment (id 0, the only row a new
    store has) pointed at ``artifact_root`` and stamped now; False if there is no usable
    template (then ``path`` is left absent)."""
    if not template.is_file():
        return False
    try:
        shutil.copyfile(template, path)
        now = int(time.time() * 1000)
        location = artifact_root.resolve().as_uri() + "/0"
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            version = db.execute("SELECT version_num FROM alembic_version").fetchall()
            rows = db.execute("UPDATE experiments SET artifact_location = ?, creation_time = ?,"
                              " last_update_time = ? WHERE experiment_id = 0",
                              (location, now, now)).rowcount
            if len(version) != 1 or rows != 1:
                raise sqlite3.DatabaseError("not an empty MLflow store")
        return True
    except sqlite3.Error:
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            template.unlink()  # unusable: the next new study builds and caches it again
        return False
    except OSError:  # no room or no access here: the template itself may be fine
        path.unlink(missing_ok=True)
        return False


def _cache(store: Path, template: Path) -> None:
    """Keep a copy of the new ``store`` as ``template`` (whole or not at all; a cache that
    cannot be written is skipped)."""
    partial = template.with_name(f"{template.name}.{uuid.uuid4().hex}.tmp")
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(store, partial)
        os.replace(partial, template)
    except OSError:
        partial.unlink(missing_ok=True)


def adopt_empty_store(empty_store: Path, tracking_uri: str) -> None:
    """Copy ``empty_store`` (``preload``) to the SQLite file of ``tracking_uri`` if that file
    does not exist yet (a new study); otherwise, or with no empty store, do nothing."""
    if not tracking_uri.startswith("sqlite:///") or not empty_store.is_file():
        return
    target = Path(tracking_uri[len("sqlite:///"):])
    if target.exists():
        return
    partial = target.with_name(target.name + ".tmp")
    shutil.copyfile(empty_store, partial)
    os.replace(partial, target)  # the store appears whole or not at all
