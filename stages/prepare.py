"""DVC stage prepare: the work is in vae.pipeline.prepare."""

from vae.pipeline.prepare import main
from vae.pipeline.runner import run_stage

if __name__ == "__main__":
    run_stage("prepare", main)
