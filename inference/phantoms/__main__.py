"""Command line: write synthetic DICOM studies, e.g.

python -m inference.phantoms --kind ncct --count 10 --seed 1000 --out /tmp/phantoms --matrix 512 --slices 40
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

from tqdm import tqdm

from inference.dicom_write import write_study
from inference.phantoms.cta import generate_cta
from inference.phantoms.ncct import generate_ncct


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference.phantoms", description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("ncct", "cta"), required=True)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="seed of the first study; the rest count up from it")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--slices", type=int, default=None, help="default 32 (NCCT) or 64 (CTA)")
    parser.add_argument("--positive", choices=("yes", "no", "random"), default="random")
    parser.add_argument("--family", default="A")
    parser.add_argument("--anatomy", default="auto", choices=("auto", "template", "parametric"))
    parser.add_argument("--thick-reformat", action="store_true", help="add a 5 mm averaged series to thin studies")
    args = parser.parse_args(argv)
    slices = args.slices or (32 if args.kind == "ncct" else 64)
    generate = generate_ncct if args.kind == "ncct" else generate_cta
    positive = {"yes": True, "no": False, "random": None}[args.positive]
    counts: collections.Counter[str] = collections.Counter()
    manifest = []
    for seed in tqdm(range(args.seed, args.seed + args.count), desc=f"{args.kind} studies", unit="study"):
        phantom = generate(
            seed, positive=positive, shape=(slices, args.matrix, args.matrix), anatomy=args.anatomy, family=args.family
        )
        info = write_study(phantom, args.out / f"{args.kind}-{seed:06d}", seed=seed, thick_reformat=args.thick_reformat)
        label = phantom.subtype if phantom.positive else (phantom.hard_negative or "normal")
        counts[label or "normal"] += 1
        manifest.append(
            {
                "seed": seed,
                "study_uid": info.study_uid,
                "finding": phantom.finding,
                "positive": phantom.positive,
                "subtype": phantom.subtype,
                "side": phantom.side,
                "hard_negative": phantom.hard_negative,
                "folder": f"{args.kind}-{seed:06d}",
            }
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"manifest-{args.kind}.json").write_text(json.dumps(manifest, indent=1))
    print(f"{args.count} synthetic {args.kind} studies in {args.out}:")
    for label, n in sorted(counts.items()):
        print(f"  {label:28s} {n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
