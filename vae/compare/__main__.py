"""``python -m vae.compare``: see :mod:`vae.compare.command`."""

from vae.compare.command import main

main()
