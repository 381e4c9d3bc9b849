"""DVC stage classifier: the work is in vae.pipeline.classifier."""

from vae.errors import run_command
from vae.fast_cpu import keep_freed_memory
from vae.pipeline.classifier import RERUN, main

if __name__ == "__main__":
    keep_freed_memory()  # process-wide allocator setting: ~1.35x the images/s of CPU training
    run_command("classifier", main, RERUN)
