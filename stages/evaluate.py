"""DVC stage evaluate: the work is in vae.pipeline.evaluate."""

from vae.errors import run_command
from vae.fast_cpu import keep_freed_memory
from vae.pipeline.evaluate import RERUN, main

if __name__ == "__main__":
    keep_freed_memory()  # process-wide allocator setting: the IW bound's decoder passes ~1.4x faster on the CPU
    run_command("evaluate", main, RERUN)
