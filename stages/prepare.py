"""DVC stage prepare: the work is in vae.pipeline.prepare."""

from vae.errors import run_command
from vae.pipeline.prepare import RERUN, main

if __name__ == "__main__":
    run_command("prepare", main, RERUN)
