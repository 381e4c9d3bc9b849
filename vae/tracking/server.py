"""A team's MLflow tracking server: runs in PostgreSQL, artifacts in a folder or S3 bucket, proxied.

Try it, or host it for a small team, with a PostgreSQL of its own kept in one folder::

    python -m vae.tracking.server --data-dir ~/vae-tracking --port 5000

The first start creates the database cluster there with PostgreSQL's own tools
(``initdb``; a random password, kept in ``DATA_DIR/password``), then every start
runs ``pg_ctl start`` on ``127.0.0.1:--pg-port``, ``createdb mlflow`` when the
database is missing, and the MLflow server. Artifacts go to
``DATA_DIR/artifacts``. Ctrl-C (or SIGTERM) stops both.

With an existing PostgreSQL and S3-compatible artifact storage, the URI and its
password in the environment (a command line is visible to every user in ``ps``)::

    export MLFLOW_BACKEND_STORE_URI=postgresql://mlflow:PASSWORD@db.example.com:5432/mlflow
    python -m vae.tracking.server --artifacts-destination s3://my-bucket/mlflow --host 0.0.0.0 --port 5000

Either way the database is checked first (an unreachable server, a wrong
password or a missing database is one line naming the URI), then this runs
MLflow's documented production set-up::

    MLFLOW_BACKEND_STORE_URI=URI mlflow server --artifacts-destination DEST --host HOST --port PORT

Artifacts are proxied: runs record ``mlflow-artifacts:`` URIs and clients
upload and download through the server, so a trainer's machine needs only
``MLFLOW_TRACKING_URI=http://HOST:PORT``, never the bucket's credentials.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from vae.errors import UserError
from vae.tracking.postgres import LocalPostgres, ServerError
from vae.tracking.store import check_database, redact

S3_ENDPOINT_VAR = "MLFLOW_S3_ENDPOINT_URL"  # MLflow's own: an S3-compatible store (MinIO, Ceph, moto) instead of AWS


STORE_URI_VAR = "MLFLOW_BACKEND_STORE_URI"
# MLflow's switch of its job runner (four Huey worker processes, ~250 MB each), which runs GenAI jobs this
# project never submits: off unless the environment turns it on
JOB_EXECUTION_VAR = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"


LOOPBACK = ("127.0.0.1", "localhost", "::1")
ADMIN = "admin"


def _secret(path: Path) -> str:
    """The secret kept in ``path`` (mode 0600), made (random, 32 bytes) the first time."""
    if not path.exists():
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


def authentication(folder: Path) -> dict[str, str]:
    """MLflow's basic-auth app kept in ``folder/auth`` (made 0700, every file 0600); returns the
    environment ``mlflow server --app-name basic-auth`` reads it from.

    The first start generates the admin's password (``auth/admin_password``, never MLflow's
    sample one) and the Flask secret key; users and their permissions go to
    ``auth/basic_auth.db``. Users see every experiment and model (READ) unless given more.
    """
    auth = folder / "auth"
    auth.mkdir(mode=0o700, parents=True, exist_ok=True)
    auth.chmod(0o700)
    password, key = _secret(auth / "admin_password"), _secret(auth / "flask_secret_key")
    database = auth / "basic_auth.db"
    if not database.exists():  # SQLite keeps the mode of a file it is given, and its journals take it
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT, 0o600))
    config = auth / "basic_auth.ini"
    settings = (
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{database}\nadmin_username = {ADMIN}\nadmin_password = {password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # MLflow checks the password's scrypt hash on every request (~0.1 s of CPU each) unless a
        # successful check is cached; a changed password or deleted user then takes up to a minute
        "auth_cache_ttl_seconds = 60\n"
    )
    descriptor = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as f:
        f.write(settings)
    return {"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_FLASK_SERVER_SECRET_KEY": key}


def check_artifacts_destination(destination: str) -> None:
    """Make sure an ``s3://bucket/prefix`` destination's bucket answers, with the credentials and endpoint
    (``MLFLOW_S3_ENDPOINT_URL``) MLflow will use, before the server starts: MLflow itself would start
    and fail every client's upload later. A folder needs no check (MLflow creates it).

    Raises:
        ServerError: boto3 is missing, or the bucket is unreachable, missing or refuses the credentials.
    """
    if not destination.startswith("s3://"):
        return
    bucket = destination.removeprefix("s3://").split("/", 1)[0]
    endpoint = os.environ.get(S3_ENDPOINT_VAR) or None
    where = f"--artifacts-destination {destination}" + (f" ({S3_ENDPOINT_VAR}={endpoint})" if endpoint else "")
    try:
        import boto3
        import botocore.config
        import botocore.exceptions
    except ImportError:
        raise ServerError(f"{where}: S3 needs boto3: pip install -e '.[s3]'") from None
    config = botocore.config.Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 1})
    try:
        boto3.client("s3", endpoint_url=endpoint, config=config).head_bucket(Bucket=bucket)
    except botocore.exceptions.ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        reason = {"404": f"no bucket {bucket} there", "403": f"the credentials may not read bucket {bucket}"}
        raise ServerError(f"{where}: {reason.get(code, err)}") from None
    except botocore.exceptions.BotoCoreError as err:  # no credentials, an unreachable endpoint, a bad URL
        raise ServerError(f"{where}: {err}") from None


def mlflow_server_command(artifacts_destination: str, host: str, port: int, auth: bool = False) -> list[str]:
    """MLflow's production set-up, artifacts proxied to ``artifacts_destination``, with its basic-auth
    app when ``auth``; the database URI and the auth settings go in its environment (see :func:`serve`)."""
    command = [sys.executable, "-m", "mlflow", "server", "--artifacts-destination", artifacts_destination]
    return command + ["--host", host, "--port", str(port)] + (["--app-name", "basic-auth"] if auth else [])


def serve(
    backend_store_uri: str,
    artifacts_destination: str,
    host: str,
    port: int,
    source: str,
    auth_folder: Path | None = None,
) -> int:
    """Check the database, then run ``mlflow server`` until it exits or this process is told to stop.

    ``source`` says where the URI came from, for the messages; ``auth_folder``, when given, turns
    on MLflow's authentication with its state kept there (:func:`authentication`). Returns the
    server's exit status (0 after Ctrl-C or SIGTERM).
    """
    check_database(backend_store_uri, source)
    check_artifacts_destination(artifacts_destination)
    environment = {JOB_EXECUTION_VAR: "false"} | os.environ | {STORE_URI_VAR: backend_store_uri}
    if auth_folder is not None:
        environment |= authentication(auth_folder)
    command = mlflow_server_command(artifacts_destination, host, port, auth=auth_folder is not None)
    server = subprocess.Popen(command, env=environment)
    address = socket.gethostname() if host in ("0.0.0.0", "::") else host
    print(
        f"tracking_server: MLflow on http://{address}:{port} (runs in {redact(backend_store_uri)}, "
        f"artifacts in {artifacts_destination}); clients: export MLFLOW_TRACKING_URI=http://{address}:{port}",
        flush=True,
    )
    if auth_folder is not None:
        secret = auth_folder / "auth" / "admin_password"
        print(
            f"tracking_server: authentication on (MLflow's basic-auth): user {ADMIN}, password in {secret}; "
            "trainers: export MLFLOW_TRACKING_USERNAME=NAME MLFLOW_TRACKING_PASSWORD=PASSWORD "
            "(adding users: docs/team.md)",
            flush=True,
        )

    def stop(signum: int, frame: FrameType | None) -> None:
        server.terminate()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        status = server.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if status in (0, -signal.SIGTERM, -signal.SIGINT) else status


def store_uri(flag: str | None) -> tuple[str | None, str]:
    """The existing database to use and where it was named: ``--backend-store-uri`` (no password
    allowed there), else ``MLFLOW_BACKEND_STORE_URI``; (None, "") for neither.

    Raises:
        ServerError: the flag holds a password, which every local user would read in ``ps``.
    """
    if flag:
        if redact(flag) != flag:
            raise ServerError(
                f"--backend-store-uri {redact(flag)} holds a password, which every user of this machine sees in "
                f"`ps`: export {STORE_URI_VAR}=… instead (or keep it in a file of mode 0600 and "
                f'export {STORE_URI_VAR}="$(cat FILE)")'
            )
        return flag, "--backend-store-uri"
    value = os.environ.get(STORE_URI_VAR)
    return (value, STORE_URI_VAR) if value else (None, "")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m vae.tracking.server",
        description="An MLflow tracking server on PostgreSQL with proxied artifacts, for a team.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--data-dir", type=Path, help="run a PostgreSQL of its own in this folder, artifacts beside it")
    where.add_argument(
        "--backend-store-uri",
        help=f"an existing database without a password in it (one with a password: export {STORE_URI_VAR})",
    )
    parser.add_argument(
        "--artifacts-destination", help="a folder or s3://bucket/prefix (default with --data-dir: DATA_DIR/artifacts)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=5000, help="MLflow's port (default 5000)")
    parser.add_argument("--pg-port", type=int, default=5432, help="PostgreSQL's port with --data-dir (default 5432)")
    parser.add_argument(
        "--auth",
        action="store_true",
        help="MLflow's authentication (users, passwords, permissions); always on with a --host beyond loopback",
    )
    parser.add_argument("--auth-dir", type=Path, help="where authentication keeps its state (default: --data-dir)")
    args = parser.parse_args(argv)
    args.auth = args.auth or args.host not in LOOPBACK
    args.auth_dir = args.auth_dir or args.data_dir
    if args.auth and args.auth_dir is None:
        parser.error("authentication keeps its users and secrets in a folder: give --data-dir or --auth-dir")
    if args.data_dir is None and not (args.backend_store_uri or os.environ.get(STORE_URI_VAR)):
        parser.error(f"give --data-dir, or an existing database in {STORE_URI_VAR} (or --backend-store-uri)")
    if args.data_dir is None and not args.artifacts_destination:
        parser.error("an existing database needs --artifacts-destination (a folder or s3://bucket/prefix)")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        if args.data_dir is None:
            uri, source = store_uri(args.backend_store_uri)
            auth = args.auth_dir if args.auth else None
            sys.exit(serve(uri, args.artifacts_destination, args.host, args.port, source, auth))
        postgres = LocalPostgres(args.data_dir, args.pg_port)
        postgres.start()
        try:
            destination = args.artifacts_destination or str(postgres.data_dir / "artifacts")
            auth = args.auth_dir if args.auth else None
            status = serve(postgres.uri, destination, args.host, args.port, f"{args.data_dir}'s database", auth)
        finally:
            postgres.stop()
        sys.exit(status)
    except UserError as err:
        print(f"tracking_server: error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
