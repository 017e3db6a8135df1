"""Several "hosts" for one test, as Linux network namespaces (a support module, not tests).

For federation tests: fingerd front-ends (--backend xmlrpc --remote http://A:8000/RPC2) and
authorities (--backend sqlite/memory), each on its own host with its own address, ports and
links that can be cut.  Needs root and the `ip` program (iproute2); tests skip otherwise:

    hosts = Hosts.start_for(self, ["a", "b", "c"])      # skips unless Hosts.available()
    authority = Fingerd(hosts, "a", "--backend", "memory", test=self)
    front = Fingerd(hosts, "b", "--backend", "xmlrpc", "--remote", authority.url, test=self)
    front.finger("alice", via="c")                       # a client run inside host c
    hosts.isolate("a"); ...; hosts.reconnect("a")

Layout: one namespace per host, fdt-XXXXXX-NAME (XXXXXX random, so parallel runs and
leftovers never collide), and a namespace fdt-XXXXXX holding the bridge br0 that joins them
(veth pairs: pN in the bridge's namespace, eth0 in the host's).  Nothing is made in the root
namespace but the netns handles under /run/netns.  Hosts get .1, .2, ... of a /24 chosen at
random in 198.18.0.0/15 (benchmarking) or 10.0.0.0/8 that no route or address of the machine
covers.  Every host knows every other host's MAC address (permanent neighbour entries), so
isolate() is a clean black hole: packets are dropped, connects and reads hang until their
timeouts, and no ARP failure turns it into a quick "no route to host".

The test process stays in the root namespace, which has no route to the hosts: programs run
inside a host with hosts.command()/popen()/run()/python(), and hosts.query() is a one-shot
TCP client (send, optionally half-close, read until closed) run inside a host.  Inside a
namespace every port is free, so fingerd can use its real ports (79, 1079, 8000).

close() (also at addCleanup and atexit) kills whatever still runs in the namespaces and
deletes them; Hosts.sweep() deletes the leftovers of runs that died without closing (a run
holds a flock on its bridge's namespace handle, so a live run is never swept).
"""
import atexit
import fcntl
import ipaddress
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest

PREFIX = "fdt-"
NETNS_DIR = "/run/netns"
IP_TIMEOUT = 10.0            # no `ip`/`tc` command may take longer than this
RUN_TIMEOUT = 30.0           # default limit of hosts.run()/python()
QUERY_TIMEOUT = 10.0         # default limit of hosts.query()
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
GROUP = re.compile(r"^%s([0-9a-f]{6})$" % PREFIX)
MEMBER = re.compile(r"^%s([0-9a-f]{6})-.+$" % PREFIX)
PROBE = re.compile(r"^%sprobe-[0-9a-f]{6}$" % PREFIX)
RANGES = (ipaddress.ip_network("198.18.0.0/15"), ipaddress.ip_network("10.0.0.0/8"))


class HostsError(RuntimeError):
    """An ip/tc command failed, or close() could not remove everything."""


class Unsupported(unittest.SkipTest):
    """This machine cannot do that (e.g. no netem); a test that meets it is skipped."""


def _ip(*args, check: bool = True, timeout: float = IP_TIMEOUT) -> str:
    """Run `ip ARGS`; its output.  HostsError when it fails (unless check is false)."""
    return _run(["ip", *args], check, timeout)


def _run(argv, check: bool = True, timeout: float = IP_TIMEOUT) -> str:
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        if check:
            raise HostsError("%s: %s" % (" ".join(argv), e)) from None
        return ""
    if check and done.returncode != 0:
        raise HostsError("%s: exit %d: %s" % (" ".join(argv), done.returncode,
                                              done.stderr.strip()))
    return done.stdout


def _namespaces() -> list:
    """The names of the network namespaces (`ip netns list`)."""
    return [line.split()[0] for line in _ip("netns", "list", check=False).splitlines()
            if line.strip()]


def _pids(namespace: str) -> list:
    return [int(p) for p in _ip("netns", "pids", namespace, check=False).split() if p.isdigit()]


def _kill_all(namespace: str, timeout: float = 5.0) -> bool:
    """SIGKILL every process in the namespace until none is left; False if some remain."""
    end = time.monotonic() + timeout
    while True:
        pids = [p for p in _pids(namespace) if p != os.getpid()]
        if not pids:
            return True
        if time.monotonic() > end:
            return False
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.05)


def _locked(group: str) -> bool:
    """Whether a live run holds its lock on group's namespace (False when it is gone)."""
    try:
        fd = os.open(os.path.join(NETNS_DIR, group), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _host_networks() -> list:
    """The IPv4 networks this machine routes or has addresses in (the default route aside)."""
    nets = []
    text = _ip("-4", "-o", "route", "show", "table", "all", check=False)
    text += _ip("-4", "-o", "addr", "show", check=False)
    for line in text.splitlines():
        words = line.split()
        if "inet" in words:                       # `ip -o addr`: N: dev inet ADDR/LEN ...
            candidates = [words[words.index("inet") + 1]]
        else:                                     # a route, maybe after its type
            candidates = words[:2]
        for word in candidates:
            if word == "default":
                break
            try:
                nets.append(ipaddress.ip_network(word, strict=False))
                break
            except ValueError:
                continue
    return nets


def _choose_subnet() -> ipaddress.IPv4Network:
    taken = _host_networks()
    rng = random.SystemRandom()
    for _ in range(200):
        space = rng.choice(RANGES)
        index = rng.randrange(space.num_addresses // 256)
        subnet = ipaddress.ip_network((int(space.network_address) + 256 * index, 24))
        if not any(subnet.overlaps(net) for net in taken if net.version == 4):
            return subnet
    raise HostsError("no free /24 in %s" % ", ".join(map(str, RANGES)))


_LIVE = []                   # started Hosts not yet closed, for atexit
_PROBES = {}                 # cached answers of available() and delay_available()


@atexit.register
def _close_all():
    for hosts in list(_LIVE):
        try:
            hosts.close()
        except Exception as e:                   # at exit: report, do not raise
            sys.stderr.write("tests/hosts.py: close failed: %s\n" % e)


class Hosts:
    """Network namespaces as hosts on one bridged /24; see the module's docstring."""

    def __init__(self, names, subnet=None) -> None:
        names = list(names)
        if not names or len(set(names)) != len(names) or len(names) > 250:
            raise ValueError("hosts need 1 to 250 distinct names: %r" % (names,))
        for name in names:
            if not NAME.match(name):
                raise ValueError("bad host name %r (letters, digits, _ . -)" % name)
        self.names = names
        self.subnet = ipaddress.ip_network(subnet) if subnet else None
        self.group = None            # fdt-XXXXXX: the bridge's namespace, prefix of the hosts'
        self._addresses = {}
        self._isolated = set()
        self._procs = []
        self._lock_fd = None
        self._made = []              # namespaces this object created, in order
        self._mutex = threading.Lock()
        self.started = self.closed = False
        self.setup_seconds = self.teardown_seconds = None

    # ---- availability -------------------------------------------------------------------

    @classmethod
    def available(cls):
        """(True, "") when namespaces with a bridge and veth pairs can be made here, else
        (False, why).  Tried once per process, with a throwaway namespace."""
        if "hosts" not in _PROBES:
            _PROBES["hosts"] = cls._probe()
        return _PROBES["hosts"]

    @staticmethod
    def _probe():
        if not sys.platform.startswith("linux"):
            return False, "network namespaces need Linux"
        if os.geteuid() != 0:
            return False, "network namespaces need root"
        if shutil.which("ip") is None:
            return False, "no `ip` program (iproute2)"
        probe = "%sprobe-%s" % (PREFIX, secrets.token_hex(3))
        try:
            _ip("netns", "add", probe)
        except HostsError as e:
            return False, "cannot create a network namespace: %s" % e
        try:
            _ip("-n", probe, "link", "add", "b0", "type", "bridge")
            _ip("-n", probe, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
            _ip("-n", probe, "link", "set", "v0", "master", "b0")
            _ip("netns", "exec", probe, "true")
        except HostsError as e:
            return False, "network namespaces lack bridges or veth pairs: %s" % e
        finally:
            _kill_all(probe)
            _ip("netns", "del", probe, check=False)
        return True, ""

    @classmethod
    def delay_available(cls):
        """(True, "") when add_delay() works here (tc with the netem qdisc), else (False, why)."""
        if "delay" not in _PROBES:
            ok, why = cls.available()
            if ok and shutil.which("tc") is None:
                ok, why = False, "no `tc` program"
            if ok:
                probe = "%sprobe-%s" % (PREFIX, secrets.token_hex(3))
                try:
                    _ip("netns", "add", probe)
                    _ip("netns", "exec", probe, "tc", "qdisc", "add", "dev", "lo", "root",
                        "netem", "delay", "1ms")
                except HostsError as e:
                    ok, why = False, "no netem delay: %s" % e
                finally:
                    _ip("netns", "del", probe, check=False)
            _PROBES["delay"] = (ok, why)
        return _PROBES["delay"]

    @classmethod
    def start_for(cls, test: unittest.TestCase, names, subnet=None) -> "Hosts":
        """Skip `test` unless available(); else started hosts, closed at its cleanup (the
        first call in a process also sweep()s what dead runs left)."""
        ok, why = cls.available()
        if not ok:
            test.skipTest(why)
        if not _PROBES.get("swept"):
            _PROBES["swept"] = True
            cls.sweep()                 # what runs killed before their close() left
        hosts = cls(names, subnet)
        test.addCleanup(hosts.close)
        return hosts.start()

    # ---- set up and tear down -----------------------------------------------------------

    def start(self) -> "Hosts":
        """Create the namespaces, the bridge and the links; on any failure, undo and raise."""
        if self.started:
            raise HostsError("already started")
        self.started = True
        began = time.monotonic()
        _LIVE.append(self)
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        self.setup_seconds = time.monotonic() - began
        return self

    def _start(self) -> None:
        if self.subnet is None:
            self.subnet = _choose_subnet()
        hosts = list(self.subnet.hosts())
        if len(hosts) < len(self.names):
            raise HostsError("%s is too small for %d hosts" % (self.subnet, len(self.names)))
        failure = None
        for _ in range(20):
            group = PREFIX + secrets.token_hex(3)
            if any(n == group or n.startswith(group + "-") for n in _namespaces()):
                continue
            try:
                _ip("netns", "add", group)         # fails if a parallel run just took it
                break
            except HostsError as e:
                failure = e
        else:
            raise failure or HostsError("no free namespace name")
        self.group = group
        self._made.append(group)
        # Held while this run lives: sweep() leaves a locked group alone.
        self._lock_fd = os.open(os.path.join(NETNS_DIR, group), os.O_RDONLY | os.O_CLOEXEC)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _ip("-n", group, "link", "add", "br0", "type", "bridge", "stp_state", "0")
        _ip("-n", group, "link", "set", "lo", "up")
        _ip("-n", group, "link", "set", "br0", "up")
        macs = {}
        for index, name in enumerate(self.names):
            ns = self.namespace(name)
            address = str(hosts[index])
            mac = "02:fd:00:00:%02x:%02x" % ((index + 1) >> 8, (index + 1) & 0xFF)
            self._made.append(ns)
            _ip("netns", "add", ns)
            _ip("-n", group, "link", "add", self._port(name), "type", "veth",
                "peer", "name", "eth0", "netns", ns)
            _ip("-n", group, "link", "set", self._port(name), "master", "br0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", "eth0", "address", mac, "up")
            _ip("-n", ns, "addr", "add", "%s/%d" % (address, self.subnet.prefixlen),
                "dev", "eth0")
            self._addresses[name] = address
            macs[name] = mac
        for name in self.names:
            for other in self.names:
                if other != name:
                    _ip("-n", self.namespace(name), "neigh", "replace", self._addresses[other],
                        "lladdr", macs[other], "dev", "eth0", "nud", "permanent")

    def close(self) -> None:
        """Kill every process in the namespaces, delete them (and so their links).
        Idempotent.  HostsError if something could not be removed."""
        with self._mutex:
            if self.closed or not self.started:
                self.closed = True
                return
            self.closed = True
        began = time.monotonic()
        try:
            for proc in self._procs:
                if proc.poll() is None:
                    try:
                        proc.kill()
                    except OSError:
                        pass
            for proc in self._procs:
                try:
                    proc.wait(IP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    pass
            problems = []
            if self.group is not None:
                problems = _delete_group(self.group, self._made, self._lock_fd)
            self._lock_fd = None
        finally:
            if self in _LIVE:
                _LIVE.remove(self)
        self.teardown_seconds = time.monotonic() - began
        if problems:
            raise HostsError("close left: %s" % "; ".join(problems))

    @classmethod
    def sweep(cls) -> list:
        """Delete the namespaces of runs that ended without close() (killed, crashed); runs
        still alive hold a lock and are left alone.  The names deleted."""
        if os.geteuid() != 0 or shutil.which("ip") is None:
            return []
        names = _namespaces()
        groups = {n for n in names if GROUP.match(n)}
        orphans = {g for g in groups if not _locked(g)}
        probes = {n for n in names if PROBE.match(n)}
        if orphans or probes:
            # A run locks its bridge's namespace just after `ip netns add`, and a probe
            # lasts milliseconds: look again after a while, so that a run starting now is
            # not taken for dead.
            time.sleep(0.5)
            orphans = {g for g in orphans if not _locked(g)}
            probes &= set(_namespaces())
        for probe in sorted(probes):
            _delete_group(probe, [probe], None)
        for name in names:
            match = MEMBER.match(name)
            if match and PREFIX + match.group(1) not in groups:
                orphans.add(PREFIX + match.group(1))       # its bridge is gone already
        swept = sorted(probes)
        for group in sorted(orphans):
            members = [n for n in names if n == group or n.startswith(group + "-")]
            _delete_group(group, members, None)
            swept += members
        return swept

    def __enter__(self) -> "Hosts":
        return self if self.started else self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- addresses and names ------------------------------------------------------------

    def namespace(self, name: str) -> str:
        """The network namespace of host `name` (for `ip netns exec`, `ip -n`)."""
        if name not in self.names:
            raise KeyError("no host %r (hosts: %s)" % (name, ", ".join(self.names)))
        if self.group is None:
            raise HostsError("hosts are not started")
        return "%s-%s" % (self.group, name)

    def address(self, name: str) -> str:
        """Host `name`'s IPv4 address (on eth0, in self.subnet)."""
        self._check(name)
        return self._addresses[name]

    def _port(self, name: str) -> str:
        return "p%d" % self.names.index(name)          # the bridge's side of its veth

    def _check(self, name: str) -> None:
        if name not in self.names:
            raise KeyError("no host %r (hosts: %s)" % (name, ", ".join(self.names)))
        if not self.started or self.closed or name not in self._addresses:
            raise HostsError("hosts are not running")

    # ---- running programs in a host -----------------------------------------------------

    def command(self, name: str, argv) -> list:
        """argv prefixed so that it runs inside host `name` (ip netns exec NS ...)."""
        return ["ip", "netns", "exec", self.namespace(name), *argv]

    def popen(self, name: str, argv, **kwargs) -> subprocess.Popen:
        """subprocess.Popen of argv inside host `name` (stdin defaults to /dev/null); it is
        killed and reaped at close() if still running.  Its pipes are the caller's to close.
        `ip netns exec` execs the program, so proc.pid is the program itself."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(self.command(name, argv), **kwargs)
        self._procs.append(proc)
        return proc

    def run(self, name: str, argv, timeout: float = RUN_TIMEOUT, **kwargs):
        """subprocess.run of argv inside host `name`, output captured, with a timeout
        (subprocess.TimeoutExpired when over it; the program is killed)."""
        kwargs.setdefault("capture_output", True)
        if "input" not in kwargs:
            kwargs.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run(self.command(name, argv), timeout=timeout, **kwargs)

    def python(self, name: str, code: str, *args, timeout: float = RUN_TIMEOUT, **kwargs):
        """Run Python code (python3 -c CODE ARGS) inside host `name`; a CompletedProcess."""
        return self.run(name, [sys.executable, "-c", code, *map(str, args)], timeout=timeout,
                        **kwargs)

    def query(self, name: str, address: str, port: int, data: bytes = b"",
              half_close: bool = False, timeout: float = QUERY_TIMEOUT) -> bytes:
        """From inside host `name`: connect to address:port, send data (then shut the
        sending side if half_close), read until the server closes; at most `timeout`
        seconds in all.  The answer, or the client's error raised here: socket.timeout when
        it ran out of time, else OSError with the errno (ConnectionRefusedError, ...)."""
        done = self.python(name, _CLIENT, address, port, timeout, int(half_close),
                           input=bytes(data), timeout=timeout + IP_TIMEOUT)
        if done.returncode == 0:
            return done.stdout
        why = done.stderr.decode("utf-8", "replace").strip()
        where = "%s -> %s:%s" % (name, address, port)
        if done.returncode == 3 and why == "timeout":
            raise socket.timeout("timed out (%s)" % where)
        if done.returncode == 3 and why.split(" ", 1)[0].isdigit():
            code, _, text = why.partition(" ")
            raise OSError(int(code), "%s (%s)" % (text, where))
        raise HostsError("client in %s failed (exit %d): %s" % (name, done.returncode, why))

    # ---- faults -------------------------------------------------------------------------

    def isolate(self, name: str) -> None:
        """Partition host `name` from all others: its port on the bridge goes down, so
        every packet to or from it is dropped (connects and reads hang).  Its own address
        and loopback keep working, and its processes keep running."""
        self._check(name)
        _ip("-n", self.group, "link", "set", self._port(name), "down")
        self._isolated.add(name)

    def reconnect(self, name: str) -> None:
        """Undo isolate(): its port comes up again (forwarding at once, no STP)."""
        self._check(name)
        _ip("-n", self.group, "link", "set", self._port(name), "up")
        self._isolated.discard(name)

    def isolated(self, name: str) -> bool:
        self._check(name)
        return name in self._isolated

    def add_delay(self, name: str, ms: float, jitter_ms: float = 0) -> None:
        """Delay every packet to and from host `name` by ms (so its round trips with any
        other host take 2*ms longer), with tc netem on both ends of its link.  Raises
        Unsupported (a SkipTest) where netem is missing."""
        self._check(name)
        ok, why = self.delay_available()
        if not ok:
            raise Unsupported(why)
        delay = ["delay", "%gms" % ms] + (["%gms" % jitter_ms] if jitter_ms else [])
        _ip("netns", "exec", self.namespace(name), "tc", "qdisc", "replace", "dev", "eth0",
            "root", "netem", *delay)
        _ip("netns", "exec", self.group, "tc", "qdisc", "replace", "dev", self._port(name),
            "root", "netem", *delay)

    def clear_delay(self, name: str) -> None:
        """Undo add_delay()."""
        self._check(name)
        _ip("netns", "exec", self.namespace(name), "tc", "qdisc", "del", "dev", "eth0", "root",
            check=False)
        _ip("netns", "exec", self.group, "tc", "qdisc", "del", "dev", self._port(name), "root",
            check=False)


def _delete_group(group: str, namespaces, lock_fd) -> list:
    """Kill the processes in, then delete, the namespaces (the bridge's last); problems."""
    problems = []
    hosts = [ns for ns in namespaces if ns != group]
    for ns in hosts + [group]:
        if not _kill_all(ns):
            problems.append("processes in %s" % ns)
    for ns in hosts:
        _ip("netns", "del", ns, check=False)
    if lock_fd is not None:
        os.close(lock_fd)               # the lock file is the bridge's netns: let it go
    _ip("netns", "del", group, check=False)
    left = [n for n in _namespaces() if n == group or n.startswith(group + "-")]
    for ns in left:                     # one more try, e.g. after a slow kill
        _kill_all(ns)
        _ip("netns", "del", ns, check=False)
    left = [n for n in _namespaces() if n == group or n.startswith(group + "-")]
    if left:
        problems.append("namespaces %s" % ", ".join(left))
    return problems


# The client hosts.query() runs inside a host: argv ADDRESS PORT TIMEOUT HALF_CLOSE, the
# data on stdin, the answer on stdout; exit 3 with "timeout" or "ERRNO text" on stderr.
_CLIENT = r"""
import socket, sys, time
address, port, timeout, half = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
data = sys.stdin.buffer.read()
end = time.monotonic() + timeout
chunks = []
try:
    sock = socket.create_connection((address, port), timeout=timeout)
    sock.sendall(data)
    if half == "1":
        sock.shutdown(socket.SHUT_WR)
    while True:
        left = end - time.monotonic()
        if left <= 0:
            raise socket.timeout()
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
except socket.timeout:
    sys.stderr.write("timeout")
    sys.exit(3)
except OSError as e:
    sys.stderr.write("%s %s" % (e.errno, e.strerror))
    sys.exit(3)
sys.stdout.buffer.write(b"".join(chunks))
"""


class Fingerd:
    """fingerd (support.command) run inside host `name`: its listeners bound to the host's
    address on the real ports (finger 79, setter 1079, http 8000) unless args name them;
    started when its log says `ready`; stopped at the test's cleanup (and at hosts.close)."""

    def __init__(self, hosts: Hosts, name: str, *args, test=None, env=None, cwd=None,
                 ready: str = "serving with", timeout: float = QUERY_TIMEOUT) -> None:
        import support                  # tests/support.py: how the suite runs fingerd
        self.hosts, self.name = hosts, name
        self.address = hosts.address(name)
        self.args = list(args)
        for flag, port in (("--finger", 79), ("--setter", 1079), ("--http", 8000)):
            if flag not in self.args:
                self.args += [flag, "%s:%d" % (self.address, port)]
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = hosts.popen(name, support.command(*self.args), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=full_env, cwd=cwd)
        self.lines, self.ports = [], {}
        self._ready = threading.Event()
        # read as support.Daemon reads its log: ports from its "listening on" lines
        self._reader = threading.Thread(target=support.Daemon._read_log, args=(self, ready),
                                        daemon=True)
        self._reader.start()
        if test is not None:
            test.addCleanup(self.stop)
        if not self._ready.wait(timeout) or self.proc.poll() is not None:
            self.stop()
            raise HostsError("fingerd did not start in %s: %s" % (name, self.log))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    @property
    def url(self) -> str:
        """Its XML-RPC endpoint, for another host's --remote."""
        return "http://%s:%d/RPC2" % (self.address, self.ports["http"])

    def wait_for_log(self, text: str, timeout: float = QUERY_TIMEOUT) -> bool:
        end = time.monotonic() + timeout
        while text not in self.log:
            if time.monotonic() > end:
                return False
            time.sleep(0.02)
        return True

    def finger(self, query: str, via=None, timeout: float = QUERY_TIMEOUT) -> str:
        """Its finger answer to `query`, asked from host `via` (default: its own host)."""
        answer = self.hosts.query(via or self.name, self.address, self.ports["finger"],
                                  (query + "\r\n").encode("utf-8"), timeout=timeout)
        return answer.decode("utf-8", "replace")

    def set_status(self, user: str, status: str, via=None,
                   timeout: float = QUERY_TIMEOUT) -> str:
        """Set a status through its setter, from host `via` (default: its own host)."""
        answer = self.hosts.query(via or self.name, self.address, self.ports["setter"],
                                  ("%s\n%s\n" % (user, status)).encode("utf-8"),
                                  half_close=True, timeout=timeout)
        return answer.decode("utf-8", "replace")

    def stop(self) -> None:
        """Kill it (if running) and reap it; idempotent."""
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(IP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        self._reader.join(IP_TIMEOUT)
        if not self._reader.is_alive():
            self.proc.stderr.close()


if __name__ == "__main__":          # python3 tests/hosts.py: sweep leftovers of dead runs
    ok, why = Hosts.available()
    print("available" if ok else "unavailable: %s" % why)
    if ok:
        print("swept: %s" % (", ".join(Hosts.sweep()) or "nothing"))
