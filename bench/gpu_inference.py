"""GPU inference throughput: studies per second at batch 1 and 16, and time per study, for both findings.

    .venv/bin/python bench/gpu_inference.py [--device cuda:0] [--budget-s 240]

Exits 0 with a message when no GPU is available. Uses the runner's ``run_batch`` (preprocessing on the GPU, mixed
precision) on full-size studies: ICH a 40×512×512 5 mm head CT, LVO a 250×512×512 0.625 mm CTA. Stops measuring
when the time budget is spent, so it always finishes in under five minutes. Writes bench/results/gpu_inference.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from inference.loader import shipped_weights  # noqa: E402
from inference.networks import DEFAULT_ARCHITECTURE, build_network  # noqa: E402
from inference.runner import ModelRunner  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "gpu_inference.json"
STUDIES = {"ich": ((40, 512, 512), (5.0, 0.45, 0.45)), "lvo": ((250, 512, 512), (0.625, 0.45, 0.45))}


def head(shape: tuple[int, int, int]) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    inside = ((z - shape[0] / 2) / (shape[0] * 0.45)) ** 2 + ((y - 256) / 210) ** 2 + ((x - 256) / 175) ** 2 < 1
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 4, shape).astype(np.float32)
    return np.where(inside, np.float32(32.0), np.float32(-1000.0)) + noise


def runner_for(finding: str, device: str, tmp: Path) -> ModelRunner:
    weights = shipped_weights(finding)
    if not weights.is_file():
        weights = tmp / f"{DEFAULT_ARCHITECTURE[finding]}.pt"
        torch.save(build_network(DEFAULT_ARCHITECTURE[finding]).state_dict(), weights)
    return ModelRunner(finding, weights=weights, architecture=DEFAULT_ARCHITECTURE[finding], device=device)


def measure(runner: ModelRunner, volume: np.ndarray, spacing: tuple, batch: int, deadline: float) -> dict:
    studies = [(volume, spacing)] * batch
    runner.run_batch(studies)  # warm-up: cuDNN autotuning, allocator
    rounds, started = 0, time.perf_counter()
    while rounds < 20 and time.perf_counter() < deadline:
        runner.run_batch(studies)
        rounds += 1
    elapsed = time.perf_counter() - started
    n = max(rounds, 1) * batch
    return {"batch": batch, "rounds": rounds, "studies_per_s": n / elapsed, "seconds_per_study": elapsed / n}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--budget-s", type=float, default=240.0)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("No CUDA GPU available: GPU inference benchmark skipped.")
        return 0
    import tempfile

    deadline = time.perf_counter() + args.budget_s
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for finding, (shape, spacing) in STUDIES.items():
            runner = runner_for(finding, args.device, Path(tmp))
            volume = head(shape)
            for batch in (1, 16):
                # Each measurement gets a fair share of what is left of the budget.
                share = (deadline - time.perf_counter()) / (4 - len(rows))
                row = measure(runner, volume, spacing, batch, time.perf_counter() + share)
                rows.append({"finding": finding, "input_shape": list(shape), **row})
                print(
                    f"{finding} batch {batch:>2}: {row['studies_per_s']:8.1f} studies/s, "
                    f"{row['seconds_per_study'] * 1000:8.1f} ms per study ({row['rounds']} rounds)"
                )
    result = {"benchmark": "inference_gpu", "device": torch.cuda.get_device_name(args.device), "rows": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
