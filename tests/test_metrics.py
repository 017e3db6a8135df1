"""Metrics and health: /metrics (checked by a strict parser of the Prometheus text format)
and /healthz, over real sockets."""
import http.client
import math
import re
import unittest

from support import TIMEOUT, Daemon, fingerd, query, serve, set_status

Status = fingerd.Status


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
    def _get(self, user, verbose, via):
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
        store, servers = fingerd.MemoryStore(), []
        web = serve(self, fingerd.WebServer(("127.0.0.1", 0), store, monitor=fingerd.Monitor(
            store, fingerd.Metrics(), servers)))
        servers.extend([web, stalled])
        conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=TIMEOUT)
        self.addCleanup(conn.close)
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        self.assertEqual((response.status, response.read()),
                         (503, b"the finger listener's loop is not running\n"))


if __name__ == "__main__":
    unittest.main()
