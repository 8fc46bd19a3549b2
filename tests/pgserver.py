"""A throwaway PostgreSQL cluster on a unix socket (Debian's server binaries, run as the
postgres user), for the history tests and benchmarks/report_scale.py."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None) \
    if Path("/usr/lib/postgresql").exists() else None


def missing() -> str | None:
    """Why no server can be started here (None when one can)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]')"
    if PG_BIN is None or not (PG_BIN / "initdb").exists():
        return "no PostgreSQL server binaries (apt-get install postgresql)"
    if os.geteuid() != 0:
        return "not root: the PostgreSQL server runs as the postgres user"
    return None


@contextmanager
def server() -> Iterator[str]:
    """A fresh cluster; yields its SQLAlchemy URL; stopped and removed afterwards."""
    assert PG_BIN is not None
    user = pwd.getpwnam("postgres")
    root = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    os.chown(root, user.pw_uid, user.pw_gid)

    def as_postgres() -> None:
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)

    data = root / "data"
    try:
        subprocess.run([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A",
                        "trust"], check=True, capture_output=True, preexec_fn=as_postgres,
                       timeout=120)
        subprocess.run([str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-l", str(root / "log"),
                        "-o", f"-k {root} -c listen_addresses=''", "start"],
                       check=True, capture_output=True, preexec_fn=as_postgres, timeout=120)
        yield f"postgresql+psycopg://postgres@/postgres?host={root}"
    finally:
        subprocess.run([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                        "stop"], capture_output=True, preexec_fn=as_postgres, timeout=120)
        shutil.rmtree(root, ignore_errors=True)
