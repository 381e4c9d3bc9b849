"""The README's library example: train the VAE for 10 epochs and save 20 samples to samples.png."""

import torch
from torch.utils.data import DataLoader

from vae.data import load_fashion_mnist
from vae.generator import generate_samples, visualize_samples
from vae.model import VAE
from vae.trainer import train_vae_model
from vae.utils import get_device, set_seed

set_seed(0)
device = get_device()
train_loader = DataLoader(load_fashion_mnist("train").dataset(), batch_size=128, shuffle=True)
vae = VAE(latent_dim=2, input_channels=1).to(device)
optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
history = train_vae_model(vae, train_loader, optimizer, device, epochs=10, beta=500)
samples = generate_samples(vae, num_samples=20, latent_dim=2, device=device)
visualize_samples(samples, grid_shape=(4, 5), save_path="samples.png")
print(f"final loss {history['loss'][-1]:.2f}; samples written to samples.png")
