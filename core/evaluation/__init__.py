"""Evaluation: predicting and scoring.

- ``volumes``: predict stored volumes slice by slice and score them in the protocol's window
  (what validation and the study's final metrics use);
- ``cases``: case files (any BraTS naming) → mask NIfTI in the original grid (``predict``);
- ``mask_files``: mask NIfTI vs truth NIfTI, one pair or two folders (``evaluate``).

The metric definitions themselves are ``core.metrics`` (voxel counts) and ``core.surface``
(HD95): one empty-mask policy for all three.
"""
