"""Reaching the MLflow tracking store: where it is, whether it answers, and one line when it does not.

The store defaults to ``sqlite:///<project root>/mlflow.db`` — the same file a
plain ``mlflow ui`` opens from the project root — and ``MLFLOW_TRACKING_URI``
overrides it. The project root is ``DVC_ROOT`` when DVC runs the stage: for
``dvc exp run --temp`` and queued experiments DVC points it at the original
repository rather than the temporary copy, so their runs land in the project's
store and survive the copy's deletion. Artifacts go to ``<root>/mlruns``.

A team's tracking server (``http://…``, see :mod:`vae.tracking.server`) keeps
its own artifact store. Every stage checks the store before any work
(:func:`check_tracking_store`), and a server that goes away mid-run stops the
stage in seconds with one line (:func:`fail_fast_on_lost_server`,
:func:`lost_server_reported`). Runs are :mod:`vae.tracking.runs`', datasets
:mod:`vae.tracking.datasets`'.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from vae.config import project_root
from vae.errors import UserError

DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlruns"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the project root's ``mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / DB_FILE}"


def sqlite_file() -> str | None:
    """The tracking store's SQLite file, when it is one: named when the disk holding it fills (vae.faults)."""
    uri = tracking_uri()
    return uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None


class TrackingError(UserError, RuntimeError):
    """The MLflow tracking store cannot be used; the message names the URI."""


def redact(uri: str) -> str:
    """``uri`` with its password, if any, replaced by ``***``: safe to print (SQLAlchemy's own rendering)."""
    import sqlalchemy

    try:
        return sqlalchemy.engine.make_url(uri).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:  # not a database URI: nothing of it is a password
        return uri


def check_database(uri: str, source: str, timeout: float = 5.0) -> None:
    """Connect to a database URI (``postgresql://USER:PASSWORD@HOST:PORT/DB``, …) once, or fail in one line.

    Raises:
        TrackingError: names the URI (password hidden) and the database's own reason: unreachable,
            wrong password, no such database, or its driver not installed.
    """
    import sqlalchemy

    shown = redact(uri)
    try:
        # PostgreSQL's and MySQL's drivers take a connect timeout; SQLite's (a file) has none and refuses one
        network = not uri.startswith("sqlite")
        engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": int(timeout)} if network else {})
    except ImportError as err:
        fix = "pip install -e '.[server]'" if uri.startswith("postgresql") else f"install the Python package {err.name}"
        raise TrackingError(
            f"database {shown} (from {source}) needs a driver this environment lacks ({err.name}): {fix}"
        ) from None
    except sqlalchemy.exc.ArgumentError as err:
        raise TrackingError(f"database {shown} (from {source}) is not a database URI: {err}") from None
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.DBAPIError as err:
        # the driver's first line says what failed: refused connection, password, missing database
        reason = str(err.orig).strip().splitlines()[0] if err.orig else type(err).__name__
        reason = " ".join(reason.removeprefix("connection failed: ").split())
        raise TrackingError(f"cannot use database {shown} (from {source}): {reason}") from None
    finally:
        engine.dispose()


def check_tracking_store(uri: str | None = None, timeout: float = 5.0) -> str:
    """Fail fast, before any training, when the tracking store is out of reach; returns the URI.

    An http(s) URI must be an MLflow tracking server: it must answer MLflow's
    experiments API with JSON within ``timeout`` seconds (MLflow's own client
    would retry for minutes). A database URI must accept a connection; a local
    SQLite database needs a folder it can write to.

    Raises:
        TrackingError: names the URI and what failed.
    """
    uri = uri or tracking_uri()
    source = "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "the default store"
    scheme = urlsplit(uri).scheme
    if is_server(uri):
        _check_server(uri, source, timeout)
    elif scheme == "sqlite":
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise TrackingError(f"MLflow store {uri} (from {source}): folder {folder} is missing or not writable")
    elif scheme.split("+")[0] in ("postgresql", "mysql", "mssql"):
        check_database(uri, source, timeout)
    return uri


def _check_server(uri: str, source: str, timeout: float) -> None:
    """GET a one-experiment page of MLflow's REST API, once, with the credentials MLflow's client would send:
    only an MLflow server answers it with JSON."""
    import requests

    url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
    user, password = os.environ.get(USER_VAR), os.environ.get(PASSWORD_VAR)
    try:
        response = requests.get(url, auth=(user, password) if user and password else None, timeout=timeout)
        status = response.status_code
    except requests.RequestException as err:
        raise TrackingError(f"cannot reach MLflow tracking server {uri} (from {source}): {_first_cause(err)}") from None
    if status in (404, 405):
        raise TrackingError(
            f"{uri} (from {source}) is not an MLflow tracking server: HTTP {status} for MLflow's API ({url})"
        )
    if status in (401, 403):
        raise TrackingError(refused(uri, status))
    if not response.ok:
        detail = _error_message(response.content)
        answered = f"MLflow tracking server {uri} (from {source}) answered HTTP {status}"
        raise TrackingError(f"{answered}: {detail}" if detail else answered)
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise TrackingError(
            f"{uri} (from {source}) is not an MLflow tracking server: its answer to MLflow's API ({url}) is not JSON"
        )


def _first_cause(err: BaseException) -> BaseException:
    """The error at the bottom of ``err``'s chain: the socket's own (``[Errno 111] Connection refused``),
    under requests' and urllib3's wrappers."""
    while err.__cause__ or err.__context__:
        err = err.__cause__ or err.__context__
    return err


# MLflow's client sends these as HTTP basic authentication to a server with its auth app on
USER_VAR, PASSWORD_VAR = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"


def refused(uri: str, status: int, what: str = "") -> str:
    """One line for a server that refused this client (HTTP 401 or 403): what to set, or to ask for."""
    user = os.environ.get(USER_VAR)
    if status == 401 and not user:
        fix = f"it has authentication on: export {USER_VAR}=NAME {PASSWORD_VAR}=PASSWORD (an account its admin made)"
    elif status == 401:
        fix = f"it refused user {user}'s password: check {USER_VAR} and {PASSWORD_VAR}"
    else:
        fix = f"user {user} may not {what or 'do this'}: ask the server's admin for EDIT on the experiment or model"
    return f"MLflow tracking server {uri} (from MLFLOW_TRACKING_URI) answered HTTP {status}: {fix}"


def _error_message(body: bytes) -> str:
    """The ``message`` of an MLflow error answer, else the body's first line (at most 200 characters)."""
    text = body.decode(errors="replace").strip()
    try:
        text = str(json.loads(text).get("message", text))
    except (ValueError, AttributeError):
        pass
    return text.splitlines()[0][:200] if text else ""


def is_server(uri: str) -> bool:
    return urlsplit(uri).scheme in ("http", "https")


def fail_fast_on_lost_server() -> None:
    """Make MLflow's client give up on a dead tracking server in seconds rather than minutes.

    MLflow retries a failed request 7 times with exponential backoff (minutes
    in all); a training stage would hang that long after its server went away.
    Two retries, one second apart, ride out a restart blip; set the
    ``MLFLOW_HTTP_REQUEST_*`` variables to override. urllib3's per-retry
    warnings are silenced: :func:`lost_server_reported` says what happened, in
    one line.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


@contextmanager
def lost_server_reported(what_is_kept: str) -> Iterator[None]:
    """Turn the MLflow client's failure on a tracking server that stopped answering into one line.

    Inside the block, an MLflow or HTTP error while the server no longer
    answers becomes a :class:`TrackingError` naming the server and saying
    ``what_is_kept``; a refusal by the server's authentication one naming what
    to set or ask for; any other error passes through unchanged.
    """
    import mlflow
    import requests

    try:
        yield
    except (mlflow.exceptions.MlflowException, requests.exceptions.RequestException) as err:
        uri = mlflow.get_tracking_uri()
        if not is_server(uri):
            raise
        code = getattr(err, "error_code", None)
        if code in ("PERMISSION_DENIED", "UNAUTHENTICATED"):  # the server's auth app said no
            status = 403 if code == "PERMISSION_DENIED" else 401
            raise TrackingError(refused(uri, status, "write runs or models there")) from None
        _report_lost(uri, what_is_kept)
        raise


def _report_lost(uri: str, what_is_kept: str) -> None:
    """Raise a one-line :class:`TrackingError` when the server at ``uri`` no longer answers; else return."""
    try:
        check_tracking_store(uri)
    except TrackingError as lost:
        # the run's own background threads would report the same loss again, as warnings
        logging.getLogger("mlflow.system_metrics").setLevel(logging.CRITICAL)
        raise TrackingError(f"{lost}; {what_is_kept}") from None
