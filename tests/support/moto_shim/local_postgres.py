"""A real PostgreSQL on loopback, for the shim's tests and scripts/demo.

Finding the server binaries, the user to run them as (PostgreSQL refuses root), a throwaway CA and
a server certificate for 127.0.0.1/localhost made with the `openssl` CLI, and a primary ready to
be put behind an emulated instance (`POST /_shim/postgres`: `wal_level = replica`, free WAL
senders and slots, replication trusted from 127.0.0.1).

What is missing raises `Missing` with the reason: tests/support/test_moto_shim.py turns it into a
failure (CI has the binaries), scripts/demo into its metric path. Standard library only.
"""

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile

TOOLS = ("initdb", "pg_ctl", "postgres", "pg_basebackup", "psql")


class Missing(Exception):
    """Something a local PostgreSQL needs is not on this machine; the message says what."""


class CommandFailed(Exception):
    pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bin_dir():
    """Like tests/postgres/server.rs Bins::locate: pg_ctl on PATH (symlinks resolved), else the
    newest /usr/lib/postgresql/*/bin holding every tool in TOOLS."""
    found = shutil.which("pg_ctl")
    if found:
        d = os.path.dirname(os.path.realpath(found))
        if all(os.path.isfile(os.path.join(d, t)) for t in TOOLS):
            return d
    dirs = [d for d in glob.glob("/usr/lib/postgresql/*/bin") if all(os.path.isfile(os.path.join(d, t)) for t in TOOLS)]
    dirs.sort(key=lambda d: int(d.split("/")[-2]) if d.split("/")[-2].isdigit() else 0)
    if not dirs:
        raise Missing("PostgreSQL server binaries not found (initdb, pg_ctl, postgres, pg_basebackup, psql on PATH "
                      "or under /usr/lib/postgresql/<version>/bin; Debian: apt-get install postgresql)")
    return dirs[-1]


def run_as():
    """None when not root; else (uid, gid) of `pgtest` (created if missing) or `nobody`."""
    if os.geteuid() != 0:
        return None
    for user in ("pgtest", "nobody"):
        try:
            p = pwd.getpwnam(user)
            return p.pw_uid, p.pw_gid
        except KeyError:
            if user == "pgtest":
                subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user],
                               capture_output=True)
                try:
                    p = pwd.getpwnam(user)
                    return p.pw_uid, p.pw_gid
                except KeyError:
                    pass
    raise Missing("running as root, and neither a `pgtest` user nor `nobody` exists to run PostgreSQL as")


def openssl_available():
    return shutil.which("openssl") is not None


def make_certs(directory, owner=None):
    """A CA (P-256, CA:TRUE) and a server certificate it signs for localhost and 127.0.0.1
    (serverAuth), as files in `directory` (as tests/postgres/access.rs make_certs). The server key
    is mode 0600 and owned by `owner` ((uid, gid) or None). Returns {"ca", "cert", "key"} paths."""
    if not openssl_available():
        raise Missing("the `openssl` CLI is needed to make the test certificates (Debian: apt-get install openssl)")
    with open(os.path.join(directory, "ca.cnf"), "w") as f:
        f.write("[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = aurora-migrator test CA\n"
                "[v3_ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n"
                "subjectKeyIdentifier = hash\n")
    with open(os.path.join(directory, "server.ext"), "w") as f:
        f.write("subjectAltName = DNS:localhost,IP:127.0.0.1\nbasicConstraints = critical,CA:FALSE\n"
                "keyUsage = critical,digitalSignature,keyEncipherment\nextendedKeyUsage = serverAuth\n"
                "authorityKeyIdentifier = keyid\n")

    def openssl(*args):
        p = subprocess.run(["openssl", *args], cwd=directory, capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise CommandFailed(f"openssl {' '.join(args)}: {p.stdout}{p.stderr}")

    ec = ("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out")
    openssl(*ec, "ca.key")
    openssl("req", "-x509", "-new", "-config", "ca.cnf", "-extensions", "v3_ca", "-key", "ca.key",
            "-subj", "/CN=aurora-migrator test CA", "-days", "2", "-out", "ca.pem")
    openssl(*ec, "server.key")
    openssl("req", "-new", "-key", "server.key", "-subj", "/CN=localhost", "-out", "server.csr")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", "2",
            "-days", "2", "-extfile", "server.ext", "-out", "server.pem")
    key = os.path.join(directory, "server.key")
    os.chmod(key, 0o600)  # PostgreSQL wants its key readable by the server user alone
    if owner:
        os.chown(key, *owner)
    return {"ca": os.path.join(directory, "ca.pem"), "cert": os.path.join(directory, "server.pem"), "key": key}


class Primary:
    """A PostgreSQL primary on 127.0.0.1, run as an unprivileged user, in a fresh /tmp dir.

    `tls=True` makes a test CA and server certificate in the dir (`self.certs`) and turns on
    `ssl` with SCRAM passwords. pg_hba.conf trusts local and 127.0.0.1 connections (the shim
    rewrites it on a quarantine). `stop()` stops it and removes the dir, standbys the shim made
    under it included."""

    def __init__(self, tls=False, prefix="shim-pg-", conf=()):
        self.bin = bin_dir()
        self.run_as = run_as()
        self.root = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
        self.certs = None
        self.started = False
        try:
            self.data = os.path.join(self.root, "primary")
            self.sock = os.path.join(self.root, "sock")
            os.makedirs(self.sock)
            for p in (self.root, self.sock):
                self._chown(p)
            self.port = free_port()
            self.run("initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C",
                     "--no-sync")
            lines = [f"listen_addresses = '127.0.0.1'", f"port = {self.port}",
                     f"unix_socket_directories = '{self.sock}'", "wal_level = replica", "max_wal_senders = 4",
                     "max_replication_slots = 4", "wal_receiver_status_interval = 1",
                     "wal_retrieve_retry_interval = '500ms'", "shared_buffers = 16MB", "max_connections = 20",
                     *conf]
            if tls:
                certs_dir = os.path.join(self.root, "certs")
                os.makedirs(certs_dir)
                self.certs = make_certs(certs_dir, self.run_as)
                for p in (certs_dir, self.certs["cert"]):
                    self._chown(p)
                lines += ["ssl = on", f"ssl_cert_file = '{self.certs['cert']}'",
                          f"ssl_key_file = '{self.certs['key']}'", "password_encryption = 'scram-sha-256'"]
            with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
                f.write("\n" + "\n".join(lines) + "\n")
            with open(os.path.join(self.data, "pg_hba.conf"), "w") as f:
                f.write("local all all trust\nlocal replication all trust\n"
                        "host replication all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 trust\n")
            self.started = True
            self.run("pg_ctl", "start", "-D", self.data, "-l", os.path.join(self.root, "primary.log"), "-w")
        except BaseException:
            self.stop()
            raise

    def _chown(self, path):
        if self.run_as:
            os.chown(path, *self.run_as)

    def run(self, tool, *args, check=True):
        kw = {"user": self.run_as[0], "group": self.run_as[1], "extra_groups": []} if self.run_as else {}
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        p = subprocess.run([os.path.join(self.bin, tool), *args], cwd=self.root, env=env, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=120, **kw)
        if check and p.returncode != 0:
            raise CommandFailed(f"{tool} {args}: {p.stdout}{p.stderr}")
        return p

    def sql(self, sql, sock=None, port=None):
        """psql as `postgres` over the Unix socket of this server (or of `sock`/`port`); the output."""
        p = self.run("psql", "-h", sock or self.sock, "-p", str(port or self.port), "-U", "postgres", "-X",
                     "-At", "-v", "ON_ERROR_STOP=1", "-c", sql)
        return p.stdout.strip()

    def tcp(self, user, port=None):
        """psql over TCP as `user` (what an application does); the completed process."""
        return self.run("psql", "-h", "127.0.0.1", "-p", str(port or self.port), "-U", user, "-d", "postgres",
                        "-X", "-At", "-c", "SELECT 1", check=False)

    def version(self):
        return self.sql("SHOW server_version").split()[0]

    def pid(self, data=None):
        with open(os.path.join(data or self.data, "postmaster.pid")) as f:
            return int(f.readline())

    def log_tail(self, lines=20):
        try:
            with open(os.path.join(self.root, "primary.log")) as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self):
        """Stops every server under the dir (the primary, and standbys a killed shim left), then
        removes it. Safe to call twice."""
        if not os.path.isdir(self.root):
            return
        for pid_file in glob.glob(os.path.join(self.root, "*", "postmaster.pid")):
            data = os.path.dirname(pid_file)
            if self.started and data != getattr(self, "data", None):
                self.run("pg_ctl", "stop", "-D", data, "-m", "immediate", "-w", "-t", "10", check=False)
        if self.started:
            self.run("pg_ctl", "stop", "-D", self.data, "-m", "immediate", "-w", "-t", "10", check=False)
        shutil.rmtree(self.root, ignore_errors=True)
