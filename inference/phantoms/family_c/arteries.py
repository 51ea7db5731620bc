"""Family C's intracranial arteries: a hand-placed circle of Willis whose middle cerebral arteries branch at random
(two or three M2 trunks, each splitting into cortical M3 branches), rendered as capsules; occlusions fill a stretch
of lumen with thrombus and leave the territory beyond it to collaterals."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from inference.phantoms.family_c.head import Head
from inference.phantoms.family_c.space import segment_distance, smoothstep

LVO_SUBTYPES = ("ica_t", "m1")
HARD_NEGATIVES = ("m2_occlusion", "stenosis", "venous_phase", "early_arterial", "calcified_siphon", "asymmetric_m1")


@dataclass
class Branch:
    """A polyline of knots (world mm) with a radius per knot; ``group`` names the territory it belongs to."""

    name: str
    side: int
    knots: np.ndarray
    radii: np.ndarray
    group: str
    fill: float = 1.0
    clot: tuple[float, float] | None = None  # fraction of the branch's length in thrombus
    children: list[str] = field(default_factory=list)


def _line(points: list[tuple[float, float, float]], side: int, jitter: np.ndarray) -> np.ndarray:
    pts = np.array([(z, y, side * x) for z, y, x in points], dtype=float)
    return pts + jitter[: len(pts)]


def build_tree(rng: np.random.Generator, calibre: float) -> dict[str, Branch]:
    tree: dict[str, Branch] = {}
    for side in (-1, 1):
        j = rng.normal(0.0, 1.8, (8, 3))
        s = "L" if side > 0 else "R"
        ica = _line([(-70, 5, 22), (-50, 9, 20), (-38, 1, 18), (-30, -8, 16), (-23, -12, 15), (-17, -6, 17),
                     (-14, -2, 19)], side, j)  # fmt: skip
        tree[f"ica_{s}"] = Branch(f"ica_{s}", side, ica, np.linspace(2.5, 1.85, len(ica)) * calibre, "ica")
        m1_end = np.array([-12.0 + rng.normal(0, 2), rng.normal(0, 2), side * rng.uniform(38, 46)])
        m1 = np.stack([ica[-1], (ica[-1] + m1_end) / 2 + rng.normal(0, 1.2, 3), m1_end])
        tree[f"m1_{s}"] = Branch(f"m1_{s}", side, m1, np.array([1.6, 1.5, 1.4]) * calibre, "m1")
        _mca_branches(rng, tree, s, side, m1_end, calibre)
        a1 = np.stack([ica[-1], np.array([-11.0, -14.0, side * 7.0]), np.array([-10.0, -18.0, side * 2.0])])
        tree[f"a1_{s}"] = Branch(f"a1_{s}", side, a1 + rng.normal(0, 0.8, (3, 3)), np.full(3, 1.1 * calibre), "aca")
        a2 = _line(
            [(-10, -18, 2), (5, -30, 3), (25, -30, 3), (42, -8, 3), (48, 22, 3)], side, rng.normal(0, 1.5, (5, 3))
        )
        tree[f"a2_{s}"] = Branch(f"a2_{s}", side, a2, np.linspace(1.0, 0.65, 5) * calibre, "aca")
        vert = _line([(-75, 25, 12), (-62, 21, 6), (-55, 18, 0.5)], side, rng.normal(0, 1.0, (3, 3)))
        tree[f"vert_{s}"] = Branch(f"vert_{s}", side, vert, np.full(3, 1.55 * calibre), "post")
        pca = _line(
            [(-25, 8, 0.5), (-22, 11, 8), (-17, 23, 18), (-9, 45, 21), (1, 66, 15)], side, rng.normal(0, 1.5, (5, 3))
        )
        tree[f"pca_{s}"] = Branch(f"pca_{s}", side, pca, np.linspace(1.1, 0.65, 5) * calibre, "post")
        pcom = np.stack([ica[-2], np.array([-21.0, 8.0, side * 11.0])])
        tree[f"pcom_{s}"] = Branch(f"pcom_{s}", side, pcom, np.full(2, 0.6 * calibre), "pcom")
    basilar = np.array([[-55.0, 18.0, 0.0], [-40.0, 13.0, 0.0], [-25.0, 8.0, 0.0]]) + rng.normal(0, 1.0, (3, 3))
    tree["basilar"] = Branch("basilar", 0, basilar, np.array([1.65, 1.55, 1.45]) * calibre, "post")
    tree["acom"] = Branch("acom", 0, np.stack([tree["a1_R"].knots[-1], tree["a1_L"].knots[-1]]), np.full(2, 0.7), "aca")
    return tree


def _mca_branches(
    rng: np.random.Generator, tree: dict[str, Branch], s: str, side: int, start: np.ndarray, calibre: float
) -> None:
    """Two or three M2 trunks up and back over the insula, each with two or three M3 branches to the convexity."""
    trunks = int(rng.choice([2, 3], p=[0.7, 0.3]))
    for t in range(trunks):
        up = -1.0 + 2.0 * t / max(trunks - 1, 1)  # inferior to superior trunk
        knots = [start]
        for _ in range(3):
            step = np.array([6.0 + 5.0 * up, rng.uniform(3.0, 8.0), side * rng.uniform(0.5, 3.0)]) + rng.normal(0, 2, 3)
            knots.append(knots[-1] + step)
        name = f"m2_{t}_{s}"
        tree[name] = Branch(name, side, np.stack(knots), np.linspace(1.2, 0.95, 4) * calibre, "m2")
        tree[f"m1_{s}"].children.append(name)
        for b in range(int(rng.integers(2, 4))):
            direction = np.array(
                [rng.uniform(-0.2, 1.0) + 0.3 * up, rng.uniform(-0.6, 1.0), side * rng.uniform(0.3, 0.9)]
            )
            direction /= np.linalg.norm(direction)
            length = rng.uniform(15.0, 28.0)
            pts = [knots[-1], knots[-1] + direction * length / 2 + rng.normal(0, 2, 3)]
            pts.append(pts[-1] + direction * length / 2 + rng.normal(0, 2, 3))
            child = f"m3_{t}{b}_{s}"
            tree[child] = Branch(child, side, np.stack(pts), np.array([0.8, 0.65, 0.5]) * calibre, "m3")
            tree[name].children.append(child)


def apply_variants(rng: np.random.Generator, tree: dict[str, Branch]) -> list[str]:
    found = []
    for s in ("L", "R"):
        if rng.random() < 0.1:
            tree[f"a1_{s}"].radii *= 0.45
            found.append(f"a1_hypoplasia_{s}")
        roll = rng.random()
        if roll < 0.2:
            tree[f"pcom_{s}"].radii[:] = 1.15
            found.append(f"fetal_pca_{s}")
        elif roll < 0.5:
            tree[f"pcom_{s}"].radii[:] = 0.0
            found.append(f"absent_pcom_{s}")
    return found


def _distal(tree: dict[str, Branch], name: str) -> list[str]:
    out = []
    for child in tree[name].children:
        out += [child, *_distal(tree, child)]
    return out


def occlude(rng: np.random.Generator, tree: dict[str, Branch], subtype: str, side: int) -> None:
    s = "L" if side > 0 else "R"
    fill = float(rng.uniform(0.0, 0.6))
    if subtype == "ica_t":
        tree[f"ica_{s}"].clot = (rng.uniform(0.75, 0.9), 1.0)
        tree[f"m1_{s}"].clot = (0.0, rng.uniform(0.2, 0.6))
        tree[f"m1_{s}"].fill = fill
        if rng.random() < 0.4:
            tree[f"a1_{s}"].clot = (0.0, rng.uniform(0.3, 0.8))
    elif subtype == "m1":
        start = rng.uniform(0.0, 0.5)
        tree[f"m1_{s}"].clot = (start, min(1.0, start + rng.uniform(0.3, 0.8)))
        tree[f"m1_{s}"].fill = fill
    else:  # an M2 trunk (a hard negative for an ICA/M1 task)
        trunk = str(rng.choice(list(tree[f"m1_{s}"].children)))
        tree[trunk].clot = (0.0, rng.uniform(0.4, 1.0))
        tree[trunk].fill = fill
        for child in _distal(tree, trunk):
            tree[child].fill = fill
        return
    for child in _distal(tree, f"m1_{s}"):
        tree[child].fill = fill


def render(head: Head, tree: dict[str, Branch], arterial: float, clot_hu: float) -> np.ndarray:
    """Paints lumens (patent, then thrombus over them); returns the thrombus occupancy."""
    voxel = float(min(head.frame.spacing))
    clot_occ = np.zeros(head.hu.shape, dtype=np.float32)
    clots = []
    for branch in tree.values():
        lengths = np.linalg.norm(np.diff(branch.knots, axis=0), axis=1)
        cum = np.concatenate([[0.0], np.cumsum(lengths)]) / max(lengths.sum(), 1e-6)
        for i in range(len(branch.knots) - 1):
            for a, b, frac_mid in _pieces(branch.knots[i], branch.knots[i + 1], cum[i], cum[i + 1]):
                ra = np.interp(frac_mid, cum, branch.radii)
                in_clot = branch.clot is not None and branch.clot[0] <= frac_mid <= branch.clot[1]
                beyond = branch.clot is not None and frac_mid > branch.clot[1]
                value = arterial * (branch.fill if (beyond or branch.clot is None) else 1.0)
                if in_clot:
                    clots.append((a, b, ra))
                elif ra > 0:
                    _paint(head, a, b, ra, max(value, 35.0), voxel, None)
    for a, b, r in clots:
        _paint(head, a, b, r, clot_hu, voxel, clot_occ)
    return clot_occ


def _pieces(a: np.ndarray, b: np.ndarray, fa: float, fb: float) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Splits a segment into pieces of at most 3 mm, each with the branch fraction at its middle."""
    n = max(1, int(np.ceil(np.linalg.norm(b - a) / 3.0)))
    ts = np.linspace(0.0, 1.0, n + 1)
    return [
        (a + (b - a) * t0, a + (b - a) * t1, fa + (fb - fa) * (t0 + t1) / 2)
        for t0, t1 in zip(ts[:-1], ts[1:], strict=True)
    ]


def _paint(
    head: Head, a: np.ndarray, b: np.ndarray, r: float, value: float, voxel: float, occ_out: np.ndarray | None
) -> None:
    box = head.frame.box_around(np.minimum(a, b) - r - 2, np.maximum(a, b) + r + 2)
    if box is None:
        return
    dist, _ = segment_distance(head.world[(slice(None), *box)], a, b)
    occ = smoothstep(r - dist, voxel)
    head.hu[box] += occ * (np.float32(value) - head.hu[box])
    if occ_out is not None:
        np.maximum(occ_out[box], occ, out=occ_out[box])


def calcified_plaques(rng: np.random.Generator, head: Head, tree: dict[str, Branch]) -> None:
    voxel = float(min(head.frame.spacing))
    for s in ("L", "R"):
        knots = tree[f"ica_{s}"].knots
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(2, len(knots) - 1))
            point = knots[i] + rng.normal(0, 1.0, 3) + rng.normal(0, 1, 3) / 1.5
            _paint(head, point, point + rng.normal(0, 1, 3), rng.uniform(0.8, 1.6), rng.uniform(600, 1200), voxel, None)
