"""A real directory service seen through NSS, for tests, without touching the host's.

    with Directory(enumeration=False, timelimit=2) as directory:
        directory.add_users([("dana", 1234500001, home, "Dana Scully")])
        directory.getent("passwd", "dana").stdout      # 'dana:*:1234500001:...'
        subprocess.Popen(directory.namespace_command(support.command("--backend", "pwd")))

What runs, all of it torn down by close() (also at interpreter exit, and when start() fails):

- slapd, on 127.0.0.1 and a free port, from a slapd.conf in a temporary directory: an mdb
  database there, suffix dc=fingerd,dc=test, ou=people and ou=groups, the core, cosine, nis
  and inetorgperson schemas, anonymous read.  It runs with -d none (in the foreground), so the
  harness holds its PID: stop_slapd() / start_slapd() (same port, same data), hang_slapd()
  (SIGSTOP) / resume_slapd() (SIGCONT).
- A holder process, `unshare -m --propagation private` running a shell that bind-mounts a
  generated /etc/nsswitch.conf (passwd and group: files ldap; shadow: files; the rest as the
  host's) and a generated /etc/nslcd.conf over the host's, puts a private tmpfs on /run/nslcd
  (and an empty one on /run/nscd when the host has one, so a host nscd cannot answer for the
  namespace), then execs `sleep infinity`.  Those mounts exist only in that mount namespace.
- nslcd -d (as the nslcd user, debug output to nslcd.log in the temporary directory), started
  in that namespace with nsenter; set_enumeration() and reconfigure() restart it.

Programs see the directory only when run in the namespace: namespace_command(argv) prefixes
argv with `nsenter -t HOLDER -m --wd=. --`.  The host's files are never written; the one host
change is an empty /run/nslcd directory (nslcd's own init script makes it) when the host has
none, needed as a mount point; it stays (removing it would unmount the private tmpfs of
another process's harness).

Children get a parent-death signal (SIGKILL), so a test runner killed outright leaves nothing
running (its temporary directory is swept by the next start()); the parent is the thread that
called start() or a restart, so call them from a thread that outlives the Directory.

Needs root and the Debian packages slapd, ldap-utils, nslcd and libnss-ldapd (installed with
ldap kept out of /etc/nsswitch.conf and the services not started: see .ci/run); available()
says why not.  Python 3.9, standard library only.
"""
import atexit
import base64
import ctypes
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time

SUFFIX = "dc=fingerd,dc=test"
PEOPLE = "ou=people," + SUFFIX
GROUPS = "ou=groups," + SUFFIX
ROOTDN = "cn=admin," + SUFFIX
ROOTPW = "fingerd-test-only"
SCHEMAS = ("core", "cosine", "nis", "inetorgperson")
SCHEMA_DIR = "/etc/ldap/schema"
NSLCD_RUN = "/run/nslcd"
NSCD_RUN = "/run/nscd"
NSS_LIBRARIES = tuple("%s/%slibnss_ldap.so.2" % (top, arch)
                      for top in ("/lib", "/usr/lib", "/lib64")
                      for arch in ("x86_64-linux-gnu/", "aarch64-linux-gnu/", ""))
# nslcd's own defaults (nslcd.conf(5)), which Debian's generated /etc/nslcd.conf keeps: a
# parameter left at None is not written, so nslcd behaves as on a stock Debian host.
NSLCD_DEFAULTS = {"bind_timelimit": 10, "timelimit": 0, "idle_timelimit": 0,
                  "reconnect_sleeptime": 1, "reconnect_retrytime": 10}

# In the host's /run/nslcd when a harness made it (the mount point for the private tmpfs);
# the directory stays, empty (see _remove_our_nslcd_run).
MADE_BY_US = ".made-by-fingerd-tests"
_live = 0                       # Directory instances of this process that may use it


class DirectoryError(RuntimeError):
    """The directory could not be started or changed; the message says where to look."""


def _which(name):
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def _nss_library():
    for path in NSS_LIBRARIES:
        if os.path.exists(path):
            return path
    try:
        out = subprocess.run(["ldconfig", "-p"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, universal_newlines=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if line.strip().startswith("libnss_ldap.so.2 "):
            return line.rsplit("=>", 1)[-1].strip()
    return None


TMP_PREFIX = "fingerd-directory-"


def _remove_our_nslcd_run():
    """Nothing: the host's /run/nslcd, once a harness made it, stays (empty, as nslcd's own
    init script leaves it).  Removing it would detach the private tmpfs mounted on it in
    every other namespace (Linux >= 3.18), breaking a harness another process still runs."""


def _sweep_leftovers():
    """Remove the temporary directories of harnesses whose process is gone (killed before
    close() could run; their children died with them, see _die_with_parent)."""
    base = tempfile.gettempdir()
    try:
        names = [n for n in os.listdir(base) if n.startswith(TMP_PREFIX)]
    except OSError:
        return
    for name in names:
        path = os.path.join(base, name)
        try:
            with open(os.path.join(path, "owner")) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if pid != os.getpid() and not os.path.exists("/proc/%d" % pid):
            shutil.rmtree(path, ignore_errors=True)
    if _live == 0:
        _remove_our_nslcd_run()


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent():
    """preexec_fn: SIGKILL this child when the process that started it dies (PR_SET_PDEATHSIG),
    so a test runner killed outright does not leave the holder or slapd behind."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    except Exception:       # best effort: close() and atexit still clean up
        pass


def _ldif_value(value):
    """`attr: value` or, for a value LDIF cannot carry plainly, `attr:: base64`."""
    text = str(value)
    plain = (text == text.strip() and not text.startswith((":", "<"))
             and all(32 <= ord(c) < 127 for c in text))
    if plain:
        return " " + text
    return ": " + base64.b64encode(text.encode("utf-8")).decode("ascii")


def _entry(dn, attributes):
    lines = ["dn:" + _ldif_value(dn)]
    for name, values in attributes:
        if not isinstance(values, (list, tuple)):
            values = [values]
        for value in values:
            lines.append(name + ":" + _ldif_value(value))
    return "\n".join(lines) + "\n"


def _stop_process(proc, timeout=10.0, sig=signal.SIGTERM):
    """Signal a Popen (continuing it first, in case it is stopped) and reap it; SIGKILL after
    `timeout` seconds."""
    if proc is None or proc.poll() is not None:
        return
    for s in (signal.SIGCONT, sig):
        try:
            proc.send_signal(s)
        except OSError:
            pass
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass


class Directory:
    """A throwaway slapd, and an nslcd answering NSS from it inside a private mount namespace.

    Constructor parameters: enumeration (False writes `nss_disable_enumeration yes`, so
    getpwent() sees only local accounts); the nslcd time-outs bind_timelimit, timelimit,
    idle_timelimit, reconnect_sleeptime and reconnect_retrytime in seconds (None: not written,
    nslcd's default of NSLCD_DEFAULTS applies); nslcd_extra, further nslcd.conf lines;
    start_timeout, how long start() and the restarts wait for slapd and nslcd.
    """

    def __init__(self, enumeration=True, bind_timelimit=None, timelimit=None,
                 idle_timelimit=None, reconnect_sleeptime=None, reconnect_retrytime=None,
                 nslcd_extra=(), start_timeout=20.0):
        self.enumeration = bool(enumeration)
        self.nslcd_options = {"bind_timelimit": bind_timelimit, "timelimit": timelimit,
                              "idle_timelimit": idle_timelimit,
                              "reconnect_sleeptime": reconnect_sleeptime,
                              "reconnect_retrytime": reconnect_retrytime}
        self.nslcd_extra = list(nslcd_extra)
        self.start_timeout = start_timeout
        self.suffix, self.people, self.groups = SUFFIX, PEOPLE, GROUPS
        self.tmpdir = None
        self.port = None
        self._slapd = None
        self._holder = None
        self._nslcd = None
        self._slapd_log = None
        self._nslcd_log = None
        self._users = []        # names added, for start()'s readiness check
        self._pending = []      # LDIF added before start()
        self._hung = False
        self._counted = False
        self._closed = False

    # ----- availability -----------------------------------------------------------------

    @staticmethod
    def available():
        """(True, "") when this machine can run a Directory, else (False, why not)."""
        if not hasattr(os, "geteuid") or os.geteuid() != 0:
            return False, "the LDAP directory harness needs root (mount namespaces, nslcd)"
        packages = {"slapd": "slapd", "slapadd": "slapd", "ldapadd": "ldap-utils",
                    "ldapdelete": "ldap-utils", "ldapsearch": "ldap-utils", "nslcd": "nslcd",
                    "unshare": "util-linux", "nsenter": "util-linux", "mount": "mount",
                    "getent": "libc-bin"}
        missing = [name for name in packages if _which(name) is None]
        if missing:
            return False, ("no %s (apt-get install %s)" % (
                ", ".join(missing), " ".join(sorted({packages[n] for n in missing}))))
        if _nss_library() is None:
            return False, "no libnss_ldap.so.2 (apt-get install libnss-ldapd)"
        for schema in SCHEMAS:
            if not os.path.exists(os.path.join(SCHEMA_DIR, schema + ".schema")):
                return False, "no %s/%s.schema (slapd)" % (SCHEMA_DIR, schema)
        for path in ("/etc/nsswitch.conf", "/etc/nslcd.conf"):
            if not os.path.isfile(path):
                return False, "no %s to bind-mount over (nslcd's package makes it)" % path
        try:
            import pwd
            pwd.getpwnam("nslcd")
        except KeyError:
            return False, "no nslcd user (the nslcd package makes it)"
        return True, ""

    # ----- life cycle -------------------------------------------------------------------

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
        return False

    def start(self):
        """Start slapd, the namespace and nslcd; returns self.  On failure everything started
        so far is torn down and DirectoryError raised."""
        global _live
        if self._closed:
            raise DirectoryError("this Directory was closed; make a new one")
        if self.tmpdir is not None:
            return self
        atexit.register(self.close)
        try:
            _sweep_leftovers()
            self.tmpdir = tempfile.mkdtemp(prefix=TMP_PREFIX)
            os.chmod(self.tmpdir, 0o755)
            with open(self._path("owner"), "w") as f:
                f.write("%d\n" % os.getpid())
            os.mkdir(os.path.join(self.tmpdir, "db"), 0o700)
            self._write_slapd_conf()
            self._load_ldif("\n".join([self._base_ldif()] + self._pending), online=False)
            self._pending = []
            self._start_slapd_on_a_free_port()
            _live += 1
            self._counted = True
            self._start_holder()
            self._write_nslcd_conf()
            self._start_nslcd()
        except BaseException:
            self.close()
            raise
        return self

    def close(self):
        """Stop nslcd, the holder (the namespace and its mounts go with it) and slapd, and
        remove the temporary directory.  Idempotent; never raises for what is already gone."""
        global _live
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        _stop_process(self._nslcd, 5.0)
        _stop_process(self._holder, 5.0, signal.SIGKILL)
        _stop_process(self._slapd, 10.0)
        for log in (self._slapd_log, self._nslcd_log):
            if log is not None:
                log.close()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        if self._counted:
            self._counted = False
            _live -= 1
            if _live == 0:
                _remove_our_nslcd_run()

    # ----- slapd ------------------------------------------------------------------------

    @property
    def uri(self):
        return "ldap://127.0.0.1:%d/" % self.port

    @property
    def slapd_pid(self):
        return self._slapd.pid if self.slapd_running else None

    @property
    def slapd_running(self):
        return self._slapd is not None and self._slapd.poll() is None

    def _path(self, name):
        return os.path.join(self.tmpdir, name)

    def _write_slapd_conf(self):
        lines = ["include %s/%s.schema" % (SCHEMA_DIR, schema) for schema in SCHEMAS]
        lines += [
            "pidfile %s" % self._path("slapd.pid"),
            "argsfile %s" % self._path("slapd.args"),
            "modulepath /usr/lib/ldap",
            "moduleload back_mdb",
            "sizelimit unlimited",
            "database mdb",
            'suffix "%s"' % SUFFIX,
            'rootdn "%s"' % ROOTDN,
            "rootpw %s" % ROOTPW,
            "directory %s" % self._path("db"),
            "maxsize 67108864",
            "access to attrs=userPassword by anonymous auth by * none",
            "access to dn.subtree=\"%s\" by * read" % SUFFIX,
            "access to * by * read",
        ]
        if not os.path.isdir("/usr/lib/ldap"):      # slapd built with back_mdb inside
            lines = [l for l in lines if not l.startswith(("modulepath", "moduleload"))]
        with open(self._path("slapd.conf"), "w") as f:
            f.write("\n".join(lines) + "\n")

    def _base_ldif(self):
        return "\n".join([
            _entry(SUFFIX, [("objectClass", ["dcObject", "organization"]), ("dc", "fingerd"),
                            ("o", "fingerd tests")]),
            _entry(PEOPLE, [("objectClass", "organizationalUnit"), ("ou", "people")]),
            _entry(GROUPS, [("objectClass", "organizationalUnit"), ("ou", "groups")]),
        ])

    def _start_slapd_on_a_free_port(self):
        last = ""
        for _ in range(5):
            self.port = _free_port()
            try:
                self.start_slapd()
                return
            except DirectoryError as e:
                last = str(e)
        raise DirectoryError("slapd did not start on any free port: " + last)

    def start_slapd(self):
        """Start slapd (again) on self.port with the same database; waits until it answers a
        search.  No-op when it is running."""
        if self.slapd_running:
            return
        if self._slapd_log is None:
            self._slapd_log = open(self._path("slapd.log"), "ab")
        self._slapd = subprocess.Popen(
            ["slapd", "-d", "none", "-f", self._path("slapd.conf"), "-h", self.uri],
            stdin=subprocess.DEVNULL, stdout=self._slapd_log, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._slapd.poll() is not None:
                raise DirectoryError("slapd exited with %s on port %d: see %s"
                                     % (self._slapd.returncode, self.port,
                                        self._tail(self._path("slapd.log"))))
            if self._slapd_answers():
                return
            time.sleep(0.05)
        _stop_process(self._slapd)
        raise DirectoryError("slapd did not answer on port %d within %ss"
                             % (self.port, self.start_timeout))

    def _slapd_listens(self):
        """Whether slapd itself (not another program on a port just taken) listens on
        127.0.0.1:port: one of its sockets in /proc/net/tcp, state LISTEN."""
        fd_dir = "/proc/%d/fd" % self._slapd.pid
        inodes = set()
        try:
            for fd in os.listdir(fd_dir):
                try:
                    target = os.readlink(os.path.join(fd_dir, fd))
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
            with open("/proc/net/tcp") as f:
                rows = [line.split() for line in f.readlines()[1:]]
        except OSError:
            return False
        local = "0100007F:%04X" % self.port
        return any(len(row) > 9 and row[1] == local and row[3] == "0A" and row[9] in inodes
                   for row in rows)

    def _slapd_answers(self):
        if not self._slapd_listens():
            return False
        try:
            proc = subprocess.run(["ldapsearch", "-x", "-LLL", "-H", self.uri, "-b", SUFFIX,
                                   "-s", "base", "-o", "nettimeout=2", "-l", "2", "dn"],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, timeout=3)
        except subprocess.TimeoutExpired:
            return False
        return proc.returncode == 0 and ("dn: " + SUFFIX) in proc.stdout.decode("utf-8", "replace")

    def stop_slapd(self, timeout=10.0):
        """SIGTERM slapd (continuing it first if hung) and wait for it to exit."""
        _stop_process(self._slapd, timeout)
        self._hung = False

    def hang_slapd(self):
        """SIGSTOP slapd: connections are still accepted by the kernel but never answered."""
        if not self.slapd_running:
            raise DirectoryError("slapd is not running")
        self._slapd.send_signal(signal.SIGSTOP)
        self._hung = True

    def resume_slapd(self):
        """SIGCONT slapd after hang_slapd()."""
        if self.slapd_running:
            self._slapd.send_signal(signal.SIGCONT)
        self._hung = False

    # ----- entries ----------------------------------------------------------------------

    def _load_ldif(self, ldif, online=None):
        """Add LDIF entries: with ldapadd while slapd runs, else with slapadd."""
        if self.tmpdir is None:
            if self._closed:
                raise DirectoryError("this Directory was closed")
            self._pending.append(ldif)          # start() loads it with the base entries
            return
        path = self._path("load-%d.ldif" % time.monotonic_ns())
        with open(path, "w", encoding="utf-8") as f:
            f.write(ldif)
        if online is None:
            online = self.slapd_running
        if online:
            if not self.slapd_running:
                raise DirectoryError("slapd is not running")
            argv = ["ldapadd", "-x", "-H", self.uri, "-D", ROOTDN, "-w", ROOTPW,
                    "-o", "nettimeout=5", "-f", path]
        else:
            argv = ["slapadd", "-f", self._path("slapd.conf"), "-l", path]
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, universal_newlines=True, timeout=30)
        os.unlink(path)
        if proc.returncode != 0:
            raise DirectoryError("%s failed (%d): %s" % (argv[0], proc.returncode,
                                                         proc.stdout.strip()[-2000:]))

    def add_user(self, name, uid, home, gecos, gid=None, shell="/bin/sh", group=True):
        """One posixAccount (uid=NAME,ou=people): uidNumber uid, gidNumber gid (default uid),
        homeDirectory home, cn and gecos gecos, loginShell shell; group=True also adds a
        posixGroup NAME with that gidNumber (a user private group).  Works whether or not
        slapd runs (ldapadd or slapadd), and before start(); nslcd has no cache, so it shows
        at once."""
        self.add_users([(name, uid, home, gecos, gid, shell, group)])

    def add_users(self, users):
        """Many users at once: tuples (name, uid, home, gecos[, gid[, shell[, group]]]) with
        the meanings of add_user()."""
        entries = []
        for user in users:
            name, uid, home, gecos = user[:4]
            gid = user[4] if len(user) > 4 and user[4] is not None else uid
            shell = user[5] if len(user) > 5 and user[5] is not None else "/bin/sh"
            group = user[6] if len(user) > 6 else True
            entries.append(_entry("uid=%s,%s" % (name, PEOPLE), [
                ("objectClass", ["top", "account", "posixAccount"]),
                ("uid", name), ("cn", gecos or name), ("uidNumber", int(uid)),
                ("gidNumber", int(gid)), ("homeDirectory", home), ("loginShell", shell),
                ("gecos", gecos or name)]))
            if group:
                entries.append(self._group_entry(name, gid, ()))
            self._users.append(name)
        if entries:
            self._load_ldif("\n".join(entries))

    def _group_entry(self, name, gid, members):
        attributes = [("objectClass", ["top", "posixGroup"]), ("cn", name),
                      ("gidNumber", int(gid))]
        if members:
            attributes.append(("memberUid", list(members)))
        return _entry("cn=%s,%s" % (name, GROUPS), attributes)

    def add_group(self, name, gid, members=()):
        """One posixGroup (cn=NAME,ou=groups) with gidNumber gid and memberUid members."""
        self._load_ldif(self._group_entry(name, gid, members))

    def remove_user(self, name):
        """Delete the user NAME (and its private group, if any); slapd must be running."""
        argv = ["ldapdelete", "-x", "-c", "-H", self.uri, "-D", ROOTDN, "-w", ROOTPW,
                "-o", "nettimeout=5", "uid=%s,%s" % (name, PEOPLE), "cn=%s,%s" % (name, GROUPS)]
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, universal_newlines=True, timeout=30)
        if proc.returncode not in (0, 32):     # 32: no such object (no private group)
            raise DirectoryError("ldapdelete failed (%d): %s" % (proc.returncode, proc.stdout))
        while name in self._users:
            self._users.remove(name)

    # ----- the namespace ----------------------------------------------------------------

    @property
    def holder_pid(self):
        return self._holder.pid if self._holder is not None else None

    def _start_holder(self):
        nsswitch = self._path("nsswitch.conf")
        with open(nsswitch, "w") as f:
            f.write(self._nsswitch_text())
        open(self._path("nslcd.conf"), "w").close()
        if not os.path.isdir(NSLCD_RUN):
            os.mkdir(NSLCD_RUN, 0o755)
            open(os.path.join(NSLCD_RUN, MADE_BY_US), "w").close()
        script = "\n".join([
            "set -e",
            'mount --bind "$1" /etc/nsswitch.conf',
            'mount --bind "$2" /etc/nslcd.conf',
            "mount -t tmpfs -o mode=0755,size=1m fingerd-nslcd %s" % NSLCD_RUN,
            "chown nslcd:nslcd %s" % NSLCD_RUN,
            "if [ -d %s ]; then mount -t tmpfs -o mode=0755,size=1m fingerd-nscd %s; fi"
            % (NSCD_RUN, NSCD_RUN),
            "echo ready",
            "exec sleep infinity",
        ])
        self._holder = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "holder",
             nsswitch, self._path("nslcd.conf")],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent)
        ready, _, _ = select.select([self._holder.stdout], [], [], self.start_timeout)
        line = self._holder.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            _stop_process(self._holder, 5.0, signal.SIGKILL)
            err = self._holder.stderr.read().decode("utf-8", "replace").strip()
            raise DirectoryError("the mount namespace was not set up: %s"
                                 % (err or "no answer"))
        self._holder.stdout.close()
        self._holder.stderr.close()

    @staticmethod
    def _nsswitch_text():
        keep = []
        with open("/etc/nsswitch.conf") as f:
            for line in f:
                key = line.split(":", 1)[0].strip()
                if ":" in line and key in ("passwd", "group", "shadow"):
                    continue
                keep.append(line.rstrip("\n"))
        return ("# fingerd tests: a private mount namespace's view (tests/directory.py)\n"
                "passwd:         files ldap\n"
                "group:          files ldap\n"
                "shadow:         files\n"
                + "\n".join(l for l in keep if not l.startswith("#")).strip() + "\n")

    def namespace_command(self, argv):
        """argv run in the namespace: `nsenter -t HOLDER -m --wd=. -- argv...` (the working
        directory is the one the command is started in, e.g. Popen's cwd)."""
        if self._holder is None or self._holder.poll() is not None:
            raise DirectoryError("the namespace is not running")
        return ["nsenter", "-t", str(self._holder.pid), "-m", "--wd=.", "--"] + list(argv)

    def popen(self, argv, **kwargs):
        """subprocess.Popen(namespace_command(argv), **kwargs)."""
        return subprocess.Popen(self.namespace_command(argv), **kwargs)

    def run(self, argv, timeout=10.0, **kwargs):
        """subprocess.run in the namespace, text output captured, with a timeout (raises
        subprocess.TimeoutExpired, the child killed).  The result has .elapsed (seconds)."""
        if "input" not in kwargs:
            kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("universal_newlines", True)
        started = time.monotonic()
        proc = subprocess.run(self.namespace_command(argv), timeout=timeout, **kwargs)
        proc.elapsed = time.monotonic() - started
        return proc

    def getent(self, *args, timeout=10.0):
        """`getent ARGS...` in the namespace: CompletedProcess with .stdout, .returncode (0
        found, 2 not found, which is also what an unreachable directory gives) and .elapsed."""
        return self.run(["getent"] + [str(a) for a in args], timeout=timeout)

    # ----- nslcd ------------------------------------------------------------------------

    @property
    def nslcd_pid(self):
        return self._nslcd.pid if self.nslcd_running else None

    @property
    def nslcd_running(self):
        return self._nslcd is not None and self._nslcd.poll() is None

    def nslcd_conf_text(self):
        lines = ["# fingerd tests: nslcd in a private mount namespace (tests/directory.py)"]
        if _which("setpriv") is None:       # else setpriv starts it as nslcd already
            lines += ["uid nslcd", "gid nslcd"]
        lines += ["uri %s" % self.uri, "base %s" % SUFFIX, "base passwd %s" % PEOPLE,
                  "base group %s" % GROUPS]
        for key in ("bind_timelimit", "timelimit", "idle_timelimit", "reconnect_sleeptime",
                    "reconnect_retrytime"):
            value = self.nslcd_options.get(key)
            if value is not None:
                lines.append("%s %s" % (key, value))
        if not self.enumeration:
            lines.append("nss_disable_enumeration yes")
        lines += self.nslcd_extra
        return "\n".join(lines) + "\n"

    def _write_nslcd_conf(self):
        # Written in place: the bind mount holds this inode, so no rename.
        with open(self._path("nslcd.conf"), "w") as f:
            f.write(self.nslcd_conf_text())
        os.chmod(self._path("nslcd.conf"), 0o644)

    def _in_namespace(self, path):
        return "/proc/%d/root%s" % (self._holder.pid, path)

    def _start_nslcd(self):
        socket_path = self._in_namespace(NSLCD_RUN + "/socket")
        for name in ("socket", "nslcd.pid"):
            try:
                os.unlink(self._in_namespace(NSLCD_RUN + "/" + name))
            except OSError:
                pass
        if self._nslcd_log is None:
            self._nslcd_log = open(self._path("nslcd.log"), "ab")
        argv = ["nslcd", "-d"]
        if _which("setpriv") is not None:
            # As the nslcd user from the start, with a parent-death signal that survives the
            # change of user (nslcd's own `uid` would clear it): a test runner killed outright
            # leaves no nslcd holding the namespace.
            argv = ["setpriv", "--reuid", "nslcd", "--regid", "nslcd", "--init-groups",
                    "--pdeathsig", "KILL", "--"] + argv
        self._nslcd = subprocess.Popen(self.namespace_command(argv),
                                       stdin=subprocess.DEVNULL, stdout=self._nslcd_log,
                                       stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout
        while not os.path.exists(socket_path):
            if self._nslcd.poll() is not None:
                raise DirectoryError("nslcd exited with %s: %s" % (
                    self._nslcd.returncode, self._tail(self._path("nslcd.log"))))
            if time.monotonic() > deadline:
                raise DirectoryError("nslcd made no socket within %ss" % self.start_timeout)
            time.sleep(0.02)
        if self._users and self.slapd_running and not self._hung:
            self.wait_until_resolves(self._users[0], deadline - time.monotonic())

    def stop_nslcd(self):
        """SIGTERM nslcd and wait: lookups then find no socket (NSS status UNAVAIL)."""
        _stop_process(self._nslcd, 5.0)

    def start_nslcd(self):
        """Start nslcd (again) with the current configuration; waits for its socket."""
        if not self.nslcd_running:
            self._start_nslcd()

    def reconfigure(self, **changes):
        """Change enumeration and/or any nslcd time-out parameter of the constructor, then
        restart nslcd with the new nslcd.conf."""
        for key, value in changes.items():
            if key == "enumeration":
                self.enumeration = bool(value)
            elif key in self.nslcd_options:
                self.nslcd_options[key] = value
            else:
                raise TypeError("unknown nslcd setting %r" % key)
        self.stop_nslcd()
        self._write_nslcd_conf()
        self._start_nslcd()

    def set_enumeration(self, enabled):
        """Turn getpwent() of directory users on or off (restarts nslcd)."""
        self.reconfigure(enumeration=enabled)

    def wait_until_resolves(self, name, timeout=10.0):
        """Wait until `getent passwd NAME` answers in the namespace; DirectoryError if not."""
        deadline = time.monotonic() + max(timeout, 0.1)
        last = None
        while True:
            left = deadline - time.monotonic()
            try:
                last = self.getent("passwd", name, timeout=max(left, 0.5))
                if last.returncode == 0:
                    return last
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() >= deadline:
                raise DirectoryError("getent passwd %s did not answer within %.1fs (exit %s); "
                                     "nslcd's log ends:\n%s"
                                     % (name, timeout, last and last.returncode,
                                        self._tail(self._path("nslcd.log"))))
            time.sleep(0.05)

    # ----- diagnostics ------------------------------------------------------------------

    def nslcd_log(self):
        """nslcd's debug output so far (for a failing test's message)."""
        return self._read(self._path("nslcd.log")) if self.tmpdir else ""

    def slapd_log(self):
        return self._read(self._path("slapd.log")) if self.tmpdir else ""

    @staticmethod
    def _read(path):
        try:
            with open(path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _tail(self, path, lines=15):
        return "\n".join(self._read(path).splitlines()[-lines:]) or "(empty log)"
