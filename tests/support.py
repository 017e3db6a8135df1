"""Shared test helpers: real servers on port 0, real sockets, the real command line.

FINGERD=/path/to/fingerd runs the black-box (subprocess) tests against that program, and the
white-box tests import fingerd from it, so the same suite tests an installed package.
"""
import importlib.machinery
import importlib.util
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FINGERD = os.environ.get("FINGERD") or os.path.join(ROOT, "fingerd.py")
TIMEOUT = 10.0          # no client socket in the tests waits longer than this


def module_path() -> str:
    """The fingerd.py the white-box tests import: FINGERD itself, or the module a launcher
    runs (the wrapper's neighbour, or the package's /usr/share/fingerd/fingerd.py)."""
    if FINGERD.endswith(".py"):
        return FINGERD
    for path in (os.path.join(os.path.dirname(os.path.realpath(FINGERD)), "fingerd.py"),
                 "/usr/share/fingerd/fingerd.py"):
        if os.path.exists(path):
            return path
    return FINGERD


def _load_fingerd():
    loader = importlib.machinery.SourceFileLoader("fingerd", module_path())
    spec = importlib.util.spec_from_loader("fingerd", loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fingerd"] = module
    loader.exec_module(module)
    return module


fingerd = sys.modules.get("fingerd") or _load_fingerd()
# Library logging stays quiet in test output; assertLogs still sees every record.
fingerd.log.addHandler(logging.NullHandler())

# No traceback may escape a thread in any test: fingerd contains every failure in its loops.
# A thread that dies of an exception is recorded here, and `python3 -m tests` fails the run.
THREAD_DEATHS = []
_default_excepthook = threading.excepthook


def _record_thread_death(args):
    name = args.thread.name if args.thread is not None else "?"
    THREAD_DEATHS.append("%s: %s: %s" % (name, args.exc_type.__name__, args.exc_value))
    _default_excepthook(args)


threading.excepthook = _record_thread_death


def command(*args):
    """The argv that runs fingerd with args (python3 FILE for a .py, else the program)."""
    if FINGERD.endswith(".py"):
        return [sys.executable, FINGERD, *args]
    return [FINGERD, *args]


def temp_dir(test: unittest.TestCase) -> str:
    path = tempfile.mkdtemp(prefix="fingerd-test-")
    test.addCleanup(shutil.rmtree, path, True)
    return path


def skip_unless_port_79_free(test: unittest.TestCase) -> None:
    """Skip `test` unless this process may bind 127.0.0.1:79 now (the real finger client
    has no port option)."""
    if os.geteuid() != 0:
        test.skipTest("port 79 needs root")
    probe = socket.socket()
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as the server does
    try:
        probe.bind(("127.0.0.1", 79))
    except OSError as e:
        test.skipTest("port 79 is not free: %s" % e)
    finally:
        probe.close()


def write_file(path: str, text: str) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def serve(test: unittest.TestCase, server):
    """Run a PooledTCPServer's loop in a thread until the test ends."""
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()

    def stop():
        server.shutdown()
        thread.join(TIMEOUT)
        server.server_close()
    test.addCleanup(stop)
    return server


def connect(port: int, host: str = "127.0.0.1", timeout: float = TIMEOUT) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    return sock


def read_all(sock: socket.socket, limit: int = 1 << 22) -> bytes:
    chunks, size = [], 0
    while size < limit:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
        size += len(data)
    return b"".join(chunks)


def query(port: int, data: bytes, half_close: bool = False, host: str = "127.0.0.1",
          timeout: float = TIMEOUT) -> bytes:
    """Send data, optionally shut the sending side, and read until the server closes."""
    with connect(port, host, timeout) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        return read_all(sock)


def set_status(port: int, user: str, status: str) -> bytes:
    return query(port, ("%s\n%s\n" % (user, status)).encode("utf-8"), half_close=True)


def proc_value(pid, field: str) -> int:
    """A number from /proc/PID/status (VmRSS in kB, Threads, ...); 0 when absent."""
    with open("/proc/%s/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def thread_count() -> int:
    """Threads of this process as the kernel counts them."""
    return proc_value("self", "Threads")


def wait_for(predicate, timeout: float = TIMEOUT, step: float = 0.02) -> bool:
    """Poll predicate() until it is true or the time is up; its last answer."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


LISTENING = re.compile(r"(\w+) listening on \[?([0-9a-fA-F.:]+)\]?:(\d+)")


class Daemon:
    """fingerd as a subprocess on port 0, its ports read from its log; stopped at cleanup."""

    def __init__(self, test: unittest.TestCase, *args, env=None, cwd=None,
                 ready: str = "serving with", prefix=(), program=None):
        """`prefix`: what runs the command (nsenter into a namespace, ip netns exec);
        `program`: the argv that runs fingerd, instead of command()'s."""
        self.args = list(args)
        defaults = {"--finger": "127.0.0.1:0", "--setter": "127.0.0.1:0", "--http": "off"}
        for flag, value in defaults.items():
            if flag not in self.args:
                self.args += [flag, value]
        full_env = dict(os.environ)
        full_env.update(env or {})
        argv = list(program) + self.args if program else command(*self.args)
        self.proc = subprocess.Popen(list(prefix) + argv,
                                     stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env,
                                     cwd=cwd)
        self.lines = []
        self.ports = {}
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read_log, args=(ready,), daemon=True)
        self._reader.start()
        test.addCleanup(self.stop)
        if not self._ready.wait(TIMEOUT):
            self.stop()
            test.fail("fingerd did not start: %s" % self.log)

    def _read_log(self, ready):
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            match = LISTENING.search(line)
            if match:
                self.ports[match.group(1)] = int(match.group(3))
            if ready in line:
                self._ready.set()
        self._ready.set()

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_for_log(self, text: str, timeout: float = TIMEOUT) -> bool:
        return wait_for(lambda: text in self.log, timeout)

    def signal(self, signum=signal.SIGTERM):
        self.proc.send_signal(signum)

    def wait(self, timeout: float = TIMEOUT) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(TIMEOUT)
        return code

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
        self._reader.join(TIMEOUT)
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()


def run_cli(*args, env=None, timeout: float = TIMEOUT, cwd=None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(command(*args), capture_output=True, text=True, timeout=timeout,
                          env=full_env, cwd=cwd, stdin=subprocess.DEVNULL)
