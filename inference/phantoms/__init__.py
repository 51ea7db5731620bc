"""Synthetic head CT phantoms with ground truth, deterministic for a seed.

Two generators return a :class:`Phantom` (HU volume in (z, y, x), spacing in mm, label, subtype, side, lesion mask,
hard-negative tag and metadata):

- ``generate_ncct(seed, *, positive=None, subtype=None, shape=(32, 128, 128), slice_thickness_mm=None,
  anatomy="auto", family="A", hard_negative=None, size=None, clean=False)``: non-contrast head CT for
  intracranial hemorrhage (finding ``ich``). Subtypes ``edh`` (biconvex lens under the inner table, one side),
  ``sdh`` (crescent along the convexity, never across the falx), ``iph`` (irregular blob with an oedema rim in the
  basal ganglia, thalamus, a lobe, the pons or the cerebellum), ``sah`` (blood replacing CSF in the sulci, Sylvian
  fissure, basal cisterns or interhemispheric fissure) and ``ivh`` (a level in the dependent ventricles, horizontal in
  the scanner frame whatever the head pose). Sizes run from a couple of millimetres to large (``size`` in [0, 1]).
  Hard negatives: ``choroid_calcification``, ``pineal_calcification``, ``basal_ganglia_calcification``,
  ``dense_falx``, ``beam_hardening``, ``chronic_collection``; pineal and choroid calcifications and a dense falx
  also appear incidentally in positives.
- ``generate_cta(seed, *, positive=None, subtype=None, shape=(64, 128, 128), slice_thickness_mm=None,
  anatomy="auto", family="A", hard_negative=None, clean=False)``: head CT angiography for large-vessel occlusion
  (finding ``lvo``), subtypes ``ica_t`` and ``m1`` with ``side`` left or right, the thrombus (40-60 HU) as the mask
  and distal branches filled by collaterals (0-70 % of arterial HU). Circle of Willis variants (A1 hypoplasia,
  fetal PCA, absent PCom) occur at their usual rates in every class. Hard negatives: ``hypoplastic_segment``,
  ``early_bolus``, ``late_bolus``, ``calcified_siphon``, ``stenosis``, ``m2_occlusion``, ``tilt``.

With ``positive=None`` half the cases are positive; about half the negatives are hard negatives. ``anatomy`` is
``"template"`` (the MNI152 2009 grey/white templates shipped with nilearn, HU = 40 p_gm + 26 p_wm + 8 p_csf, with a
synthetic skull and scalp), ``"parametric"`` (an ellipsoid head with ventricles, sulci, deep grey matter; no files
needed) or ``"auto"`` (the template when installed). ``family`` picks a generator family: ``"A"`` and ``"B"`` differ
in scanners and kernels (noise texture), grey-white contrast, calibration offset, pose spread and atrophy, so a model
can be judged on a family it never saw. ``clean=True`` skips blur, artefacts and noise (for checking ground truth).

Array axes follow DICOM LPS: z inferior to superior, y anterior to posterior, x from the patient's right to the
patient's left. ``meta["to_canonical"]`` maps voxel indices to the canonical (MNI-like) head frame. Small volumes
are cheap (about 0.07 s of one core for 32x128x128 NCCT, 0.15 s for 64x128x128 CTA); sub-millimetre pixels switch
to a 1 mm head model built once per process (several seconds) and a 250x512x512 volume takes about 10 s.

Writing DICOM (``inference.dicom_write``)::

    from pathlib import Path
    from inference.phantoms import generate_ncct
    from inference.dicom_write import write_study

    phantom = generate_ncct(1234, subtype="sdh", shape=(40, 512, 512))
    info = write_study(phantom, Path("/tmp/study"), seed=1234)   # CT Image Storage, synthetic patient

From the command line (a progress bar, then a summary of labels; a manifest JSON goes next to the studies)::

    python -m inference.phantoms --kind ncct --count 20 --seed 1000 --out /tmp/phantoms --matrix 512 --slices 40
    python -m inference.phantoms --kind cta --count 20 --seed 2000 --out /tmp/phantoms --matrix 512 --slices 160

The phantoms are a pipeline test bed, not a clinical reference: accuracy on them says nothing about real patients.
"""

from __future__ import annotations

from inference.phantoms.cta import CTA_HARD_NEGATIVES, LVO_SUBTYPES, generate_cta
from inference.phantoms.hemorrhage import SUBTYPES as ICH_SUBTYPES
from inference.phantoms.mimics import HARD_NEGATIVES as NCCT_HARD_NEGATIVES
from inference.phantoms.ncct import generate_ncct
from inference.phantoms.scanner import FAMILIES
from inference.phantoms.types import Phantom

__all__ = [
    "CTA_HARD_NEGATIVES",
    "FAMILIES",
    "ICH_SUBTYPES",
    "LVO_SUBTYPES",
    "NCCT_HARD_NEGATIVES",
    "Phantom",
    "generate_cta",
    "generate_ncct",
]
