"""CLI of the data stage: `prepare` (BraTS folder -> zarr store) and `inspect`.

    python run_study.py prepare --brats-root DIR --out STORE.zarr [--crop 180,180,128]
        [--val-fraction 0.2] [--test-fraction 0.15] [--folds K] [--seed 0] [--workers N]
        [--grades CSV] [--strict] [--force]
    python run_study.py inspect STORE.zarr [--json]

The pipeline itself is ``core.data.prepare.prepare``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from core.data.prepare import DEFAULT_TEST_FRACTION, prepare
from core.data.preprocess import PreprocessParams
from core.data.store import BratsStore
from core.errors import UserError
from core.help_format import DefaultsFormatter


def _crop_arg(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--crop wants three positive sizes X,Y,Z, got {text!r}")
    return values[0], values[1], values[2]


def _prepare_cmd(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    result = prepare(
        Path(args.brats_root),
        Path(args.out),
        PreprocessParams(crop=args.crop),
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        folds=args.folds,
        seed=args.seed,
        workers=args.workers,
        grades_csv=Path(args.grades) if args.grades else None,
        strict=args.strict,
        force=args.force,
    )
    return 0 if result.up_to_date or result.written else 1


def format_summary(store: BratsStore) -> str:
    """Human-readable manifest summary and one row per case."""
    m = store.manifest
    splits = m["splits"]
    lines = [
        f"store       {store.location}",
        f"store_id    {m['store_id']}   code {m['code_version']}   created {m['created']}",
        f"source      {m['source_root']}",
        f"modalities  {', '.join(m['modalities'])}",
        f"preprocess  crop (X,Y,Z) {tuple(m['preprocessing']['crop'])}, clip "
        f"{m['preprocessing']['low_pct']}-{m['preprocessing']['high_pct']} pct, scale [0,1]",
        f"layout      image {m['layout']['image_dtype']} (Z,C,H,W) {m['layout']['codec']}, "
        f"one slice per chunk",
        f"splits      seed {splits['seed']}, val {splits['val_fraction']}, test "
        f"{splits['test_fraction']}, folds {splits['folds']}: "
        + ", ".join(f"{s} {c['total']}" for s, c in sorted(splits["counts"].items())),
        f"skipped     {len(m.get('skipped', []))}",
        "",
        f"{'case':<28} {'grade':<8} {'institution':<12} {'split':<6} {'fold':>4} "
        f"{'WT voxels':>10}  shape (Z,C,H,W)",
    ]
    for r in m["cases"]:
        fold = "" if r.get("fold") is None else str(r["fold"])
        lines.append(
            f"{r['case_id']:<28} {r['grade']:<8} {r['institution']:<12} "
            f"{r['split']:<6} {fold:>4} {r['wt_voxels']:>10}  {tuple(r['shape'])}"
        )
    lines.extend(f"skipped: {s}" for s in m.get("skipped", []))
    return "\n".join(lines)


def _inspect_cmd(args: argparse.Namespace) -> int:
    store = BratsStore(args.store)
    print(json.dumps(store.manifest, indent=1) if args.json else format_summary(store))
    return 0


def register(subparsers: Any) -> None:
    """Add the `prepare` and `inspect` subcommands."""
    p = subparsers.add_parser(
        "prepare",
        help="BraTS folder -> chunked zarr store",
        description="Find BraTS cases under --brats-root (2015 .mha, 2017-2021 and 2023+ "
        "NIfTI naming), centre-crop, clip to percentiles, scale to [0, 1] and write a zarr "
        "store with a stratified split. Bad cases are reported and skipped (--strict: "
        "fatal); an unchanged input is not prepared twice.",
        formatter_class=DefaultsFormatter,
    )
    p.add_argument("--brats-root", required=True, help="folder holding BraTS cases (any nesting)")
    p.add_argument("--out", required=True, help="store path to write, e.g. data/brats19.zarr")
    p.add_argument("--crop", type=_crop_arg, default="180,180,128", help="X,Y,Z crop size")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="validation share of the non-test patients (model selection reads it)",
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        default=DEFAULT_TEST_FRACTION,
        help="held-out test share of all patients (at least one when 3+ patients); the "
        "study reports its numbers on it; 0 = none (numbers then come from validation)",
    )
    p.add_argument("--folds", type=int, default=None, help="also assign K stratified folds")
    p.add_argument("--seed", type=int, default=0, help="split seed")
    p.add_argument(
        "--workers",
        type=int,
        default=max(1, min(4, os.cpu_count() or 1)),
        help="parallel processes (default: min(4, CPUs))",
    )
    p.add_argument(
        "--grades", default=None, help="CSV with a 'Grade' column (e.g. name_mapping.csv)"
    )
    p.add_argument("--strict", action="store_true", help="stop at the first bad case")
    p.add_argument("--force", action="store_true", help="rebuild even if up to date")
    p.set_defaults(func=_prepare_cmd)

    q = subparsers.add_parser("inspect", help="summarise a prepared store",
                              description="Summarise a prepared store: manifest, splits and one "
                              "row per case.", formatter_class=DefaultsFormatter)
    q.add_argument("store", help="store path or fsspec URL")
    q.add_argument("--json", action="store_true", help="print the full manifest as JSON")
    q.set_defaults(func=_inspect_cmd)
