"""DVC stage train: the work is in vae.pipeline.train."""

from vae.errors import run_command
from vae.fast_cpu import keep_freed_memory
from vae.pipeline.train import RERUN, main

if __name__ == "__main__":
    keep_freed_memory()  # process-wide allocator setting: ~10-20% faster CPU training
    run_command("train", main, RERUN)
