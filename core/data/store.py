"""The prepared-data store: a zarr v3 group with one image and one label array per case.

Layout (axes in store order, see preprocess.py for the mapping from nibabel)::

    STORE.zarr/                    group; attributes["manifest"] = the manifest (JSON)
      cases/<case_id>/image        float16 (Z, C, H, W), C = manifest["modalities"],
                                   chunk (1, C, H, W): one slice with all its modalities
      cases/<case_id>/labels       uint8 (Z, H, W) original label values, chunk (1, H, W)

dtype, chunking and compression were chosen with bench/data.py (see the README). Readers
open the store read-only, from a local path or any fsspec URL zarr accepts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from core.atomic import staging_path
from core.data.brats import check_names
from core.data.preprocess import PreprocessedCase, region_mask
from core.data.splits import SPLITS
from core.errors import DataError

FORMAT = "segan-brats-store"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class StorageSpec:
    """How image arrays are stored (labels are always uint8, zstd, one slice per chunk)."""

    image_dtype: str = "float16"
    """"float16" or "float32"; values are in [0, 1], so float16 keeps ~3 significant digits."""
    codec: str = "blosc-lz4"
    """"none", "zstd", "blosc-lz4" or "blosc-zstd"."""
    level: int = 5

    def compressors(self) -> Any:
        """The zarr codec for the image arrays (None = uncompressed)."""
        if self.codec == "none":
            return None
        if self.codec == "zstd":
            return ZstdCodec(level=self.level)
        if self.codec == "blosc-lz4":
            return BloscCodec(cname="lz4", clevel=self.level, shuffle="shuffle")
        if self.codec == "blosc-zstd":
            return BloscCodec(cname="zstd", clevel=self.level, shuffle="shuffle")
        raise DataError(f"unknown codec {self.codec!r}; valid: none, zstd, blosc-lz4, blosc-zstd")


def store_id(manifest: dict[str, Any]) -> str:
    """Stable hash of what determines the store's content (not paths, times or code)."""
    key = {
        "format_version": manifest["format_version"],
        "preprocessing": manifest["preprocessing"],
        "modalities": manifest["modalities"],
        "image_dtype": manifest["layout"]["image_dtype"],
        "cases": [
            [
                r["case_id"],
                r["split"],
                r.get("fold"),
                sorted((k, v["sha256"]) for k, v in r["sources"].items()),
            ]
            for r in sorted(manifest["cases"], key=lambda r: r["case_id"])
        ],
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- writing


def create_store(path: Path) -> None:
    """Create an empty store group at ``path`` (which must not exist)."""
    root = zarr.open_group(str(path), mode="w-")
    root.create_group("cases")


def write_case(path: Path, case: PreprocessedCase, spec: StorageSpec) -> None:
    """Write one preprocessed case into the store at ``path`` (image cast to spec dtype)."""
    root = zarr.open_group(str(path), mode="r+")
    z, c, h, w = case.image.shape
    root.create_array(
        f"cases/{case.case_id}/image",
        data=case.image.astype(spec.image_dtype),
        chunks=(1, c, h, w),
        compressors=spec.compressors(),
        dimension_names=("z", "c", "y", "x"),
    )
    if case.labels is not None:
        root.create_array(
            f"cases/{case.case_id}/labels",
            data=case.labels,
            chunks=(1, h, w),
            compressors=ZstdCodec(level=3),
            dimension_names=("z", "y", "x"),
        )


def is_store(path: Path) -> bool:
    """True if ``path`` holds a store written by this module."""
    meta = Path(path) / "zarr.json"
    try:
        attrs = json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError):
        return False
    return attrs.get("manifest", {}).get("format") == FORMAT


def check_output_path(out: Path) -> None:
    """Refuse to overwrite anything at ``out`` that is not a store of ours."""
    if out.exists() and not is_store(out):
        raise DataError(
            f"output path {out} exists and is not a BraTS store; refusing to overwrite it "
            f"(choose another --out or remove it)"
        )


def commit_store(tmp: Path, out: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest into ``tmp`` and move it to ``out``, replacing an older store."""
    manifest = dict(manifest, format=FORMAT, format_version=FORMAT_VERSION)
    manifest["store_id"] = store_id(manifest)
    root = zarr.open_group(str(tmp), mode="r+")
    root.attrs["manifest"] = manifest
    check_output_path(out)
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_store(
    out: Path,
    cases: Iterable[PreprocessedCase],
    manifest: dict[str, Any],
    spec: StorageSpec | None = None,
) -> Path:
    """Write preprocessed cases and a manifest to ``out`` atomically (temp dir + rename).

    ``manifest`` must hold "preprocessing", "modalities" and "cases" rows (each with
    case_id, split and sources); "layout" is filled in here. On any error the temporary
    directory is removed and ``out`` is left untouched.
    """
    out = Path(out)
    spec = spec or StorageSpec()
    check_output_path(out)
    tmp = staging_path(out)
    try:
        create_store(tmp)
        for case in cases:
            write_case(tmp, case, spec)
        commit_store(tmp, out, dict(manifest, layout=layout_dict(spec)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def layout_dict(spec: StorageSpec) -> dict[str, Any]:
    """The manifest's description of the array layout."""
    return {
        "image": "cases/<case_id>/image",
        "image_axes": "z,c,y,x",
        "labels": "cases/<case_id>/labels",
        "labels_axes": "z,y,x",
        "labels_dtype": "uint8",
        "chunk": "one slice",
        **asdict(spec),
    }


# ---------------------------------------------------------------- reading


def _local_path(location: str) -> Path | None:
    """Filesystem path of a local store location (plain path or file:// URL), else None."""
    if "://" not in location:
        return Path(location)
    if location.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(location).path))
    return None


class _ChunkFiles:
    """Fast reads of one-slice chunks of a local array, straight from the chunk files.

    zarr-python spends ~1-1.5 ms of async bookkeeping per ``array[z]`` call, while reading
    and decoding a slice chunk takes < 0.1 ms; random slice access is all such calls. This
    reads ``<array>/c/<z>/0/...`` and decodes it with numcodecs following the array's own
    zarr.json; a missing chunk file is the fill value (zarr does not write empty chunks).
    Only layouts this module writes are accepted (``open`` returns None otherwise).
    """

    def __init__(self, folder: Path, meta: dict[str, Any]) -> None:
        self.folder = folder
        self.shape = tuple(meta["shape"][1:])
        self.dtype = np.dtype(meta["data_type"]).newbyteorder("<")
        self.fill = meta["fill_value"]
        self.sep = meta["chunk_key_encoding"]["configuration"]["separator"]
        self.tail = self.sep.join("0" * len(self.shape))
        names = [c["name"] for c in meta["codecs"]]
        self.codec = None
        if len(names) == 2:
            import numcodecs

            self.codec = numcodecs.Blosc() if names[1] == "blosc" else numcodecs.Zstd()

    @classmethod
    def open(cls, folder: Path) -> _ChunkFiles | None:
        try:
            meta = json.loads((folder / "zarr.json").read_text())
        except (OSError, ValueError):
            return None
        names = [c["name"] for c in meta.get("codecs", [])]
        chunks = meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape", [])
        endian = meta.get("codecs", [{}])[0].get("configuration", {}).get("endian", "little")
        if (
            names[:1] != ["bytes"]
            or endian != "little"
            or len(names) > 2
            or (len(names) == 2 and names[1] not in ("blosc", "zstd"))
            or meta.get("chunk_key_encoding", {}).get("name") != "default"
            or list(chunks) != [1, *meta["shape"][1:]]
        ):
            return None
        return cls(folder, meta)

    def read(self, z: int) -> np.ndarray:
        """Slice ``z`` (0 <= z < Z) as an array of the stored dtype, shape = array shape[1:]."""
        path = self.folder / f"c{self.sep}{z}{self.sep}{self.tail}"
        try:
            if self.codec is None:
                return np.fromfile(path, dtype=self.dtype).reshape(self.shape)
            raw = path.read_bytes()
        except FileNotFoundError:
            return np.full(self.shape, self.fill, dtype=self.dtype)
        out = np.empty(self.shape, dtype=self.dtype)  # writable, unlike a view of bytes
        self.codec.decode(raw, out=out)
        return out


class BratsStore:
    """Read-only access to a prepared store (local path or fsspec URL).

    Images come back as float32 (Z, C, H, W) in [0, 1]; masks as uint8 (Z, H, W) in {0, 1}.
    Array handles are opened lazily and dropped on pickling, so an instance can be sent to
    DataLoader worker processes (each reopens the store itself).
    """

    def __init__(self, location: str | os.PathLike[str]):
        self.location = str(location)
        if "://" not in self.location:
            # absolute, so the handle still works after a chdir (Ray trials run elsewhere)
            self.location = str(Path(self.location).resolve())
            if not Path(self.location).exists():
                raise DataError(f"no store at {self.location}")
        try:
            root = zarr.open_group(self.location, mode="r")
            manifest = root.attrs.get("manifest")
        except Exception as exc:  # noqa: BLE001 - any zarr/fsspec failure means "not a store"
            raise DataError(f"{self.location} is not a BraTS store: {exc}") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise DataError(f"{self.location} is not a BraTS store (no manifest); run `prepare`")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise DataError(
                f"{self.location}: store format {manifest.get('format_version')} but this code "
                f"reads {FORMAT_VERSION}; re-run `prepare --force`"
            )
        self.manifest: dict[str, Any] = manifest
        self.modalities: tuple[str, ...] = tuple(manifest["modalities"])
        self._rows = {r["case_id"]: r for r in manifest["cases"]}
        self._root: Any = root
        self._arrays: dict[tuple[str, str], Any] = {}
        self._local = _local_path(self.location)
        self._chunks: dict[tuple[str, str], _ChunkFiles | None] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_root"], state["_arrays"], state["_chunks"] = None, {}, {}
        return state

    def __repr__(self) -> str:
        return f"BratsStore({self.location!r}, {len(self._rows)} cases)"

    def case_ids(self, split: str | None = None, fold: int | None = None) -> list[str]:
        """Case ids, all or of one split. With ``fold`` k (k-fold stores), "val" is fold k and
        "train" every other non-test case."""
        if split is not None:
            check_names("split", [split], SPLITS)
        rows = self.manifest["cases"]
        if fold is None:
            return [r["case_id"] for r in rows if split is None or r["split"] == split]
        if self.manifest["splits"].get("folds") is None:
            raise DataError(f"{self.location} has no k-fold assignment; prepare with --folds K")
        if split == "test":
            return [r["case_id"] for r in rows if r["split"] == "test"]
        pool = [r for r in rows if r["split"] != "test"]
        want_val = split == "val"
        return [r["case_id"] for r in pool if split is None or (r["fold"] == fold) == want_val]

    def case_info(self, case_id: str) -> dict[str, Any]:
        """The manifest row of a case (id, release, grade, institution, split, shapes, …)."""
        try:
            return self._rows[case_id]
        except KeyError:
            raise DataError(f"unknown case id {case_id!r} in {self.location}") from None

    def num_slices(self, case_id: str) -> int:
        return int(self.case_info(case_id)["num_slices"])

    def _array(self, case_id: str, name: str) -> Any:
        key = (case_id, name)
        if key not in self._arrays:
            self.case_info(case_id)
            if self._root is None:
                self._root = zarr.open_group(self.location, mode="r")
            try:
                self._arrays[key] = self._root[f"cases/{case_id}/{name}"]
            except KeyError:
                raise DataError(f"{self.location}: case {case_id} has no {name} array") from None
        return self._arrays[key]

    def _read(self, case_id: str, name: str, z: slice | int) -> np.ndarray:
        """``array[z]`` in the stored dtype; single local slices skip zarr's overhead."""
        if self._local is not None and isinstance(z, (int, np.integer)):
            key = (case_id, name)
            if key not in self._chunks:
                self.case_info(case_id)
                self._chunks[key] = _ChunkFiles.open(self._local / "cases" / case_id / name)
            reader = self._chunks[key]
            n = self.num_slices(case_id)
            if reader is not None and -n <= z < n:
                return reader.read(int(z) % n)
        return np.asarray(self._array(case_id, name)[z])

    def channel_index(self, modalities: Sequence[str]) -> list[int]:
        """Stored channel positions of ``modalities`` (validated)."""
        check_names("modality", list(modalities), self.modalities)
        return [self.modalities.index(m) for m in modalities]

    def read_image(
        self,
        case_id: str,
        modalities: Sequence[str],
        z: slice | int = slice(None),
        dtype: Any = np.float32,
    ) -> np.ndarray:
        """float32 (Z, C, H, W) in [0, 1], channels in the requested order. An int ``z``
        drops the Z axis, as in numpy: (C, H, W). ``dtype=None`` keeps the stored dtype."""
        idx = self.channel_index(modalities)
        data = self._read(case_id, "image", z)
        if idx != list(range(len(self.modalities))):
            data = data[idx] if isinstance(z, (int, np.integer)) else data[:, idx]
        return np.asarray(data) if dtype is None else np.asarray(data, dtype=dtype)

    def read_labels(self, case_id: str, z: slice | int = slice(None)) -> np.ndarray:
        """uint8 (Z, H, W) original label values (int ``z`` -> (H, W))."""
        return self._read(case_id, "labels", z)

    def read_mask(
        self, case_id: str, region: str = "wt", z: slice | int = slice(None)
    ) -> np.ndarray:
        """uint8 (Z, H, W) in {0, 1} for region "wt", "tc" or "et" (int ``z`` -> (H, W))."""
        release = self.case_info(case_id)["release"]
        return region_mask(self.read_labels(case_id, z), region, release)

    def slice_shape(self) -> tuple[int, int]:
        """(H, W) of every stored slice."""
        cx, cy, _ = self.manifest["preprocessing"]["crop"]
        return int(cy), int(cx)
