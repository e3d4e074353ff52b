"""What a checkpoint or a run records of its store, read from the manifest alone (no
torch, so the study's driver can call it)."""

from __future__ import annotations

from typing import Any

from core.data.store import BratsStore
from core.protocol import EVAL_WINDOW


def store_facts(location: str) -> dict[str, Any]:
    """What a checkpoint needs from its store to stand alone: preprocessing (so ``predict``
    reproduces the input), store id, split sizes and the evaluation window."""
    if not location:
        return {}
    store = BratsStore(location)
    m = store.manifest
    splits = {s: len(store.case_ids(s)) for s in ("train", "val", "test")}
    return {"store_id": m.get("store_id", ""), "preprocessing": m.get("preprocessing", {}),
            "store_splits": splits, "eval_window": EVAL_WINDOW}
