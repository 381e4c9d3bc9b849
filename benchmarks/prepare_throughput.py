"""How fast the prepare stage turns a folder of your own images into 32×32 tensors.

Writes ``--images`` JPEGs of ``--size``×``--size`` pixels (random colour content, which decodes no
faster than a photograph's) into ``--classes`` class folders in a temporary directory, then runs the
prepare stage on them as DVC would (``python stages/prepare.py`` in a copy of the project with
``data.dataset: folder``), timed from start to exit: imports, listing, decoding, the resize and
centre crop, the splits and the saved tensors. Prints the wall seconds and images per second, with
the machine's CPU and core count. The issue's target: 50,000 64×64 JPEGs in ≤ 60 s on 2 cores.

    python benchmarks/prepare_throughput.py [--images 50000] [--size 64] [--classes 10]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from machine import cpu_name  # benchmarks/machine.py: run as scripts, beside it
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def write_jpegs(folder: Path, images: int, size: int, classes: int) -> None:
    """``images`` JPEGs (quality 90) in ``classes`` folders; 64 distinct pictures, reused, so writing is quick."""
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(64)]
    for index in range(images):
        target = folder / f"class{index % classes}"
        if index < classes:
            target.mkdir(parents=True)
        pictures[index % len(pictures)].save(target / f"{index:06d}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=64, help="pixels per side of each JPEG")
    parser.add_argument("--classes", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vae-prepare-bench-") as tmp:
        folder, project = Path(tmp) / "images", Path(tmp) / "project"
        write_jpegs(folder, args.images, args.size, args.classes)
        (project / "stages").mkdir(parents=True)
        shutil.copy(REPO / "stages" / "prepare.py", project / "stages" / "prepare.py")
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        # the default validation split, or a tenth of a smaller folder's images
        params["data"].update(
            dataset="folder", dir=str(folder), val_size=min(params["data"]["val_size"], args.images // 10)
        )
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        env = os.environ | {"PYTHONPATH": str(REPO)}
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "stages/prepare.py"], cwd=project, env=env, capture_output=True, text=True
        )
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(f"benchmark: error: the prepare stage failed: {done.stderr.strip()[-2000:]}")
    print(f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"prepare: {args.images} {args.size}×{args.size} JPEGs in {args.classes} classes → 32×32 tensors")
    print(f"  {seconds:.1f} s, {args.images / seconds:,.0f} images/s (the stage's process, start to exit)")


if __name__ == "__main__":
    main()
