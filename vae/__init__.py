"""A convolutional variational autoencoder for Fashion-MNIST, and the pieces of its experiment pipeline."""

__version__ = "0.1.0"
