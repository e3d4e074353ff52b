"""Data-path benchmark: prepare cost, store size, random slice throughput vs NIfTI.

    python bench/data.py [--samples DIR] [--synthetic N] [--batches 20] [--json OUT]

Builds stores from the real BraTS samples (../shared/data/brats-samples; plus N synthetic
240x240x155 cases with --synthetic) at the paper's crop 180x180x128, in several
dtype/compression variants, and measures:

* prepare seconds per case (1 and 2 worker processes),
* store size vs the source .nii.gz files,
* random-access batches of 64 slices (4 modalities, random 160x160 crops) per second:
  direct zarr reads, SliceDataset(cache=False) in-process, and a DataLoader with 2 workers;
  and the same batches read from the original NIfTI files (percentiles precomputed, so
  the baseline only pays for reading);
* N concurrent trials on this node (``--trials 1,2``), each a process holding the cached
  training split as a trial does, with a private copy each or the node's one shared copy
  (``core.data.shared_cache``): seconds to get the split, slices/s per trial, and the
  host memory of all of them (sum of PSS: shared pages counted once).

Files are in the page cache after the first pass, so this measures decode cost, not disk.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.data.brats import discover_cases  # noqa: E402
from core.data.prepare import prepare  # noqa: E402
from core.data.preprocess import PreprocessParams, preprocess_case  # noqa: E402
from core.data.store import BratsStore, StorageSpec, write_store  # noqa: E402
from core.vocabulary import MODALITIES  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO.parent / "shared" / "data" / "brats-samples"
CROP, BATCH = 160, 64
VARIANTS = [
    StorageSpec("float32", "none"),
    StorageSpec("float16", "none"),
    StorageSpec("float16", "blosc-lz4", 5),
    StorageSpec("float16", "blosc-zstd", 3),
    StorageSpec("float16", "zstd", 3),
    StorageSpec("float32", "blosc-lz4", 5),
]


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(
            line.split(":", 1)[1].strip()
            for line in out.splitlines()
            if line.startswith("Model name")
        )
    except (OSError, subprocess.SubprocessError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import torch
    import zarr

    return (
        f"{model}, {os.cpu_count()} cores, {mem:.0f} GiB RAM; Python "
        f"{platform.python_version()}, numpy {np.__version__}, zarr {zarr.__version__}, "
        f"torch {torch.__version__}; load average {os.getloadavg()[0]:.1f} at start"
    )


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def source_root(work: Path, samples: Path, n_synthetic: int) -> Path:
    """A folder linking the real samples (and N full-size synthetic cases)."""
    root = work / "sources"
    for case in samples.glob("*/*"):
        if case.is_dir():
            (root / case.name).mkdir(parents=True)
            for f in case.iterdir():
                os.symlink(f, root / case.name / f.name)
    if n_synthetic:
        from core.data.synthetic import write_synthetic_brats

        t = time.perf_counter()
        write_synthetic_brats(root / "synthetic", n_cases=n_synthetic, shape=(240, 240, 155))
        print(
            f"generated {n_synthetic} synthetic 240x240x155 cases in "
            f"{time.perf_counter() - t:.0f} s"
        )
    return root


def bench_prepare(root: Path, work: Path) -> tuple[Path, dict]:
    results = {}
    params = PreprocessParams()
    for workers in (1, 2):
        out = work / f"prep{workers}.zarr"
        t = time.perf_counter()
        res = prepare(root, out, params, val_fraction=0.0, workers=workers, log=lambda _: None)
        results[workers] = (time.perf_counter() - t) / res.written
        if workers == 2:
            shutil.rmtree(out)
    return work / "prep1.zarr", results


def random_items(store: BratsStore, n: int, rng: random.Random) -> list[tuple[str, int]]:
    ids = store.case_ids()
    return [(c, rng.randrange(store.num_slices(c))) for c in rng.choices(ids, k=n)]


def bench_direct(location: Path, batches: int) -> float:
    """Slices/s reading (case, z) chunks straight from zarr and cropping, one process."""
    store, rng = BratsStore(location), random.Random(0)
    h, w = store.slice_shape()
    t = time.perf_counter()
    for _ in range(batches):
        out = np.empty((BATCH, 4, CROP, CROP), np.float32)
        for k, (cid, z) in enumerate(random_items(store, BATCH, rng)):
            y, x = rng.randrange(h - CROP + 1), rng.randrange(w - CROP + 1)
            out[k] = store.read_image(cid, MODALITIES, z, dtype=None)[:, y : y + CROP, x : x + CROP]
            store.read_labels(cid, z)
    return batches * BATCH / (time.perf_counter() - t)


def bench_dataset(location: Path, batches: int, workers: int) -> float:
    """Slices/s through SliceDataset(cache=False), random order, in-process or a DataLoader."""
    import torch
    from torch.utils.data import DataLoader

    from core.data.dataset import SliceDataset

    torch.set_num_threads(1)
    ds = SliceDataset(location, "train", MODALITIES, CROP, train=True, cache=False)
    loader = DataLoader(
        ds,
        batch_size=BATCH,
        shuffle=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(0),
    )
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    t, n = time.perf_counter(), 0
    for _ in range(batches):
        try:
            image, _mask = next(it)
        except StopIteration:
            it = iter(loader)
            image, _mask = next(it)
        n += len(image)
    return n / (time.perf_counter() - t)


def trial_worker(location: Path, shared: bool, seconds: float) -> None:
    """One trial's data path (in its own process): cache the split, then cut random batches
    for ``seconds``; prints one JSON line."""
    import torch

    from core.data.dataset import SliceDataset

    torch.set_num_threads(1)
    t = time.perf_counter()
    ds = SliceDataset(location, "train", MODALITIES, CROP, train=True, cache=True, shared=shared)
    load = time.perf_counter() - t
    rng, n, t = random.Random(os.getpid()), 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        torch.stack([ds[rng.randrange(len(ds))][0] for _ in range(BATCH)])
        n += BATCH
    rate = n / (time.perf_counter() - t)
    rollup = Path("/proc/self/smaps_rollup")
    pss = next((int(line.split()[1]) / 1024 for line in rollup.read_text().splitlines()
                if line.startswith("Pss:")), float("nan")) if rollup.exists() else float("nan")
    print(json.dumps({"load_s": load, "slices_per_s": rate, "shared": ds.shared, "pss_mib": pss,
                      "split_mib": ds.cached_bytes / 2**20}), flush=True)


def bench_trials(location: Path, counts: list[int], seconds: float, work: Path) -> list[dict]:
    """N trial processes at once, private copies vs the shared copy (a fresh shared folder
    per run, so the first trial pays for writing it)."""
    rows = []
    for shared in (False, True):
        for n in counts:
            folder = work / "shm"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            env = {**os.environ, "SEGAN_SHARED_CACHE": str(folder)}
            cmd = [sys.executable, __file__, "--worker", str(location), "--seconds", str(seconds)]
            procs = [subprocess.Popen(cmd + (["--shared"] if shared else []), env=env,
                                      stdout=subprocess.PIPE, text=True) for _ in range(n)]
            out = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
            row = {"trials": n, "shared": all(o["shared"] for o in out),
                   "load_s": max(o["load_s"] for o in out),
                   "per_trial": sum(o["slices_per_s"] for o in out) / n,
                   "total": sum(o["slices_per_s"] for o in out),
                   "pss_mib": sum(o["pss_mib"] for o in out), "split_mib": out[0]["split_mib"]}
            rows.append(row)
            print(f"  {n} trial(s), {'shared copy ' if row['shared'] else 'private copies'}: "
                  f"split {row['split_mib']:.0f} MiB ready in {row['load_s']:.1f} s, "
                  f"{row['per_trial']:.0f} slices/s per trial ({row['total']:.0f} in all), "
                  f"host memory (sum PSS) {row['pss_mib']:.0f} MiB", flush=True)
    return rows


def bench_nifti(root: Path, store: BratsStore, n_slices: int) -> float:
    """Slices/s reading the same kind of random slices from the source .nii.gz files."""
    import nibabel as nib

    cases = {c.case_id: c for c in discover_cases(root)[0]}
    rng = random.Random(0)
    t = time.perf_counter()
    for cid, z in random_items(store, n_slices, rng):
        info, case = store.case_info(cid), cases[cid]
        x0, y0, z0 = info["crop_offsets"]
        zz = z0 + z
        channels = []
        for m in MODALITIES:
            lo, hi = info["percentiles"][m]
            sl = np.asarray(nib.load(case.images[m]).dataobj[..., zz], dtype=np.float32)
            sl = sl[x0 : x0 + 180, y0 : y0 + 180].T
            channels.append(np.clip((sl - lo) / (hi - lo), 0, 1))
        np.asarray(nib.load(case.label).dataobj[..., zz])  # type: ignore[arg-type]
        y, x = rng.randrange(180 - CROP + 1), rng.randrange(180 - CROP + 1)
        np.stack(channels)[:, y : y + CROP, x : x + CROP]
    return n_slices / (time.perf_counter() - t)


def bench_variants(root: Path, work: Path, batches: int, rows: list[dict]) -> None:
    cases = discover_cases(root)[0]
    pre = [preprocess_case(c, PreprocessParams()) for c in cases]
    base = BratsStore(work / "prep1.zarr").manifest
    for spec in VARIANTS:
        out = work / f"{spec.image_dtype}-{spec.codec}.zarr"
        t = time.perf_counter()
        write_store(out, pre, dict(base, cases=base["cases"]), spec)
        write_s = (time.perf_counter() - t) / len(pre)
        rows.append(
            {
                "variant": f"{spec.image_dtype} {spec.codec}",
                "bytes_per_case": dir_bytes(out) / len(pre),
                "write_s_per_case": write_s,
                "direct": bench_direct(out, batches),
                "dataset": bench_dataset(out, batches, 0),
            }
        )
        print(
            f"  {rows[-1]['variant']:<20} {rows[-1]['bytes_per_case'] / 2**20:7.1f} MiB/case "
            f"write {write_s:5.2f} s/case   direct {rows[-1]['direct']:6.0f} slices/s   "
            f"SliceDataset {rows[-1]['dataset']:6.0f} slices/s",
            flush=True,
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=Path, default=SAMPLES)
    ap.add_argument("--synthetic", type=int, default=0, help="add N synthetic 240^3-ish cases")
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    ap.add_argument("--trials", default="1,2", help="concurrent trial processes, e.g. 1,2,4")
    ap.add_argument("--seconds", type=float, default=5.0, help="seconds each trial cuts batches")
    ap.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--shared", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        trial_worker(args.worker, args.shared, args.seconds)
        return 0
    if not args.samples.is_dir():
        print(f"samples not found: {args.samples}", file=sys.stderr)
        return 1
    print("machine:", machine())
    report: dict = {"machine": machine()}
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        work = Path(tmp)
        root = source_root(work, args.samples, args.synthetic)
        raw = sum(p.stat().st_size for p in root.rglob("*.nii.gz"))
        location, prep = bench_prepare(root, work)
        store = BratsStore(location)
        n_cases = len(store.case_ids())
        report.update(cases=n_cases, prepare_s_per_case=prep, raw_bytes_per_case=raw / n_cases)
        print(
            f"{n_cases} cases, crop 180x180x128; source .nii.gz {raw / n_cases / 2**20:.1f} "
            f"MiB/case (full 240x240x155 volumes)"
        )
        print(f"prepare: {prep[1]:.2f} s/case with 1 worker, {prep[2]:.2f} s/case with 2")
        print(f"random batches of {BATCH} slices, 4 modalities, {CROP}x{CROP} random crops:")
        rows: list[dict] = []
        bench_variants(root, work, args.batches, rows)
        report["variants"] = rows
        loader = bench_dataset(location, args.batches, 2)
        nifti = bench_nifti(root, store, 32)
        layout = store.manifest["layout"]
        default = next(
            r for r in rows if r["variant"] == f"{layout['image_dtype']} {layout['codec']}"
        )
        report.update(dataloader_2_workers=loader, nifti=nifti, default=layout)
        print(f"concurrent trials, each caching the training split ({args.seconds:g} s of "
              "random batches each):")
        report["trials"] = bench_trials(location, [int(n) for n in args.trials.split(",")],
                                        args.seconds, work)
        print(f"NIfTI baseline (same random slices from the .nii.gz files): {nifti:.1f} slices/s")
        print(
            f"default store ({default['variant']}): SliceDataset in-process "
            f"{default['dataset']:.0f} slices/s = {default['dataset'] / nifti:.0f}x NIfTI; "
            f"DataLoader(num_workers=2) {loader:.0f} slices/s = {loader / nifti:.0f}x NIfTI"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
