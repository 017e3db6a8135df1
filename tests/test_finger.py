"""Finger (RFC 1288): pure parsing and replies, then the server over real sockets."""
import os
import shutil
import socket
import subprocess
import threading
import time
import unittest

from support import (Daemon, connect, fingerd, query, read_all, serve,
                     skip_unless_port_79_free, temp_dir,
                     thread_count, write_file)

Status = fingerd.Status


def memory_store(**statuses):
    """A store holding exactly these texts, unfiltered (as a careless backend might)."""
    store = fingerd.MemoryStore(
        statuses={user: Status(text, 1_700_000_000.0) for user, text in statuses.items()})
    return store


class ParseQueryTest(unittest.TestCase):
    def test_forms(self):
        parse = fingerd.parse_query
        self.assertEqual(parse(""), (False, (), False))
        self.assertEqual(parse("\r\n"), (False, (), False))
        self.assertEqual(parse("alice\r\n"), (False, ("alice",), False))
        self.assertEqual(parse("/W alice"), (True, ("alice",), False))
        self.assertEqual(parse("/w  alice\tbob"), (True, ("alice", "bob"), False))
        self.assertEqual(parse("/W"), (True, (), False))
        self.assertEqual(parse("alice@example.org"), (False, ("alice@example.org",), True))
        self.assertEqual(parse("@host1@host2").forwarding, True)
        self.assertEqual(parse("/W @host").forwarding, True)


class FingerReplyTest(unittest.TestCase):
    def setUp(self):
        self.store = memory_store(alice="Happy and well", bob="one\ntwo",
                                  evil="\x1b]0;owned\x07\x1b[31mred\x1b[0m\x00\x7f\u202e!")

    def reply(self, line, allow_list=True):
        return fingerd.finger_reply(self.store, fingerd.parse_query(line),
                                    fingerd.Privacy(listing=allow_list))

    def test_single_user(self):
        self.assertEqual(self.reply("alice"), "Happy and well\r\n")

    def test_multi_line_status(self):
        self.assertEqual(self.reply("bob"), "one\r\ntwo\r\n")

    def test_unknown_user_one_fixed_reply(self):
        replies = {self.reply(name) for name in ["nobody", "-l", "../../etc/passwd",
                                                 "a" * 100, "\x1b[2J"]}
        self.assertEqual(replies, {fingerd.NO_SUCH_USER + "\r\n"})

    def test_verbose_adds_time(self):
        reply = self.reply("/W alice")
        self.assertIn("Login: alice\r\n", reply)
        self.assertIn("Set: 2023-11-14 22:13:20 UTC", reply)
        self.assertTrue(reply.endswith("Happy and well\r\n"))

    def test_several_names_each_answered(self):
        reply = self.reply("alice bob nobody")
        self.assertEqual(reply, "alice: Happy and well\r\nbob: one\r\n  two\r\n"
                                "nobody: No such user\r\n")

    def test_list(self):
        self.assertEqual(self.reply(""), "alice: Happy and well\r\nbob: one ...\r\n"
                                         "evil: red!\r\n")

    def test_list_denied(self):
        self.assertEqual(self.reply("", allow_list=False), fingerd.LIST_DENIED + "\r\n")

    def test_forwarding_denied(self):
        for line in ["alice@localhost", "@localhost", "/W alice@a@b", "alice bob@x"]:
            self.assertEqual(self.reply(line), fingerd.FORWARDING_DENIED + "\r\n")

    def test_output_is_filtered(self):
        self.assertEqual(self.reply("evil"), "red!\r\n")

    def test_every_line_ends_in_crlf(self):
        for line in ["alice", "bob", "/W alice bob", "", "x@y", "nobody"]:
            reply = self.reply(line)
            self.assertTrue(reply.endswith("\r\n"))
            self.assertNotIn("\n", reply.replace("\r\n", ""))
            self.assertNotIn("\r", reply.replace("\r\n", ""))


class FingerServerTest(unittest.TestCase):
    def setUp(self):
        self.store = memory_store(alice="Happy and well", bob="one\ntwo",
                                  evil="\x1b[31mred\x1b[0m\x9b2J\x07 café")
        self.server = serve(self, fingerd.FingerServer(("127.0.0.1", 0), self.store))
        self.port = self.server.port

    def finger(self, data, **kw):
        return query(self.port, data, **kw)

    def test_crlf_and_bare_lf(self):
        self.assertEqual(self.finger(b"alice\r\n"), b"Happy and well\r\n")
        self.assertEqual(self.finger(b"alice\n"), b"Happy and well\r\n")

    def test_query_ended_by_half_close(self):
        self.assertEqual(self.finger(b"alice", half_close=True), b"Happy and well\r\n")

    def test_connect_and_close_gets_nothing_and_harms_nothing(self):
        self.assertEqual(self.finger(b"", half_close=True), b"")
        self.assertEqual(self.finger(b"alice\r\n"), b"Happy and well\r\n")

    def test_verbose_and_several(self):
        reply = self.finger(b"/W alice bob\r\n").decode()
        self.assertIn("Login: alice\r\n", reply)
        self.assertIn("Login: bob\r\n", reply)

    def test_list_and_cache_invalidation(self):
        self.assertIn(b"alice: Happy and well\r\n", self.finger(b"\r\n"))
        self.store.set("zed", "new here")
        self.assertIn(b"zed: new here\r\n", self.finger(b"\r\n"))

    def test_list_denied(self):
        self.server.privacy = fingerd.Privacy(listing=False)
        self.assertEqual(self.finger(b"\r\n"), b"Finger online user list denied\r\n")

    def test_forwarding_denied_and_connects_nowhere(self):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(0.3)
        self.addCleanup(listener.close)
        target = b"alice@127.0.0.1:%d\r\n" % listener.getsockname()[1]
        self.assertEqual(self.finger(target), b"Finger forwarding service denied\r\n")
        with self.assertRaises(socket.timeout):
            listener.accept()

    def test_unknown_user(self):
        self.assertEqual(self.finger(b"nobody\r\n"), b"No such user\r\n")

    def test_filtered_utf8_output(self):
        self.assertEqual(self.finger(b"evil\r\n"), "red café\r\n".encode("utf-8"))

    def test_invalid_utf8_query(self):
        self.assertEqual(self.finger(b"\xff\xfe\xc0\xaf\r\n"), b"No such user\r\n")

    def test_oversize_line_is_refused_and_closed(self):
        reply = self.finger(b"a" * 2000 + b"\r\n")
        self.assertEqual(reply, b"Query too long\r\n")
        reply = self.finger(b"a" * 5000)          # no newline at all
        self.assertEqual(reply, b"Query too long\r\n")
        self.assertEqual(self.finger(b"alice\r\n"), b"Happy and well\r\n")

    def test_line_of_exactly_the_limit_is_served(self):
        line = b"alice" + b" " * (fingerd.MAX_QUERY - 5) + b"\r\n"
        self.assertEqual(self.finger(line), b"Happy and well\r\n")

    def test_trickling_client_is_dropped_at_the_deadline(self):
        self.server.deadline = 1.0
        sock = connect(self.port)
        self.addCleanup(sock.close)
        start = time.monotonic()
        closed_at = None
        for byte in b"alice is trickling one byte at a time":
            try:
                sock.send(bytes([byte]))
            except OSError:
                closed_at = time.monotonic()
                break
            sock.settimeout(0.2)
            try:
                if sock.recv(100) is not None:
                    closed_at = time.monotonic()
                    break
            except socket.timeout:
                pass
        self.assertIsNotNone(closed_at, "the server never dropped the client")
        self.assertLess(closed_at - start, 2.0)
        self.assertGreater(closed_at - start, 0.8)

    def test_silent_client_gets_timeout_line(self):
        self.server.deadline = 0.5
        with connect(self.port) as sock:
            start = time.monotonic()
            self.assertEqual(read_all(sock), b"Timed out\r\n")
            self.assertLess(time.monotonic() - start, 1.5)

    def test_idle_connections_cost_no_thread(self):
        before = thread_count()
        socks = [connect(self.port) for _ in range(300)]
        self.addCleanup(lambda: [s.close() for s in socks])
        time.sleep(0.2)
        self.assertEqual(self.server.open_connections, 300)
        self.assertLessEqual(thread_count(), before)
        start = time.monotonic()
        self.assertEqual(self.finger(b"alice\r\n"), b"Happy and well\r\n")
        self.assertLess(time.monotonic() - start, 0.5)

    def test_connection_limit_answers_busy(self):
        self.server.max_connections = 5
        socks = [connect(self.port) for _ in range(5)]
        self.addCleanup(lambda: [s.close() for s in socks])
        time.sleep(0.1)
        self.assertEqual(self.finger(b"alice\r\n"), b"Server busy, try again later\r\n")
        for s in socks:
            s.close()
        time.sleep(0.1)
        self.assertEqual(self.finger(b"alice\r\n"), b"Happy and well\r\n")

    def test_client_that_never_reads_a_large_reply(self):
        self.store.replace({"u%04d" % i: Status("x" * 200, 1.0) for i in range(3000)})
        self.server.deadline = 1.0
        hogs = []
        for _ in range(5):
            sock = connect(self.port)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"\r\n")             # 600 KB of list, never read
            hogs.append(sock)
        self.addCleanup(lambda: [s.close() for s in hogs])
        start = time.monotonic()
        self.assertIn(b"x" * 200, self.finger(b"u0001\r\n"))
        self.assertLess(time.monotonic() - start, 0.5)
        time.sleep(1.5)                        # the deadline frees them
        self.assertEqual(self.server.open_connections, 0)

    def test_many_concurrent_clients(self):
        results = []

        def client():
            for _ in range(20):
                results.append(self.finger(b"alice\r\n"))
        threads = [threading.Thread(target=client) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(results, [b"Happy and well\r\n"] * 320)


class IPv6Test(unittest.TestCase):
    @unittest.skipUnless(socket.has_ipv6, "no IPv6 here")
    def test_ipv6_loopback(self):
        try:
            server = fingerd.FingerServer(("::1", 0), memory_store(alice="v6"))
        except OSError as e:
            self.skipTest("cannot bind ::1: %s" % e)
        serve(self, server)
        self.assertEqual(server.address, "[::1]:%d" % server.port)
        self.assertEqual(query(server.port, b"alice\r\n", host="::1"), b"v6\r\n")


class RealFingerClientTest(unittest.TestCase):
    """Debian's finger client against fingerd on port 79 (it has no port option)."""

    def setUp(self):
        if not shutil.which("finger"):
            self.skipTest("the finger client is not installed (apt-get install finger)")
        skip_unless_port_79_free(self)
        users = write_file(os.path.join(temp_dir(self), "users"),
                           "alice: Happy and well\nbob: \x1b[31mred\x1b[0m\n")
        self.daemon = Daemon(self, "--backend", "file", "--users-file", users,
                             "--finger", "127.0.0.1:79")

    def finger(self, *args):
        out = subprocess.run(["finger", *args], capture_output=True, timeout=10)
        return out.stdout.decode("utf-8", "replace")

    def test_finger_user(self):
        self.assertIn("Happy and well", self.finger("alice@127.0.0.1"))

    def test_finger_long_format(self):
        out = self.finger("-l", "alice@127.0.0.1")
        self.assertIn("Login: alice", out)
        self.assertIn("Happy and well", out)

    def test_finger_list_and_filtered(self):
        out = self.finger("@127.0.0.1")
        self.assertIn("alice: Happy and well", out)
        self.assertIn("bob: red", out)
        self.assertNotIn("\x1b", out)


if __name__ == "__main__":
    unittest.main()
