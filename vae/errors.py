"""The one base class of every mistake a user can make, and the runner that turns one into one line.

A stage or command stops on a :class:`UserError` with one line on stderr (see
:func:`run_command`); anything else is a bug and keeps its traceback. Each error
names the culprit (file, param, value, URI) and what to do about it.
"""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vae.faults import Rerun


class UserError(Exception):
    """Something the user gave (params, data, files, a server address) cannot be used; the message says why."""


def one_line(err: BaseException) -> str:
    """``err`` in one line: a user's mistake as its message says it, anything else as its type and first line."""
    text = str(err).strip().splitlines()
    return str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {text[0] if text else ''}"


def run_command(name: str, main: Callable[[], None], rerun: Rerun | None = None) -> None:
    """Run a stage's or command's ``main``; a user's mistake (:class:`UserError`) ends it with one line
    on stderr and exit status 1, and so does a fault of the machine (a full disk, a folder that cannot
    be written, memory run out: :mod:`vae.faults`), saying what to do and then ``rerun``. Any other
    exception is a bug and keeps its traceback.

    Output is line-buffered: Python block-buffers stdout into a file or pipe, which would hold
    every per-epoch line of ``dvc repro > run.log`` (or ``| tee``, or a CI log) until the stage ends.

    The objects the imports made (torch, MLflow) are frozen out of the garbage
    collector's sight: no collection walks them again, the interpreter's last one at exit included,
    which took 2.5 of a generate stage's 11.5 s here (``python -X importtime`` shows what they are).
    So are those ``main`` made, once it returns: the modules it imported late (MLflow's store and
    logging) made the evaluate stage's exit take ~0.6 s, ~0.25 s with them frozen.
    """
    sys.stdout.reconfigure(line_buffering=True)
    # MLflow's SQLAlchemy store logs every database error with its traceback and then raises it: the error
    # reaches this function either way (a bug keeps its traceback), so the log only doubled it, and for a
    # full disk buried the one line below under two tracebacks
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    gc.freeze()
    try:
        main()
        gc.freeze()  # what main leaves lives until the exit: no collection needs to walk it
    except UserError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        sys.exit(1)
    except Exception as err:  # MemoryError included
        from vae.faults import Rerun, describe

        line = describe(err, rerun or Rerun())
        if line is None:
            raise
        print(f"{name}: error: {line}", file=sys.stderr)
        sys.exit(1)
