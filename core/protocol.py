"""The evaluation protocol: what every budget, trial and report scores the same way.

Budgets change training only (crop, width, batch, lr, time); the window a volume is
scored in is fixed here. The paper scores the centre 160² of each 180² slice; a store
with smaller slices is scored on its whole slice. Prediction always covers the whole
stored slice (the network is fully convolutional), so ``predict`` writes masks over
the whole prepared crop and the study's scores are those masks inside this window.
"""

from __future__ import annotations

EVAL_WINDOW = 160
"""In-plane side of the centred evaluation window (the paper's 160² of the 180² crop)."""
ALIGN = 16
"""The segmentor's four stride-2 stages: inputs are padded to a multiple of this."""


def window_slices(height: int, width: int, window: int = EVAL_WINDOW) -> tuple[slice, slice]:
    """(rows, cols) of the centred ``min(window, size)`` window of an ``height × width`` slice."""
    def axis(size: int) -> slice:
        side = min(window, size)
        start = (size - side) // 2
        return slice(start, start + side)

    return axis(height), axis(width)


EVAL_SPLITS = ("val", "test")
"""Splits a study may score. Selection and early stopping read ``val`` only."""


def eval_metric(split: str, set_key: str, metric: str) -> str:
    """Name of a final evaluation metric: ``eval/<split>/<modalities>/<metric>``.

    The split is part of the name so that nothing computed on validation is ever
    called test (e.g. ``eval/test/flair-t1-t1c-t2/dice``).
    """
    if split not in EVAL_SPLITS:
        raise ValueError(f"unknown evaluation split {split!r}; valid: {', '.join(EVAL_SPLITS)}")
    return f"eval/{split}/{set_key}/{metric}"


def parse_eval_metric(name: str) -> tuple[str, str, str] | None:
    """``eval/<split>/<set>/<metric>`` → (split, set, metric); None for other names."""
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "eval" or parts[1] not in EVAL_SPLITS:
        return None
    return parts[1], parts[2], parts[3]
