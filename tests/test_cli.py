"""The command line, black-box: flags, exit statuses, listeners, signals, and the
--set/--clear client."""
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import unittest
import xmlrpc.client

from support import (ROOT, TIMEOUT, Daemon, command, connect, fingerd, module_path, query,
                     read_all, run_cli, set_status, temp_dir, write_file)


class HelpAndUsageTest(unittest.TestCase):
    def test_help(self):
        out = run_cli("--help")
        self.assertEqual(out.returncode, 0)
        for flag in ["--backend", "--db", "--users-file", "--refresh", "--finger", "--setter",
                     "--http", "--no-list", "--setter-allow", "--log-level", "--version"]:
            self.assertIn(flag, out.stdout)

    def test_version(self):
        out = run_cli("--version")
        self.assertEqual(out.returncode, 0)
        self.assertRegex(out.stdout, r"^fingerd \d+\.\d+\.\d+")

    def test_usage_errors_exit_2(self):
        for args in (["--bogus"], ["--finger", "x"], ["--finger", "70000"],
                     ["--backend", "nosuch"], ["--refresh", "0"], ["--refresh", "inf"],
                     ["--refresh", "nan"], ["--rate", "-1"], ["--max-conns-per-ip", "x"],
                     ["--setter-allow", "x/y"],
                     ["--finger", "::1:79"]):
            out = run_cli(*args)
            self.assertEqual(out.returncode, 2, args)
            self.assertIn("usage:", out.stderr)


class StartupFailureTest(unittest.TestCase):
    def assert_one_line_failure(self, out, *needles):
        self.assertEqual(out.returncode, 1, out.stderr)
        self.assertNotIn("Traceback", out.stderr)
        last = out.stderr.strip().splitlines()[-1]
        self.assertTrue(last.startswith("fingerd: "), last)
        for needle in needles:
            self.assertIn(needle, last)

    def test_nothing_to_serve(self):
        # Under systemd, a start before its sockets listen must fail (and be restarted),
        # not run with no listener at all.
        out = run_cli("--backend", "memory", "--finger", "off", "--setter", "off",
                      "--http", "off", "--setter-socket", "off")
        self.assertEqual(out.returncode, 1)
        self.assertIn("nothing to serve", out.stderr)

    def test_port_in_use(self):
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        self.addCleanup(busy.close)
        port = busy.getsockname()[1]
        out = run_cli("--backend", "memory", "--finger", "127.0.0.1:%d" % port,
                      "--setter", "off", "--http", "off")
        self.assert_one_line_failure(out, "127.0.0.1:%d" % port, "in use")
        # create_server() puts "(while attempting to bind on address ...)" in strerror
        self.assertTrue(out.stderr.strip().endswith("Address already in use"), out.stderr)

    def test_a_host_that_does_not_resolve(self):
        # Outsider 2: a resolver's error has a negative errno; its words must stay.
        out = run_cli("--backend", "memory", "--finger", "nosuchhost.invalid:0",
                      "--setter", "off", "--http", "off")
        self.assert_one_line_failure(out, "nosuchhost.invalid:0")
        self.assertNotIn("Unknown error", out.stderr)

    @unittest.skipIf(os.geteuid() == 0, "root may bind low ports")
    def test_privileged_port_hint(self):
        out = run_cli("--backend", "memory", "--finger", "127.0.0.1:79", "--setter", "off",
                      "--http", "off")
        self.assert_one_line_failure(out, "127.0.0.1:79", "--finger 7979")

    def test_file_backend_without_file(self):
        out = run_cli("--backend", "file", "--finger", "127.0.0.1:0", "--setter", "off",
                      "--http", "off")
        self.assert_one_line_failure(out, "--users-file")

    def test_missing_users_file(self):
        missing = os.path.join(temp_dir(self), "missing")
        out = run_cli("--backend", "file", "--users-file", missing, "--finger", "127.0.0.1:0",
                      "--setter", "off", "--http", "off")
        self.assert_one_line_failure(out, missing)

    def test_unopenable_database(self):
        db = os.path.join(temp_dir(self), "no-such-dir", "x.db")
        out = run_cli("--db", db, "--finger", "127.0.0.1:0", "--setter", "off", "--http", "off")
        self.assert_one_line_failure(out, db)


class RunningDaemonTest(unittest.TestCase):
    def test_a_second_fingerd_on_the_same_setter_socket_is_refused(self):
        path = os.path.join(temp_dir(self), "setter.sock")
        first = Daemon(self, "--backend", "memory", "--setter-socket", path)
        out = run_cli("--backend", "memory", "--finger", "127.0.0.1:0", "--setter", "off",
                      "--http", "off", "--setter-socket", path)
        self.assertEqual(out.returncode, 1, out.stderr)
        self.assertTrue(out.stderr.strip().endswith("%s: another process listens on it"
                                                    % path), out.stderr)
        self.assertTrue(os.path.exists(path))
        first.signal(signal.SIGTERM)
        self.assertEqual(first.wait(), 0)
        self.assertFalse(os.path.exists(path))          # the first one's own, removed by it

    def test_port_zero_and_listening_lines(self):
        daemon = Daemon(self, "--backend", "memory")
        self.assertIn("finger", daemon.ports)
        self.assertIn("setter", daemon.ports)
        self.assertRegex(daemon.log, r"finger listening on 127\.0\.0\.1:\d+")
        self.assertEqual(query(daemon.ports["finger"], b"alice\r\n"), b"No such user\r\n")

    def test_off_disables_a_listener(self):
        daemon = Daemon(self, "--backend", "memory", "--setter", "off")
        self.assertNotIn("setter", daemon.ports)

    def test_default_database_in_state_directory(self):
        state = temp_dir(self)
        daemon = Daemon(self, env={"STATE_DIRECTORY": state})
        self.assertEqual(query(daemon.ports["setter"], b"alice\nhere\n", half_close=True),
                         b"OK\r\n")
        self.assertTrue(os.path.exists(os.path.join(state, "fingerd.db")))

    def test_default_database_in_current_directory(self):
        cwd = temp_dir(self)
        env = {"STATE_DIRECTORY": ""}
        Daemon(self, env=env, cwd=cwd)
        self.assertTrue(os.path.exists(os.path.join(cwd, "fingerd.db")))

    def test_sigterm_exits_0_and_closes_the_store(self):
        db = os.path.join(temp_dir(self), "fingerd.db")
        daemon = Daemon(self, "--db", db)
        self.assertEqual(query(daemon.ports["setter"], b"alice\nsaved\n", half_close=True),
                         b"OK\r\n")
        daemon.signal(signal.SIGTERM)
        self.assertEqual(daemon.wait(), 0)
        self.assertIn("stopped", daemon.log)
        again = Daemon(self, "--db", db)
        self.assertEqual(query(again.ports["finger"], b"alice\r\n"), b"saved\r\n")

    def test_sigint_exits_0(self):
        daemon = Daemon(self, "--backend", "memory")
        daemon.signal(signal.SIGINT)
        self.assertEqual(daemon.wait(), 0)

    def test_reply_in_flight_finishes_after_sigterm(self):
        users = write_file(os.path.join(temp_dir(self), "users"), "alice: Happy and well\n")
        daemon = Daemon(self, "--backend", "file", "--users-file", users)
        port = daemon.ports["finger"]
        sock = connect(port)
        self.addCleanup(sock.close)
        sock.sendall(b"ali")                  # a query under way
        time.sleep(0.1)
        start = time.monotonic()
        daemon.signal(signal.SIGTERM)
        self.assertTrue(daemon.wait_for_log("stopping"))
        with self.assertRaises(OSError):      # no new clients once stopping
            for _ in range(50):
                query(port, b"alice\r\n", timeout=1)
                time.sleep(0.02)
        sock.sendall(b"ce\r\n")
        self.assertEqual(read_all(sock), b"Happy and well\r\n")
        self.assertEqual(daemon.wait(), 0)
        self.assertLess(time.monotonic() - start, 5.5)

    def test_stuck_client_does_not_delay_exit_past_the_drain_limit(self):
        daemon = Daemon(self, "--backend", "memory")
        sock = connect(daemon.ports["setter"])
        self.addCleanup(sock.close)
        sock.sendall(b"alice\nnever finished")
        time.sleep(0.1)
        start = time.monotonic()
        daemon.signal(signal.SIGTERM)
        self.assertEqual(daemon.wait(), 0)
        self.assertLess(time.monotonic() - start, 7.0)


class ClientTest(unittest.TestCase):
    def setUp(self):
        self.dir = temp_dir(self)
        self.path = os.path.join(self.dir, "setter.sock")
        self.daemon = Daemon(self, "--backend", "memory", "--setter-socket", self.path)
        self.me = fingerd.account_name(os.getuid())
        self.finger = self.daemon.ports["finger"]

    def client(self, *args, stdin=None):
        return subprocess.run(command("--setter-socket", self.path, *args), input=stdin,
                              capture_output=True, text=True, timeout=TIMEOUT)

    def test_set_expires_clear(self):
        out = self.client("--set", "Giving a tutorial now")
        self.assertEqual((out.returncode, out.stdout), (0, "OK\n"))
        self.assertEqual(query(self.finger, self.me.encode() + b"\r\n"),
                         b"Giving a tutorial now\r\n")
        self.assertEqual(self.client("--set", "At lunch", "--expires", "1h").returncode, 0)
        reply = query(self.finger, b"/W " + self.me.encode() + b"\r\n").decode()
        self.assertIn("Expires: ", reply)
        self.assertIn("(in 59 minutes)", reply)
        self.assertTrue(reply.endswith("At lunch\r\n"))
        self.assertEqual(self.client("--clear").returncode, 0)
        self.assertEqual(query(self.finger, self.me.encode() + b"\r\n"), b"No such user\r\n")

    def test_set_from_standard_input(self):
        out = self.client("--set", "-", stdin="line one\nline two\n")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(query(self.finger, self.me.encode() + b"\r\n"),
                         b"line one\r\nline two\r\n")

    def test_errors(self):
        out = self.client("--set", "x", "--expires", "soon")
        self.assertEqual(out.returncode, 1)
        self.assertIn("ERROR bad expiry", out.stderr)
        out = run_cli("--setter-socket", os.path.join(self.dir, "none.sock"), "--set", "x")
        self.assertEqual(out.returncode, 1)
        self.assertIn("cannot reach the setter socket", out.stderr)
        self.assertEqual(run_cli("--set", "x", "--clear").returncode, 2)
        self.assertEqual(run_cli("--expires", "1h").returncode, 2)

    def test_environment_names_the_socket(self):
        out = run_cli("--set", "via the environment", env={"FINGERD_SETTER_SOCKET": self.path})
        self.assertEqual(out.returncode, 0, out.stderr)


# Runs fingerd.main() as the wrapper does (python3 -S, the module imported), and at exit
# writes the names in sys.modules to $MODULES_OUT, one a line.
MODULES_DRIVER = """
import atexit, os, sys
sys.path[0] = os.path.dirname(sys.argv.pop(1))
sys.dont_write_bytecode = True     # no __pycache__ in the tree under test
def dump():
    with open(os.environ["MODULES_OUT"], "w") as f:
        f.write("\\n".join(sorted(sys.modules)))
atexit.register(dump)
import fingerd
sys.exit(fingerd.main())
"""

# What each mode may import: standard modules (with whatever they import in turn on this
# Python), beyond what the interpreter loads to run nothing.  Issue 19: HTTP's modules,
# sqlite3, ssl, xmlrpc, subprocess, logging ... are imported by what uses them, where it
# starts, so that --inetd and a finger-only daemon do not pay for them.
EVERY_MODE = ("__future__", "argparse", "bisect", "codecs", "enum", "errno", "functools",
              "gettext", "io", "itertools", "locale", "os", "re", "select", "selectors", "socket",
              "socketserver", "stat", "threading", "time")
# A daemon also imports, once serving, what its configuration will use (Daemon.warm_up):
# here the codecs of legacy text and of IDNA host names.
DAEMON = EVERY_MODE + ("ipaddress", "logging", "pwd", "resource", "signal", "struct",
                       "encodings.cp1252", "encodings.idna", "encodings.punycode",
                       "encodings.utf_16", "encodings.utf_16_le")
NEVER_WITHOUT_HTTP = ("http", "http.client", "http.server", "email", "email.utils", "ssl",
                      "xmlrpc", "xmlrpc.client", "xmlrpc.server", "json", "html", "zlib",
                      "gzip", "datetime", "urllib.parse", "sqlite3", "subprocess", "shutil",
                      "typing", "random", "base64", "ctypes", "concurrent.futures", "queue")


class ImportCostTest(unittest.TestCase):
    """Each mode imports only what it uses (issue 19), checked on the modules loaded at exit
    after the mode has done its work, so that a later import does not creep back."""

    def setUp(self):
        self.dir = temp_dir(self)
        self.out = os.path.join(self.dir, "modules.txt")
        self.program = [sys.executable, "-S", "-c", MODULES_DRIVER, module_path()]
        self.users = write_file(os.path.join(self.dir, "users"), "alice: Happy\n")

    def loaded(self) -> set:
        with open(self.out) as f:
            return set(f.read().split())

    def allowed(self, modules) -> set:
        """What importing `modules` loads on this Python, plus fingerd itself."""
        code = ("import atexit, os, sys, %s\n"
                "atexit.register(lambda: open(os.environ['MODULES_OUT'], 'w')"
                ".write('\\n'.join(sys.modules)))" % ", ".join(modules))
        out = os.path.join(self.dir, "allowed.txt")
        subprocess.run([sys.executable, "-S", "-c", code], check=True, timeout=TIMEOUT,
                       env=dict(os.environ, MODULES_OUT=out))
        with open(out) as f:
            return set(f.read().split()) | {"fingerd"}

    def assert_only(self, modules, never=NEVER_WITHOUT_HTTP):
        loaded = self.loaded()
        self.assertIn("fingerd", loaded)
        self.assertEqual(sorted(loaded - self.allowed(modules)), [],
                         "imported beyond what this mode uses")
        self.assertEqual(sorted(loaded & set(never)), [])

    def test_inetd_imports_only_the_finger_path(self):
        out = subprocess.run(self.program + ["--inetd", "--backend", "file", "--users-file",
                                             self.users],
                             input=b"alice\r\n", capture_output=True, timeout=TIMEOUT,
                             env=dict(os.environ, MODULES_OUT=self.out))
        self.assertEqual(out.stdout, b"Happy\r\n", out.stderr)
        self.assert_only(EVERY_MODE, NEVER_WITHOUT_HTTP + ("logging", "traceback", "signal",
                                                           "ipaddress", "shutil"))

    def serve_and_stop(self, *args, modules=DAEMON, never=NEVER_WITHOUT_HTTP) -> bytes:
        """Start a daemon with HTTP, the setter socket and IRC off; list users, write a
        status, finger it, stop; check what it imported.  The setter's answer."""
        daemon = Daemon(self, *args, "--http", "off", "--setter-socket", "off", "--irc", "off",
                        program=self.program, env={"MODULES_OUT": self.out})
        finger, setter = daemon.ports["finger"], daemon.ports["setter"]
        answer = set_status(setter, "alice", "Out")
        self.assertIn(b"alice", query(finger, b"\r\n"))
        expected = b"Out\r\n" if answer.startswith(b"OK") else b"Happy\r\n"
        self.assertTrue(query(finger, b"/W alice\r\n").endswith(expected))
        daemon.signal(signal.SIGTERM)
        self.assertEqual(daemon.wait(), 0, daemon.log)
        self.assert_only(modules, never)
        return answer

    def test_a_finger_only_daemon_imports_no_web_modules(self):
        answer = self.serve_and_stop("--backend", "file", "--users-file", self.users)
        self.assertTrue(answer.startswith(b"ERROR"), answer)        # the file is read-only

    def test_only_the_sqlite_backend_imports_sqlite3(self):
        db = os.path.join(self.dir, "f.db")
        sqlite = ("sqlite3", "queue", "datetime")        # sqlite3 imports datetime
        self.assertEqual(self.serve_and_stop(
            "--backend", "sqlite", "--db", db, modules=DAEMON + sqlite,
            never=tuple(m for m in NEVER_WITHOUT_HTTP if m not in sqlite)), b"OK\r\n")
        self.assertIn("sqlite3", self.loaded())

    def test_the_client_and_version_import_only_their_own(self):
        out = subprocess.run(self.program + ["--setter-socket", os.path.join(self.dir, "no"),
                                             "--set", "x"],
                             capture_output=True, timeout=TIMEOUT,
                             env=dict(os.environ, MODULES_OUT=self.out))
        self.assertIn(b"cannot reach the setter socket", out.stderr)
        self.assert_only(EVERY_MODE + ("pwd",), NEVER_WITHOUT_HTTP + ("logging", "signal"))
        out = subprocess.run(self.program + ["--version"], capture_output=True,
                             timeout=TIMEOUT, env=dict(os.environ, MODULES_OUT=self.out))
        self.assertEqual(out.stdout, ("fingerd %s\n" % fingerd.__version__).encode())
        self.assert_only(EVERY_MODE, NEVER_WITHOUT_HTTP + ("logging", "signal"))

    def test_no_pattern_is_compiled_at_import(self):
        """The module-level patterns compile at their first use (LazyPattern), which
        rebinds their names to the compiled pattern."""
        code = ("import os, re, sys\nsys.path[0] = os.path.dirname(sys.argv[1])\n"
                "sys.dont_write_bytecode = True\nimport fingerd\n"
                "print(sorted(n for n, v in vars(fingerd).items() if isinstance(v, re.Pattern)))\n"
                "print(fingerd.NAME_RE.fullmatch('alice') is not None, "
                "isinstance(fingerd.NAME_RE, re.Pattern))")
        out = subprocess.run([sys.executable, "-S", "-c", code, module_path()],
                             capture_output=True, text=True, timeout=TIMEOUT)
        self.assertEqual(out.stdout, "[]\nTrue True\n", out.stderr)


# Runs fingerd.main() with --user's privilege drop replaced by what it can do to imports:
# after it, the interpreter's own files may be out of reach (a Python under a 0700 /root),
# so from then on any module not loaded yet fails to import.  With $AFTER_WARM_UP set, the
# same from the end of Daemon.warm_up() on, without --user: as if the Python on disk had
# been upgraded under the running daemon.
PRELOAD_DRIVER = """
import os, sys
sys.path[0] = os.path.dirname(sys.argv.pop(1))
sys.dont_write_bytecode = True     # no __pycache__ in the tree under test
import fingerd

class OutOfReach:
    @staticmethod
    def find_spec(name, path=None, target=None):
        raise ImportError("%s: imported after the privilege drop" % name)

def drop_privileges(user):
    sys.meta_path.insert(0, OutOfReach)

warm_up = fingerd.Daemon.warm_up

def warm_up_then_lose_access(self):
    warm_up(self)
    sys.meta_path.insert(0, OutOfReach)
    print("no more imports", file=sys.stderr, flush=True)

if os.environ.get("AFTER_WARM_UP"):
    fingerd.Daemon.warm_up = warm_up_then_lose_access
else:
    fingerd.drop_privileges = drop_privileges
sys.exit(fingerd.main())
"""


class PreloadTest(unittest.TestCase):
    """Every module a mode imports after start-up is imported before --user drops
    privileges (preload()), so no request fails for a module it cannot load then."""

    def start(self, *args, user=("--user", "nobody"), env=None):
        self.daemon = Daemon(self, *args, *user, "--http", "127.0.0.1:0",
                             "--log-level", "debug", env=env,
                             program=[sys.executable, "-S", "-c", PRELOAD_DRIVER,
                                      module_path()])
        return self.daemon.ports["finger"], self.daemon.ports["http"]

    def get(self, port, path, headers=()):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        try:
            conn.request("GET", path, headers=dict(headers))
            response = conn.getresponse()
            return response.status, response.getheader("Last-Modified"), response.read()
        finally:
            conn.close()

    def exercise_web(self, port, user):
        for path in ("/", "/users.json", "/feed.atom", "/healthz", "/metrics",
                     "/%s.json" % user, "/.well-known/webfinger?resource=acct:%s@localhost"
                     % user):
            self.assertIn(self.get(port, path)[0], (200, 403, 404), path)
        code, modified, _ = self.get(port, "/" + user)
        self.assertEqual(code, 200)
        self.assertEqual(self.get(port, "/" + user, [("If-Modified-Since", modified)])[0], 304)
        self.assertEqual(self.get(port, "/", [("Accept-Encoding", "gzip")])[0], 200)
        with xmlrpc.client.ServerProxy("http://127.0.0.1:%d/RPC2" % port) as proxy:
            self.assertIn(user, proxy.getUsers())
            self.assertTrue(proxy.getUser(user))
            self.assertEqual(proxy.getUser("nosuch42"), fingerd.NO_SUCH_USER)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        conn.request("POST", "/RPC2", body=b"<?xml version='1.0'?><methodCall><bad",
                     headers={"Content-Type": "text/xml"})
        self.assertIn(b"<fault>", conn.getresponse().read())
        conn.close()

    def exercise_finger(self, port, user):
        for line in (b"\r\n", b"/W " + user.encode() + b"\r\n", b"nosuch42\r\n",
                     b"caf\xe9\r\n", b"\xff\xfeA\x00\r\n", b"alice@elsewhere\r\n"):
            self.assertTrue(query(port, line), line)

    def assert_no_failure(self):
        self.daemon.signal(signal.SIGTERM)
        self.assertEqual(self.daemon.wait(), 0, self.daemon.log)
        self.assertNotIn("imported after the privilege drop", self.daemon.log)
        self.assertNotIn("Traceback", self.daemon.log)
        self.assertNotIn("internal error", self.daemon.log)

    def test_sqlite_with_every_listener(self):
        db = os.path.join(temp_dir(self), "f.db")
        finger, web = self.start("--backend", "sqlite", "--db", db)
        self.assertEqual(set_status(self.daemon.ports["setter"], "alice", "Caf\u00e9 \u2615"),
                         b"OK\r\n")
        cesu8 = b"bob\n\xed\xa0\xbd\xed\xb8\x80 smile\n"      # U+1F600 as Java writes it
        self.assertEqual(query(self.daemon.ports["setter"], cesu8, half_close=True),
                         b"OK\r\n")
        self.exercise_finger(finger, "alice")
        self.exercise_web(web, "alice")
        self.assert_no_failure()

    def test_inetd(self):
        users = write_file(os.path.join(temp_dir(self), "users"), "alice: Caf\u00e9 time\n")
        for stdin in (subprocess.PIPE, "socket"):
            with self.subTest(stdin=stdin):
                server = client = None
                if stdin == "socket":                     # as inetd: one socket as 0, 1, 2
                    server, client = socket.socketpair()
                    client.sendall(b"alice\r\n")
                out = subprocess.run(
                    [sys.executable, "-S", "-c", PRELOAD_DRIVER, module_path(), "--inetd",
                     "--user", "nobody", "--log-queries", "--log-level", "debug",
                     "--backend", "file", "--users-file", users],
                    input=b"alice\r\n" if server is None else None,
                    stdin=server, stdout=server or subprocess.PIPE,
                    stderr=server or subprocess.PIPE, timeout=TIMEOUT)
                if server is not None:
                    server.close()
                    reply = read_all(client)
                    client.close()
                else:
                    reply = out.stdout
                    self.assertNotIn(b"Traceback", out.stderr)
                    self.assertIn(b"finger query", out.stderr)     # logged after the drop
                self.assertEqual((out.returncode, reply), (0, "Caf\u00e9 time\r\n".encode()))

    def test_nothing_is_imported_after_the_warm_up(self):
        db = os.path.join(temp_dir(self), "f.db")
        finger, web = self.start("--backend", "sqlite", "--db", db, user=(),
                                 env={"AFTER_WARM_UP": "1"})
        self.assertTrue(self.daemon.wait_for_log("no more imports"))
        self.assertEqual(set_status(self.daemon.ports["setter"], "alice", "Out"), b"OK\r\n")
        self.exercise_finger(finger, "alice")
        self.exercise_web(web, "alice")
        self.assert_no_failure()

    def test_first_requests_all_at_once(self):
        """Forty first requests of every kind at once, as the daemon starts: the modules
        they import at first use (in worker threads, with the pwd backend) and the warm-up
        importing the same ones never deadlock or see a half-imported module."""
        import concurrent.futures
        daemon = Daemon(self, "--backend", "pwd", "--http", "127.0.0.1:0", "--setter", "off")
        finger, web = daemon.ports["finger"], daemon.ports["http"]
        user = fingerd.account_name(os.getuid())
        paths = ["/", "/users.json", "/feed.atom", "/metrics", "/healthz", "/" + user,
                 "/%s.json" % user, "/.well-known/webfinger?resource=acct:%s@localhost" % user]

        def one(i):
            if i % 3 == 0:
                return bool(query(finger, b"/W " + user.encode() + b"\r\n"))
            if i % 3 == 1:
                with xmlrpc.client.ServerProxy("http://127.0.0.1:%d/RPC2" % web) as rpc:
                    return isinstance(rpc.getUsers(), list)       # the ordinary accounts
            path = paths[i % len(paths)]
            return path, self.get(web, path)[0]
        with concurrent.futures.ThreadPoolExecutor(40) as pool:
            answers = list(pool.map(one, range(40)))
        self.assertEqual([a for a in answers if a is False or isinstance(a, tuple) and
                          a[1] not in (200, 403, 404)], [])
        daemon.signal(signal.SIGTERM)
        self.assertEqual(daemon.wait(), 0, daemon.log)
        self.assertNotIn("Traceback", daemon.log)

    def test_pwd_backend(self):
        finger, web = self.start("--backend", "pwd", "--setter", "off")
        user = fingerd.account_name(os.getuid())
        self.exercise_finger(finger, user)
        for path in ("/", "/users.json", "/" + user, "/nosuch42"):
            self.assertIn(self.get(web, path)[0], (200, 403, 404), path)
        self.assert_no_failure()


class WrapperTest(unittest.TestCase):
    """./fingerd runs fingerd.py compiled once (issue 19), and only fingerd.py."""

    def setUp(self):
        self.dir = temp_dir(self)
        self.tree = os.path.join(self.dir, "tree with space")
        os.mkdir(self.tree)
        shutil.copy(os.path.join(ROOT, "fingerd"), self.tree)
        shutil.copy(module_path(), os.path.join(self.tree, "fingerd.py"))
        self.env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1",
                        PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])

    def run_wrapper(self, *args, program=None, cwd=None):
        return subprocess.run([program or os.path.join(self.tree, "fingerd"), *args],
                              capture_output=True, text=True, timeout=TIMEOUT, env=self.env,
                              cwd=cwd or self.dir)

    def test_compiled_once_and_an_edit_is_seen(self):
        self.assertEqual(self.run_wrapper("--version").stdout.split(), ["fingerd",
                                                                         fingerd.__version__])
        cache = os.path.join(self.tree, "__pycache__")
        self.assertEqual([name.split(".")[0] for name in os.listdir(cache)], ["fingerd"])
        path = os.path.join(self.tree, "fingerd.py")
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:                 # another size: a new version, not stale
            f.write(text.replace('__version__ = "%s"' % fingerd.__version__,
                                 '__version__ = "9.9.9-edited"'))
        self.assertEqual(self.run_wrapper("--version").stdout, "fingerd 9.9.9-edited\n")

    def test_through_a_symlink_and_not_the_callers_modules(self):
        for name in ("socket.py", "argparse.py", "fingerd.py"):
            write_file(os.path.join(self.dir, name), "raise SystemExit('hijacked')\n")
        link = os.path.join(self.dir, "bin-fingerd")
        os.symlink(os.path.join(self.tree, "fingerd"), link)
        out = self.run_wrapper("--version", program=link, cwd=self.dir)
        self.assertEqual((out.returncode, out.stdout, out.stderr),
                         (0, "fingerd %s\n" % fingerd.__version__, ""))


if __name__ == "__main__":
    unittest.main()
