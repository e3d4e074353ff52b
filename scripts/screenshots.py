"""Screenshots of a study's MLflow UI: the runs view and one run page (headless Chromium).

    python scripts/screenshots.py --study studies/unimodal [--out DIR] [--run-id RUN]
    python scripts/screenshots.py --tracking-uri sqlite:////abs/mlflow.db --experiment NAME

Starts ``mlflow ui`` (this Python's MLflow) on the study's tracking store at 127.0.0.1 on a
free port, marks the experiment as model training (as ``run_study.py ui`` does), takes
``runs.png`` (the experiment's runs table) and ``run.png`` (a trial's run
page: the given one, else the last finished trial) with ``chromium --headless
--screenshot`` (or ``chromium-browser``, ``google-chrome``; Playwright when installed and
no such binary is), then stops the UI. With no browser it prints one ``skipped:`` line and
exits 0. Default ``--out``: ``<study>/screenshots``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
SIZE = (1600, 1000)


def find_browser() -> str | None:
    """A Chromium-family binary on PATH, else "playwright" if Playwright is importable."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return None
    return "playwright"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_ui(uri: str, port: int, log: Path) -> subprocess.Popen:
    """``mlflow ui`` in its own process group (stopped with ``stop_ui``), ready to serve."""
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow ui exited ({proc.returncode}); see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    stop_ui(proc)
    raise RuntimeError(f"mlflow ui did not answer on port {port} within 120 s; see {log}")


def stop_ui(proc: subprocess.Popen) -> None:
    """End the UI's process group (the server and its workers), by its id."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def screenshot(browser: str, url: str, path: Path, wait_ms: int = 8000) -> None:
    """One PNG of ``url`` at SIZE, after the page's scripts had ``wait_ms`` to render."""
    if browser == "playwright":
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            b = p.chromium.launch()
            page = b.new_page(viewport={"width": SIZE[0], "height": SIZE[1]})
            page.goto(url, wait_until="networkidle")
            page.wait_for_timeout(wait_ms // 4)
            page.screenshot(path=str(path))
            b.close()
        return
    with tempfile.TemporaryDirectory() as profile:
        cmd = [browser, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
               "--no-first-run", f"--user-data-dir={profile}",
               f"--window-size={SIZE[0]},{SIZE[1]}", f"--virtual-time-budget={wait_ms}",
               f"--screenshot={path}", url]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if not path.is_file():
        raise RuntimeError(f"{Path(browser).name} wrote no screenshot ({done.returncode}): "
                           f"{done.stderr.strip()[-500:]}")


def pick_run(uri: str, experiment: str, run_id: str | None) -> tuple[str, str]:
    """(experiment id, run id): ``run_id``, else the last finished trial run, else any run."""
    from mlflow.tracking import MlflowClient

    from study.mlflow_meta import mark_training_experiment

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"error: no experiment {experiment!r} at {uri}")
    mark_training_experiment(client, exp.experiment_id)  # as `run_study.py ui` shows it
    if run_id:
        return exp.experiment_id, run_id
    for filt in ("tags.role = 'trial' and attributes.status = 'FINISHED'", ""):
        runs = client.search_runs([exp.experiment_id], filt, max_results=1,
                                  order_by=["attributes.end_time DESC"])
        if runs:
            return exp.experiment_id, runs[0].info.run_id
    raise SystemExit(f"error: experiment {experiment!r} at {uri} has no run")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", type=Path, help="study folder (its study.json names the store)")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI (default: the study's)")
    ap.add_argument("--experiment", help="experiment name (default: the study's)")
    ap.add_argument("--run-id", help="run for run.png (default: the last finished trial)")
    ap.add_argument("--out", type=Path, help="folder for the PNGs (default: <study>/screenshots)")
    args = ap.parse_args(argv)
    browser = find_browser()
    if browser is None:
        print(f"skipped: no headless browser ({', '.join(BROWSERS)} or Playwright) installed")
        return 0
    uri, experiment = args.tracking_uri, args.experiment
    if args.study is not None and (uri is None or experiment is None):
        from study.cells import read_study

        info = read_study(args.study)
        uri, experiment = uri or str(info["tracking_uri"]), experiment or str(info["experiment"])
    if not uri or not experiment:
        ap.error("give --study DIR, or --tracking-uri and --experiment")
    out = args.out or ((args.study / "screenshots") if args.study else Path("screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    exp_id, run_id = pick_run(uri, experiment, args.run_id)
    port = free_port()
    ui = start_ui(uri, port, out / "mlflow_ui.log")
    try:
        base = f"http://127.0.0.1:{port}/#/experiments/{exp_id}"
        for name, url in (("runs.png", f"{base}/runs"), ("run.png", f"{base}/runs/{run_id}"),
                          ("metrics.png", f"{base}/runs/{run_id}/model-metrics")):
            screenshot(browser, url, out / name)
            print(f"{out / name}  ({url})")
    finally:
        stop_ui(ui)
    return 0


if __name__ == "__main__":
    sys.exit(main())
