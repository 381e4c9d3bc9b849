"""The one base class of every mistake a user can make.

A stage stops on a :class:`UserError` with one line on stderr (see
:func:`vae.pipeline.runner.run_stage`); anything else is a bug and keeps its
traceback. Each error below names the culprit (file, param, value, URI) and
what to do about it.
"""


class UserError(Exception):
    """Something the user gave (params, data, files, a server address) cannot be used; the message says why."""
