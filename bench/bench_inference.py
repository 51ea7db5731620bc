"""CPU inference benchmark: a 250-slice 512×512 study through the runner, next to a bare forward pass.

    .venv/bin/python bench/bench_inference.py [--repeats 5]

Reports seconds per study including resampling and windowing, the bare network forward pass at the model grid in
the same process, their ratio, and peak resident memory while a study runs (sampled with psutil every 2 ms, the
volume itself included). Writes bench/results/inference.json. Targets (issue 3): ≤ 1 s per study, ≤ 2 GB.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from inference.loader import shipped_weights  # noqa: E402
from inference.networks import DEFAULT_ARCHITECTURE, build_network  # noqa: E402
from inference.preprocess import PREPARERS  # noqa: E402
from inference.runner import ModelRunner  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "inference.json"


class PeakRss:
    """Samples this process's resident set size in a thread; ``peak`` is the largest seen."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s, self.peak = interval_s, 0
        self._proc, self._stop = psutil.Process(), threading.Event()

    def __enter__(self) -> PeakRss:
        self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self.interval_s)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def study(finding: str, shape: tuple[int, int, int]) -> tuple[np.ndarray, tuple[float, float, float], str]:
    """A realistic study from the phantom generator; a plain ellipsoid head if the generator is unavailable."""
    thickness = 0.625
    try:
        from inference import phantoms

        make = phantoms.generate_ncct if finding == "ich" else phantoms.generate_cta
        p = make(7, positive=True, shape=shape, slice_thickness_mm=thickness)
        return np.ascontiguousarray(p.volume_hu, dtype=np.float32), tuple(p.spacing_mm), "phantom"
    except (ImportError, AttributeError, TypeError) as err:
        print(f"phantom generator unavailable ({err}); using an ellipsoid head", file=sys.stderr)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    head = ((z - shape[0] / 2) / (shape[0] * 0.45)) ** 2 + ((y - 256) / 210) ** 2 + ((x - 256) / 175) ** 2 < 1
    vol = np.where(head, np.float32(30.0), np.float32(-1000.0)).astype(np.float32)
    return vol, (thickness, 0.45, 0.45), "ellipsoid"


def weights_for(finding: str, tmp: Path) -> tuple[Path, str]:
    shipped = shipped_weights(finding)
    if shipped.is_file():
        return shipped, "shipped"
    arch = DEFAULT_ARCHITECTURE[finding]
    path = tmp / f"{arch}.pt"
    torch.save(build_network(arch).state_dict(), path)
    return path, "random-init"


def bench_one(finding: str, shape: tuple[int, int, int], repeats: int, tmp: Path) -> dict[str, object]:
    volume, spacing, source = study(finding, shape)
    weights, kind = weights_for(finding, tmp)
    runner = ModelRunner(finding, weights=weights, architecture=DEFAULT_ARCHITECTURE[finding], device="cpu")
    runner.run(volume, spacing)  # warm-up: allocator and kernel selection
    totals, stages = [], []
    with PeakRss() as mem:
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = runner.run(volume, spacing)
            totals.append(time.perf_counter() - t0)
            stages.append(out.timings)
    prepared = PREPARERS[finding](volume, spacing, "cpu").tensor[None]
    forwards = []
    with torch.inference_mode():
        runner.model.module(prepared)
        for _ in range(repeats):
            t0 = time.perf_counter()
            runner.model.module(prepared)
            forwards.append(time.perf_counter() - t0)
    total, forward = statistics.median(totals), statistics.median(forwards)
    return {
        "finding": finding,
        "input_shape": list(shape),
        "input_source": source,
        "model_grid": list(prepared.shape[1:]),
        "weights": kind,
        "threads": torch.get_num_threads(),
        "seconds_per_study": total,
        "preprocess_s": statistics.median(s["preprocess_s"] for s in stages),
        "bare_forward_s": forward,
        "ratio_study_to_forward": total / forward,
        "peak_rss_mb": mem.peak / 2**20,
        "volume_mb": volume.nbytes / 2**20,
        "meets_target": total <= 1.0 and mem.peak <= 2 * 2**30,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for finding, shape in (("ich", (250, 512, 512)), ("lvo", (250, 512, 512))):
            rows.append(bench_one(finding, shape, args.repeats, Path(tmp)))
    header = (
        f"{'finding':<8}{'input':>16}{'grid':>18}{'s/study':>10}{'prep s':>9}{'fwd s':>9}{'ratio':>7}{'peak MB':>9}"
    )
    print(header)
    for r in rows:
        shape = "×".join(map(str, r["input_shape"]))
        grid = "×".join(map(str, r["model_grid"]))
        print(
            f"{r['finding']:<8}{shape:>16}{grid:>18}{r['seconds_per_study']:>10.3f}{r['preprocess_s']:>9.3f}"
            f"{r['bare_forward_s']:>9.3f}{r['ratio_study_to_forward']:>7.2f}{r['peak_rss_mb']:>9.0f}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"benchmark": "inference_cpu", "rows": rows}, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
