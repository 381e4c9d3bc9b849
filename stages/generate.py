"""DVC stage generate: the work is in vae.pipeline.generate."""

from vae.errors import run_command
from vae.pipeline.generate import RERUN, main

if __name__ == "__main__":
    run_command("generate", main, RERUN)
