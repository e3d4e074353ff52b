"""Synthetic BraTS-like cases: the embedded default dataset.

Each case is a skull-stripped, brain-shaped head (white matter, grey matter, ventricles and
a CSF rim, with an irregular boundary) holding a tumour of necrotic core (label 1),
enhancing rim (4) and oedema (2), written as real NIfTI files in BraTS 2018 naming::

    <out>/HGG/Brats18_TCIA01_100_1/Brats18_TCIA01_100_1_flair.nii.gz  (+ _t1 _t1ce _t2 _seg)

Contrast follows real MRI, so the paper's modality ordering shows up: oedema and tumour are
clearly bright on FLAIR (above every normal tissue) and on T2 (where CSF is bright too),
the enhancing rim is bright on T1c, and on T1 the tumour is only slightly darker than white
matter, inside the grey-matter range -- a weak, overlapping contrast. Partial-volume blur,
Rician noise and a smooth bias field are added. Low-grade cases have no enhancing rim.
Every case is a pure function of (seed, case index). Some cases keep their tumour in the
lowest slices, outside the default crop, so empty masks occur.
"""

from __future__ import annotations

import fcntl
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage

from core.atomic import atomic_path
from core.errors import DataError

SYNTHETIC_VERSION = 2  # bump when the generator changes: cached stores rebuild
SYNTHETIC_CROP = (80, 80, 32)
# Fractions giving 16 train / 4 val / 4 test of 24 cases (val is a share of non-test cases).
SYNTHETIC_VAL_FRACTION = 0.2
SYNTHETIC_TEST_FRACTION = 1 / 6
_INSTITUTIONS = ("TCIA01", "CBICA", "2013", "TCIA02")
_MODALITY_FILES = {"flair": "flair", "t1": "t1", "t1c": "t1ce", "t2": "t2"}

# Mean intensity per tissue and modality (arbitrary units, ~[0, 1]).
_TISSUES = ("csf", "gm", "wm", "necrosis", "enhancing", "oedema")
# fmt: off
_CONTRAST = {
    #         csf   gm    wm   necr  enh   oedema
    "flair": (0.15, 0.50, 0.42, 0.75, 0.85, 0.95),
    "t1":    (0.25, 0.55, 0.75, 0.50, 0.60, 0.64),
    "t1c":   (0.25, 0.55, 0.73, 0.30, 1.00, 0.58),
    "t2":    (0.95, 0.60, 0.45, 0.90, 0.70, 0.85),
}
# fmt: on
_NOISE = 0.045
_LABEL_OF = {"necrosis": 1, "oedema": 2, "enhancing": 4}


def case_name(index: int) -> tuple[str, str, str]:
    """(case id, grade, institution) of case ``index`` (institutions and grades cycle)."""
    inst = _INSTITUTIONS[index % len(_INSTITUTIONS)]
    grade = "LGG" if index % 3 == 2 else "HGG"
    if inst == "CBICA":
        code = "A" + chr(65 + (index // 26) % 26) + chr(65 + index % 26)
        return f"Brats18_CBICA_{code}_1", grade, inst
    if inst == "2013":
        return f"Brats18_2013_{index}_1", grade, inst
    return f"Brats18_{inst}_{100 + index:03d}_1", grade, inst


def _kernel(n: int, cells: int) -> np.ndarray:
    """(n, cells) Gaussian interpolation weights from a coarse grid to n points."""
    pos = np.linspace(0, cells - 1, n)[:, None] - np.arange(cells)[None, :]
    weights = np.exp(-0.5 * pos**2)
    return (weights / weights.sum(1, keepdims=True)).astype(np.float32)


def _smooth_field(
    rng: np.random.Generator, shape: tuple[int, int, int], cells: int = 5
) -> np.ndarray:
    """Low-frequency random field, zero mean and unit std, float32 (X, Y, Z).

    Random values on a ``cells``-per-axis grid spread by separable Gaussian kernels: three
    small matrix products instead of a 3D filter.
    """
    nx, ny, nz = shape
    coarse = rng.standard_normal((cells,) * 3).astype(np.float32)
    kx, ky, kz = (_kernel(n, cells) for n in shape)
    field = np.einsum("xa,yb,abc->xyc", kx, ky, coarse).reshape(nx * ny, cells) @ kz.T
    field = field.reshape(shape)
    field -= field.mean()
    return field / (field.std() + 1e-8)


def _grid(shape: tuple[int, int, int], centre, radii) -> np.ndarray:
    """Normalised ellipsoidal radius at every voxel: float32 (X, Y, Z)."""
    axes = [
        (np.arange(n, dtype=np.float32) - c) / r
        for n, c, r in zip(shape, centre, radii, strict=True)
    ]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    return np.sqrt(x**2 + y**2 + z**2)


def _anatomy(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """Tissue map, int8 (X, Y, Z): -1 background, else an index into _TISSUES (0..2)."""
    centre = [n / 2 - 0.5 + rng.normal(0, 1.0) for n in shape]
    radii = [
        n * f * rng.uniform(0.93, 1.03) for n, f in zip(shape, (0.40, 0.45, 0.42), strict=True)
    ]
    r = _grid(shape, centre, radii) * (1 + 0.06 * _smooth_field(rng, shape))
    tissue = np.full(shape, -1, dtype=np.int8)
    tissue[r < 1.0] = 0  # CSF rim
    tissue[r < 0.93] = 1  # grey matter
    wm = r * (1 + 0.10 * _smooth_field(rng, shape, 7)) < 0.70
    tissue[wm] = 2
    for side in (-1, 1):  # lateral ventricles
        vc = [centre[0] + side * radii[0] * 0.17, centre[1] - radii[1] * 0.05, centre[2]]
        vr = [radii[0] * 0.09, radii[1] * 0.30, radii[2] * 0.22]
        tissue[_grid(shape, vc, vr) < 1.0] = 0
    return tissue


def _tumour(rng, tissue: np.ndarray, grade: str, hidden_below: int | None) -> np.ndarray:
    """BraTS label map uint8 (X, Y, Z) with labels 1, 2, 4 inside the brain.

    ``hidden_below`` = z: the tumour stays in slices < z (outside the crop)."""
    shape = tissue.shape
    brain = tissue >= 0
    coords = np.argwhere(brain)
    if hidden_below is not None:
        coords = coords[coords[:, 2] < hidden_below - 1]
        radius = rng.uniform(2.5, 3.5)
        if len(coords) == 0:  # no brain below the crop: a tumour-free case
            return np.zeros(shape, dtype=np.uint8)
    else:
        middle = _grid(shape, coords.mean(0), [n * 0.25 for n in shape])
        coords = coords[middle[tuple(coords.T)] < 1.0]
        size = (0.055, 0.115) if grade == "HGG" else (0.045, 0.085)
        radius = rng.uniform(*size) * shape[0]
    centre = coords[rng.integers(len(coords))].astype(float)
    # Flatter along z, so a tumour spans a minority of the slices, as in real volumes.
    radii = [radius * rng.uniform(0.8, 1.2), radius * rng.uniform(0.8, 1.2)]
    radii.append(radius * rng.uniform(0.55, 0.75))
    d = _grid(shape, centre, radii) * (1 + 0.15 * _smooth_field(rng, shape, 6))
    oedema_scale = rng.uniform(1.5, 2.1)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[d < oedema_scale] = 2
    if grade == "HGG":
        labels[d < 1.0] = 4
        labels[d < rng.uniform(0.35, 0.65)] = 1
    else:  # low grade: non-enhancing core only
        labels[d < 1.0] = 1
    labels[~brain] = 0
    if hidden_below is not None:
        labels[:, :, hidden_below:] = 0
    return labels


def _tissue_index(tissue: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Index into _TISSUES per voxel, int64 (X, Y, Z); background maps to 0 (masked later)."""
    index = np.clip(tissue, 0, None).astype(np.int64)
    for name, label in _LABEL_OF.items():
        index[labels == label] = _TISSUES.index(name)
    return index


def _intensities(
    rng: np.random.Generator,
    index: np.ndarray,
    brain: np.ndarray,
    texture: np.ndarray,
    modality: str,
) -> np.ndarray:
    """One modality as float32 (X, Y, Z), 0 outside the brain."""
    values = np.array(_CONTRAST[modality], dtype=np.float32)
    image = values[index]
    image[~brain] = 0
    image = ndimage.gaussian_filter(image, 0.7)  # partial-volume blur
    image *= texture  # tissue texture, shared by all modalities (it is anatomy)
    noise = rng.standard_normal((2, *index.shape), dtype=np.float32) * np.float32(_NOISE)
    image = np.sqrt((image + noise[0]) ** 2 + noise[1] ** 2)  # Rician magnitude
    image *= np.exp(0.12 * _smooth_field(rng, index.shape, 3))  # bias field
    image[~brain] = 0
    return image


def _write_case(out_dir: Path, index: int, shape: tuple[int, int, int], seed: int) -> None:
    import nibabel as nib

    rng = np.random.default_rng([seed, index])
    case_id, grade, _ = case_name(index)
    crop_z = (shape[2] - SYNTHETIC_CROP[2]) // 2
    hidden = crop_z if index % 12 == 5 and crop_z >= 6 else None
    tissue = _anatomy(rng, shape)
    labels = _tumour(rng, tissue, grade, hidden)
    tissue_index, brain = _tissue_index(tissue, labels), tissue >= 0
    texture = 1 + 0.04 * _smooth_field(rng, shape, 12)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[1, 3] = shape[1] - 1
    folder = out_dir / grade / case_id
    folder.mkdir(parents=True)
    for modality, suffix in _MODALITY_FILES.items():
        image = _intensities(rng, tissue_index, brain, texture, modality)
        image *= rng.uniform(600, 1500)  # arbitrary scanner scale, as in real data
        data = np.clip(np.rint(image), 0, np.iinfo(np.int16).max).astype(np.int16)
        nib.save(nib.Nifti1Image(data, affine), str(folder / f"{case_id}_{suffix}.nii.gz"))
    nib.save(nib.Nifti1Image(labels, affine), str(folder / f"{case_id}_seg.nii.gz"))


def write_synthetic_brats(
    out_dir: Path, n_cases: int = 24, shape: tuple[int, int, int] = (96, 96, 48), seed: int = 0
) -> Path:
    """Write ``n_cases`` synthetic cases under ``out_dir`` (must not exist); return it.

    Written to a temporary folder beside ``out_dir`` and renamed when complete.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise DataError(f"{out_dir} already exists; synthetic data is written to a new folder")
    if n_cases < 1 or min(shape) < 16:
        raise DataError(f"need n_cases >= 1 and every shape axis >= 16, got {n_cases}, {shape}")
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for index in range(n_cases):
            _write_case(tmp, index, tuple(int(s) for s in shape), seed)  # type: ignore[arg-type]
    return out_dir


def synthetic_raw_dir(cache_dir: Path, n_cases: int = 24, seed: int = 0) -> Path:
    """Where ensure_synthetic_store keeps the NIfTI cases it generated in ``cache_dir``."""
    return Path(cache_dir).resolve() / f"synthetic_nifti_n{n_cases}_s{seed}_v{SYNTHETIC_VERSION}"


def ensure_synthetic_store(
    cache_dir: Path, n_cases: int = 24, seed: int = 0, log: Callable[[str], None] | None = None
) -> Path:
    """Return ``<cache_dir>/synthetic.zarr``, generating the NIfTI cases and running the
    normal `prepare` path (crop 80x80x32, 16/4/4 split for 24 cases) only if needed.

    Safe to call from several processes at once (a file lock serialises them).
    """
    from core.data.prepare import prepare
    from core.data.preprocess import PreprocessParams
    from core.data.store import BratsStore, is_store

    cache_dir = Path(cache_dir).resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    out = cache_dir / "synthetic.zarr"
    wanted = {"n_cases": n_cases, "seed": seed, "version": SYNTHETIC_VERSION}
    with open(cache_dir / ".synthetic.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_store(out) and BratsStore(out).manifest.get("synthetic") == wanted:
            return out
        raw = synthetic_raw_dir(cache_dir, n_cases, seed)
        if not raw.exists():
            write_synthetic_brats(raw, n_cases=n_cases, seed=seed)
        prepare(
            raw,
            out,
            PreprocessParams(crop=SYNTHETIC_CROP),
            val_fraction=SYNTHETIC_VAL_FRACTION,
            test_fraction=SYNTHETIC_TEST_FRACTION,
            seed=seed,
            workers=1,
            force=True,
            extra_manifest={"synthetic": wanted},
            log=log or (lambda _msg: None),
        )
    return out
