"""Fault containment: one bad event never stops a service.

A backend or a handler raises (RuntimeError, RecursionError, MemoryError, StoreUnavailable) at
each phase of each protocol; the client gets the protocol's error, and the same listener then
answers a normal request.  Over real sockets, against real servers on port 0.
"""
import http.client
import os
import signal
import socket
import threading
import time
import unittest
import xmlrpc.client
from unittest import mock

from support import (TIMEOUT, Daemon, connect, fingerd, proc_value, query, read_all, serve,
                     set_status, temp_dir, wait_for)
from test_backends import AnyAccount
from test_irc import MeanRandom, ScriptedServer
from test_web import ResponseReader

Status = fingerd.Status
FAILURES = (RuntimeError, RecursionError, MemoryError, fingerd.StoreUnavailable)


class FaultyStore(fingerd.MemoryStore):
    """A memory store whose reads and writes raise `self.failure` while it is set."""

    def __init__(self):
        super().__init__(statuses={"alice": Status("Happy and well", 1_700_000_000.0)})
        self._failure = None

    @property
    def failure(self):
        return self._failure

    @failure.setter
    def failure(self, value):
        self._failure = value
        self.invalidate()          # a change: answers cached for the old version go

    def _fail(self):
        if self.failure is not None:
            raise self.failure("injected %s" % self.failure.__name__)

    def _get(self, user, verbose, via):
        self._fail()
        return super()._get(user, verbose, via)

    def _items(self, via):
        self._fail()
        return super()._items(via)

    def _set_async(self, user, status, done):
        self._fail()
        super()._set_async(user, status, done)


def send_quietly(sock, data):
    """sendall() that stops when the server has closed (it may, past its limits)."""
    try:
        sock.sendall(data)
    except OSError:
        pass


def http_get(port, path, method="GET"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class Quiet:
    """Swallow fingerd's log records for a block (the failures are expected)."""

    def __init__(self, test):
        self.context = test.assertLogs("fingerd", "DEBUG")

    def __enter__(self):
        self.context.__enter__()
        fingerd.log.warning("(expected failures follow)")   # assertLogs wants one record

    def __exit__(self, *exc):
        return self.context.__exit__(*exc)


class BackendFailureTest(unittest.TestCase):
    """The backend raises while answering: every protocol answers its own error, and the
    same listener answers the next request normally."""

    def setUp(self):
        self.store = FaultyStore()

    def fail_with(self, failure):
        self.store.failure = failure
        self.addCleanup(setattr, self.store, "failure", None)

    def test_finger(self):
        server = serve(self, fingerd.FingerServer(("127.0.0.1", 0), self.store))
        for failure in FAILURES:
            with self.subTest(failure=failure.__name__):
                self.store.failure = failure
                expected = fingerd.UNAVAILABLE if failure is fingerd.StoreUnavailable \
                    else fingerd.INTERNAL_ERROR
                with Quiet(self):
                    for line in (b"alice\r\n", b"\r\n", b"/W alice bob\r\n"):
                        self.assertEqual(query(server.port, line),
                                         expected.encode() + b"\r\n")
                self.store.failure = None
                self.assertEqual(query(server.port, b"alice\r\n"), b"Happy and well\r\n")

    def test_http_pages_and_json(self):
        server = serve(self, fingerd.WebServer(("127.0.0.1", 0), self.store))
        for failure in FAILURES:
            with self.subTest(failure=failure.__name__):
                self.store.failure = failure
                code = 503 if failure is fingerd.StoreUnavailable else 500
                with Quiet(self):
                    for path in ("/alice", "/", "/users.json", "/alice.json",
                                 "/.well-known/webfinger?resource=acct:alice@127.0.0.1"):
                        self.assertEqual(http_get(server.port, path)[0], code, path)
                self.store.failure = None
                self.assertEqual(http_get(server.port, "/alice")[0], 200)
                self.store.invalidate()

    def test_xmlrpc(self):
        server = serve(self, fingerd.WebServer(("127.0.0.1", 0), self.store))
        proxy = xmlrpc.client.ServerProxy("http://127.0.0.1:%d/RPC2" % server.port)
        for failure in FAILURES:
            with self.subTest(failure=failure.__name__):
                self.store.failure = failure
                with Quiet(self):
                    for call in (lambda: proxy.getUser("alice"), proxy.getUsers):
                        with self.assertRaises(xmlrpc.client.Fault) as caught:
                            call()
                        message = caught.exception.faultString
                        self.assertIn(message, (fingerd.UNAVAILABLE, fingerd.INTERNAL_ERROR))
                        self.assertNotIn("injected", message)    # no internals leak out
                self.store.failure = None
                self.assertEqual(proxy.getUser("alice"), "Happy and well")

    def test_setter(self):
        server = serve(self, fingerd.SetterServer(("127.0.0.1", 0), self.store))
        for failure in FAILURES:
            with self.subTest(failure=failure.__name__):
                self.store.failure = failure
                with Quiet(self):
                    answer = set_status(server.port, "alice", "lost?")
                self.assertTrue(answer.startswith(b"ERROR "), answer)
                self.store.failure = None
                self.assertEqual(set_status(server.port, "alice", "kept"), b"OK\r\n")


class PhaseFailureTest(unittest.TestCase):
    """A bug at each phase of a request: parse, route, render, send."""

    def setUp(self):
        self.store = FaultyStore()

    def test_finger_phases(self):
        server = serve(self, fingerd.FingerServer(("127.0.0.1", 0), self.store))
        phases = [(fingerd, "parse_query"), (fingerd.FingerServer, "answer"),
                  (fingerd, "user_block"), (fingerd.BufferedRequestHandler, "finish")]
        for target, name in phases:
            for failure in FAILURES[:3]:
                with self.subTest(phase=name, failure=failure.__name__):
                    self.store.invalidate()          # no cached answer: every phase runs
                    with mock.patch.object(target, name, side_effect=failure("bug")), \
                            Quiet(self):
                        self.assertEqual(query(server.port, b"alice\r\n"),
                                         fingerd.INTERNAL_ERROR.encode() + b"\r\n")
                    self.assertEqual(query(server.port, b"alice\r\n"), b"Happy and well\r\n")

    def test_http_phases(self):
        server = serve(self, fingerd.WebServer(("127.0.0.1", 0), self.store))
        phases = [(fingerd.WebHandler, "parse_request"), (fingerd.WebHandler, "route"),
                  (fingerd.WebServer, "render_user"), (fingerd.WebHandler, "reply")]
        for target, name in phases:
            for failure in FAILURES[:3]:
                with self.subTest(phase=name, failure=failure.__name__):
                    self.store.invalidate()
                    with mock.patch.object(target, name, side_effect=failure("bug")), \
                            Quiet(self):
                        code, body = http_get(server.port, "/alice")
                    self.assertEqual(code, 500)
                    self.assertNotIn(b"bug", body)
                    self.assertEqual(http_get(server.port, "/alice")[0], 200)

    def test_setter_phases(self):
        server = serve(self, fingerd.SetterServer(("127.0.0.1", 0), self.store))
        phases = [(fingerd, "parse_setter_request"), (fingerd.SetterServer, "outcome")]
        for target, name in phases:
            with self.subTest(phase=name):
                with mock.patch.object(target, name, side_effect=RuntimeError("bug")), \
                        Quiet(self):
                    self.assertEqual(set_status(server.port, "alice", "x"),
                                     b"ERROR internal error in server\r\n")
                self.assertEqual(set_status(server.port, "alice", "fine"), b"OK\r\n")

    def test_internal_errors_are_counted_in_metrics(self):
        server = serve(self, fingerd.WebServer(("127.0.0.1", 0), self.store))
        with mock.patch.object(fingerd.WebServer, "render_user", side_effect=RuntimeError("bug")), \
                Quiet(self):
            http_get(server.port, "/bob")
        _, body = http_get(server.port, "/metrics")
        lines = [line for line in body.decode().splitlines()
                 if line.startswith('fingerd_internal_errors_total{where="http"}')]
        self.assertEqual(len(lines), 1)
        self.assertGreaterEqual(float(lines[0].split()[-1]), 1.0)


class PipelinedHTTPTest(unittest.TestCase):
    """The reproduction in issue 12: a 33 KB write of pipelined requests stopped http-loop."""

    def test_10000_pipelined_requests_while_others_are_served(self):
        store = FaultyStore()
        server = serve(self, fingerd.WebServer(("127.0.0.1", 0), store))
        flood = connect(server.port)
        self.addCleanup(flood.close)
        got = []
        reader = threading.Thread(target=lambda: got.append(read_all(flood, 1 << 28)),
                                  daemon=True)
        reader.start()
        sender = threading.Thread(target=send_quietly, daemon=True,
                                  args=(flood, b"GET /alice HTTP/1.1\r\nHost: x\r\n\r\n" * 10000))
        sender.start()
        worst = 0.0
        for _ in range(20):
            start = time.monotonic()
            self.assertEqual(http_get(server.port, "/")[0], 200)
            worst = max(worst, time.monotonic() - start)
        reader.join(TIMEOUT)
        sender.join(TIMEOUT)
        data = got[0]
        answered = data.count(b"HTTP/1.1 200 OK\r\n")
        self.assertEqual(answered, server.max_requests)        # then the server closed
        self.assertEqual(data.count(b"Connection: close\r\n"), 1)
        self.assertLess(worst, 2.0)          # a liveness bound, not a benchmark
        self.assertEqual(http_get(server.port, "/alice")[0], 200)
        self.assertIsNone(server.loop_problem(time.monotonic(), 5))

    def test_the_issue_reproduction_against_the_daemon(self):
        daemon = Daemon(self, "--backend", "memory", "--http", "127.0.0.1:0")
        port = daemon.ports["http"]
        with connect(port) as s:
            s.sendall(b"GET /alice HTTP/1.1\r\nHost: x\r\n\r\n" * 1000)
            reader = ResponseReader(s)
            codes = [reader.read()[0] for _ in range(1000)]
        self.assertEqual(codes, [404] * 1000)
        for path in ("/", "/healthz", "/metrics"):
            self.assertEqual(http_get(port, path)[0], 200, path)
        self.assertNotIn("Traceback", daemon.log)


class TruncatedRPCTest(unittest.TestCase):
    def test_a_body_shorter_than_its_length_does_not_hold_up_the_next_call(self):
        # PyPy #1047 / CVE-2012-0845: a short or malformed XML-RPC POST made
        # SimpleXMLRPCServer spin; here it waits for its deadline alone.
        server = serve(self, fingerd.WebServer(("127.0.0.1", 0), FaultyStore()))
        server.deadline = 3.0
        short = connect(server.port)
        self.addCleanup(short.close)
        short.sendall(b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n<?xml")
        broken = b"<?xml version='1.0'?><methodCall><methodName>getUser</methodName><params>"
        code, body = None, b""
        with connect(server.port) as s:
            s.sendall(b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                      % (len(broken), broken))
            code, _, body = ResponseReader(s).read()
        self.assertEqual(code, 200)
        self.assertIn(b"<fault>", body)
        proxy = xmlrpc.client.ServerProxy("http://127.0.0.1:%d/RPC2" % server.port)
        start = time.monotonic()
        self.assertEqual(proxy.getUser("alice"), "Happy and well")
        self.assertLess(time.monotonic() - start, 2.0)   # not after the other's deadline
        self.assertIn(b" 408 ", read_all(short)[:20])


class RefresherFaultTest(unittest.TestCase):
    def test_a_refresh_that_raises_once_does_not_stop_later_refreshes(self):
        # mmpy_bot #392, openHAB #6956: one exception stopped the periodic refresh for good.
        path = os.path.join(temp_dir(self), "users")
        with open(path, "w") as f:
            f.write("alice: first\n")
        store = fingerd.FileStore(path, refresh=0.05)
        store.settle = 0.0
        self.addCleanup(store.close)
        real, calls = fingerd.parse_users, []

        def parse(*args):
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("a bug in the parser")
            return real(*args)
        before = fingerd.FAULTS.count("file-refresh")
        with mock.patch.object(fingerd, "parse_users", parse), Quiet(self):
            with open(path, "w") as f:
                f.write("alice: second\n")
            os.utime(path, (time.time() - 5, time.time() - 5))
            self.assertTrue(wait_for(lambda: store.get("alice").text == "second"))
        self.assertEqual(fingerd.FAULTS.count("file-refresh"), before + 1)


class SQLiteWriterFaultTest(unittest.TestCase):
    def test_a_commit_that_raises_is_refused_and_the_writer_goes_on(self):
        store = fingerd.SQLiteStore(os.path.join(temp_dir(self), "f.db"))
        self.addCleanup(store.close)
        server = serve(self, fingerd.SetterServer(("127.0.0.1", 0), store))
        original, calls = store._commit, []

        def commit(batch):
            calls.append(len(batch))
            if len(calls) == 1:
                raise RuntimeError("a bug in the commit")
            return original(batch)
        store._commit = commit
        with Quiet(self):
            answer = set_status(server.port, "alice", "not stored")
        self.assertEqual(answer, b"ERROR internal error: the status was not stored\r\n")
        self.assertIsNone(store.get("alice"))
        self.assertEqual(set_status(server.port, "alice", "stored"), b"OK\r\n")
        self.assertEqual(store.get("alice").text, "stored")
        self.assertIsNone(store.problem())

    def test_a_turn_whose_submit_raises_is_refused_and_the_loop_goes_on(self):
        store = fingerd.SQLiteStore(os.path.join(temp_dir(self), "f.db"))
        self.addCleanup(store.close)
        server = serve(self, fingerd.SetterServer(("127.0.0.1", 0), store))
        original, calls = store.submit, []

        def submit(batch):
            calls.append(len(batch))
            if len(calls) == 1:
                raise RuntimeError("a bug in submit")
            return original(batch)
        store.submit = submit
        with Quiet(self):
            answer = set_status(server.port, "alice", "not stored")
        self.assertEqual(answer, b"ERROR internal error: the status was not stored\r\n")
        self.assertEqual(set_status(server.port, "alice", "stored"), b"OK\r\n")
        self.assertEqual(store.get("alice").text, "stored")

    def test_a_dead_writer_refuses_at_once_instead_of_hanging(self):
        store = fingerd.SQLiteStore(os.path.join(temp_dir(self), "f.db"))
        self.addCleanup(store.close)
        store._queue.put(None)               # the writer ends as if its loop had failed
        store._writer.join(TIMEOUT)
        self.assertIn("writer", store.problem())
        server = serve(self, fingerd.SetterServer(("127.0.0.1", 0), store))
        self.assertEqual(set_status(server.port, "alice", "x"),
                         b"ERROR the database writer is not running\r\n")


class IRCFaultTest(unittest.TestCase):
    def setUp(self):
        self.store = FaultyStore()
        self.server = ScriptedServer(self)

    def registered(self):
        bot = fingerd.IRCBot(self.store, "127.0.0.1", self.server.port,
                             backoff=fingerd.Backoff(initial=0.05, rng=MeanRandom()))
        bot.start()
        self.addCleanup(bot.stop)
        client = self.server.accept()
        client.welcome()
        self.assertTrue(bot.connected.wait(TIMEOUT))
        return bot, client

    def ask(self, client, user=b"alice"):
        client.send(b":carol!c@h PRIVMSG fingerbot :" + user)
        return client.expect(b"PRIVMSG")

    def test_a_failing_backend_is_a_failed_answer_not_a_lost_connection(self):
        bot, client = self.registered()
        for failure in FAILURES:
            with self.subTest(failure=failure.__name__):
                self.store.failure = failure
                with Quiet(self):
                    line = self.ask(client)
                expected = fingerd.UNAVAILABLE if failure is fingerd.StoreUnavailable \
                    else fingerd.INTERNAL_ERROR
                self.assertEqual(line, b"PRIVMSG carol :" + expected.encode())
                self.store.failure = None
                self.assertEqual(self.ask(client),
                                 b"PRIVMSG carol :Status of alice: Happy and well")
        self.assertEqual(bot.connects, 1)            # never reconnected
        self.assertTrue(bot.connected.is_set())

    def test_a_bug_handling_one_message_does_not_end_the_session(self):
        bot, client = self.registered()
        real = bot._privmsg
        with mock.patch.object(bot, "_privmsg", side_effect=RuntimeError("bug")), Quiet(self):
            client.send(b":carol!c@h PRIVMSG fingerbot :alice")
            client.send(b"PING :still-there")
            self.assertEqual(client.expect(b"PONG"), b"PONG still-there")
        self.assertIs(bot._privmsg.__func__, real.__func__)
        self.assertEqual(self.ask(client), b"PRIVMSG carol :Status of alice: Happy and well")
        self.assertEqual(bot.connects, 1)

    def test_malformed_lines_from_public_bug_reports_are_survived(self):
        # MegBot #57 (KICK without a reason), bitbot #63 (raw-line parsing), Limnoria #455.
        bot, client = self.registered()
        for line in (b":op!u@h KICK #tilde fingerbot", b"NOSPACES", b":", b": :",
                     b":x PRIVMSG", b":x PRIVMSG fingerbot", b"\xff\xfe PRIVMSG fingerbot :\xff",
                     b":x!y@z PRIVMSG fingerbot :\x01\x01", b":x 001", b"PING"):
            client.send(line)
        client.send(b"PING :after")
        self.assertEqual(client.expect(b"PONG after", TIMEOUT), b"PONG after")
        self.assertEqual(self.ask(client), b"PRIVMSG carol :Status of alice: Happy and well")

    def test_a_bug_in_the_session_reconnects(self):
        bot, client = self.registered()
        with mock.patch.object(bot, "_handle_contained", side_effect=KeyError("bug")), \
                Quiet(self):
            client.send(b"PING :x")
            second = self.server.accept()
        second.welcome()
        self.assertTrue(wait_for(lambda: bot.connects == 2))
        self.assertEqual(self.ask(second), b"PRIVMSG carol :Status of alice: Happy and well")


class SupervisorTest(unittest.TestCase):
    """A loop that dies anyway: /healthz names it, the daemon restarts it from its
    still-open socket, and one that keeps dying makes the daemon exit."""

    def start_daemon(self, *extra):
        args = fingerd.build_parser().parse_args(
            ["--backend", "memory", "--finger", "127.0.0.1:0", "--setter", "off",
             "--http", "127.0.0.1:0", *extra])
        daemon = fingerd.Daemon(args)
        with Quiet(self):
            daemon.start()
        self.addCleanup(daemon.stop)
        return daemon

    def kill_loop(self, server, thread_index, daemon):
        with mock.patch.object(server, "_sweep", side_effect=RuntimeError("loop bug")), \
                Quiet(self):
            daemon.threads[thread_index].join(TIMEOUT)
        self.assertFalse(daemon.threads[thread_index].is_alive())

    def test_a_dead_loop_is_reported_and_restarted(self):
        daemon = self.start_daemon()
        finger, web = daemon.servers
        self.kill_loop(finger, 0, daemon)
        ok, reason = daemon.monitor.health()
        self.assertFalse(ok)
        self.assertIn("finger", reason)
        self.assertIn("loop bug", reason)
        code, body = http_get(web.port, "/healthz")
        self.assertEqual(code, 503)
        self.assertIn(b"finger listener's loop died", body)
        self.assertFalse(daemon.healthy)                   # so WATCHDOG=1 stops
        with Quiet(self):
            self.assertIsNone(daemon.supervise())
        self.assertTrue(wait_for(lambda: daemon.monitor.health()[0]))
        self.assertEqual(query(finger.port, b"\r\n"), b"No users\r\n")
        self.assertEqual(http_get(web.port, "/healthz")[0], 200)

    def test_a_loop_that_keeps_dying_makes_the_daemon_exit(self):
        daemon = self.start_daemon()
        finger = daemon.servers[0]
        for _ in range(daemon.RESTARTS):
            self.kill_loop(finger, 0, daemon)
            with Quiet(self):
                self.assertIsNone(daemon.supervise())
        self.kill_loop(finger, 0, daemon)
        with Quiet(self):
            reason = daemon.supervise()
        self.assertIn("the finger loop died 4 times", reason)

    def test_the_irc_thread_is_restarted_if_it_ends(self):
        irc = ScriptedServer(self)
        daemon = self.start_daemon("--irc", "127.0.0.1:%d" % irc.port)
        bot = daemon.bot
        with mock.patch.object(bot.backoff, "next", side_effect=RuntimeError("bug")), \
                Quiet(self):
            irc.accept().close()              # the session ends; the back-off then fails
            self.assertTrue(wait_for(lambda: not bot.running))
        self.assertFalse(daemon.monitor.health()[0])
        with Quiet(self):
            daemon.supervise()
        irc.accept().welcome()
        self.assertTrue(bot.connected.wait(TIMEOUT))
        self.assertTrue(daemon.monitor.health()[0])


if __name__ == "__main__":
    unittest.main()


class OutsiderFindingsTest(unittest.TestCase):
    """What an outside tester broke after the first round of this work (issue 12)."""

    def test_a_storm_of_sighups_neither_hangs_nor_kills_the_daemon(self):
        # The handler used to take threading.Event's lock: a second signal inside it hung
        # the main thread (no reloads, SIGTERM ignored), a flood overflowed the stack.
        daemon = Daemon(self, "--backend", "memory", "--http", "127.0.0.1:0")
        for _ in range(3000):
            os.kill(daemon.proc.pid, signal.SIGHUP)
        self.assertTrue(daemon.wait_for_log("SIGHUP: re-reading"))
        self.assertEqual(http_get(daemon.ports["http"], "/healthz")[0], 200)
        for _ in range(200):
            os.kill(daemon.proc.pid, signal.SIGHUP)
        daemon.signal(signal.SIGTERM)
        self.assertEqual(daemon.wait(TIMEOUT), 0)
        self.assertNotIn("Traceback", daemon.log)

    def test_too_many_query_fields_are_a_400_not_an_internal_error(self):
        server = serve(self, fingerd.WebServer(("127.0.0.1", 0), FaultyStore()))
        before = fingerd.FAULTS.count("http")
        code, _ = http_get(server.port, "/.well-known/webfinger?" + "a=1&" * 21 +
                           "resource=acct:alice@x")
        self.assertEqual(code, 400)
        self.assertEqual(fingerd.FAULTS.count("http"), before)

    def test_a_finger_program_removed_at_run_time_is_unavailable_not_a_bug(self):
        program = os.path.join(temp_dir(self), "finger")
        with open(program, "w") as f:
            f.write("#!/bin/sh\necho \"plan of $2\"\n")
        os.chmod(program, 0o755)
        store = fingerd.ProcessStore(program, refresh=0, accounts=AnyAccount(),
                                     uids=(1000, 60000))
        self.assertEqual(store.get("alice").text, "plan of alice")
        os.rename(program, program + ".gone")
        with self.assertRaises(fingerd.StoreUnavailable):
            store.get("bob")

    def test_a_remote_that_drips_its_answer_is_cut_off_at_the_deadline(self):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        self.addCleanup(listener.close)
        stop = threading.Event()
        self.addCleanup(stop.set)

        def drip():
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                conn.recv(65536)
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/xml\r\n\r\n<?xml")
                while not stop.wait(0.2):      # a byte at a time, each within the timeout
                    try:
                        conn.sendall(b" ")
                    except OSError:
                        break
                conn.close()
        threading.Thread(target=drip, daemon=True).start()
        store = fingerd.RemoteStore(["http://127.0.0.1:%d/RPC2" % listener.getsockname()[1]],
                                    refresh=0, timeout=0.5)
        start = time.monotonic()
        with Quiet(self), self.assertRaises(fingerd.StoreUnavailable):
            store.get("alice")
        self.assertLess(time.monotonic() - start, 3.0)      # 3 x the timeout, not forever

    def test_an_empty_nick_from_the_server_is_ignored(self):
        server = ScriptedServer(self)
        bot = fingerd.IRCBot(FaultyStore(), "127.0.0.1", server.port,
                             backoff=fingerd.Backoff(initial=0.05, rng=MeanRandom()))
        bot.start()
        self.addCleanup(bot.stop)
        client = server.accept()
        client.welcome()
        self.assertTrue(bot.connected.wait(TIMEOUT))
        client.send(b":fingerbot!f@h NICK :")
        client.send(b":carol!c@h PRIVMSG fingerbot :alice")
        self.assertEqual(client.expect(b"PRIVMSG"),
                         b"PRIVMSG carol :Status of alice: Happy and well")

    def test_a_slow_backend_does_not_stop_the_bot_answering_ping(self):
        class SlowStore(FaultyStore):
            blocking = True

            def _get(self, user, verbose, via):
                if user.startswith("slow"):
                    time.sleep(1.0)
                return super()._get(user, verbose, via)
        server = ScriptedServer(self)
        bot = fingerd.IRCBot(SlowStore(), "127.0.0.1", server.port, send_rate=100,
                             send_burst=100)
        bot.start()
        self.addCleanup(bot.stop)
        client = server.accept()
        client.welcome()
        self.assertTrue(bot.connected.wait(TIMEOUT))
        for n in range(4):
            client.send(b":carol!c@h PRIVMSG fingerbot :slow%d" % n)
        start = time.monotonic()
        client.send(b"PING :still-there")
        self.assertEqual(client.expect(b"PONG"), b"PONG still-there")
        self.assertLess(time.monotonic() - start, 0.8)    # not after the slow lookups
        answers = sorted(client.expect(b"PRIVMSG", TIMEOUT) for _ in range(4))
        self.assertEqual(answers, [b"PRIVMSG carol :Status of slow%d: No such user" % n
                                   for n in range(4)])
        self.assertEqual(bot.connects, 1)

    def test_clients_that_never_read_a_big_page_share_one_copy_of_it(self):
        # An outsider held 8 GB with 600 connections that asked for / and never read.
        store = fingerd.MemoryStore(
            statuses={"user%d" % i: Status(("x" * 70 + "\n") * 60, 1.0) for i in range(2000)})
        server = serve(self, fingerd.WebServer(("127.0.0.1", 0), store))
        self.assertEqual(http_get(server.port, "/")[0], 200)          # rendered and cached
        size = len(server.page("/", "http://127.0.0.1:%d" % server.port, "",
                               server.render_user_list).body)
        self.assertGreater(size, 4_000_000)
        before = proc_value("self", "VmRSS") * 1024
        clients = []
        self.addCleanup(lambda: [c.close() for c in clients])
        for _ in range(40):
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % server.port)
            clients.append(sock)
        self.assertTrue(wait_for(lambda: sum(c.state is fingerd.State.WRITING
                                             for c in list(server._conns.values())) == 40))
        grown = proc_value("self", "VmRSS") * 1024 - before
        self.assertLess(grown, 8 * size)       # copied, it would be 40 pages
