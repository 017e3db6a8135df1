"""Front-ends (--backend xmlrpc) in front of authorities, through outages (issue 17,
README: More than one machine).  Authorities are real fingerd processes on loopback, killed
with SIGKILL and restarted on the same port; tests/test_federation_netns.py runs the same
story on three hosts in network namespaces (as root, in CI).
"""
import concurrent.futures
import logging
import os
import socket
import threading
import time
import unittest

from support import (Daemon, fingerd, query, serve, set_status, temp_dir, wait_for,
                     write_file)
from test_privacy import get

UNAVAILABLE = (fingerd.UNAVAILABLE + "\r\n").encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Authority:
    """A fingerd authority (--backend memory) on a fixed loopback port, so that it can be
    killed and started again where front-ends expect it."""

    def __init__(self, test, users, *extra):
        self.test, self.extra = test, list(extra)
        self.users = write_file(os.path.join(temp_dir(test), "users"),
                                "".join("%s: %s\n" % item for item in users.items()))
        self.port = free_port()
        self.url = "http://127.0.0.1:%d/RPC2" % self.port
        self.start()

    def start(self):
        self.daemon = Daemon(self.test, "--backend", "memory", "--users-file", self.users,
                             "--http", "127.0.0.1:%d" % self.port, "--finger", "off",
                             *self.extra)
        self.setter = self.daemon.ports["setter"]

    def kill(self):
        self.daemon.proc.kill()
        self.daemon.wait()


def front_end(test, *remotes, refresh=1.0):
    args = ["--backend", "xmlrpc", "--refresh", str(refresh), "--http", "127.0.0.1:0"]
    for remote in remotes:
        args += ["--remote", remote.url]
    daemon = Daemon(test, *args)
    return daemon, daemon.ports["finger"], daemon.ports["http"]


class OutageTest(unittest.TestCase):
    def test_the_list_is_served_stale_like_lookups(self):
        """Failure 6: the list said 'No users' while lookups served stale answers."""
        authority = Authority(self, {"alice": "Gone fishing", "bob": "In a meeting"})
        front, finger, http = front_end(self, authority, refresh=0.3)
        self.assertEqual(query(finger, b"\r\n"),
                         b"alice: Gone fishing\r\nbob: In a meeting\r\n")
        authority.kill()
        time.sleep(0.5)                                  # every answer is now stale
        for _ in range(3):
            self.assertEqual(query(finger, b"\r\n"),
                             b"alice: Gone fishing\r\nbob: In a meeting\r\n")
            self.assertEqual(query(finger, b"alice\r\n"), b"Gone fishing\r\n")
            status, _, page = get(http, "/")
            self.assertEqual(status, 200)
            self.assertIn(b"In a meeting", page)
        status, _, body = get(http, "/healthz")           # and the outage is visible
        self.assertEqual(status, 503)
        self.assertIn(authority.url.encode(), body)
        self.assertEqual(front.log.count("does not answer"), 1, front.log)

    def test_an_authoritys_users_stay_with_it_while_it_is_down(self):
        """Failure 7: the live authority's 'No such user' hid the down one's users."""
        first = Authority(self, {"bob": "Live and well"})
        second = Authority(self, {"alice": "Only on the second"})
        front, finger, http = front_end(self, first, second, refresh=0.3)
        self.assertEqual(query(finger, b"alice\r\n"), b"Only on the second\r\n")
        self.assertEqual(query(finger, b"\r\n"),
                         b"alice: Only on the second\r\nbob: Live and well\r\n")
        second.kill()
        time.sleep(0.5)
        for _ in range(3):
            self.assertEqual(query(finger, b"alice\r\n"), b"Only on the second\r\n")
            self.assertEqual(query(finger, b"bob\r\n"), b"Live and well\r\n")
            self.assertIn(b"alice: Only on the second", query(finger, b"\r\n"))
        # A name on no list is unknown; one only the down authority might know is not.
        self.assertEqual(query(finger, b"nobody\r\n"), b"No such user\r\n")
        store = fingerd.RemoteStore([first.url, second.url], refresh=30, timeout=1)
        self.addCleanup(store.close)
        self.assertEqual(store.get("bob").text, "Live and well")
        with self.assertRaises(fingerd.StoreUnavailable):
            store.get("nobody")            # the second never gave its list: it might know

    def test_a_user_who_moved_is_followed(self):
        first = Authority(self, {"bob": "Here"})
        second = Authority(self, {"alice": "Old home"})
        front, finger, _ = front_end(self, first, second, refresh=0.2)
        self.assertEqual(query(finger, b"alice\r\n"), b"Old home\r\n")
        set_status(first.setter, "alice", "New home")            # she moved...
        second.kill()                                            # ...and the old one is gone
        write_file(second.users, "carol: Not alice\n")
        time.sleep(0.3)
        self.assertEqual(query(finger, b"alice\r\n"), b"Old home\r\n")    # stale, with it
        second.start()                                           # back, without her
        time.sleep(0.3)
        self.assertTrue(wait_for(lambda: query(finger, b"alice\r\n") == b"New home\r\n", 5),
                        front.log)


class LoopTest(unittest.TestCase):
    def test_a_loop_is_broken_where_it_starts_not_further_on(self):
        # Found by an outsider: L1 asks L2 and B, L2 asks L1 only.  A request to L1 came
        # back to it through L2; L2 got the loop fault and dropped L1 for good, serving
        # nothing.  Now the fault names L1 and reaches it: L1 leaves L2 out.
        b = Authority(self, {"bob": "On B"})
        ports = [free_port(), free_port()]
        url = ["http://127.0.0.1:%d/RPC2" % port for port in ports]
        l1 = Daemon(self, "--backend", "xmlrpc", "--remote", url[1], "--remote", b.url,
                    "--http", "127.0.0.1:%d" % ports[0])
        l2 = Daemon(self, "--backend", "xmlrpc", "--remote", url[0],
                    "--http", "127.0.0.1:%d" % ports[1])
        for _ in range(3):
            self.assertEqual(query(l1.ports["finger"], b"bob\r\n"), b"On B\r\n")
            self.assertEqual(query(l2.ports["finger"], b"bob\r\n"), b"On B\r\n")
        self.assertIn("leads back to this server", l1.log)
        self.assertNotIn("leads back to this server", l2.log)
        health = get(l2.ports["http"], "/healthz")
        self.assertEqual(health[0], 200, (health, l2.log))


class BackoffTest(unittest.TestCase):
    def test_a_burst_of_failures_is_one_step(self):
        """Failure 8: twelve failures at once pushed the back-off to its cap."""
        store = fingerd.RemoteStore(["http://127.0.0.1:%d/RPC2" % free_port()],
                                    refresh=30, timeout=1)
        self.addCleanup(store.close)
        remote = store.remotes[0]
        barrier = threading.Barrier(12)

        def lookup(i):
            barrier.wait()
            try:
                store.get("user%d" % i)
            except fingerd.StoreUnavailable:
                pass
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            list(pool.map(lookup, range(12)))
        self.assertLess(remote.backoff.nominal, remote.backoff.initial * 3)
        self.assertLess(remote.retry_at - time.monotonic(), 2.0)
        self.assertEqual(remote.outages, 1)

    def test_a_down_authority_does_not_multiply_calls_to_the_others(self):
        store = fingerd.MemoryStore(statuses={"alice": fingerd.Status("A", 1.0)})
        server = serve(self, fingerd.WebServer(("127.0.0.1", 0), store, instance_id="live"))
        calls = []
        dispatcher = server.rpc()
        real = dispatcher.answer
        dispatcher.answer = lambda data, *a: calls.append(data) or real(data, *a)
        front = fingerd.RemoteStore(["http://127.0.0.1:%d/RPC2" % server.port,
                                     "http://127.0.0.1:%d/RPC2" % free_port()],
                                    refresh=30, timeout=1)
        self.addCleanup(front.close)
        for _ in range(20):
            self.assertEqual(front.users(), ["alice"])
            self.assertEqual([name for name, _ in front.items()], ["alice"])
        self.assertEqual(sum(b"getUsers" in data for data in calls), 1)

    def test_the_back_off_never_exceeds_refresh(self):
        store = fingerd.RemoteStore(["http://127.0.0.1:%d/RPC2" % free_port()],
                                    refresh=2, timeout=1)
        self.addCleanup(store.close)
        remote = store.remotes[0]
        for _ in range(10):
            remote.retry_at = 0
            with self.assertRaises(fingerd.StoreUnavailable):
                store.get("alice")
        self.assertLessEqual(remote.retry_at - time.monotonic(), 2.0)

    def test_front_ends_converge_within_refresh_after_a_recovery(self):
        refresh = 2.0
        authority = Authority(self, {"alice": "Before the outage"})
        fronts = [front_end(self, authority, refresh=refresh) for _ in range(3)]
        for _, finger, _ in fronts:
            self.assertEqual(query(finger, b"alice\r\n"), b"Before the outage\r\n")
        authority.kill()
        write_file(authority.users, "alice: After the outage\n")
        end = time.monotonic() + 8                  # an outage of 8 s, queried throughout
        while time.monotonic() < end:
            for _, finger, _ in fronts:
                self.assertEqual(query(finger, b"alice\r\n"), b"Before the outage\r\n")
            time.sleep(0.2)
        authority.start()
        recovered = time.monotonic()
        converged = []
        for _, finger, http in fronts:
            self.assertTrue(wait_for(
                lambda: query(finger, b"alice\r\n") == b"After the outage\r\n", 10, 0.05))
            converged.append(time.monotonic() - recovered)
        self.assertLessEqual(max(converged), refresh + 1.0, converged)
        for _, _, http in fronts:
            self.assertTrue(wait_for(lambda: get(http, "/healthz")[0] == 200, 5))


class ConnectionTest(unittest.TestCase):
    def test_a_burst_of_cold_lookups_meets_no_rate_limit(self):
        """Failure 9: a TCP connection per call met the authority's per-address limit."""
        users = {"u%03d" % i: "status %d" % i for i in range(120)}
        authority = Authority(self, users, "--rate", "4", "--limit-loopback")
        store = fingerd.RemoteStore([authority.url], refresh=30, timeout=2)
        self.addCleanup(store.close)
        failed = []
        start = time.monotonic()
        for i, name in enumerate(sorted(users)):           # 40 a second for 3 s
            time.sleep(max(0.0, start + i / 40 - time.monotonic()))
            try:
                if store.get(name).text != users[name]:
                    failed.append(name)
            except fingerd.StoreUnavailable:
                failed.append(name)
        self.assertEqual(failed, [])
        self.assertEqual(store.remotes[0].outages, 0)

    def test_429_is_slow_down_not_down(self):
        remote = TooManyRemote(self, retry_after=b"1")
        store = fingerd.RemoteStore([remote.url], refresh=30, timeout=2)
        self.addCleanup(store.close)
        with self.assertNoLogsAtWarning():
            with self.assertRaises(fingerd.StoreUnavailable):
                store.get("alice")
            self.assertIsNone(store.problem())              # not an outage
            for _ in range(5):
                with self.assertRaises(fingerd.StoreUnavailable):
                    store.get("alice")                      # nobody calls during Retry-After
            self.assertEqual(remote.requests, 1)
            time.sleep(1.1)
            self.assertEqual(store.get("alice").text, "Patient")
        self.assertEqual(store.remotes[0].slowdowns, 1)
        self.assertEqual(store.remotes[0].outages, 0)

    def assertNoLogsAtWarning(self):
        test = self

        class Check:
            def __enter__(self):
                self.records = []
                self.handler = logging.Handler(logging.WARNING)
                self.handler.emit = self.records.append
                fingerd.log.addHandler(self.handler)

            def __exit__(self, *exc):
                fingerd.log.removeHandler(self.handler)
                if exc[0] is None:
                    test.assertEqual([r.getMessage() for r in self.records], [])
        return Check()

    def test_connections_are_kept_and_an_idle_close_is_retried_once(self):
        store = fingerd.MemoryStore(
            statuses={"alice": fingerd.Status("A", 1.0), "bob": fingerd.Status("B", 1.0)})
        server = fingerd.WebServer(("127.0.0.1", 0), store, instance_id="authority")
        server.idle_timeout = 0.3
        serve(self, server)
        front = fingerd.RemoteStore(["http://127.0.0.1:%d/RPC2" % server.port],
                                    refresh=0, timeout=2)
        self.addCleanup(front.close)
        for _ in range(10):
            self.assertEqual(front.get("alice").text, "A")
        self.assertEqual(front.remotes[0]._slots._value, fingerd.REMOTE_CONNECTIONS)
        self.assertEqual(len(front.remotes[0]._idle), 1)            # one connection, kept
        time.sleep(0.6)                                  # the authority closes it, idle
        self.assertEqual(front.get("bob").text, "B")     # retried once on a new one
        self.assertEqual(front.remotes[0].failures, 0)


class TooManyRemote:
    """An authority that answers its first request 429 Too Many Requests with Retry-After,
    then a status."""

    def __init__(self, test, retry_after):
        self.retry_after, self.requests = retry_after, 0
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.url = "http://127.0.0.1:%d/RPC2" % self.listener.getsockname()[1]
        test.addCleanup(self.listener.close)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        body = (b"<?xml version='1.0'?><methodResponse><params><param><value><string>"
                b"Patient</string></value></param></params></methodResponse>")
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with sock:
                try:
                    sock.recv(65536)
                    self.requests += 1
                    if self.requests == 1:
                        sock.sendall(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: "
                                     + self.retry_after + b"\r\nContent-Length: 0\r\n"
                                     b"Connection: close\r\n\r\n")
                    else:
                        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\n"
                                     b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                                     % (len(body), body))
                except OSError:
                    pass


class RetryAfterTest(unittest.TestCase):
    def test_forms(self):
        self.assertEqual(fingerd.retry_after("5"), 5.0)
        self.assertEqual(fingerd.retry_after(" 120 "), 120.0)
        self.assertIsNone(fingerd.retry_after(None))
        self.assertIsNone(fingerd.retry_after("soon"))
        self.assertIsNone(fingerd.retry_after("-3"))
        when = fingerd.http_date(1_000_000_010)
        self.assertAlmostEqual(fingerd.retry_after(when, now=1_000_000_000), 10.0)
        self.assertEqual(fingerd.retry_after(fingerd.http_date(5), now=100), 0.0)


class ViaChainTest(unittest.TestCase):
    """A request's Via chain goes with its own remote calls and no other's: it is passed
    as an argument, not left on the worker thread (rorodata/firefly #70,
    thehyve/fairspace #1582, grpc/grpc #40123: request context left on a pooled thread
    reached the next request)."""

    def test_one_requests_via_never_reaches_the_next(self):
        authority = serve(self, fingerd.WebServer(("127.0.0.1", 0), fingerd.MemoryStore(
            statuses={name: fingerd.Status(name.upper(), 1.0) for name in
                      ("alice", "bob", "carol", "dave")}), instance_id="authority"))
        seen = []
        dispatcher = authority.rpc()
        real = dispatcher.answer
        dispatcher.answer = lambda data, via="": seen.append((data, via)) or real(data, via)
        store = fingerd.RemoteStore(["http://127.0.0.1:%d/RPC2" % authority.port],
                                    refresh=30, timeout=2)
        self.addCleanup(store.close)
        front = fingerd.WebServer(("127.0.0.1", 0), store)
        front.max_workers = 1                       # every request on the same worker
        serve(self, front)
        own = "fingerd/" + fingerd.INSTANCE_ID
        for name, via in (("alice", "1.1 proxy, fingerd/0123abcd"), ("bob", ""),
                          ("carol", "1.1 other"), ("dave", "")):
            headers = [("Via", via)] if via else []
            code, _, body = get(front.port, "/%s.json" % name, headers=headers)
            self.assertEqual(code, 200, body)
            calls = [v for data, v in seen if name.encode() in data]
            self.assertEqual(calls, [(via + ", " if via else "") + own], name)


if __name__ == "__main__":
    unittest.main()
