"""The command line, black-box: flags, exit statuses, listeners, signals, and the
--set/--clear client."""
import os
import signal
import socket
import subprocess
import time
import unittest

from support import (TIMEOUT, Daemon, command, connect, fingerd, query, read_all, run_cli,
                     temp_dir, write_file)


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


if __name__ == "__main__":
    unittest.main()
