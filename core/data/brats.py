"""Find BraTS cases on disk, whatever the release's naming, and load their volumes.

Supported layouts (searched however deeply nested under the root):

* BraTS 2015 ``.mha`` (needs the ``mha`` extra, SimpleITK)::

      HGG/brats_2013_pat0001_1/VSD.Brain.XX.O.MR_Flair.54512/VSD.Brain.XX.O.MR_Flair.54512.mha
      ... MR_T1, MR_T1c, MR_T2, and VSD.Brain_3more.XX.O.OT.54517/...OT...mha (labels 0-4)

* BraTS 2017-2021 NIfTI: ``<id>/<id>_flair.nii.gz``, ``_t1``, ``_t1ce``, ``_t2``, ``_seg``
  (labels 0, 1, 2, 4).
* BraTS 2023+ NIfTI: ``<id>/<id>-t2f.nii.gz``, ``-t1n``, ``-t1c``, ``-t2w``, ``-seg``
  (labels 0, 1, 2, 3).

Modality names are normalised to ``MODALITIES``. The case id is the case folder's name.
Grade comes from an ``HGG``/``LGG`` ancestor folder or a grades CSV; the institution from
the case name where the release encodes it (``Brats18_TCIA01_…`` -> ``TCIA01``); both are
``"unknown"`` otherwise.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import DataError
from core.vocabulary import LABEL, MHA_PATTERNS, MODALITIES, NIFTI_SUFFIXES

UNKNOWN = "unknown"
MHA_HINT = 'reading BraTS 2015 .mha files needs SimpleITK: pip install -e ".[mha]"'
_NIFTI_SUFFIXES = tuple(pair for family in NIFTI_SUFFIXES.values() for pair in family)
_NIFTI_EXTS = (".nii.gz", ".nii")
_CASE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case. ``images`` maps canonical modality -> file; ``label`` may be None."""

    case_id: str
    release: str
    grade: str
    institution: str
    images: dict[str, Path]
    label: Path | None


class UnknownNameError(DataError, ValueError):
    """An unknown modality, region or split name; the message lists the valid ones."""


def check_names(kind: str, values: Sequence[str], valid: Sequence[str]) -> None:
    """Raise UnknownNameError if any of ``values`` is not in ``valid`` (or none given)."""
    if isinstance(values, str):
        values = [values]
    bad = [v for v in values if v not in valid]
    if bad or not values:
        shown = ", ".join(repr(v) for v in bad) if bad else "none"
        raise UnknownNameError(f"unknown {kind} {shown}; valid: {', '.join(valid)}")


def _strip_ext(name: str) -> str | None:
    lower = name.lower()
    for ext in _NIFTI_EXTS:
        if lower.endswith(ext):
            return lower[: -len(ext)]
    return None


def classify_file(path: Path) -> str | None:
    """Return the canonical modality (or ``"seg"``) a file holds, or None if it is not one."""
    name = path.name
    if name.lower().endswith(".mha"):
        for pattern, kind in MHA_PATTERNS:
            if pattern.search(name):
                return kind
        return None
    stem = _strip_ext(name)
    if stem is None:
        return None
    for suffix, kind in _NIFTI_SUFFIXES:
        if stem.endswith(suffix):
            return kind
    return None


def _case_dir_of(path: Path) -> Path:
    # BraTS 2015 keeps each .mha in its own "VSD.…" folder inside the case folder.
    if path.suffix.lower() == ".mha" and path.parent.name.upper().startswith("VSD."):
        return path.parent.parent
    return path.parent


def detect_release(case_id: str, files: list[Path]) -> str:
    """Best guess of the BraTS release from file naming and case id (e.g. "2018", "2023")."""
    if any(f.name.lower().endswith(".mha") for f in files):
        return "2015"
    stems = [_strip_ext(f.name) or "" for f in files]
    if any(s.endswith(("-t2f", "-t1n", "-t2w")) for s in stems):
        return "2023"
    m = re.match(r"^brats_?(\d{2,4})", case_id, re.I)
    if m:
        year = int(m.group(1))
        year = year + 2000 if year < 100 else year
        if 2012 <= year <= 2022:
            return str(year)
    return "2017-2021"


def institution_from_id(case_id: str) -> str:
    """Institution encoded in the case name, or "unknown".

    ``Brats18_TCIA01_0001_1`` -> ``TCIA01``; ``BraTS19_CBICA_AAB_1`` -> ``CBICA``;
    ``Brats18_2013_3_1`` -> ``2013``; ``brats_tcia_pat101_1`` (2015) -> ``tcia``.
    Releases that dropped it (``BraTS20_Training_001``, ``BraTS2021_00000``,
    ``BraTS-GLI-00000-000``) give ``unknown``.
    """
    parts = case_id.split("_")
    if len(parts) < 3 or not re.match(r"^brats\d{0,2}$", parts[0], re.I):
        return UNKNOWN
    token = parts[1]
    if token.lower() in ("training", "validation", "testing"):
        return UNKNOWN
    return token


def grade_from_path(case_dir: Path) -> str:
    """``HGG`` or ``LGG`` from the nearest such ancestor folder name, else "unknown"."""
    for part in reversed(case_dir.parts[:-1]):
        if part.upper() in ("HGG", "LGG"):
            return part.upper()
    return UNKNOWN


def read_grades_csv(path: Path) -> dict[str, str]:
    """Map every id found in a CSV row to that row's grade.

    The CSV needs a header with a column whose name contains "grade" (e.g. BraTS'
    ``name_mapping.csv``); every other cell of the row is taken as an id of the case.
    """
    try:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
    except OSError as exc:
        raise DataError(f"cannot read grades CSV {path}: {exc}") from exc
    if not rows:
        raise DataError(f"grades CSV {path} is empty")
    header = [h.strip().lower() for h in rows[0]]
    grade_cols = [i for i, h in enumerate(header) if "grade" in h]
    if not grade_cols:
        raise DataError(f"grades CSV {path} has no column named like 'grade' (header: {rows[0]})")
    gcol = grade_cols[0]
    grades: dict[str, str] = {}
    for row in rows[1:]:
        if len(row) <= gcol or not row[gcol].strip():
            continue
        grade = row[gcol].strip().upper()
        for i, cell in enumerate(row):
            if i != gcol and cell.strip():
                grades[cell.strip()] = grade
    return grades


def _assemble(case_dir: Path, files: list[Path], problems: list[str]) -> CaseFiles:
    """Build CaseFiles from a case folder's candidate files, noting ambiguities in problems."""
    case_id = case_dir.name
    found: dict[str, list[Path]] = {}
    for f in sorted(files):
        kind = classify_file(f)
        if kind is not None:
            found.setdefault(kind, []).append(f)
    for kind, paths in found.items():
        if len(paths) > 1:
            problems.append(f"{case_id}: several {kind} files: {', '.join(p.name for p in paths)}")
    images = {m: found[m][0] for m in MODALITIES if m in found}
    label = found[LABEL][0] if LABEL in found else None
    return CaseFiles(
        case_id=case_id,
        release=detect_release(case_id, files),
        grade=grade_from_path(case_dir),
        institution=institution_from_id(case_id),
        images=images,
        label=label,
    )


def _candidate_files(case_dir: Path) -> list[Path]:
    files = [p for p in case_dir.iterdir() if p.is_file()]
    for sub in case_dir.iterdir():
        if sub.is_dir() and sub.name.upper().startswith("VSD."):
            files.extend(p for p in sub.iterdir() if p.is_file() and p.suffix.lower() == ".mha")
    return files


def find_case_files(case_dir: Path) -> CaseFiles:
    """Read one case folder in any supported naming; the label may be None.

    Raises DataError if the folder holds no recognisable modality or one is ambiguous.
    """
    case_dir = Path(case_dir)
    if not case_dir.is_dir():
        raise DataError(f"case folder {case_dir} does not exist or is not a folder")
    problems: list[str] = []
    case = _assemble(case_dir, _candidate_files(case_dir), problems)
    if problems:
        raise DataError("; ".join(problems))
    if not case.images:
        raise DataError(
            f"{case_dir}: no BraTS image files found (expected e.g. <id>_flair.nii.gz, "
            f"<id>-t2f.nii.gz or VSD.*.MR_Flair.*.mha)"
        )
    return case


def discover_cases(
    root: Path, grades_csv: Path | None = None, *, require_label: bool = True
) -> tuple[list[CaseFiles], list[str]]:
    """Find every complete case under ``root``; return (cases sorted by id, problems).

    A case missing a modality (or its label, when ``require_label``), with ambiguous
    files, an unusable id, or whose id occurs twice is left out and described in
    ``problems`` (one message per issue, naming the case and folder). Raises DataError if
    ``root`` is missing or holds no BraTS files at all.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"BraTS root {root} does not exist or is not a folder")
    by_dir: dict[Path, list[Path]] = {}
    for path in walk_files(root):
        if classify_file(path) is not None:
            by_dir.setdefault(_case_dir_of(path), []).append(path)
    if not by_dir:
        raise DataError(
            f"no BraTS cases found under {root} (looked for *_flair.nii.gz, *-t2f.nii.gz, "
            f"VSD.*.mha …)"
        )
    grades = read_grades_csv(grades_csv) if grades_csv is not None else {}
    problems: list[str] = []
    cases: dict[str, list[tuple[Path, CaseFiles]]] = {}
    for case_dir in sorted(by_dir):
        case = _complete_case(case_dir, by_dir[case_dir], require_label, problems)
        if case is None:
            continue
        if case.case_id in grades:
            case = _with_grade(case, grades[case.case_id])
        cases.setdefault(case.case_id, []).append((case_dir, case))
    result = []
    for case_id, entries in sorted(cases.items()):
        if len(entries) > 1:
            where = ", ".join(str(d) for d, _ in entries)
            problems.append(f"{case_id}: duplicate case id in {where}; all copies skipped")
            continue
        result.append(entries[0][1])
    return result, problems


def walk_files(root: Path) -> list[Path]:
    """Every file under ``root``, following symlinked folders (users link datasets into
    place) but never entering the same real folder twice (a link cycle ends there)."""
    seen: set[str] = set()
    files: list[Path] = []
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        files.extend(Path(folder) / n for n in names if os.path.isfile(os.path.join(folder, n)))
    return files


def _complete_case(
    case_dir: Path, files: list[Path], require_label: bool, problems: list[str]
) -> CaseFiles | None:
    own: list[str] = []
    case = _assemble(case_dir, files, own)
    if not _CASE_ID_RE.match(case.case_id):
        own.append(
            f"{case.case_id}: unusable case id (folder {case_dir}); use letters, digits, ._-"
        )
    missing = [m for m in MODALITIES if m not in case.images]
    if missing:
        own.append(f"{case.case_id}: missing modality {', '.join(missing)} in {case_dir}")
    if require_label and case.label is None:
        own.append(f"{case.case_id}: missing label (segmentation) file in {case_dir}")
    problems.extend(own)
    return None if own else case


def _with_grade(case: CaseFiles, grade: str) -> CaseFiles:
    return CaseFiles(case.case_id, case.release, grade, case.institution, case.images, case.label)


def _load_mha(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    try:
        import SimpleITK as sitk
    except ImportError as exc:
        raise DataError(f"{path}: {MHA_HINT}") from exc
    image = sitk.ReadImage(str(path))
    if image.GetDimension() != 3:
        raise DataError(f"{path}: expected a 3D image, found {image.GetDimension()}D")
    # SimpleITK arrays are (z, y, x); nibabel's (and ours) are (x, y, z).
    data = np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0))
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    spacing = np.array(image.GetSpacing(), dtype=float)
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing
    affine[:3, 3] = image.GetOrigin()
    # ITK world coordinates are LPS, NIfTI's RAS: flip the first two world axes.
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    return data, affine, {"format": "mha", "zooms": tuple(float(s) for s in spacing)}


def _load_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    import nibabel as nib

    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)  # type: ignore[attr-defined]
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])  # type: ignore[attr-defined]
    affine: np.ndarray = np.array(img.affine, dtype=np.float64)  # type: ignore[attr-defined]
    return data, affine, {"format": "nifti", "zooms": zooms}


def load_volume(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Load one 3D volume: (data in nibabel (X, Y, Z) order, 4x4 RAS affine, info).

    ``data`` keeps the file's dtype (scaled by NIfTI slope/intercept if any). ``info`` has
    ``format`` ("nifti" or "mha"), ``zooms`` (voxel sizes, mm), ``path``, ``dtype``.
    ``.mha`` files are read with SimpleITK and transposed from its (z, y, x) to (x, y, z).
    Any read failure (missing, truncated, corrupt file) raises DataError naming the file.
    """
    path = Path(path)
    try:
        if path.name.lower().endswith(".mha"):
            data, affine, info = _load_mha(path)
        else:
            data, affine, info = _load_nifti(path)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file for the user
        raise DataError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    if data.ndim != 3:
        raise DataError(f"{path}: expected a 3D volume, found shape {data.shape}")
    info.update(path=str(path), dtype=str(data.dtype))
    return data, affine, info


def needs_simpleitk(cases: list[CaseFiles]) -> bool:
    """True if any case has a .mha file (and so needs the optional SimpleITK)."""
    return any(
        p.name.lower().endswith(".mha")
        for c in cases
        for p in [*c.images.values(), *([c.label] if c.label else [])]
    )


def check_simpleitk(cases: list[CaseFiles]) -> None:
    """Raise DataError with the install hint if .mha cases are present but SimpleITK is not."""
    if not needs_simpleitk(cases):
        return
    try:
        import SimpleITK  # noqa: F401
    except ImportError as exc:
        raise DataError(f"found BraTS 2015 .mha cases; {MHA_HINT}") from exc
