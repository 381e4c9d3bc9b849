"""Seconds a stage process spends importing before its work, with and without torchvision.

Each stage's module is imported in a fresh interpreter, as DVC starts it, alternately as it
is (no torchvision: :mod:`vae.tiles`) and with ``torchvision.utils`` imported first (as the
stages did for ``make_grid``), for ``--rounds`` rounds; prints the median of each and the
difference, on this machine (a shared machine's slow spells hit both alike).

    python benchmarks/stage_startup.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

STAGES = ["vae.pipeline.train", "vae.pipeline.evaluate", "vae.pipeline.generate"]


def import_seconds(module: str, first: str = "") -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"{first}import {module}"], check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"{'stage module':<24}{'as it is':>10}{'+ torchvision':>15}{'saved':>8}")
    for module in STAGES:
        plain, with_torchvision = [], []
        for _ in range(args.rounds):
            plain.append(import_seconds(module))
            with_torchvision.append(import_seconds(module, "import torchvision.utils; "))
        a, b = statistics.median(plain), statistics.median(with_torchvision)
        print(f"{module:<24}{a:>9.2f}s{b:>14.2f}s{b - a:>7.2f}s")


if __name__ == "__main__":
    main()
