"""DVC stage classifier: the work is in vae.pipeline.classifier."""

from vae.errors import run_command
from vae.pipeline.classifier import RERUN, main

if __name__ == "__main__":
    run_command("classifier", main, RERUN)
