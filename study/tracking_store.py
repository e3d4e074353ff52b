"""The study's own SQLite tracking store, built ahead: MLflow's imports and a new store's
schema migrations cost ~3.5 s, so ``open_session`` runs ``preload`` in a thread while Ray
starts, and a new study adopts the finished store (``adopt_empty_store``)."""

from __future__ import annotations

import os
from pathlib import Path


def preload(empty_store: Path | None = None, artifact_root: Path | None = None) -> None:
    """Import what a ``Tracker`` needs (~2 s of MLflow, SQLAlchemy and Alembic modules)
    and, given ``empty_store``, build an empty SQLite store there (``artifact_root`` for its
    default experiment): a new store runs every Alembic migration (~1.5 s), and
    ``adopt_empty_store`` copies the result into a new study folder. Touches nothing of the
    study: ``open_session`` runs this in a thread while Ray starts."""
    import contextlib
    import logging

    with contextlib.suppress(Exception):  # a broken install fails again, in the Tracker, clearly
        import mlflow.tracking  # noqa: F401
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        if empty_store is not None and artifact_root is not None:
            logging.getLogger("mlflow").setLevel(logging.WARNING)
            building = empty_store.with_name(empty_store.name + ".building")
            store = SqlAlchemyStore(f"sqlite:///{building.as_posix()}",
                                    artifact_root.resolve().as_uri())
            store.engine.dispose()  # every connection closed: the file is complete
            os.replace(building, empty_store)  # a failed build leaves no store to adopt


def adopt_empty_store(empty_store: Path, tracking_uri: str) -> None:
    """Copy ``empty_store`` (``preload``) to the SQLite file of ``tracking_uri`` if that file
    does not exist yet (a new study); otherwise, or with no empty store, do nothing."""
    import shutil

    if not tracking_uri.startswith("sqlite:///") or not empty_store.is_file():
        return
    target = Path(tracking_uri[len("sqlite:///"):])
    if target.exists():
        return
    partial = target.with_name(target.name + ".tmp")
    shutil.copyfile(empty_store, partial)
    os.replace(partial, target)  # the store appears whole or not at all
