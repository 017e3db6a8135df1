"""fingerd as a Unix daemon: privilege drop, --inetd, socket activation, sd_notify, signals,
journald logging, --log-queries, @FILE arguments."""
import http.client
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import unittest

from support import (TIMEOUT, Daemon, command, connect, fingerd, query, read_all, run_cli,
                     temp_dir, write_file)

USERS = "alice: Happy and well\nbob: Busy\n"


def proc_status(pid):
    with open("/proc/%d/status" % pid) as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


class PrivilegeDropTest(unittest.TestCase):
    def setUp(self):
        if os.geteuid() != 0:
            self.skipTest("dropping privileges needs a test run as root")
        try:
            self.nobody = pwd.getpwnam("nobody")
        except KeyError:
            self.skipTest("no 'nobody' account here")
        self.dir = temp_dir(self)
        os.chmod(self.dir, 0o755)

    def test_binds_as_root_then_serves_as_the_user(self):
        users = write_file(os.path.join(self.dir, "users"), USERS)
        os.chmod(users, 0o644)
        daemon = Daemon(self, "--backend", "file", "--users-file", users, "--user", "nobody",
                        "--finger", "127.0.0.1:79" if self.port_79_free() else "127.0.0.1:0")
        status = proc_status(daemon.proc.pid)
        uid = str(self.nobody.pw_uid)
        self.assertEqual(status["Uid"].split(), [uid] * 4)
        self.assertEqual(status["Gid"].split(), [str(self.nobody.pw_gid)] * 4)
        self.assertEqual(status["Groups"].strip(), "")
        self.assertEqual(int(status["CapEff"], 16), 0)
        self.assertIn("running as nobody", daemon.log)
        self.assertEqual(query(daemon.ports["finger"], b"alice\r\n"), b"Happy and well\r\n")

    def port_79_free(self):
        probe = socket.socket()
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", 79))
            return True
        except OSError:
            return False
        finally:
            probe.close()

    def test_database_the_user_cannot_write_is_a_clear_error(self):
        private = os.path.join(self.dir, "private")
        os.mkdir(private, 0o700)                      # root's
        db = os.path.join(private, "fingerd.db")
        out = run_cli("--db", db, "--user", "nobody", "--finger", "127.0.0.1:0",
                      "--setter", "off", "--http", "off")
        self.assertEqual(out.returncode, 1)
        last = out.stderr.strip().splitlines()[-1]
        self.assertIn(db, last)
        self.assertIn("as user nobody", last)
        self.assertNotIn("Traceback", out.stderr)

    def test_users_file_the_user_cannot_read_is_a_clear_error(self):
        users = write_file(os.path.join(self.dir, "users"), USERS)
        os.chmod(users, 0o600)
        out = run_cli("--backend", "file", "--users-file", users, "--user", "nobody",
                      "--finger", "127.0.0.1:0", "--setter", "off", "--http", "off")
        self.assertEqual(out.returncode, 1)
        self.assertIn(users, out.stderr)
        self.assertIn("nobody", out.stderr.strip().splitlines()[-1])

    def test_unknown_user(self):
        out = run_cli("--backend", "memory", "--user", "no-such-account-x", "--finger",
                      "127.0.0.1:0", "--setter", "off", "--http", "off")
        self.assertEqual(out.returncode, 1)
        self.assertIn("no such user", out.stderr)

    def test_root_without_user_warns(self):
        daemon = Daemon(self, "--backend", "memory")
        self.assertIn("running as root", daemon.log)


class InetdTest(unittest.TestCase):
    def setUp(self):
        self.users = write_file(os.path.join(temp_dir(self), "users"),
                                USERS + "evil: \x1b[2Jcleared\n")

    def run_inetd(self, data, *extra):
        return subprocess.run(command("--inetd", "--backend", "file", "--users-file",
                                      self.users, *extra),
                              input=data, capture_output=True, timeout=TIMEOUT)

    def test_through_a_pipe(self):
        out = self.run_inetd(b"alice\r\n")
        self.assertEqual(out.returncode, 0)
        self.assertEqual(out.stdout, b"Happy and well\r\n")

    def test_same_rules_as_the_listener(self):
        self.assertEqual(self.run_inetd(b"x@y\r\n").stdout, b"Finger forwarding service denied\r\n")
        self.assertEqual(self.run_inetd(b"a" * 3000).stdout, b"Query too long\r\n")
        self.assertEqual(self.run_inetd(b"evil\n").stdout, b"cleared\r\n")
        self.assertEqual(self.run_inetd(b"\r\n", "--no-list").stdout,
                         b"Finger online user list denied\r\n")
        self.assertEqual(self.run_inetd(b"").stdout, b"")

    def test_through_a_socket_as_stdin_stdout_and_stderr(self):
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        proc = subprocess.Popen(command("--inetd", "--backend", "file", "--users-file",
                                        self.users, "--log-queries", "--log-level", "debug"),
                                stdin=theirs, stdout=theirs, stderr=theirs)
        theirs.close()
        ours.sendall(b"/W alice\r\n")
        ours.settimeout(TIMEOUT)
        reply = read_all(ours)
        self.assertEqual(proc.wait(TIMEOUT), 0)
        self.assertTrue(reply.startswith(b"Login: alice\r\n"), reply)
        self.assertNotIn(b"fingerd", reply)          # no log line leaked to the client

    def test_deadline(self):
        read_end, write_end = os.pipe()
        out_read, out_write = os.pipe()
        self.addCleanup(lambda: [os.close(fd) for fd in (read_end, write_end, out_read)])
        os.write(write_end, b"ali")                  # and then nothing more
        store = fingerd.MemoryStore()
        start = time.monotonic()
        code = fingerd.serve_inetd(store, True, deadline=0.5, infd=read_end, outfd=out_write)
        os.close(out_write)
        self.assertEqual(code, 0)
        self.assertLess(time.monotonic() - start, 1.5)
        self.assertEqual(os.read(out_read, 100), b"Timed out\r\n")

    @unittest.skipUnless(shutil.which("systemd-socket-activate"), "no systemd-socket-activate")
    def test_real_systemd_socket_activate_accept_mode(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen(["systemd-socket-activate", "--accept", "--inetd", "-l",
                                 "127.0.0.1:%d" % port, *command(
                                     "--inetd", "--backend", "file", "--users-file",
                                     self.users)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: (proc.kill(), proc.wait()))
        for _ in range(3):                           # one process per connection
            self.assertEqual(self.retry_query(port, b"alice\r\n"), b"Happy and well\r\n")

    def retry_query(self, port, data):
        end = time.monotonic() + TIMEOUT
        while True:
            try:
                return query(port, data)
            except OSError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.05)


LAUNCHER = """
import os, sys
fds = [int(x) for x in sys.argv[1].split(",")]
moved = [os.dup2(fd, 100 + i) for i, fd in enumerate(fds)]   # out of the way of 3, 4, ...
for fd in fds:
    os.close(fd)
for target, fd in enumerate(moved, 3):
    os.dup2(fd, target)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[2], sys.argv[2:])
"""


class SocketActivationTest(unittest.TestCase):
    def launch(self, socks, names, *args):
        """Exec fingerd the way systemd does: sockets at fds 3.., LISTEN_* set for its pid."""
        fds = [s.fileno() for s in socks]
        argv = command(*args)
        if not os.path.isabs(argv[0]):
            argv[0] = shutil.which(argv[0])
        env = dict(os.environ, LISTEN_FDS=str(len(socks)), LISTEN_FDNAMES=":".join(names))
        proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, ",".join(map(str, fds)),
                                 *argv], pass_fds=fds, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(lambda: (proc.kill(), proc.wait(), proc.stdout.close(),
                                 proc.stderr.close()))
        lines = []
        end = time.monotonic() + TIMEOUT
        while time.monotonic() < end:
            line = proc.stderr.readline().decode()
            lines.append(line)
            if "serving with" in line or not line:
                break
        return proc, "".join(lines)

    def listener(self, family=socket.AF_INET, host="127.0.0.1"):
        sock = socket.socket(family)
        sock.bind((host, 0))
        sock.listen(16)
        self.addCleanup(sock.close)
        return sock

    def test_named_sockets_ipv4_and_ipv6(self):
        finger = self.listener()
        try:
            http_sock = self.listener(socket.AF_INET6, "::1")
        except OSError:
            self.skipTest("no IPv6 loopback")
        users = write_file(os.path.join(temp_dir(self), "users"), USERS)
        # names in the opposite order to the protocols: matched by name, not position
        proc, log = self.launch([http_sock, finger], ["http", "finger"], "--backend", "file",
                                "--users-file", users, "--finger", "off", "--setter", "off",
                                "--http", "off")
        self.assertIn("finger listening on 127.0.0.1:%d (from systemd)"
                      % finger.getsockname()[1], log)
        self.assertIn("http listening on [::1]:%d (from systemd)" % http_sock.getsockname()[1],
                      log)
        self.assertEqual(query(finger.getsockname()[1], b"alice\r\n"), b"Happy and well\r\n")
        conn = http.client.HTTPConnection("::1", http_sock.getsockname()[1], timeout=TIMEOUT)
        conn.request("GET", "/alice")
        self.assertIn(b"Happy and well", conn.getresponse().read())
        conn.close()

    def test_setter_unix_socket_from_systemd(self):
        # The package's fingerd-setter.socket: systemd binds the Unix socket (mode 0666) and
        # owns its file, which must outlive fingerd.
        path = os.path.join(temp_dir(self), "setter.sock")
        unix = socket.socket(socket.AF_UNIX)
        unix.bind(path)
        unix.listen(16)
        self.addCleanup(unix.close)
        finger = self.listener()
        proc, log = self.launch([finger, unix], ["finger", "setter-unix"], "--backend",
                                "memory", "--finger", "off", "--setter", "off", "--http", "off",
                                "--setter-socket", "off")
        self.assertIn("setter-socket listening on %s (from systemd)" % path, log)
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(TIMEOUT)
            client.connect(path)
            client.sendall(b"Sent through systemd's socket\n")
            client.shutdown(socket.SHUT_WR)
            self.assertEqual(client.recv(100), b"OK\r\n")
        me = pwd.getpwuid(os.getuid()).pw_name
        self.assertEqual(query(finger.getsockname()[1], me.encode() + b"\r\n"),
                         b"Sent through systemd's socket\r\n")
        proc.terminate()
        proc.wait(TIMEOUT)
        self.assertTrue(os.path.exists(path), "fingerd removed systemd's socket file")

    def test_a_second_socket_keeps_its_protocol(self):
        # A unit listening on IPv4 and IPv6 apart passes two "finger" sockets: both are
        # finger; neither may become the unauthenticated TCP setter.
        first, second, http_sock = self.listener(), self.listener(), self.listener()
        proc, log = self.launch([first, second, http_sock], ["finger", "finger", "http"],
                                "--backend", "memory", "--finger", "off", "--setter", "off",
                                "--http", "off")
        for sock in (first, second):
            self.assertEqual(query(sock.getsockname()[1], b"nobody\r\n"), b"No such user\r\n")
            self.assertEqual(query(sock.getsockname()[1], b"bob\nset\n", half_close=True),
                             b"No such user\r\n")
        self.assertNotIn("setter listening", log)

    def test_under_activation_a_listener_that_cannot_bind_is_left_out(self):
        finger = self.listener()
        busy = self.listener()
        proc, log = self.launch([finger], ["finger"], "--backend", "memory", "--finger", "off",
                                "--http", "off", "--setter",
                                "127.0.0.1:%d" % busy.getsockname()[1])
        self.assertIn("cannot listen for setter on 127.0.0.1:%d" % busy.getsockname()[1], log)
        self.assertEqual(query(finger.getsockname()[1], b"nobody\r\n"), b"No such user\r\n")
        self.assertIsNone(proc.poll())

    def test_unnamed_sockets_by_order(self):
        finger, setter = self.listener(), self.listener()
        proc, log = self.launch([finger, setter], [], "--backend", "memory", "--http", "off")
        self.assertIn("setter listening on 127.0.0.1:%d (from systemd)"
                      % setter.getsockname()[1], log)
        self.assertEqual(query(setter.getsockname()[1], b"alice\nhi\n", half_close=True),
                         b"OK\r\n")
        self.assertEqual(query(finger.getsockname()[1], b"alice\r\n"), b"hi\r\n")

    def test_variables_for_another_process_are_ignored_and_removed(self):
        saved = {k: os.environ.get(k) for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")}
        self.addCleanup(lambda: [os.environ.pop(k, None) if v is None else
                                 os.environ.__setitem__(k, v) for k, v in saved.items()])
        os.environ.update(LISTEN_PID="1", LISTEN_FDS="2", LISTEN_FDNAMES="finger:http")
        self.assertEqual(fingerd.systemd_listeners(), {})
        for key in saved:
            self.assertNotIn(key, os.environ)

    @unittest.skipUnless(shutil.which("systemd-socket-activate"), "no systemd-socket-activate")
    def test_real_systemd_socket_activate(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        users = write_file(os.path.join(temp_dir(self), "users"), USERS)
        proc = subprocess.Popen(["systemd-socket-activate", "-l", "127.0.0.1:%d" % port,
                                 "--fdname=finger", *command(
                                     "--backend", "file", "--users-file", users, "--setter",
                                     "off", "--http", "off")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.addCleanup(lambda: (proc.kill(), proc.wait(), proc.stderr.close()))
        end = time.monotonic() + TIMEOUT
        while True:
            try:
                reply = query(port, b"alice\r\n")
                break
            except OSError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.05)
        self.assertEqual(reply, b"Happy and well\r\n")
        self.assertEqual(query(port, b"bob\r\n"), b"Busy\r\n")    # the same process serves on


class NotifyTest(unittest.TestCase):
    def notify_socket(self, abstract=False):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        if abstract:
            name = "fingerd-test-%d-%d" % (os.getpid(), time.monotonic_ns())
            sock.bind("\0" + name)
            address = "@" + name
        else:
            address = os.path.join(temp_dir(self), "notify")
            sock.bind(address)
        sock.settimeout(TIMEOUT)
        return sock, address

    def messages(self, sock, until, timeout=TIMEOUT):
        got, end = [], time.monotonic() + timeout
        while time.monotonic() < end:
            sock.settimeout(max(0.01, end - time.monotonic()))
            try:
                got.append(sock.recv(4096).decode())
            except socket.timeout:
                break
            if until(got):
                break
        return got

    def test_ready_status_watchdog_stopping(self):
        sock, address = self.notify_socket()
        daemon = Daemon(self, "--backend", "memory",
                        env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"})
        got = self.messages(sock, lambda g: sum("WATCHDOG=1" in m for m in g) >= 3)
        ready = [m for m in got if "READY=1" in m]
        self.assertEqual(len(ready), 1, got)
        self.assertIn("STATUS=serving finger on 127.0.0.1:", ready[0])
        self.assertGreaterEqual(sum("WATCHDOG=1" in m for m in got), 3)
        daemon.signal(signal.SIGTERM)
        got = self.messages(sock, lambda g: any("STOPPING=1" in m for m in g))
        self.assertTrue(any("STOPPING=1" in m for m in got), got)
        self.assertEqual(daemon.wait(), 0)

    def test_abstract_socket_and_no_watchdog_unless_asked(self):
        sock, address = self.notify_socket(abstract=True)
        Daemon(self, "--backend", "memory", env={"NOTIFY_SOCKET": address})
        got = self.messages(sock, lambda g: False, timeout=1.5)
        self.assertTrue(any("READY=1" in m for m in got), got)
        self.assertFalse(any("WATCHDOG" in m for m in got), got)

    def test_watchdog_for_another_pid_is_ignored(self):
        sock, address = self.notify_socket()
        Daemon(self, "--backend", "memory", env={"NOTIFY_SOCKET": address,
                                                 "WATCHDOG_USEC": "100000",
                                                 "WATCHDOG_PID": "1"})
        got = self.messages(sock, lambda g: False, timeout=1.0)
        self.assertFalse(any("WATCHDOG" in m for m in got), got)


class SignalTest(unittest.TestCase):
    def test_sighup_rereads_the_file_now(self):
        users = write_file(os.path.join(temp_dir(self), "users"), USERS)
        daemon = Daemon(self, "--backend", "file", "--users-file", users, "--refresh", "3600")
        port = daemon.ports["finger"]
        self.assertEqual(query(port, b"alice\r\n"), b"Happy and well\r\n")
        write_file(users + ".new", "alice: Reloaded\n")
        os.replace(users + ".new", users)
        daemon.signal(signal.SIGHUP)
        self.assertTrue(daemon.wait_for_log("SIGHUP: re-reading"))
        end = time.monotonic() + 5
        while query(port, b"alice\r\n") != b"Reloaded\r\n" and time.monotonic() < end:
            time.sleep(0.02)
        self.assertEqual(query(port, b"alice\r\n"), b"Reloaded\r\n")
        self.assertIn(b"alice: Reloaded", query(port, b"\r\n"))   # the list cache too
        self.assertIsNone(daemon.proc.poll())                    # and it is still running

    def test_second_sigint_exits_at_once(self):
        daemon = Daemon(self, "--backend", "memory")
        sock = connect(daemon.ports["setter"])
        self.addCleanup(sock.close)
        sock.sendall(b"alice\nnot finished")         # keeps the drain waiting
        time.sleep(0.1)
        daemon.signal(signal.SIGINT)
        self.assertTrue(daemon.wait_for_log("stopping"))
        start = time.monotonic()
        daemon.signal(signal.SIGINT)
        self.assertEqual(daemon.wait(), 1)
        self.assertLess(time.monotonic() - start, 1.0)


class LoggingTest(unittest.TestCase):
    def test_journald_priorities_without_timestamps(self):
        read_end, write_end = os.pipe()
        st = os.fstat(write_end)
        env = dict(os.environ, JOURNAL_STREAM="%d:%d" % (st.st_dev, st.st_ino))
        proc = subprocess.Popen(command("--backend", "memory", "--finger", "127.0.0.1:0",
                                        "--setter", "off", "--http", "off"),
                                stderr=write_end, stdout=subprocess.DEVNULL, env=env)
        os.close(write_end)
        stream = os.fdopen(read_end, "rb")
        self.addCleanup(stream.close)
        lines = []
        while not any(b"serving with" in line for line in lines):
            line = stream.readline()
            if not line:
                break
            lines.append(line)
        proc.send_signal(signal.SIGTERM)
        proc.wait(TIMEOUT)
        lines += stream.read().splitlines(keepends=True)
        self.assertTrue(lines)
        for line in lines:
            self.assertRegex(line, rb"^<[2-7]>[a-z]")
        self.assertTrue(any(line.startswith(b"<6>finger listening on") for line in lines))

    def test_log_queries_logs_peer_and_escaped_query(self):
        daemon = Daemon(self, "--backend", "memory", "--log-queries")
        query(daemon.ports["finger"], b"al\x1b[31mice\r\n")
        self.assertTrue(daemon.wait_for_log("finger query from 127.0.0.1:"))
        self.assertIn("'al\\x1b[31mice'", daemon.log)
        self.assertNotIn("\x1b", daemon.log)

    def test_queries_are_not_logged_by_default(self):
        daemon = Daemon(self, "--backend", "memory")
        query(daemon.ports["finger"], b"alice\r\n")
        time.sleep(0.2)
        self.assertNotIn("finger query", daemon.log)


class ConfigFileTest(unittest.TestCase):
    def test_arguments_from_a_file(self):
        directory = temp_dir(self)
        users = write_file(os.path.join(directory, "users"), USERS)
        conf = write_file(os.path.join(directory, "fingerd.conf"),
                          "# /etc/fingerd.conf\n\n--backend file\n--users-file '%s'\n"
                          "--no-list   # no user list\n" % users)
        daemon = Daemon(self, "@" + conf)
        port = daemon.ports["finger"]
        self.assertEqual(query(port, b"alice\r\n"), b"Happy and well\r\n")
        self.assertEqual(query(port, b"\r\n"), b"Finger online user list denied\r\n")

    def test_bad_file(self):
        out = run_cli("@/no/such/fingerd.conf")
        self.assertEqual(out.returncode, 2)
        conf = write_file(os.path.join(temp_dir(self), "c"), "--bogus\n")
        self.assertEqual(run_cli("@" + conf).returncode, 2)


class BuiltOnceTest(unittest.TestCase):
    """The daemon builds each server once, after the store is open, with everything it
    needs: nothing is patched in afterwards (pixelated/pixelated-user-agent #684,
    spinnaker/rosco #270, Draegerwerk/sdc11073 #320: requests served before the
    configuration was in place; kirodotdev/KiroCrew #9682: a test built another object than
    production does)."""

    def test_every_server_has_what_the_daemon_opened(self):
        path = os.path.join(temp_dir(self), "setter.sock")
        args = fingerd.build_parser().parse_args(
            ["--backend", "sqlite", "--db", os.path.join(temp_dir(self), "s.db"),
             "--finger", "127.0.0.1:0", "--setter", "127.0.0.1:0", "--http", "127.0.0.1:0",
             "--setter-socket", path, "--max-conns-per-ip", "3", "--rate", "7",
             "--log-queries", "--trusted-proxy", "10.0.0.0/8", "--log-level", "error"])
        daemon = fingerd.Daemon(args)
        daemon.start()
        self.addCleanup(daemon.stop)
        self.assertEqual([type(s).__name__ for s in daemon.servers],
                         ["FingerServer", "SetterServer", "WebServer", "UnixSetterServer"])
        for server in daemon.servers:
            with self.subTest(server=server.label):
                self.assertIs(server.store, daemon.store)
                self.assertIsInstance(daemon.store, fingerd.SQLiteStore)
                self.assertIs(server.metrics, daemon.metrics)
                self.assertTrue(server.log_queries)
                self.assertEqual((server.limiter.max_conns, server.limiter.rate), (3, 7.0))
        finger, setter, web, unix = daemon.servers
        self.assertIs(web.monitor, daemon.monitor)
        self.assertIs(daemon.monitor.store, daemon.store)
        self.assertIs(daemon.monitor.servers, daemon.servers)
        self.assertEqual([str(n) for n in web.limiter.exempt], ["10.0.0.0/8"])
        self.assertEqual(finger.limiter.exempt, [])
        self.assertFalse(unix.inline)                       # account lookups may wait
        self.assertTrue(finger.inline and setter.inline and web.inline)
        with socket.create_connection(("127.0.0.1", setter.port), timeout=TIMEOUT) as sock:
            sock.sendall(b"alice\nBuilt once\n")
            sock.shutdown(socket.SHUT_WR)
            self.assertEqual(read_all(sock), b"OK\r\n")
        self.assertEqual(query(finger.port, b"alice\r\n"), b"Built once\r\n")
        self.assertEqual(daemon.store.get("alice").text, "Built once")

    def test_a_failed_start_leaves_no_socket_file(self):
        path = os.path.join(temp_dir(self), "setter.sock")
        args = fingerd.build_parser().parse_args(
            ["--backend", "file", "--users-file", os.path.join(temp_dir(self), "missing"),
             "--finger", "127.0.0.1:0", "--setter", "off", "--http", "off",
             "--setter-socket", path])
        with self.assertRaises(fingerd.StartupError):
            fingerd.Daemon(args).start()
        self.assertFalse(os.path.exists(path))


if __name__ == "__main__":
    unittest.main()
