"""The setter: the tutorial protocol, its limits, access control, and the Unix setter socket
that knows its caller.  Durability across kill -9 under load is tests/test_hostile.py's
FaultTest."""
import errno
import ipaddress
import os
import pwd
import socket
import threading
import time
import unittest

from support import (TIMEOUT, connect, fingerd, query, read_all, serve, set_status, temp_dir,
                     write_file)


class SetterParseTest(unittest.TestCase):
    def test_user_and_status(self):
        self.assertEqual(fingerd.parse_setter_request(b"alice\nGone fishing\n"),
                         ("alice", "Gone fishing", 0.0))
        self.assertEqual(fingerd.parse_setter_request(b" alice \r\none\r\ntwo"),
                         ("alice", "one\ntwo", 0.0))
        self.assertEqual(fingerd.parse_setter_request(b"alice\nclear: yes\n"),
                         ("alice", None, 0.0))
        request = fingerd.parse_setter_request(b"alice\nExpires: 2h\nAt lunch\n")
        self.assertEqual(request.text, "At lunch")
        self.assertAlmostEqual(request.expires_at, time.time() + 7200, delta=5)

    def test_refusals(self):
        for data, error in [(b"-l\nx\n", fingerd.BadName), (b"\nx\n", fingerd.BadName),
                            (b"a/b\nx\n", fingerd.BadName), (b"\xff\nx\n", fingerd.BadStatus),
                            (b"alice\n" + b"x\n" * 102, fingerd.BadStatus),
                            (b"alice\n", fingerd.BadStatus), (b"alice", fingerd.BadStatus),
                            (b"alice\nexpires: soon\nx\n", fingerd.BadStatus),
                            (b"alice\nexpires: 400d\nx\n", fingerd.BadStatus),
                            (b"alice\nclear: yes\nstill a status\n", fingerd.BadStatus)]:
            with self.assertRaises(error, msg=data[:20]):
                fingerd.parse_setter_request(data)


class SetterServerTest(unittest.TestCase):
    backend = "memory"

    def setUp(self):
        self.dir = temp_dir(self)
        if self.backend == "sqlite":
            self.store = fingerd.SQLiteStore(os.path.join(self.dir, "s.db"))
        else:
            self.store = fingerd.MemoryStore()
        self.addCleanup(self.store.close)
        self.server = serve(self, fingerd.SetterServer(("127.0.0.1", 0), self.store))
        self.port = self.server.port

    def test_half_close_sets_and_answers_ok(self):
        self.assertEqual(set_status(self.server.port, "alice", "Gone fishing"), b"OK\r\n")
        self.assertEqual(self.store.get("alice").text, "Gone fishing")

    def test_multi_line_status(self):
        self.assertEqual(query(self.port, b"bob\r\nline one\r\nline two\r\n", half_close=True),
                         b"OK\r\n")
        self.assertEqual(self.store.get("bob").text, "line one\nline two")

    def test_tutorial_client_that_closes_fully(self):
        with connect(self.port) as sock:
            sock.sendall(b"carol\nAt lunch\n")
        deadline = time.monotonic() + 5
        while self.store.get("carol") is None and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertEqual(self.store.get("carol").text, "At lunch")

    def test_bad_names_are_refused_and_not_stored(self):
        for name in ["-rf", "a" * 33, "../x", "a b", "", "é"]:
            reply = query(self.port, name.encode() + b"\nstatus\n", half_close=True)
            self.assertTrue(reply.startswith(b"ERROR "), (name, reply))
            self.assertTrue(reply.endswith(b"\r\n"))
        self.assertEqual(self.store.users(), [])

    def test_oversize_status_is_refused(self):
        data = b"dave\n" + b"x" * (fingerd.MAX_STATUS_BYTES + 1) + b"\n"
        reply = query(self.port, data, half_close=True)
        self.assertTrue(reply.startswith(b"ERROR status too long"), reply)
        self.assertIsNone(self.store.get("dave"))

    def test_huge_upload_is_cut_off_early(self):
        with connect(self.port) as sock:
            reply = b""
            try:
                for _ in range(200):            # 12.8 MB offered; refused after 17 KB
                    sock.sendall(b"y" * 65536)
            except OSError:
                pass
            reply = read_all(sock)
        self.assertTrue(reply.startswith(b"ERROR") or reply == b"", reply)
        self.assertEqual(self.store.users(), [])

    def test_too_many_lines_is_refused(self):
        reply = query(self.port, b"erin\n" + b"l\n" * 101, half_close=True)
        self.assertTrue(reply.startswith(b"ERROR"), reply)
        self.assertIsNone(self.store.get("erin"))

    def test_status_of_exactly_the_limits_is_stored(self):
        self.assertEqual(query(self.port, b"erin\n" + b"l\n" * 100, half_close=True), b"OK\r\n")
        text = "x" * fingerd.MAX_STATUS_BYTES
        self.assertEqual(set_status(self.port, "fred", text), b"OK\r\n")
        self.assertEqual(self.store.get("fred").text, text)

    def test_empty_status_is_refused(self):
        self.assertTrue(query(self.port, b"gina\n", half_close=True).startswith(b"ERROR"))

    def test_not_utf8_is_refused(self):
        reply = query(self.port, b"gina\n\xff\xfe\n", half_close=True)
        self.assertTrue(reply.startswith(b"ERROR"), reply)

    def test_control_characters_are_filtered_before_storing(self):
        self.assertEqual(set_status(self.port, "hal", "\x1b[2J\x1b]0;x\x07ok\x00"), b"OK\r\n")
        self.assertEqual(self.store.get("hal").text, "ok")

    def test_client_that_never_half_closes_gets_an_explanation(self):
        self.server.deadline = 0.5
        with connect(self.port) as sock:
            sock.sendall(b"ivan\nwaiting\n")
            reply = read_all(sock)
        self.assertTrue(reply.startswith(b"ERROR timed out"), reply)
        self.assertIn(b"nc -N", reply)
        self.assertIsNone(self.store.get("ivan"))

    def test_concurrent_setters(self):
        results = []

        def writer(n):
            for i in range(10):
                results.append(set_status(self.port, "w%d" % n, "status %d" % i))
        threads = [threading.Thread(target=writer, args=(n,)) for n in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(results, [b"OK\r\n"] * 160)
        for n in range(16):
            self.assertEqual(self.store.get("w%d" % n).text, "status 9")


class SQLiteSetterServerTest(SetterServerTest):
    backend = "sqlite"


class SQLiteLoopCommitTest(unittest.TestCase):
    """The setter loop commits its turn's writes itself, but never waits for them: not on
    another process's write lock, not on a disk that stalls (issue 19)."""

    def setUp(self):
        self.path = os.path.join(temp_dir(self), "f.db")
        self.store = fingerd.SQLiteStore(self.path)
        self.addCleanup(self.store.close)
        self.port = serve(self, fingerd.SetterServer(("127.0.0.1", 0), self.store)).port

    def test_a_lock_held_elsewhere_stops_only_the_writes(self):
        import sqlite3
        other = sqlite3.connect(self.path, isolation_level=None)
        self.addCleanup(other.close)
        other.execute("BEGIN IMMEDIATE")             # another process's write lock
        answers = []
        writer = threading.Thread(target=lambda: answers.append(
            set_status(self.port, "alice", "Waited for the lock")))
        writer.start()
        time.sleep(0.3)
        started = time.monotonic()
        self.assertTrue(set_status(self.port, "-bad", "x").startswith(b"ERROR bad user name"))
        self.assertLess(time.monotonic() - started, 1.0)   # not after the 5 s busy timeout
        self.assertEqual(answers, [])                # the write waits for the lock ...
        other.execute("ROLLBACK")
        writer.join(TIMEOUT)
        self.assertEqual(answers, [b"OK\r\n"])       # ... and is stored once it is free
        self.assertEqual(self.store.get("alice").text, "Waited for the lock")

    def test_a_slow_disk_sends_the_writes_to_the_writer_until_it_is_fast_again(self):
        original, threads = self.store._commit, []
        self.store.SLOW_FOR = 0.5

        def commit(batch):
            threads.append(threading.current_thread().name)
            if len(threads) <= 2:                  # the loop's commit, then the writer's
                time.sleep(self.store.SLOW_COMMIT + 0.05)
            return original(batch)
        self.store._commit = commit
        for i, pause in enumerate((0, 0, 0.3, 0.7)):
            time.sleep(pause)
            self.assertEqual(set_status(self.port, "alice", "write %d" % i), b"OK\r\n")
        # The writer's slow commit kept the loop from trying again 0.3 s later; 0.7 s after
        # the last slow one, the loop commits itself again.
        self.assertEqual([name == "sqlite-writer" for name in threads],
                         [False, True, True, False])
        self.assertEqual(self.store.get("alice").text, "write 3")


class AllowTest(unittest.TestCase):
    def make(self, *nets):
        store = fingerd.MemoryStore()
        server = serve(self, fingerd.SetterServer(
            ("127.0.0.1", 0), store, [ipaddress.ip_network(n) for n in nets]))
        return store, server

    def test_outside_the_allowed_networks_is_refused(self):
        store, server = self.make("10.0.0.0/8", "::1/128")
        reply = set_status(server.port, "alice", "sneaky")
        self.assertEqual(reply, b"ERROR not allowed from this address\r\n")
        self.assertIsNone(store.get("alice"))

    def test_inside_is_allowed(self):
        store, server = self.make("10.0.0.0/8", "127.0.0.0/8")
        self.assertEqual(set_status(server.port, "alice", "fine"), b"OK\r\n")
        self.assertEqual(store.get("alice").text, "fine")


class ReadOnlyBackendTest(unittest.TestCase):
    def test_file_backend_refuses_writes(self):
        path = write_file(os.path.join(temp_dir(self), "users"), "alice: Happy\n")
        store = fingerd.FileStore(path, refresh=3600)
        self.addCleanup(store.close)
        server = serve(self, fingerd.SetterServer(("127.0.0.1", 0), store))
        reply = set_status(server.port, "alice", "hacked")
        self.assertTrue(reply.startswith(b"ERROR") and b"read-only" in reply, reply)
        self.assertEqual(store.get("alice").text, "Happy")


def unix_request(path, data):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(path)
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        return read_all(sock)


class UnixSetterTest(unittest.TestCase):
    def setUp(self):
        self.store = fingerd.MemoryStore()
        self.path = os.path.join(temp_dir(self), "setter.sock")
        server = fingerd.UnixSetterServer(self.path, self.store)
        me = fingerd.account_name(os.getuid())
        server.name_of = lambda uid: {os.getuid(): me}.get(uid, fingerd.account_name(uid))
        server.account_exists = lambda name: name in ("alice", me)
        self.server = serve(self, server)
        self.me = me

    def test_a_live_socket_is_not_taken_over_and_a_stale_one_is_replaced(self):
        # A second fingerd with the same --setter-socket unlinked the first one's live
        # socket (outsider, issue 18): it is refused now, and the first keeps serving.
        with self.assertRaises(OSError) as refused:
            fingerd.UnixSetterServer(self.path, self.store)
        self.assertEqual(refused.exception.errno, errno.EADDRINUSE)
        self.assertEqual(unix_request(self.path, b"Still here\n"), b"OK\r\n")
        stale = os.path.join(temp_dir(self), "stale.sock")
        left = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        left.bind(stale)
        left.close()                        # the file stays, nobody listens: a crashed run
        serve(self, fingerd.UnixSetterServer(stale, self.store))
        self.assertEqual(unix_request(stale, b"Replaced\n"), b"OK\r\n")

    def test_a_socket_with_a_full_backlog_is_alive(self):
        # Outsider 2: a stopped fingerd whose backlog is full answered EAGAIN, was taken
        # for stale, and lost its socket.
        path = os.path.join(temp_dir(self), "full.sock")
        hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(hung.close)
        hung.bind(path)
        hung.listen(0)                      # never accepts
        clients = []
        self.addCleanup(lambda: [c.close() for c in clients])
        while len(clients) < 100:
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.setblocking(False)
            clients.append(client)
            if client.connect_ex(path) == errno.EAGAIN:
                break
        inode = os.lstat(path).st_ino
        with self.assertRaises(OSError) as refused:
            fingerd.UnixSetterServer(path, self.store)
        self.assertEqual(refused.exception.errno, errno.EADDRINUSE)
        self.assertEqual(os.lstat(path).st_ino, inode)

    def test_starts_at_the_same_instant_take_turns(self):
        # Outsider 2: between bind() and listen() a second start saw ECONNREFUSED and took
        # the path; starts in one directory now take turns (flock).
        for round_ in range(10):
            path = os.path.join(temp_dir(self), "race.sock")
            results, go = [], threading.Barrier(6)

            def start():
                go.wait()
                try:
                    results.append(fingerd.unix_listener(path))
                except OSError as e:
                    results.append(e.errno)
            threads = [threading.Thread(target=start) for _ in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            winners = [r for r in results if isinstance(r, socket.socket)]
            self.assertEqual(len(winners), 1, (round_, results))
            self.assertEqual(sorted(r for r in results if not isinstance(r, socket.socket)),
                             [errno.EADDRINUSE] * 5)
            winners[0].close()

    def test_closing_leaves_another_servers_socket_alone(self):
        # Outsider 2: on exit a fingerd removed whatever socket was at its path by then.
        path = os.path.join(temp_dir(self), "mine.sock")
        mine = fingerd.UnixSetterServer(path, self.store)
        os.unlink(path)                     # someone else's socket is at the path now
        other = fingerd.UnixSetterServer(path, self.store)
        self.addCleanup(other.server_close)
        mine.server_close()
        self.assertTrue(os.path.exists(path))

    def test_an_empty_connection_is_not_a_refused_write(self):
        # A liveness probe (another fingerd's start, a monitor) sends nothing: it gets the
        # usual answer but is neither logged as a refused write nor counted as one.
        with self.assertLogs("fingerd", "DEBUG") as logs:
            self.assertTrue(unix_request(self.path, b"").startswith(b"ERROR "))
        self.assertNotIn("refused a write", "\n".join(logs.output))
        self.assertEqual(self.server.metrics.counters, {})

    def test_a_hung_directory_holds_up_only_its_own_caller(self):
        # Who is calling is an account lookup (a directory user's uid): it runs on a
        # worker with the name service's deadline, never on the listener's loop.
        gate, first = threading.Event(), threading.Event()
        me, name_of = self.me, self.server.name_of

        def slow_name_of(uid):
            if not first.is_set():
                first.set()
                gate.wait(10)                  # the directory hangs for this caller
                raise fingerd.StoreUnavailable("the name service does not answer")
            return name_of(uid)
        self.server.name_of = slow_name_of
        self.addCleanup(gate.set)
        waiting = threading.Thread(target=lambda: self.answers.append(
            unix_request(self.path, b"First\n")))
        self.answers = []
        waiting.start()
        self.assertTrue(first.wait(5))
        start = time.monotonic()
        self.assertEqual(unix_request(self.path, b"Second\n"), b"OK\r\n")
        self.assertLess(time.monotonic() - start, 2.0)
        gate.set()
        waiting.join(10)
        self.assertEqual(self.answers, [b"ERROR the name service does not answer\r\n"])
        self.assertEqual(self.store.get(me).text, "Second")

    def test_socket_is_world_writable_and_removed_at_close(self):
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o666)
        self.server.shutdown()
        self.server.server_close()
        self.assertFalse(os.path.exists(self.path))

    def test_own_status_with_and_without_user_line(self):
        self.assertEqual(unix_request(self.path, b"Reading the RFCs\n"), b"OK\r\n")
        self.assertEqual(self.store.get(self.me).text, "Reading the RFCs")
        line = ("%s\nexpires: 1h\nIn a meeting\n" % self.me).encode()
        self.assertEqual(unix_request(self.path, line), b"OK\r\n")
        self.assertEqual(self.store.get(self.me).text, "In a meeting")
        self.assertEqual(unix_request(self.path, ("%s\nclear: yes\n" % self.me).encode()),
                         b"OK\r\n")
        self.assertIsNone(self.store.get(self.me))

    @unittest.skipUnless(os.geteuid() == 0, "root setting others' statuses needs root")
    def test_root_may_set_anyones(self):
        self.assertEqual(unix_request(self.path, b"alice\nSet by root\n"), b"OK\r\n")
        self.assertEqual(self.store.get("alice").text, "Set by root")

    @unittest.skipUnless(os.geteuid() == 0, "a second uid needs a test run as root")
    def test_another_uid_is_refused_for_roots_status(self):
        nobody = pwd.getpwnam("nobody")
        os.chmod(os.path.dirname(self.path), 0o755)
        self.store.set("root", "root's own")
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:                                   # the child: become nobody, then ask
            try:
                os.close(read_end)
                os.setgroups([])
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
                answers = [unix_request(self.path, b"root\nhijacked\n"),
                           unix_request(self.path, b"nobody\nmy own\n")]
                os.write(write_end, b"|".join(answers))
            finally:
                os._exit(0)
        os.close(write_end)
        answers = b""
        while True:
            chunk = os.read(read_end, 4096)
            if not chunk:
                break
            answers += chunk
        os.close(read_end)
        os.waitpid(pid, 0)
        refused, allowed = answers.split(b"|")
        self.assertTrue(refused.startswith(b"ERROR nobody may only set their own status"),
                        refused)
        self.assertEqual(self.store.get("root").text, "root's own")
        self.assertEqual(allowed, b"OK\r\n")
        self.assertEqual(self.store.get("nobody").text, "my own")

    def test_a_status_that_looks_like_a_name_is_a_status(self):
        self.assertEqual(unix_request(self.path, b"bob\n"), b"OK\r\n")   # not an account
        self.assertEqual(self.store.get(self.me).text, "bob")

    def test_stale_socket_file_is_replaced(self):
        path = os.path.join(temp_dir(self), "stale.sock")
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(path)
        stale.close()
        server = serve(self, fingerd.UnixSetterServer(path, self.store))
        self.assertEqual(server.address, path)
        self.assertEqual(unix_request(path, b"Fresh\n"), b"OK\r\n")


if __name__ == "__main__":
    unittest.main()
