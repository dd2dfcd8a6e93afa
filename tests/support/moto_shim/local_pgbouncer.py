"""A real PgBouncer on loopback in front of PostgreSQL servers from local_postgres.py.

`Bouncer(databases={"app": (host, port, dbname)})` writes a pgbouncer.ini and a userlist.txt in a
fresh /tmp directory, starts `pgbouncer` on 127.0.0.1 on a free port (in the foreground, as the
unprivileged user local_postgres runs PostgreSQL as, since PgBouncer refuses to run as root), and
waits until it accepts connections. `stop()` ends it by its pid and removes the directory.

Authentication: `auth_type = scram-sha-256`. The admin user (`admin_users`, default `pgb_admin`)
and any `users` given are listed with their passwords in userlist.txt; every other user is looked
up in the real server's pg_shadow through `auth_user` (default `postgres`, trusted from 127.0.0.1
by local_postgres's pg_hba.conf), so clients log in with the passwords PostgreSQL has.

The admin console (`admin()`, `show()`, `pause()`, `reload()`, `resume()`) is driven with `psql`
from local_postgres.bin_dir(): the console speaks only the simple query protocol, which psql uses.
Re-pointing a database is `set_database()` (rewrites the [databases] entry) then `reload()`.

What is missing raises local_postgres.Missing with the reason (Debian: apt-get install pgbouncer,
or scripts/install-pgbouncer). Standard library only.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from .local_postgres import CommandFailed, Missing, bin_dir, free_port, run_as


def pgbouncer_binary():
    """The pgbouncer executable: on PATH, else Debian's /usr/sbin/pgbouncer."""
    found = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if os.path.isfile("/usr/sbin/pgbouncer") else None)
    if not found:
        raise Missing("pgbouncer not found (on PATH or /usr/sbin/pgbouncer; Debian: apt-get install pgbouncer, "
                      "or scripts/install-pgbouncer)")
    return found


def version():
    out = subprocess.run([pgbouncer_binary(), "--version"], capture_output=True, text=True, timeout=10).stdout
    return out.split()[1] if out.startswith("PgBouncer") else out.strip()


class Bouncer:
    """A PgBouncer on 127.0.0.1:`port`.

    `databases`: {name: (host, port, dbname)}; `pool_mode`: "transaction" (the default; the mode in
    which PAUSE completes with clients connected and open clients move to a new server) or
    "session"; `users`: {name: password} written to userlist.txt; `auth_user`: the server role
    that reads pg_shadow for everyone else (None: userlist.txt only); `settings`: extra
    `key = value` lines for the [pgbouncer] section (e.g. {"query_wait_timeout": 5})."""

    def __init__(self, databases, pool_mode="transaction", users=None, auth_user="postgres",
                 admin=("pgb_admin", "pgb-admin-pw"), settings=None, prefix="shim-pgb-"):
        self.binary = pgbouncer_binary()
        self.psql = os.path.join(bin_dir(), "psql")
        self.run_as = run_as()
        self.databases = {k: tuple(v) for k, v in databases.items()}
        self.pool_mode = pool_mode
        self.users = dict(users or {})
        self.auth_user = auth_user
        self.admin_user, self.admin_password = admin
        self.settings = dict(settings or {})
        self.root = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
        self.ini = os.path.join(self.root, "pgbouncer.ini")
        self.log = os.path.join(self.root, "pgbouncer.log")  # its stdout and stderr
        self.proc = None
        try:
            if self.run_as:
                os.chown(self.root, *self.run_as)
            self.port = free_port()
            self._write_userlist()
            self._write_ini()
            self._start()
        except BaseException:
            self.stop()
            raise

    # -- files ----------------------------------------------------------------------------
    def _write(self, path, text):
        with open(path + ".tmp", "w") as f:
            f.write(text)
        if self.run_as:
            os.chown(path + ".tmp", *self.run_as)
        os.chmod(path + ".tmp", 0o600)
        os.replace(path + ".tmp", path)  # RELOAD never sees a half-written file

    def _write_userlist(self):
        users = {self.admin_user: self.admin_password, **self.users}
        self._write(os.path.join(self.root, "userlist.txt"),
                    "".join(f'"{u}" "{p}"\n' for u, p in users.items()))

    def _write_ini(self):
        dbs = "".join(f"{name} = host={h} port={p} dbname={d}\n" for name, (h, p, d) in self.databases.items())
        settings = {
            "listen_addr": "127.0.0.1",
            "listen_port": self.port,
            "unix_socket_dir": "",  # TCP only
            "auth_type": "scram-sha-256",
            "auth_file": os.path.join(self.root, "userlist.txt"),
            "admin_users": self.admin_user,
            "pool_mode": self.pool_mode,
            "pidfile": os.path.join(self.root, "pgbouncer.pid"),
            "max_client_conn": 100,
            "default_pool_size": 10,
            "server_login_retry": 1,  # default 15 s after a failed server login
            "ignore_startup_parameters": "extra_float_digits,options",
            **({"auth_user": self.auth_user} if self.auth_user else {}),
            **self.settings,
        }
        body = "".join(f"{k} = {v}\n" for k, v in settings.items())
        self._write(self.ini, f"[databases]\n{dbs}\n[pgbouncer]\n{body}")

    # -- process -----------------------------------------------------------------------------
    def _start(self):
        kw = {"user": self.run_as[0], "group": self.run_as[1], "extra_groups": []} if self.run_as else {}
        out = open(self.log, "wb")
        try:
            self.proc = subprocess.Popen([self.binary, self.ini], cwd=self.root, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, **kw)
        finally:
            out.close()
        self.pid = self.proc.pid
        started = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise CommandFailed(f"pgbouncer exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() - started > 15:
                    raise CommandFailed(f"pgbouncer did not listen within 15 s: {self.log_tail()}")
                time.sleep(0.05)
        self.started_in = time.monotonic() - started

    def stop(self):
        """SIGTERM (PgBouncer's immediate shutdown) by pid, SIGKILL after 5 s; removes the dir.
        Safe to call twice."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines=20):
        try:
            with open(self.log) as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    # -- clients and the admin console ---------------------------------------------------------
    def dsn(self, user, password, dbname):
        """A libpq connection string to `dbname` through this PgBouncer."""
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={user} password={password} sslmode=disable"

    def _psql(self, sql, timeout, extra=()):
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGPASSWORD"] = self.admin_password
        p = subprocess.run([self.psql, "-h", "127.0.0.1", "-p", str(self.port), "-U", self.admin_user, "-d",
                            "pgbouncer", "-X", "-v", "ON_ERROR_STOP=1", *extra, "-c", sql],
                           env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0:
            raise CommandFailed(f"pgbouncer admin {sql!r}: {p.stdout}{p.stderr}")
        return p.stdout

    def admin(self, command, timeout=30):
        """Runs one admin console command (PAUSE app, RELOAD, RESUME app, …); its output.
        subprocess.TimeoutExpired when it does not answer in time (PAUSE waits for servers)."""
        return self._psql(command, timeout, ("-A", "-t"))

    def show(self, what, timeout=10):
        """SHOW <what> (DATABASES, SERVERS, CLIENTS, POOLS, …) as a list of dicts."""
        out = self._psql(f"SHOW {what}", timeout, ("-A", "-F", "\t", "-P", "footer=off"))
        lines = [ln for ln in out.splitlines() if ln]
        if not lines:
            return []
        head = lines[0].split("\t")
        return [dict(zip(head, ln.split("\t"))) for ln in lines[1:]]

    def pause(self, db=None, timeout=30):
        return self.admin(f"PAUSE {db}" if db else "PAUSE", timeout)

    def resume(self, db=None, timeout=30):
        return self.admin(f"RESUME {db}" if db else "RESUME", timeout)

    def reload(self, timeout=30):
        return self.admin("RELOAD", timeout)

    def set_database(self, name, host, port, dbname=None):
        """Rewrites the [databases] entry `name` (atomically); takes effect at the next RELOAD."""
        dbname = dbname or self.databases[name][2]
        self.databases[name] = (host, int(port), dbname)
        self._write_ini()
