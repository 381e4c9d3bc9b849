"""DVC stage evaluate: the work is in vae.pipeline.evaluate."""

from vae.pipeline.evaluate import main
from vae.pipeline.runner import run_stage

if __name__ == "__main__":
    run_stage("evaluate", main)
