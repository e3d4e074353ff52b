"""``predict`` and ``evaluate`` subcommands of run_study.py.

    run_study.py predict --checkpoint best.pt --input CASE_DIR --out mask.nii.gz [--save-prob]
    run_study.py predict --run-id RUN --tracking-uri URI --input CASES_DIR --out OUT_DIR
    run_study.py predict --study DIR --cell unimodal/segan-cat/flair/wt/seed0 --input CASE --out m.nii.gz
    run_study.py predict --checkpoint best.pt --flair F --t1 A --t1c B --t2 C --out mask.nii.gz
    run_study.py evaluate --pred mask.nii.gz --truth case_seg.nii.gz [--region tc] [--json]
    run_study.py evaluate --pred OUT_DIR --truth BRATS_DIR [--json] [--study DIR --cell NAME]
    run_study.py evaluate --pred mask.nii.gz --truth CASE_DIR [--lesion-wise]

MLflow is imported only for ``--run-id`` (and ``evaluate`` recording into a run). The
tracking URI is ``--tracking-uri``, else the ``--study`` folder's, else
``MLFLOW_TRACKING_URI``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from core.errors import CheckpointError, DataError, UserError
from core.vocabulary import MODALITIES, REGIONS, VOLUME_METRICS
from study.cli_help import subcommand

_NIFTI = (".nii.gz", ".nii")


def register(subparsers: Any) -> None:
    """Add ``predict`` and ``evaluate`` to run_study.py's subparsers."""
    p = subcommand(
        subparsers, "predict", "segment BraTS cases with a trained checkpoint (NIfTI in original space)",
        "Preprocess as training did (parameters from the checkpoint), predict "
        "slice by slice, write a binary uint8 NIfTI mask in the input's original grid.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="checkpoint file (e.g. a trial's best.pt "
                     "or an export's best.pt)")
    src.add_argument("--run-id", help="MLflow run id; uses the run's 'best_checkpoint' tag")
    src.add_argument("--cell", metavar="NAME", help="a cell of --study, e.g. "
                     "unimodal/segan-cat/flair/wt/seed0 (names as in report.json and cell.json): "
                     "its best checkpoint")
    _tracking_args(p, "--run-id")
    p.add_argument("--input", type=Path, help="a case folder (any BraTS naming) or a folder "
                   "of case folders (batch)")
    for m in MODALITIES:
        p.add_argument(f"--{m}", type=Path, metavar="FILE", help=f"explicit {m} NIfTI file")
    p.add_argument("--out", type=Path, required=True,
                   help="mask path (.nii.gz) for one case, or a folder (batch: <case_id>.nii.gz)")
    p.add_argument("--save-prob", action="store_true",
                   help="also write the probability map (<name>_prob.nii.gz, float32)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.set_defaults(func=run_predict)

    e = subcommand(
        subparsers, "evaluate", "dice, precision, sensitivity, specificity, HD95 of masks vs truth",
        "Compare predicted masks with ground truth (files or folders paired by "
        "case id). The truth may be a raw BraTS label map. HD95 in mm from the voxel spacing. "
        "With --run-id or --study DIR --cell NAME the result is also recorded in that MLflow run.")
    e.add_argument("--pred", type=Path, required=True, help="predicted mask file or folder")
    e.add_argument("--truth", type=Path, required=True,
                   help="truth mask/label file, one BraTS case folder (with a --pred file), "
                   "or a folder of masks / of BraTS case folders (with a --pred folder)")
    e.add_argument("--region", choices=REGIONS, default="wt",
                   help="tumour region (wt = whole tumour)")
    e.add_argument("--release", help="BraTS release of raw label maps, e.g. 2018 or 2023 "
                   "(default: from the case folder or the label values)")
    e.add_argument("--threshold", type=float, default=0.5,
                   help="threshold for probability maps")
    e.add_argument("--lesion-wise", action="store_true",
                   help="add the BraTS 2023+ lesion-wise dice and HD95 (truth lesions grouped "
                   "by a 3-voxel dilation, 374 mm and dice 0 per missed or false-positive "
                   "lesion, lesions <= 50 mm3 not scored)")
    e.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    run = e.add_mutually_exclusive_group()
    run.add_argument("--run-id", help="also record the result in this MLflow run "
                     "(metrics original_grid/<region>/…, artifact original_grid/<region>.json)")
    run.add_argument("--cell", metavar="NAME", help="also record the result in this cell's "
                     "MLflow run (a cell of --study)")
    _tracking_args(e, "--run-id/--cell")
    e.set_defaults(func=run_evaluate)


def _tracking_args(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--study", type=Path, metavar="DIR", help=f"study folder: its study.json "
                        f"gives the tracking URI for {what} (and the cells for --cell)")
    parser.add_argument("--tracking-uri", help=f"MLflow tracking URI for {what}, e.g. "
                        "sqlite:///mlflow.db or http://host:5000 (default: the --study "
                        "folder's, else the MLFLOW_TRACKING_URI environment variable)")


# ----------------------------------------------------------------------------- predict


def resolve_run_checkpoint(run_id: str, tracking_uri: str | None = None) -> Path:
    """Absolute checkpoint path stored in the MLflow run's ``best_checkpoint`` tag."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise UserError("--run-id needs MLflow (pip install mlflow); or pass --checkpoint") from None
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        run = client.get_run(run_id)
    except Exception as exc:  # noqa: BLE001 - unknown run / unreachable server
        where = tracking_uri or "the default tracking URI"
        raise UserError(f"MLflow run {run_id!r} not found at {where}: "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    path = run.data.tags.get("best_checkpoint")
    if not path:
        raise CheckpointError(f"MLflow run {run_id!r} has no 'best_checkpoint' tag "
                              f"(did the trial finish?); pass --checkpoint instead")
    return Path(path)


def run_uri(args: argparse.Namespace) -> str:
    """Tracking URI for a run of this command (``--tracking-uri``, ``--study``, environment)."""
    from study.cells import tracking_uri

    uri = tracking_uri(args.tracking_uri, args.study)
    if not uri:
        raise UserError("which MLflow store? pass --study DIR (a study folder), --tracking-uri "
                        "URI, or set MLFLOW_TRACKING_URI")
    return uri


def predict_checkpoint(args: argparse.Namespace) -> Path:
    """The checkpoint ``predict`` uses: ``--checkpoint``, ``--cell`` of ``--study``, or
    ``--run-id``'s ``best_checkpoint`` tag."""
    from study.cells import find_cell

    if args.checkpoint is not None:
        return Path(args.checkpoint)
    if args.cell is not None:
        if args.study is None:
            raise UserError("--cell needs --study DIR (the study folder that holds the cell)")
        cell = find_cell(args.study, args.cell)
        if not cell.checkpoint.is_file():
            raise CheckpointError(f"cell {cell.name}: no checkpoint at {cell.checkpoint} "
                                  f"(has it finished an epoch?)")
        print(f"cell {cell.name} ({cell.kind}, trial {cell.trial_id})", file=sys.stderr)
        return cell.checkpoint
    return resolve_run_checkpoint(args.run_id, run_uri(args))


def _is_case_folder(folder: Path) -> bool:
    """True if ``folder`` itself holds a case's image files (not a folder of cases)."""
    from core.data.brats import LABEL, classify_file

    for p in folder.iterdir():
        if p.is_file() and classify_file(p) not in (None, LABEL):
            return True
        if p.is_dir() and p.name.upper().startswith("VSD."):
            return True
    return False


def case_folders(root: Path) -> list[Path]:
    """Every case folder under ``root`` (any depth, any naming), sorted by path."""
    from core.data.brats import LABEL, classify_file, walk_files

    found = set()
    for p in walk_files(root):
        if classify_file(p) not in (None, LABEL):
            vsd = p.parent.name.upper().startswith("VSD.")
            found.add(p.parent.parent if vsd else p.parent)
    return sorted(found)


def _is_nifti_path(path: Path) -> bool:
    return path.name.lower().endswith(_NIFTI)


def _jobs(args: argparse.Namespace) -> tuple[list[tuple[str, Any, Path]], bool]:
    """([(label, case folder or {modality: file}, output path)], batch?) from the arguments."""
    explicit = {m: getattr(args, m) for m in MODALITIES if getattr(args, m)}
    if explicit and args.input is not None:
        raise UserError("give either --input or explicit --flair/--t1/--t1c/--t2 files, not both")
    if explicit:
        if not _is_nifti_path(args.out):
            raise UserError(f"--out {args.out}: with explicit files, give a .nii.gz path")
        return [(args.out.name, explicit, args.out)], False
    if args.input is None:
        raise UserError("give --input (case folder or folder of cases) or --flair/--t1/--t1c/--t2")
    src: Path = args.input
    if not src.is_dir():
        raise DataError(f"--input {src}: not a folder")
    if _is_case_folder(src):
        out = args.out if _is_nifti_path(args.out) else args.out / f"{src.name}.nii.gz"
        return [(src.name, src, out)], False
    if _is_nifti_path(args.out):
        raise UserError(f"--input {src} holds several cases: --out must be a folder, "
                        f"not {args.out.name}")
    cases = case_folders(src)
    if not cases:
        raise DataError(f"--input {src}: no BraTS case found (looked for *_flair.nii.gz, "
                        f"*-t2f.nii.gz, VSD.*.mha …)")
    names = [c.name for c in cases]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"--input {src}: case id(s) found twice: {', '.join(dupes)}")
    return [(c.name, c, args.out / f"{c.name}.nii.gz") for c in cases], True


def run_predict(args: argparse.Namespace) -> int:
    """Handler of ``predict``: 0 when every case was written, 1 if some failed (batch)."""
    from core.checkpoint import load_checkpoint
    from core.device import resolve_device
    from core.evaluation.cases import predict_to_file

    jobs, batch = _jobs(args)
    device = resolve_device(args.device)
    ckpt_path = predict_checkpoint(args)
    state = load_checkpoint(ckpt_path, map_location="cpu")
    print(f"checkpoint {ckpt_path} (inputs: {', '.join(state['modalities'])}); "
          f"device {device}; {len(jobs)} case(s)", file=sys.stderr)
    failed: list[str] = []
    for i, (name, case, out) in enumerate(jobs, 1):
        start = time.perf_counter()
        try:
            summary = predict_to_file(state, case, out, args.save_prob, device)
        except DataError as exc:
            if not batch:
                raise
            failed.append(name)
            print(f"[{i}/{len(jobs)}] {name}: error: {exc}", file=sys.stderr)
            continue
        ml = summary["volume_ml"]
        vol = f"{ml:.1f} ml" if math.isfinite(ml) else f"{summary['voxels']} voxels"
        print(f"[{i}/{len(jobs)}] {name} -> {out} ({vol}, {time.perf_counter() - start:.1f} s)",
              file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(jobs)} case(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------- evaluate


def _fmt(value: float, unit: str = "") -> str:
    if math.isnan(value):
        return "undefined (NaN: both masks empty)" if unit else "undefined (NaN)"
    if math.isinf(value):
        return "inf (one mask empty)"
    return f"{value:.2f}{unit}" if unit else f"{value:.4f}"


def format_pair(row: dict[str, Any]) -> str:
    """Human-readable lines for one pair's result."""
    lines = [f"pred   {row['pred']}", f"truth  {row['truth']}  (region {row['region']})"]
    for name in VOLUME_METRICS:
        lines.append(f"{name:<12} {_fmt(row[name])}")
    lines.append(f"{'hd95':<12} {_fmt(row['hd95'], ' mm')}")
    lines.append(f"voxels       pred {row['pred_voxels']}, truth {row['truth_voxels']}, "
                 f"tp {row['tp']}, fp {row['fp']}, fn {row['fn']}")
    if "lesion_dice" in row:
        lines.append(f"{'lesion dice':<12} {row['lesion_dice']:.4f}")
        lines.append(f"{'lesion hd95':<12} {row['lesion_hd95']:.2f} mm")
        lines.append(f"lesions      {row['n_lesions']} scored, {row['n_missed']} missed, "
                     f"{row['n_false_positive_lesions']} false-positive component(s), "
                     f"{row['n_small_lesions']} <= 50 mm3 not scored")
    return "\n".join(lines)


def format_summary(result: dict[str, Any]) -> str:
    """Summary table (mean, 95% CI, n, NaN/inf exclusions) plus unmatched cases."""
    lines = [f"{len(result['cases'])} case(s), region {result['region']}",
             f"{'metric':<12} {'mean':>9}  {'95% CI':<21} {'n':>4} {'NaN':>4} {'inf':>4}"]
    for name, s in result["summary"].items():
        ci = f"[{s['ci_low']:.4f}, {s['ci_high']:.4f}]"
        lines.append(f"{name:<12} {s['mean']:>9.4f}  {ci:<21} {s['n']:>4} "
                     f"{s['n_nan']:>4} {s['n_inf']:>4}")
    lines.append("NaN/inf values are left out of means: NaN = undefined (both masks empty, or "
                 "empty prediction for precision); hd95 inf = exactly one mask empty.")
    if "lesion_dice" in result["summary"]:
        s = result["summary"]
        lines.append(f"lesion-wise (BraTS 2023+, over all {len(result['cases'])} cases): "
                     f"{s['n_lesions']['total']} lesions, {s['n_missed']['total']} missed, "
                     f"{s['n_false_positive_lesions']['total']} false-positive components")
    for key, what in (("pred_only", "predictions without truth"),
                      ("truth_only", "truths without prediction")):
        if result[key]:
            lines.append(f"{len(result[key])} {what} (not evaluated): {', '.join(result[key])}")
    return "\n".join(lines)


def run_evaluate(args: argparse.Namespace) -> int:
    """Handler of ``evaluate``: one pair of files or two folders paired by case id."""
    from core.evaluation.mask_files import (
        case_label_file,
        evaluate_folders,
        evaluate_pair,
        json_safe,
    )

    pred, truth = Path(args.pred), Path(args.truth)
    for what, path in (("--pred", pred), ("--truth", truth)):
        if not path.exists():
            raise DataError(f"{what} {path}: not found")
    target = _evaluate_run(args)  # before the work: a wrong run fails fast
    lesion_wise = bool(getattr(args, "lesion_wise", False))
    if pred.is_file():
        release = args.release
        if truth.is_dir():  # one case folder: its label file (and release from its naming)
            truth, case_release = case_label_file(truth)
            release = release or case_release
            print(f"truth: {truth}", file=sys.stderr)
        result = evaluate_pair(pred, truth, args.region, release, args.threshold, lesion_wise)
        text = format_pair(result)
    elif truth.is_dir():
        progress = None if args.json else print
        result = evaluate_folders(pred, truth, args.region, args.release, args.threshold,
                                  progress=progress, lesion_wise=lesion_wise)
        text = format_summary(result)
    else:
        raise UserError(f"--pred {pred} is a folder: --truth {truth} must be a folder too")
    print(json.dumps(json_safe(result), indent=2) if args.json else text)
    if target is not None:
        from study.mlflow_results import log_evaluation

        names = log_evaluation(target[0], target[1], args.region, json_safe(result))
        print(f"recorded in MLflow run {target[1]}: {len(names)} metrics "
              f"(original_grid/{args.region}/…)", file=sys.stderr)
    return 0


def _evaluate_run(args: argparse.Namespace) -> tuple[str, str] | None:
    """(tracking URI, run id) that ``evaluate`` records into, or None."""
    if args.run_id is None and args.cell is None:
        if args.study is not None or args.tracking_uri is not None:
            raise UserError("--study/--tracking-uri name where to record the result: "
                            "add --run-id RUN or --cell NAME")
        return None
    uri = run_uri(args)
    if args.run_id is not None:
        return uri, args.run_id
    if args.study is None:
        raise UserError("--cell needs --study DIR (the study folder that holds the cell)")
    from study.cells import find_cell, read_study
    from study.mlflow_results import cell_run

    cell = find_cell(args.study, args.cell)
    run = cell_run(uri, str(read_study(args.study)["experiment"]), cell.trial_id)
    if run is None:
        raise UserError(f"cell {cell.name}: no MLflow run with trial_id {cell.trial_id} at {uri}")
    return uri, str(run.info.run_id)
