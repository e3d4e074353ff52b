"""The model card of an exported cell: ``model_card.json`` (every fact, machine-readable)
and ``model_card.md`` (the same for a reader), after nnU-Net's exported-model folders and
MONAI bundle metadata. Everything comes from the checkpoint (inputs, preprocessing,
training data, code version) and the cell's MLflow run (metrics with intervals)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.vocabulary import MODALITY_LABELS

CARD_FORMAT = "segan-study-model-card/1"
REGION_NAMES = {"wt": "whole tumour (WT: every label > 0)",
                "tc": "tumour core (TC: necrosis + enhancing tumour)",
                "et": "enhancing tumour (ET)"}
LICENCE = ("The weights were trained on BraTS data (or on synthetic BraTS-like data when the "
           "training store is synthetic): the data terms of the BraTS release used apply to "
           "them — research use, cite the BraTS papers of that release, no clinical use. The "
           "code that produced them is MIT-licensed (segan-study).")
INTERVAL = ("95% percentile bootstrap over the evaluation split's volumes (2000 resamples), "
            "scored in the preprocessed crop (centre window of each slice); `evaluate` on "
            "`predict` output scores the original grid instead")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _parameters(state: Mapping[str, Any]) -> int:
    return int(sum(t.numel() for k, t in state["segmentor"].items()
                   if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))))


def build_card(state: Mapping[str, Any], checkpoint: Path, cell: Mapping[str, Any],
               metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """The card of ``checkpoint`` (loaded as ``state``) for ``cell`` (name, trial id, kind,
    run id, experiment, tags) with the run's ``metrics`` (``mlflow_results.run_metrics``)."""
    from core.version import code_version

    cfg, prep = state["config"], dict(state.get("preprocessing") or {})
    mods = list(state["modalities"])
    region = cfg["data"].get("region", "wt")
    tags = dict(cell.get("tags") or {})
    transfer = cfg.get("transfer", {})
    return {
        "format": CARD_FORMAT,
        "cell": {k: cell.get(k) for k in ("name", "trial_id", "kind", "run_id", "experiment")},
        "task": f"binary segmentation of the {REGION_NAMES.get(region, region)} in brain MRI",
        "inputs": {
            "modalities": mods,
            "channel_order": [f"channel {i}: {MODALITY_LABELS.get(m, m)} ({m})"
                              for i, m in enumerate(mods)],
            "files": "one NIfTI volume per modality, co-registered, in the same grid: a BraTS "
                     "case folder (any naming: _flair/_t1/_t1ce/_t2 or -t2f/-t1n/-t1c/-t2w) "
                     "or explicit --flair/--t1/--t1c/--t2 files"},
        "output": {"mask": f"uint8 NIfTI, 1 = {region.upper()}, in the input's original grid "
                           f"(affine and header of the input)",
                   "threshold": cfg["train"].get("threshold", 0.5),
                   "test_time_augmentation": cfg["train"].get("tta", "none")},
        "preprocessing": {
            "crop": list(prep.get("crop", [])),
            "crop_axes": "X, Y, Z (nibabel order); centred; smaller axes zero-padded, never "
                         "resampled",
            "clip_percentiles": [prep.get("low_pct"), prep.get("high_pct")],
            "scaling": "per volume and modality: clip to the percentiles of the cropped "
                       "volume (background included), then scale linearly to [0, 1]",
            "slicing": "axial slices (Z, C, Y, X), predicted whole (padded to a multiple of "
                       "16) and put back into the original grid",
            "eval_window": state.get("eval_window")},
        "model": {"architecture": "SegAN segmentor (U-Net-like, sigmoid output), trained "
                                  "against a multiscale L1 critic",
                  "variant": tags.get("variant") or None,
                  "critic_input": cfg["model"].get("critic_input"),
                  "width": cfg["model"].get("width"), "parameters": _parameters(state)},
        "training": {"store_id": state.get("store_id"), "store": cfg["data"].get("store"),
                     "split_sizes": dict(state.get("store_splits") or {}),
                     "seed": cfg["train"].get("seed"),
                     "budget": (state.get("provenance") or {}).get("budget"),
                     "epochs": state.get("epoch"), "best_epoch": state.get("best_epoch"),
                     "val_best_dice": state.get("best_score"),
                     "transfer": {"source": transfer.get("source"), "freeze": transfer.get("freeze")}
                     if transfer.get("source") else None},
        "metrics": {**dict(metrics or {}), "interval": INTERVAL} if metrics else None,
        "code_version": state.get("code_version"),
        "exported_with": code_version(),
        "checkpoint": {"file": checkpoint.name, "sha256": sha256_of(checkpoint),
                       "bytes": checkpoint.stat().st_size, "format": state.get("format")},
        "licence": LICENCE,
        "usage": {
            "predict": f"python run_study.py predict --checkpoint {checkpoint.name} "
                       f"--input CASE_DIR --out mask.nii.gz",
            "predict_files": f"python run_study.py predict --checkpoint {checkpoint.name} "
                             + " ".join(f"--{m} {m.upper()}.nii.gz" for m in mods)
                             + " --out mask.nii.gz",
            "evaluate": "python run_study.py evaluate --pred mask.nii.gz --truth CASE_seg.nii.gz "
                        f"--region {region}",
            "needs": "this project (segan-study) installed: pip install -e . in its checkout"},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else ("—" if value is None else str(value))


def _metric_lines(metrics: Mapping[str, Any] | None) -> list[str]:
    if not metrics:
        return ["No MLflow run was found for this cell: no metrics."]
    lines = ["| split / inputs | metric | mean | 95% interval | volumes |", "|---|---|---|---|---|"]
    for where, numbers in (metrics.get("evaluation") or {}).items():
        for name, m in numbers.items():
            ci = (f"[{_fmt(m.get('ci_low'))}, {_fmt(m.get('ci_high'))}]"
                  if "ci_low" in m else "—")
            vols = f"{m['n_volumes']} ({m.get('n_excluded', 0)} excluded)" if "n_volumes" in m else ""
            mean = _fmt(m.get("mean")) if "count" not in m else f"{m['count']} (count)"
            lines.append(f"| {where} | {name} | {mean} | {ci} | {vols} |")
    lines += ["", f"Validation dice that selected this checkpoint: {_fmt(metrics.get('val_best_dice'))}"
              f" (epoch {_fmt(metrics.get('best_epoch'))}). Intervals: {metrics.get('interval')}."]
    return lines


def card_markdown(card: Mapping[str, Any]) -> str:
    """``model_card.md``: the card for a reader."""
    cell, inputs, prep, train = card["cell"], card["inputs"], card["preprocessing"], card["training"]
    model, usage, ckpt = card["model"], card["usage"], card["checkpoint"]
    lines = [
        f"# Model card: {cell['name']}", "", card["task"] + ".", "",
        "## How to run it", "", "```bash", usage["predict"], usage["predict_files"],
        usage["evaluate"], "```", "", f"Needs {usage['needs']}.", "",
        "## Inputs (in this order)", "", *[f"- {c}" for c in inputs["channel_order"]], "",
        inputs["files"] + ".", "",
        "## Preprocessing (applied by `predict`, from the checkpoint)", "",
        f"- crop {'×'.join(map(str, prep['crop']))} ({prep['crop_axes']})",
        f"- clip to the {prep['clip_percentiles'][0]:g}–{prep['clip_percentiles'][1]:g} "
        f"percentiles; {prep['scaling']}",
        f"- {prep['slicing']}", "",
        "## Output", "", f"{card['output']['mask']}; threshold {card['output']['threshold']}; "
        f"test-time augmentation {card['output']['test_time_augmentation']}.", "",
        "## Training", "",
        f"- store id `{train['store_id']}` ({train['store']})",
        f"- split sizes (cases): {', '.join(f'{k} {v}' for k, v in train['split_sizes'].items())}",
        f"- seed {train['seed']}, budget {train['budget']}, {train['epochs']} epochs, best epoch "
        f"{train['best_epoch']} (validation dice {_fmt(train['val_best_dice'])})",
        *([f"- transfer from `{train['transfer']['source']}`, freeze {train['transfer']['freeze']}"]
          if train.get("transfer") else []),
        f"- model: {model['architecture']}; variant {model['variant']}, width {model['width']}, "
        f"{model['parameters']:,} parameters", "",
        "## Metrics", "", *_metric_lines(card.get("metrics")), "",
        "## Provenance", "",
        f"- cell `{cell['name']}` (trial {cell['trial_id']}, MLflow run {cell['run_id']}, "
        f"experiment {cell['experiment']})",
        f"- code version {card['code_version']} (exported with {card['exported_with']})",
        f"- `{ckpt['file']}`: sha256 {ckpt['sha256']}, {ckpt['bytes']:,} bytes", "",
        "## Licence", "", card["licence"], "",
    ]
    return "\n".join(lines)
