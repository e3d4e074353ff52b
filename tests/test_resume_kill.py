"""Resume after a hard kill: SIGKILL a training process mid-run, restart it, and
end with exactly the weights of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

from core.checkpoint import load_checkpoint
from core.config import load_config
from core.trainer import fit
from tests.toy_data import phantom_data

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = {"data.modalities": ["flair"], "train.seed": 3, "train.max_epochs": 6}

CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from core.config import load_config
    from core.trainer import fit
    from tests.toy_data import phantom_data

    marker = Path({marker!r})

    def slow_after_two(report):
        if report["epoch"] == 2:
            marker.write_text("2")   # last.pt of epoch 2 is on disk: now we may be killed
            time.sleep(120)

    cfg = load_config("smoke", overrides={overrides!r})
    fit(cfg, {out!r}, callback=slow_after_two, data_source=phantom_data())
""")


def test_sigkill_then_restart_matches_an_uninterrupted_run(tmp_path):
    out, marker = tmp_path / "killed", tmp_path / "marker"
    script = CHILD.format(repo=str(REPO), marker=str(marker), overrides=OVERRIDES, out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None, "training process ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert load_checkpoint(out / "last.pt")["epoch"] == 2

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # same arithmetic as the child
    try:
        cfg = load_config("smoke", overrides=OVERRIDES)
        seen: list[int] = []
        resumed = fit(cfg, out, callback=lambda r: seen.append(r["epoch"]), data_source=phantom_data())
        straight = fit(cfg, tmp_path / "straight", data_source=phantom_data())
    finally:
        torch.set_num_threads(threads)
    assert seen == [3, 4, 5, 6], "the restart must continue after epoch 2, not start over"
    assert resumed.epochs == straight.epochs == 6 and resumed.steps == straight.steps
    a, b = load_checkpoint(resumed.last_path), load_checkpoint(straight.last_path)
    for net in ("segmentor", "critic", "opt_s", "opt_d"):
        flat_a, flat_b = _tensors(a[net]), _tensors(b[net])
        assert flat_a.keys() == flat_b.keys()
        for key in flat_a:
            assert torch.equal(flat_a[key], flat_b[key]), f"{net}.{key} differs after kill + resume"


def _tensors(tree, prefix=""):
    out = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(_tensors(v, f"{prefix}{k}."))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            out.update(_tensors(v, f"{prefix}{i}."))
    elif isinstance(tree, torch.Tensor):
        out[prefix] = tree
    return out
