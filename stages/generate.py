"""DVC stage generate: the work is in vae.pipeline.generate."""

from vae.pipeline.generate import main
from vae.pipeline.runner import run_stage

if __name__ == "__main__":
    run_stage("generate", main)
