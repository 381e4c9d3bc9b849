"""The complete example, with the library alone (no DVC, no MLflow): train, reconstruct, sample, interpolate.

    python -m vae.example --epochs 10 --latent-dim 2 --beta 500 --out results [--data-dir DIR] [--limit N]

Loads Fashion-MNIST padded to 32×32, trains the VAE, and writes exactly four
files into ``--out``: ``vae_fashion_mnist.pth`` (the checkpoint; load it with
:func:`vae.storage.load_model`), ``vae_reconstructions.png``,
``vae_generated_samples.png`` and ``vae_interpolation.png``. β weights the
*reconstruction* term (see :mod:`vae.loss`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch.utils.data import DataLoader

from vae.data import load_fashion_mnist
from vae.errors import run_command
from vae.faults import Rerun
from vae.generator import (
    encode_means,
    generate_samples,
    interpolate_latent,
    pick_different_classes,
    visualize_reconstruction,
    visualize_samples,
)
from vae.model import VAE
from vae.storage import save_model
from vae.trainer import train_vae_model
from vae.utils import get_device, set_seed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vae.example", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--latent-dim", type=int, default=2)
    parser.add_argument("--beta", type=float, default=500.0, help="weight of the reconstruction term (default 500)")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for the four files (default: here)")
    parser.add_argument("--data-dir", type=Path, default=None, help="Fashion-MNIST folder (default: FASHION_MNIST_DIR)")
    parser.add_argument("--limit", type=int, default=None, help="train on the first N images only (quick runs)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    set_seed(args.seed)
    device = get_device()
    train = load_fashion_mnist("train", args.data_dir, limit=args.limit)
    test = load_fashion_mnist("test", args.data_dir, limit=args.limit)
    loader = DataLoader(train.tensor_dataset(), batch_size=128, shuffle=True)

    vae = VAE(latent_dim=args.latent_dim, input_channels=1).to(device)
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
    train_vae_model(vae, loader, optimizer, device, epochs=args.epochs, beta=args.beta)

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    save_model(vae, out / "vae_fashion_mnist.pth")
    plt.close(visualize_reconstruction(vae, test.images[:10], device, n=10, save_path=out / "vae_reconstructions.png"))
    samples = generate_samples(vae, num_samples=20, latent_dim=args.latent_dim, device=device)
    plt.close(visualize_samples(samples, grid_shape=(4, 5), save_path=out / "vae_generated_samples.png"))
    first, second = pick_different_classes(test.labels)  # interpolate between two different garments
    z = encode_means(vae, test.images[[first, second]])
    path = interpolate_latent(vae, z[0], z[1], num_steps=10)
    plt.close(visualize_samples(path, grid_shape=(1, 10), save_path=out / "vae_interpolation.png"))
    print(f"example: wrote {', '.join(sorted(p.name for p in out.iterdir() if p.name.startswith('vae_')))} to {out}")


if __name__ == "__main__":
    run_command("example", main, Rerun(command="python -m vae.example"))
