"""``python -m vae.sweep``: see :mod:`vae.sweep.command`."""

from vae.sweep.command import main

main()
