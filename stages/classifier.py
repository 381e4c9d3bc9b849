"""DVC stage classifier: the work is in vae.pipeline.classifier."""

from vae.pipeline.classifier import main
from vae.pipeline.runner import run_stage

if __name__ == "__main__":
    run_stage("classifier", main)
