"""Real-data recipe benchmark: the study on real BraTS cases, scored on unseen ones in the
original grid (a benchmark, not a test: ~15–30 minutes on 2 cores).

1. ``prepare`` the 18 real BraTS 2018 cases of ``../shared/data/brats-dev`` and
   ``../shared/data/brats-samples/brats2018`` (one folder of symlinks) with the default
   held-out test split;
2. run the study (``run_study.py --grid GRID --data STORE``, Ray + MLflow, default budget
   unless ``--budget``) on a grid of the unimodal FLAIR and the 4-modality SegAN-CAT cells
   (``--grid`` takes any grid; ``unimodal`` and ``table1`` are the real ones);
3. ``predict`` every held-out case with each finished cell's ``best.pt`` from its original
   NIfTI files, and score the masks with ``evaluate`` against the case's own label file in
   the original 240×240×155 grid (whole tumour).

Prints, per cell: dice on unseen cases (mean, range), the study's own number for the same
split, minutes per trial; then the wall time of the grid and the recipe.

    python bench/real_data.py                               # FLAIR + 4-modality SegAN-CAT
    python bench/real_data.py --grid unimodal               # a shipped grid
    python bench/real_data.py --set train.amp=off --out /tmp/rd-fp32
    python bench/real_data.py --split-seed 0,1              # two splits, pooled unseen cases
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.checkpoint import load_checkpoint  # noqa: E402
from core.data.brats import discover_cases  # noqa: E402
from core.data.prepare import prepare  # noqa: E402
from core.data.store import BratsStore  # noqa: E402
from core.device import CPU_BF16_FLAGS, cpu_flags  # noqa: E402
from core.evaluation.cases import predict_to_file  # noqa: E402
from core.evaluation.mask_files import evaluate_folders  # noqa: E402
from core.nested import flatten  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
ROOTS = (SHARED / "brats-dev", SHARED / "brats-samples" / "brats2018")
RECIPE_GRID = """\
description: Real-data recipe check - unimodal FLAIR and 4-modality SegAN-CAT.
budget: auto
seeds: [0]
families:
  models:
    kind: train
    axes:
      variant: [segan-cat]
      modalities: [flair, "flair,t1,t1c,t2"]
"""


def link_cases(roots: tuple[Path, ...], into: Path) -> Path:
    """One folder of symlinks to every case folder under ``roots`` (prepare takes one root)."""
    into.mkdir(parents=True, exist_ok=True)
    for root in roots:
        cases, _ = discover_cases(root)
        for case in cases:
            link = into / case.case_id
            if not link.exists():
                link.symlink_to(Path(case.images["flair"]).parent.resolve())
    return into


def finished_cells(study_dir: Path) -> list[dict]:
    """Name, best checkpoint and logged numbers of every FINISHED trial run of the study."""
    from mlflow.tracking import MlflowClient

    meta = json.loads((study_dir / "study.json").read_text())
    client = MlflowClient(meta["tracking_uri"])
    exp = client.get_experiment_by_name(meta["experiment"])
    runs = client.search_runs([exp.experiment_id], "tags.role = 'trial' and "
                              "attributes.status = 'FINISHED'")
    return [{"name": r.info.run_name, "checkpoint": r.data.tags["best_checkpoint"],
             "metrics": r.data.metrics,
             "minutes": (r.info.end_time - r.info.start_time) / 60000} for r in runs]


def score_unseen(checkpoint: str, store: BratsStore, cases_root: Path, out: Path) -> dict:
    """Predict every test case from its source files; evaluate WT in the original grid."""
    state = load_checkpoint(checkpoint)
    for cid in store.case_ids("test"):
        predict_to_file(state, cases_root / cid, out / f"{cid}.nii.gz")
    return evaluate_folders(out, cases_root, region="wt")


def run_split(args: argparse.Namespace, split_seed: int, work: Path) -> dict[str, list[float]]:
    """Prepare with ``split_seed``, run the grid, score each cell on the split's unseen
    cases; returns ``{cell name: [dice per unseen case]}``."""
    cases_root = link_cases(ROOTS, work / "cases")
    store_path = work / "real.zarr"
    prepare(cases_root, store_path, seed=split_seed, log=lambda _m: None)
    store = BratsStore(store_path)
    sizes = {s: len(store.case_ids(s)) for s in ("train", "val", "test")}
    print(f"split seed {split_seed}: store {store_path}: {sizes}; cpu bf16: "
          f"{', '.join(sorted(cpu_flags() & set(CPU_BF16_FLAGS))) or 'none'}", flush=True)
    grid = args.grid
    if grid is None:
        grid = str(work / "recipe.yaml")
        Path(grid).write_text(RECIPE_GRID)
    study_dir = work / "study"
    cmd = [sys.executable, str(REPO / "run_study.py"), "--grid", grid, "--data", str(store_path),
           "--study-dir", str(study_dir), "--no-report"]
    cmd += ["--budget", args.budget] if args.budget else []
    for kv in args.set:
        cmd += ["--set", kv]
    started = time.monotonic()
    subprocess.run(cmd, check=True, cwd=work)
    wall = (time.monotonic() - started) / 60
    scores: dict[str, list[float]] = {}
    for cell in sorted(finished_cells(study_dir), key=lambda c: c["name"]):
        scored = score_unseen(cell["checkpoint"], store, cases_root, work / "pred" / cell["name"])
        dice = scores[cell["name"]] = [r["dice"] for r in scored["cases"]]
        own = next((v for k, v in cell["metrics"].items()
                    if k.startswith("eval/test/") and k.endswith("/dice")), float("nan"))
        print(f"{cell['name']:36s} WT dice on {len(dice)} unseen cases (original grid) "
              f"{scored['summary']['dice']['mean']:.3f} [{min(dice):.3f}-{max(dice):.3f}]; "
              f"study's eval/test {own:.3f}; {cell['minutes']:.1f} min", flush=True)
    print(f"grid wall time {wall:.1f} min (Ray start, training, evaluation, MLflow)")
    cfg = load_checkpoint(finished_cells(study_dir)[0]["checkpoint"])["config"]
    recipe = {k: v for k, v in flatten(cfg).items() if k.split(".")[0] in ("model", "optim",
              "train") or k in ("data.train_crop", "data.batch_size", "data.slices_per_epoch")}
    print("recipe:", json.dumps(recipe))
    return scores


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", default=None, help="grid to run (default: FLAIR + 4-modality)")
    ap.add_argument("--budget", default=None, help="budget (default: the grid's, auto = cpu)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temp folder)")
    ap.add_argument("--split-seed", default="0", help="seed(s) of prepare's split, e.g. 0 or "
                    "0,1: each seed is a separate study whose test cases are unseen (default 0)")
    args = ap.parse_args(argv)
    work = (args.out or Path(tempfile.mkdtemp(prefix="real_data_"))).resolve()
    seeds = [int(s) for s in str(args.split_seed).split(",")]
    pooled: dict[str, list[float]] = {}
    for seed in seeds:
        folder = work if len(seeds) == 1 else work / f"split{seed}"
        for name, dice in run_split(args, seed, folder).items():
            pooled.setdefault(name, []).extend(dice)
    if len(seeds) > 1:
        for name, dice in sorted(pooled.items()):
            print(f"{name:36s} WT dice pooled over splits {seeds}: {sum(dice) / len(dice):.3f} "
                  f"on {len(dice)} unseen cases [{min(dice):.3f}-{max(dice):.3f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
