"""The project's vocabulary, defined once: modalities (with their file names per release),
regions (with their label values per release), per-volume metrics and model variants.

Adding one is an edit here (plus data, e.g. a grid axis value); every module imports
these tables. Freezing strategies live with their code in ``core/freezing.py``.
"""

from __future__ import annotations

import re

# -- modalities -----------------------------------------------------------------
MODALITIES: tuple[str, ...] = ("flair", "t1", "t1c", "t2")
"""Canonical input channel names, in the stores' channel order."""
LABEL = "seg"
"""The pseudo-modality of a case's label (segmentation) file."""

# NIfTI file-name suffix (lower case, no extension) -> modality, per naming family.
# Longest first within a family so "_t1ce" is not taken for "_t1".
# fmt: off
NIFTI_SUFFIXES: dict[str, tuple[tuple[str, str], ...]] = {
    "2017-2021": (("_flair", "flair"), ("_t1ce", "t1c"), ("_t1c", "t1c"), ("_t1", "t1"),
                  ("_t2", "t2"), ("_seg", LABEL)),
    "2023":      (("-t2f", "flair"), ("-t1c", "t1c"), ("-t1n", "t1"), ("-t2w", "t2"),
                  ("-seg", LABEL)),
}
# BraTS 2015 VSD names: "VSD.Brain.XX.O.MR_T1c.54514.mha", "VSD.Brain_3more.XX.O.OT.54517.mha".
MHA_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\.MR_Flair\.", re.I), "flair"),
    (re.compile(r"\.MR_T1c\.", re.I), "t1c"),
    (re.compile(r"\.MR_T1\.", re.I), "t1"),
    (re.compile(r"\.MR_T2\.", re.I), "t2"),
    (re.compile(r"\.OT\.", re.I), LABEL),
)
# fmt: on
MODALITY_LABELS = {"flair": "FLAIR", "t1": "T1", "t1c": "T1c", "t2": "T2"}
"""How reports print each modality."""

# -- regions --------------------------------------------------------------------
REGIONS: tuple[str, ...] = ("wt", "tc", "et")
"""Whole tumour (label > 0), tumour core, enhancing tumour."""
LABEL_SETS: dict[str, frozenset[int]] = {
    "2015": frozenset({0, 1, 2, 3, 4}),
    "2021": frozenset({0, 1, 2, 4}),
    "2023": frozenset({0, 1, 2, 3}),
}
"""Label values by label scheme (see ``core.data.preprocess.label_scheme``)."""
REGION_LABELS: dict[str, dict[str, tuple[int, ...]]] = {
    "2015": {"tc": (1, 3, 4), "et": (4,)},
    "2021": {"tc": (1, 4), "et": (4,)},
    "2023": {"tc": (1, 3), "et": (3,)},
}
"""TC/ET membership per label scheme; WT is every label > 0 in all of them."""

# -- metrics --------------------------------------------------------------------
VOLUME_METRICS: tuple[str, ...] = ("dice", "precision", "sensitivity", "specificity")
"""Per-volume voxel-count metrics (``core.metrics``), in report order."""
SURFACE_METRICS: tuple[str, ...] = ("hd95",)
"""Per-volume surface metrics (``core.surface``), in mm."""
STUDY_METRICS: tuple[str, ...] = VOLUME_METRICS + SURFACE_METRICS
"""What trials log with intervals (``eval/<split>/<set>/<metric>``) and the report tabulates."""

# -- variants -------------------------------------------------------------------
VARIANTS: dict[str, dict[str, object]] = {
    "segan": {"model.critic_input": "multiply", "loss.dice_weight": 0.0},
    "segan-dice": {"model.critic_input": "multiply", "loss.dice_weight": 1.0},
    "segan-cat": {"model.critic_input": "concat", "loss.dice_weight": 1.0},
}
"""Model variant -> config overrides (the grids' ``variant`` axis and ``describe-model``)."""
