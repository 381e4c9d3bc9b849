"""DVC stage evaluate: the work is in vae.pipeline.evaluate."""

from vae.errors import run_command
from vae.pipeline.evaluate import RERUN, main

if __name__ == "__main__":
    run_command("evaluate", main, RERUN)
