"""A corrupt resume point is not a dead end: ``last.pt`` keeps its predecessor as
``last.prev.pt`` and ``load_resume_checkpoint`` falls back (previous copy, another copy
such as Tune's, ``best.pt``, else a fresh start), saying which in one line. Real files,
real training (tiny phantoms)."""

from __future__ import annotations

import os
from pathlib import Path

from core.checkpoint import load_checkpoint, load_resume_checkpoint
from core.config import load_config
from core.trainer import fit
from tests.toy_data import phantom_data

OVERRIDES = {"data.modalities": ["flair"], "train.seed": 1, "train.max_epochs": 3}


def _train(out: Path, epochs: int = 3):
    cfg = load_config("smoke", overrides={**OVERRIDES, "train.max_epochs": epochs})
    return fit(cfg, out, data_source=phantom_data(n_train=16))


def _truncate(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) // 2)


def test_last_keeps_its_predecessor_and_a_truncated_last_falls_back(tmp_path):
    out = tmp_path / "trial"
    _train(out)
    assert load_checkpoint(out / "last.pt")["epoch"] == 3
    assert load_checkpoint(out / "last.prev.pt")["epoch"] == 2
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]  # no stray temporaries

    ckpt, note = load_resume_checkpoint(out)
    assert ckpt is not None and ckpt["epoch"] == 3 and note == ""  # the normal case is silent

    _truncate(out / "last.pt")
    ckpt, note = load_resume_checkpoint(out)
    assert ckpt is not None and ckpt["epoch"] == 2
    assert note.startswith("last.pt unreadable") and "resumed from last.prev.pt, epoch 2" in note
    assert "\n" not in note
    assert (out / "last.pt.corrupt").exists()
    assert load_checkpoint(out / "last.pt")["epoch"] == 2  # the fallback is the resume point now
    seen: list[int] = []
    cfg = load_config("smoke", overrides={**OVERRIDES, "train.max_epochs": 4})
    result = fit(cfg, out, callback=lambda r: seen.append(r["epoch"]), data_source=phantom_data(n_train=16))
    assert seen == [3, 4] and [int(h["epoch"]) for h in result.history] == [1, 2, 3, 4]


def test_a_newer_extra_copy_wins_then_best_then_a_fresh_start(tmp_path):
    out = tmp_path / "trial"
    _train(out)
    tune_copy = tmp_path / "tune-last.pt"
    tune_copy.write_bytes((out / "last.pt").read_bytes())  # epoch 3, as Tune kept it
    (out / "last.pt").unlink()  # a node that lost its disk
    ckpt, note = load_resume_checkpoint(out, {"Tune's copy": tune_copy})
    assert ckpt is not None and ckpt["epoch"] == 3
    assert note == "last.pt missing: resumed from Tune's copy, epoch 3"

    for name in ("last.pt", "last.prev.pt"):
        _truncate(out / name)
    best_epoch = load_checkpoint(out / "best.pt")["epoch"]
    ckpt, note = load_resume_checkpoint(out)
    assert ckpt is not None and ckpt["epoch"] == best_epoch and "resumed from best.pt" in note

    for name in ("last.pt", "best.pt"):
        _truncate(out / name)
    ckpt, note = load_resume_checkpoint(out)
    assert ckpt is None and note.endswith("the cell starts over")
    assert not (out / "last.pt").exists()  # set aside: a fresh fit starts at epoch 1
    assert load_resume_checkpoint(tmp_path / "empty") == (None, "")
