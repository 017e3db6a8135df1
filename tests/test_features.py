"""What no finger server had: the Unix setter that knows its caller, the --set/--clear client,
expiring statuses, JSON, WebFinger, /healthz, /metrics (checked by a strict parser of the
Prometheus text format), and the Atom feed of changes."""
import http.client
import json
import math
import os
import pwd
import re
import signal
import socket
import threading
import sqlite3
import subprocess
import time
import unittest
import xml.etree.ElementTree as ElementTree

from support import (TIMEOUT, Daemon, command, fingerd, query, read_all, run_cli, serve,
                     set_status, temp_dir)

Status = fingerd.Status


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


class ExpiryTest(unittest.TestCase):
    def setUp(self):
        self.now = [1_800_000_000.0]
        self.store = fingerd.MemoryStore()
        self.store.clock = lambda: self.now[0]

    def test_expiring_status_shadows_the_lasting_one(self):
        self.store.set("alice", "Working from home")
        self.store.set("alice", "At lunch", expires_at=self.now[0] + 3600)
        self.assertEqual(self.store.get("alice").text, "At lunch")
        version = self.store.version
        self.now[0] += 3601
        self.assertEqual(self.store.get("alice").text, "Working from home")
        self.assertGreater(self.store.version, version)    # caches notice the expiry
        self.assertEqual([(n, s.text) for n, s in self.store.items()],
                         [("alice", "Working from home")])

    def test_expired_without_a_lasting_status_is_no_status(self):
        self.store.set("bob", "Brb", expires_at=self.now[0] + 60)
        self.assertEqual(self.store.users(), ["bob"])
        self.now[0] += 61
        self.assertIsNone(self.store.get("bob"))
        self.assertEqual(self.store.users(), [])

    def test_a_new_lasting_status_ends_the_expiring_one(self):
        self.store.set("carol", "In a meeting", expires_at=self.now[0] + 3600)
        self.store.set("carol", "Back")
        self.now[0] += 3601
        self.assertEqual(self.store.get("carol").text, "Back")

    def test_expiry_must_be_ahead_and_within_a_year(self):
        for expires_at in (self.now[0] - 1, self.now[0] + 400 * 86400):
            with self.assertRaises(fingerd.BadStatus):
                self.store.set("dave", "x", expires_at=expires_at)

    def test_durations(self):
        self.assertEqual(fingerd.parse_duration("1h30m", now=0), 5400)
        self.assertEqual(fingerd.parse_duration("90", now=0), 90)
        self.assertEqual(fingerd.parse_duration("2d", now=10), 172810)
        for bad in ("", "soon", "-5m", "0", "400d", "1x"):
            with self.assertRaises(fingerd.BadStatus, msg=bad):
                fingerd.parse_duration(bad, now=0)

    def test_web_cache_and_pages_follow_the_expiry(self):
        self.store.set("alice", "Lasting")
        self.store.set("alice", "Fleeting", expires_at=self.now[0] + 60)
        web = serve(self, fingerd.WebServer(("127.0.0.1", 0), self.store))
        conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=TIMEOUT)
        self.addCleanup(conn.close)
        conn.request("GET", "/alice")
        page = conn.getresponse().read().decode()
        self.assertIn("Fleeting", page)
        self.assertIn("Until <time datetime=", page)
        conn.request("GET", "/alice.json")
        self.assertIsNotNone(json.loads(conn.getresponse().read())["expires_at"])
        self.now[0] += 61
        conn.request("GET", "/alice")
        self.assertIn("Lasting", conn.getresponse().read().decode())

    def test_sqlite_keeps_both_and_migrates_schema_1(self):
        path = os.path.join(temp_dir(self), "old.db")
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE statuses (user TEXT PRIMARY KEY, status TEXT NOT NULL, "
                   "set_at REAL NOT NULL, expires_at REAL)")
        db.execute("INSERT INTO statuses VALUES ('alice', 'From schema 1', 5.0, NULL)")
        db.commit()
        db.close()
        store = fingerd.SQLiteStore(path)
        self.assertEqual(store.get("alice"), Status("From schema 1", 5.0))
        store.set("alice", "For an hour", expires_at=time.time() + 3600)
        store.close()
        again = fingerd.SQLiteStore(path)
        self.addCleanup(again.close)
        self.assertEqual(again.get("alice").text, "For an hour")
        self.assertEqual(again._data["alice"].text, "From schema 1")
        self.assertEqual(sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0],
                         fingerd.SCHEMA_VERSION)
        again.clear("alice")
        self.assertIsNone(again.get("alice"))


def parse_prometheus(text):
    """A strict reader of the Prometheus text format 0.0.4; returns {(name, labels): value}
    and fails on anything a scraper would reject or a careful exporter would not write."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    name_re = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
    sample_re = re.compile(r"(%s)(\{(.*)\})? (\S+)( -?\d+)?$" % name_re)
    label_re = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')
    types, helps, samples, seen_families, current = {}, {}, {}, [], None
    for line in text[:-1].split("\n"):
        assert line, "no blank lines"
        if line.startswith("#"):
            match = re.fullmatch(r"# (HELP|TYPE) (%s) (.*)" % name_re, line)
            assert match, "bad comment line %r" % line
            kind, name, rest = match.groups()
            table = helps if kind == "HELP" else types
            assert name not in table, "%s given twice for %s" % (kind, name)
            if kind == "TYPE":
                assert rest in ("counter", "gauge", "histogram", "summary", "untyped"), line
                assert name not in seen_families, "TYPE after samples of %s" % name
            table[name] = rest
            current = name
            continue
        match = sample_re.fullmatch(line)
        assert match, "bad sample line %r" % line
        name, _, label_text, value, _ = match.groups()
        family = name
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and types.get(name[:-len(suffix)]) == "histogram":
                family = name[:-len(suffix)]
        assert family == current, "samples of %s are not grouped under its TYPE" % family
        if family not in seen_families:
            seen_families.append(family)
        labels = []
        if label_text:
            position = 0
            while position < len(label_text):
                label = label_re.match(label_text, position)
                assert label, "bad labels in %r" % line
                labels.append((label.group(1), label.group(2)))
                position = label.end()
        assert len({k for k, _ in labels}) == len(labels), "a label twice in %r" % line
        key = (name, tuple(labels))
        assert key not in samples, "duplicate series %r" % (key,)
        samples[key] = float(value)
        assert not math.isnan(samples[key]) or True
        if types.get(family) == "counter":
            assert name.endswith("_total"), "counter %s should end in _total" % name
            assert samples[key] >= 0
    for family, kind in types.items():
        if kind == "histogram":
            buckets = sorted(((float(dict(labels)["le"]), value) for (name, labels), value
                              in samples.items() if name == family + "_bucket"))
            assert buckets and buckets[-1][0] == math.inf, "%s needs a +Inf bucket" % family
            counts = [value for _, value in buckets]
            assert counts == sorted(counts), "%s buckets are not cumulative" % family
            assert samples[(family + "_count", ())] == counts[-1]
            assert (family + "_sum", ()) in samples
    return samples


class MonitoringTest(unittest.TestCase):
    def setUp(self):
        self.daemon = Daemon(self, "--backend", "memory", "--http", "127.0.0.1:0")
        self.http = self.daemon.ports["http"]

    def get(self, path):
        conn = http.client.HTTPConnection("127.0.0.1", self.http, timeout=TIMEOUT)
        self.addCleanup(conn.close)
        conn.request("GET", path)
        response = conn.getresponse()
        return response, response.read().decode("utf-8")

    def test_healthz(self):
        response, body = self.get("/healthz")
        self.assertEqual((response.status, body), (200, "ok\n"))
        self.assertEqual(response.getheader("Cache-Control"), "no-store")

    def test_metrics_parse_strictly_and_count(self):
        response, body = self.get("/metrics")
        self.assertEqual(response.getheader("Content-Type"),
                         "text/plain; version=0.0.4; charset=utf-8")
        before = parse_prometheus(body)
        finger = self.daemon.ports["finger"]
        for name in (b"alice", b"bob", b"carol"):       # three reads of the backend
            query(finger, name + b"\r\n")
        query(finger, b"x" * 3000)                          # refused: too long
        set_status(self.daemon.ports["setter"], "alice", "Counted")
        set_status(self.daemon.ports["setter"], "-bad", "Refused")
        after = parse_prometheus(self.get("/metrics")[1])

        def delta(name, **labels):
            key = (name, tuple(sorted(labels.items())))
            return after.get(key, 0) - before.get(key, 0)
        self.assertEqual(delta("fingerd_requests_total", protocol="finger"), 3)
        self.assertEqual(delta("fingerd_refusals_total", listener="finger", reason="too-long"), 1)
        self.assertEqual(delta("fingerd_setter_writes_total", result="ok"), 1)
        self.assertEqual(delta("fingerd_setter_writes_total", result="error"), 1)
        self.assertGreaterEqual(delta("fingerd_backend_seconds_count"), 3)
        self.assertEqual(after[("fingerd_info", (("backend", "memory"),
                                                 ("version", fingerd.__version__)))], 1)
        self.assertIn(("fingerd_open_connections", (("listener", "http"),)), after)
        self.assertEqual(after[("fingerd_irc_connected", ())], 0)

    def test_the_parser_can_fail(self):
        for bad in ("x 1", "x 1\n\n", "# TYPE x counter\nx 1\n", "# TYPE x_total gauge\n"
                    "# TYPE x_total gauge\n", 'y{a="1",a="2"} 1\n', 'y{a="\n"} 1\n',
                    "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\n"
                    "h_sum 1\nh_count 1\n"):
            with self.assertRaises(AssertionError, msg=bad):
                parse_prometheus(bad)


class BrokenStore(fingerd.MemoryStore):
    def get(self, user, verbose=False):
        raise fingerd.StoreUnavailable("the disk is on fire")


class HealthTest(unittest.TestCase):
    def test_failing_store_and_stalled_listener(self):
        web = serve(self, fingerd.WebServer(("127.0.0.1", 0), BrokenStore()))
        conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=TIMEOUT)
        self.addCleanup(conn.close)
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        self.assertEqual(response.status, 503)
        self.assertEqual(response.read(), b"the memory backend does not answer: the disk is on "
                                          b"fire\n")
        stalled = fingerd.FingerServer(("127.0.0.1", 0), fingerd.MemoryStore())
        self.addCleanup(stalled.server_close)          # never serving: its loop does not turn
        web.monitor.store = fingerd.MemoryStore()
        web.monitor.servers = [web, stalled]
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        self.assertEqual((response.status, response.read()),
                         (503, b"the finger listener's loop is not running\n"))


class JSONAndWebFingerTest(unittest.TestCase):
    def setUp(self):
        self.store = fingerd.MemoryStore()
        self.store._data = {"alice": Status("Happy and well", 1_700_000_000.0),
                            "bob": Status("one\n\x1b[31mtwo", 1_700_000_100.0)}
        self.web = serve(self, fingerd.WebServer(("127.0.0.1", 0), self.store))

    def get(self, path, host=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.web.port, timeout=TIMEOUT)
        self.addCleanup(conn.close)
        conn.request("GET", path, headers={"Host": host} if host else {})
        response = conn.getresponse()
        return response, response.read()

    def test_user_json(self):
        response, body = self.get("/bob.json", host="finger.example:8000")
        self.assertEqual(response.getheader("Content-Type"), "application/json; charset=utf-8")
        self.assertEqual(json.loads(body), {
            "name": "bob", "status": "one\ntwo", "lines": ["one", "two"],
            "set_at": "2023-11-14T22:15:00Z", "expires_at": None,
            "url": "http://finger.example:8000/bob"})
        etag = response.getheader("ETag")
        conn = http.client.HTTPConnection("127.0.0.1", self.web.port, timeout=TIMEOUT)
        self.addCleanup(conn.close)
        conn.request("GET", "/bob.json", headers={"Host": "finger.example:8000",
                                                  "If-None-Match": etag})
        self.assertEqual(conn.getresponse().status, 304)

    def test_users_json_and_unknown(self):
        document = json.loads(self.get("/users.json")[1])
        self.assertEqual(document["count"], 2)
        self.assertEqual([u["name"] for u in document["users"]], ["alice", "bob"])
        response, body = self.get("/nobody.json")
        self.assertEqual(response.status, 404)
        self.assertEqual(json.loads(body), {"error": "No such user"})

    def test_webfinger(self):
        response, body = self.get("/.well-known/webfinger?resource=acct:alice@finger.example",
                                  host="finger.example")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.getheader("Content-Type"), "application/jrd+json")
        self.assertEqual(response.getheader("Access-Control-Allow-Origin"), "*")
        jrd = json.loads(body)
        self.assertEqual(jrd["subject"], "acct:alice@finger.example")
        self.assertIn({"rel": "http://webfinger.net/rel/profile-page", "type": "text/html",
                       "href": "http://finger.example/alice"}, jrd["links"])
        filtered = json.loads(self.get("/.well-known/webfinger?resource=acct:alice@x"
                                       "&rel=describedby", host="x")[1])
        self.assertEqual([link["rel"] for link in filtered["links"]], ["describedby"])

    def test_webfinger_errors(self):
        for path, code in (("/.well-known/webfinger", 400),
                           ("/.well-known/webfinger?resource=", 400),
                           ("/.well-known/webfinger?resource=acct:nobody@x", 404),
                           ("/.well-known/webfinger?resource=http://x/alice", 404),
                           ("/.well-known/webfinger?resource=acct:-l@x", 404)):
            response, _ = self.get(path)
            self.assertEqual(response.status, code, path)
            self.assertEqual(response.getheader("Access-Control-Allow-Origin"), "*")

    def test_hostile_host_header_is_refused_not_echoed(self):
        response, body = self.get("/alice.json", host='evil"><script>')
        self.assertEqual(response.status, 400)          # RFC 9112 §3.2: an invalid Host
        self.assertNotIn(b"<script>", body)
        body = self.get("/alice.json", host="[::1]:99")[1]
        self.assertIn(b'"url": "http://[::1]:99/alice"', body)


class FeedTest(unittest.TestCase):
    def test_feed_of_changes_survives_a_restart(self):
        db = os.path.join(temp_dir(self), "fingerd.db")
        daemon = Daemon(self, "--db", db, "--http", "127.0.0.1:0")
        setter = daemon.ports["setter"]
        set_status(setter, "alice", "First <b>post</b>")
        time.sleep(0.01)
        set_status(setter, "bob", "Second\x1b[31m")
        feed = self.fetch(daemon)
        atom = "{http://www.w3.org/2005/Atom}"
        entries = feed.findall(atom + "entry")
        self.assertEqual([e.find(atom + "author/" + atom + "name").text for e in entries],
                         ["bob", "alice"])
        self.assertEqual(entries[1].find(atom + "content").text, "First <b>post</b>")
        self.assertEqual(entries[0].find(atom + "content").text, "Second")
        daemon.signal(signal.SIGTERM)
        daemon.wait()
        again = Daemon(self, "--db", db, "--http", "127.0.0.1:0")
        self.assertEqual(len(self.fetch(again).findall(atom + "entry")), 2)

    def fetch(self, daemon):
        conn = http.client.HTTPConnection("127.0.0.1", daemon.ports["http"], timeout=TIMEOUT)
        self.addCleanup(conn.close)
        conn.request("GET", "/feed.atom")
        response = conn.getresponse()
        self.assertEqual(response.getheader("Content-Type"),
                         "application/atom+xml; charset=utf-8")
        return ElementTree.fromstring(response.read())


if __name__ == "__main__":
    unittest.main()
