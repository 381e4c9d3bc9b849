"""A PostgreSQL cluster of the tracking server's own, kept in one folder: PostgreSQL's own tools, run for it.

:mod:`vae.tracking.server` starts one behind MLflow when given ``--data-dir``; the tests
start one for the team's set-up (``tests/conftest.py``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

from vae.errors import UserError

DATABASE = "mlflow"
DB_USER = "mlflow"
# PostgreSQL refuses to run as root; as root, its tools run as the account Debian's package makes
POSTGRES_ACCOUNT = "postgres"


class ServerError(UserError, RuntimeError):
    """The tracking server or its database cannot start; the message names what and why."""


def postgres_tool(name: str) -> str:
    """The path of one of PostgreSQL's programs (``initdb``, ``pg_ctl``, ``createdb``).

    On PATH, else the newest of Debian's ``/usr/lib/postgresql/<version>/bin``.
    """
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
        key=lambda path: int(path.parts[-3]) if path.parts[-3].isdigit() else 0,
    )
    if not candidates:
        raise ServerError(
            f"PostgreSQL's {name} is not installed (not on PATH nor under /usr/lib/postgresql/*/bin); "
            "install PostgreSQL (Debian: apt-get install -y postgresql) or pass --backend-store-uri"
        )
    return str(candidates[-1])


class LocalPostgres:
    """A PostgreSQL cluster of the tracking server's own, in ``data_dir/postgres``, on ``127.0.0.1:port``.

    Only TCP on loopback (no Unix socket), password authentication
    (scram-sha-256) for the one user ``mlflow``.
    """

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        self.port = port
        self.cluster = self.data_dir / "postgres"
        self.log = self.data_dir / "postgres.log"
        self.password_file = self.data_dir / "password"

    @property
    def uri(self) -> str:
        """The SQLAlchemy URI of the ``mlflow`` database, password included."""
        password = self.password_file.read_text().strip()
        return f"postgresql://{DB_USER}:{password}@127.0.0.1:{self.port}/{DATABASE}"

    def _as_owner(self, command: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return command
        return ["runuser", "-u", POSTGRES_ACCOUNT, "--", *command]

    def _run(self, command: list[str], what: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self._as_owner(command), capture_output=True, text=True, **kwargs)
        if result.returncode != 0:
            reason = (result.stderr or result.stdout).strip().splitlines()
            raise ServerError(f"{what} failed: {reason[-1] if reason else f'exit status {result.returncode}'}")
        return result

    def init(self) -> None:
        """Create the cluster on first use (``initdb``), with a new random password for ``mlflow``."""
        if (self.cluster / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.cluster.mkdir(mode=0o700, exist_ok=True)
        password = secrets.token_urlsafe(24)
        self.password_file.touch(mode=0o600)
        self.password_file.write_text(password + "\n")
        self.log.touch()
        # initdb reads the password from a file; this copy lives only while initdb runs
        initdb_password = self.data_dir / ".initdb-password"
        initdb_password.touch(mode=0o600)
        initdb_password.write_text(password + "\n")
        try:
            if os.geteuid() == 0:
                self._hand_to_postgres_account(self.cluster, self.log, initdb_password)
            self._run(
                [
                    postgres_tool("initdb"),
                    "--pgdata",
                    str(self.cluster),
                    "--username",
                    DB_USER,
                    "--pwfile",
                    str(initdb_password),
                    "--auth-local",
                    "trust",
                    "--auth-host",
                    "scram-sha-256",
                    "--encoding",
                    "UTF8",
                ],
                f"initdb {self.cluster}",
            )
        finally:
            initdb_password.unlink(missing_ok=True)

    def _hand_to_postgres_account(self, *paths: Path) -> None:
        """As root: give PostgreSQL's account its files, and check it can reach them."""
        try:
            for path in paths:
                shutil.chown(path, POSTGRES_ACCOUNT)
        except (LookupError, OSError) as err:
            raise ServerError(
                f"PostgreSQL refuses to run as root and the {POSTGRES_ACCOUNT!r} account is unusable ({err}); "
                "run this as an ordinary user"
            ) from None
        reachable = subprocess.run(self._as_owner(["test", "-w", str(self.cluster)]), capture_output=True)
        if reachable.returncode != 0:
            raise ServerError(
                f"{self.data_dir}: PostgreSQL runs as user {POSTGRES_ACCOUNT} here (this is root), and that "
                "user cannot enter this folder; pick one every user can enter (e.g. under /srv or /tmp)"
            )

    def running(self) -> bool:
        status = subprocess.run(
            self._as_owner([postgres_tool("pg_ctl"), "status", "--pgdata", str(self.cluster)]), capture_output=True
        )
        return status.returncode == 0

    def start(self) -> None:
        """Initialise if needed, start PostgreSQL unless it runs already, create the database if missing."""
        self.init()
        if not self.running():
            options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories=''"
            command = [postgres_tool("pg_ctl"), "start", "--wait", "--pgdata", str(self.cluster)]
            result = subprocess.run(
                self._as_owner([*command, "--log", str(self.log), "-o", options]), capture_output=True, text=True
            )
            if result.returncode != 0:
                fatal = [line for line in self.log.read_text().splitlines() if "FATAL" in line or "could not" in line]
                reason = fatal[-1].split(":", 3)[-1].strip() if fatal else "see " + str(self.log)
                raise ServerError(f"PostgreSQL did not start on 127.0.0.1:{self.port}: {reason}")
        env = os.environ | {"PGPASSWORD": self.password_file.read_text().strip()}
        created = subprocess.run(
            [postgres_tool("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", DB_USER, DATABASE],
            capture_output=True,
            text=True,
            env=env,
        )
        if created.returncode != 0 and "already exists" not in created.stderr:
            raise ServerError(f"createdb {DATABASE} on 127.0.0.1:{self.port} failed: {created.stderr.strip()}")

    def stop(self) -> None:
        if self.running():
            self._run(
                [postgres_tool("pg_ctl"), "stop", "--wait", "--mode", "fast", "--pgdata", str(self.cluster)],
                f"pg_ctl stop {self.cluster}",
            )


# MLflow's own variable for ``mlflow server --backend-store-uri``: the URI, password included, reaches the
# server through its environment, which only its user can read, never through its command line, which `ps`
# shows every local user
