"""The study's driver stays light: it never imports torch (trials do), and it reads the
machine's description from /proc."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DRIVER = """
import json, sys
sys.path.insert(0, {repo!r})
import run_study
rc = run_study.main({args!r})
print(json.dumps({{"rc": rc, "torch": "torch" in sys.modules}}))
"""
ONE_CELL = "budget: smoke\nseeds: [0]\nfamilies:\n  one:\n    kind: train\n    axes:\n      modalities: [flair]\n"


def test_a_study_and_its_report_never_import_torch_in_the_driver(tmp_path, synthetic_store):
    grid = tmp_path / "one.yaml"
    grid.write_text(ONE_CELL)
    args = ["--grid", str(grid), "--data", str(synthetic_store), "--study-dir",
            str(tmp_path / "study"), "--set", "train.max_steps=2"]
    proc = subprocess.run([sys.executable, "-c", DRIVER.format(repo=str(REPO), args=args)],
                          capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen == {"rc": 0, "torch": False}
    assert (tmp_path / "study" / "report" / "report.md").exists()  # the trial itself did run


def test_proc_value_reads_the_first_line_of_a_key(tmp_path):
    from study.session import proc_value

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: a b\n"
                    "processor\t: 1\nmodel name\t: Other\n")
    assert proc_value(str(info), "model name") == "Test CPU 9000"
    assert proc_value(str(info), "missing") == ""
    assert proc_value(str(tmp_path / "absent"), "model name") == ""


def test_hardware_lists_the_gpus_nvidia_driver_reports(tmp_path, monkeypatch):
    import study.session

    for bus, model in (("0000:01:00.0", "NVIDIA A100-SXM4-40GB"), ("0000:02:00.0", "NVIDIA L4")):
        (tmp_path / bus).mkdir()
        (tmp_path / bus / "information").write_text(f"Model: \t\t {model}\nIRQ:   42\n")
    monkeypatch.setattr(study.session, "NVIDIA_GPUS", str(tmp_path / "*" / "information"))
    assert study.session.hardware().endswith("CPUs, NVIDIA A100-SXM4-40GB, NVIDIA L4")
    monkeypatch.setattr(study.session, "NVIDIA_GPUS", str(tmp_path / "none" / "*"))
    assert study.session.hardware().endswith("CPUs, no NVIDIA GPU")
