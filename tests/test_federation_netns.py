"""Federation on separate hosts (issue 17): two authorities (a1, a2, --backend sqlite), a
front-end (b, --backend xmlrpc --remote a1 --remote a2) and a client (c), each a network
namespace on a private /24 that exists only inside the test (tests/hosts.py).  Authorities
are killed (SIGKILL), restarted on their address, and hung (SIGSTOP) while the client asks
the front-end.  Root only (CI); everything made is torn down.
"""
import os
import signal
import time
import unittest

import support
from hosts import Fingerd, Hosts

REFRESH = 2.0


class FederationOnHostsTest(unittest.TestCase):
    def setUp(self):
        self.hosts = Hosts.start_for(self, ["a1", "a2", "b", "c"])
        self.dbs = support.temp_dir(self)
        self.a1 = self.authority("a1")
        self.a2 = self.authority("a2")
        self.assertIn("OK", self.a1.set_status("alice", "On a1", via="c"))
        self.assertIn("OK", self.a2.set_status("bob", "On a2", via="c"))
        self.front = Fingerd(self.hosts, "b", "--backend", "xmlrpc", "--remote", self.a1.url,
                             "--remote", self.a2.url, "--refresh", str(REFRESH), test=self)

    def authority(self, name):
        return Fingerd(self.hosts, name, "--backend", "sqlite", "--db",
                       os.path.join(self.dbs, name + ".db"), "--setter",
                       "%s:1079" % self.hosts.address(name), "--setter-allow",
                       str(self.hosts.subnet), test=self)

    def ask(self, query, timeout=20):
        try:
            return self.front.finger(query, via="c", timeout=timeout)
        except OSError as e:
            self.fail("b did not answer %r (%s)\n--- b:\n%s" % (query, e, self.front.log))

    def healthz(self):
        answer = self.hosts.query("c", self.hosts.address("b"), 8000,
                                  b"GET /healthz HTTP/1.0\r\nHost: b\r\n\r\n")
        return answer.decode("utf-8", "replace")

    def converge(self, expected, query="alice"):
        start = time.monotonic()
        self.assertTrue(support.wait_for(lambda: expected in self.ask(query), 30, 0.1),
                        self.front.log)
        return time.monotonic() - start

    def test_killed_and_restarted_authority(self):
        self.assertEqual(self.ask(""), "alice: On a1\r\nbob: On a2\r\n")
        self.a1.stop()                                       # SIGKILL
        time.sleep(REFRESH + 0.5)
        for _ in range(3):                                   # stale, list and lookups alike
            self.assertEqual(self.ask("alice"), "On a1\r\n")
            self.assertEqual(self.ask(""), "alice: On a1\r\nbob: On a2\r\n")
            self.assertEqual(self.ask("bob"), "On a2\r\n")
        health = self.healthz()
        self.assertIn(" 503 ", health.split("\r\n")[0])
        self.assertIn(self.a1.url, health)
        time.sleep(8)                                        # an outage of ~10 s
        self.a1 = self.authority("a1")
        self.assertIn("OK", self.a1.set_status("alice", "Back on a1", via="c"))
        took = self.converge("Back on a1")
        sys_report("front-end converged %.1f s after the authority came back (--refresh %g)"
                   % (took, REFRESH))
        self.assertLessEqual(took, REFRESH + 1.0)
        self.assertTrue(support.wait_for(lambda: " 200 " in self.healthz().split("\r\n")[0],
                                         REFRESH + 2))
        self.assertEqual(self.front.log.count("does not answer"), 1, self.front.log)
        self.assertIsNone(self.front.proc.poll(), self.front.log)

    def test_hung_authority(self):
        self.assertEqual(self.ask("bob"), "On a2\r\n")
        self.assertEqual(self.ask(""), "alice: On a1\r\nbob: On a2\r\n")
        os.kill(self.a2.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(REFRESH + 0.5)
            start = time.monotonic()
            self.assertEqual(self.ask("bob"), "On a2\r\n")       # within the remote timeout
            first = time.monotonic() - start
            self.assertLess(first, 3 * support.fingerd.REMOTE_TIMEOUT)
            start = time.monotonic()
            self.assertEqual(self.ask(""), "alice: On a1\r\nbob: On a2\r\n")
            self.assertEqual(self.ask("alice"), "On a1\r\n")     # a1 is not held up
            sys_report("a2 hung: first stale answer after %.1f s, then %.2f s"
                       % (first, time.monotonic() - start))
        finally:
            os.kill(self.a2.proc.pid, signal.SIGCONT)
        self.assertIn("OK", self.a2.set_status("bob", "a2 woke up", via="c"))
        took = self.converge("a2 woke up", "bob")
        sys_report("front-end converged %.1f s after SIGCONT" % took)
        self.assertLessEqual(took, REFRESH + 1.0 + support.fingerd.REMOTE_TIMEOUT)


def sys_report(text):
    import sys
    sys.stderr.write("\n    [netns] %s " % text)
    sys.stderr.flush()


if __name__ == "__main__":
    unittest.main()
