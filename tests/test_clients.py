"""The HTTP side driven by the clients people use: curl, ab, wrk, w3m, xmlrpc.client, urllib.

Each real program is installed by .ci/run; where one is missing here, its test is skipped with
the package to install.  (Chromium is driven by tests/test_browser.py.)
"""
import gzip
import json
import re
import shutil
import subprocess
import unittest
import urllib.request
import xmlrpc.client

from support import fingerd, serve

Status = fingerd.Status
USERS = {"alice": "Happy and well", "bob": "Café ouvert\nback at 5"}
USERS.update(("user%d" % i, "status of user %d" % i) for i in range(60))


def needs(program, package):
    return unittest.skipUnless(shutil.which(program), "%s is not installed (apt-get install %s)"
                               % (program, package))


class ClientTestCase(unittest.TestCase):
    def setUp(self):
        store = fingerd.MemoryStore(
            statuses={name: Status(text, 1_700_000_000.0) for name, text in USERS.items()})
        self.port = serve(self, fingerd.WebServer(("127.0.0.1", 0), store)).port
        self.base = "http://127.0.0.1:%d" % self.port

    def run_tool(self, *argv, timeout=30):
        out = subprocess.run(argv, capture_output=True, timeout=timeout)
        self.assertEqual(out.returncode, 0, out.stderr.decode("utf-8", "replace"))
        return out.stdout.decode("utf-8", "replace"), out.stderr.decode("utf-8", "replace")


@needs("curl", "curl")
class CurlTest(ClientTestCase):
    def test_http_1_0_and_1_1(self):
        for flag in ("--http1.0", "--http1.1"):
            with self.subTest(flag=flag):
                body, _ = self.run_tool("curl", "-sS", "--fail", flag, self.base + "/alice")
                self.assertIn("Happy and well", body)

    def test_head(self):
        head, _ = self.run_tool("curl", "-sS", "-I", self.base + "/alice")
        self.assertRegex(head, r"^HTTP/1\.1 200 OK\r\n")
        self.assertIn("Content-Length: ", head)
        self.assertNotIn("Happy and well", head)

    def test_compressed(self):
        body, trace = self.run_tool("curl", "-sSv", "--compressed", self.base + "/")
        self.assertIn("< Content-Encoding: gzip", trace)
        self.assertIn("< Vary: Accept-Encoding", trace)
        self.assertIn("user59", body)
        plain, _ = self.run_tool("curl", "-sS", self.base + "/")
        self.assertEqual(body, plain)

    def test_json_and_rpc(self):
        body, _ = self.run_tool("curl", "-sS", self.base + "/users.json")
        self.assertEqual(json.loads(body)["count"], len(USERS))
        call = xmlrpc.client.dumps(("alice",), "getUser")
        body, _ = self.run_tool("curl", "-sS", "-H", "Content-Type: text/xml", "--data-binary",
                                call, self.base + "/RPC2")
        self.assertEqual(xmlrpc.client.loads(body)[0][0], "Happy and well")


@needs("ab", "apache2-utils")
class ApacheBenchTest(ClientTestCase):
    def test_keep_alive_and_plain(self):
        for args, keep in ((["-k"], 1000), ([], 0)):
            with self.subTest(args=args):
                out, _ = self.run_tool("ab", *args, "-n", "1000", "-c", "8",
                                       self.base + "/alice", timeout=60)
                self.assertIn("Complete requests:      1000", out)
                self.assertIn("Failed requests:        0", out)
                if keep:
                    self.assertIn("Keep-Alive requests:    %d" % keep, out)
                else:
                    self.assertNotIn("Keep-Alive requests", out)


@needs("wrk", "wrk")
class WrkTest(ClientTestCase):
    def test_a_second_of_load_is_all_answered(self):
        out, _ = self.run_tool("wrk", "-t1", "-c8", "-d1s", self.base + "/alice")
        self.assertGreater(int(re.search(r"(\d+) requests in", out).group(1)), 100)
        self.assertNotIn("Socket errors", out)
        self.assertNotIn("Non-2xx", out)


@needs("w3m", "w3m")
class TextBrowserTest(ClientTestCase):
    def dump(self, path):
        text, _ = self.run_tool("w3m", "-dump", "-cols", "100", "-O", "UTF-8",
                                self.base + path)
        return text

    def test_the_list_reads_well_as_text(self):
        text = self.dump("/")
        self.assertRegex(text, r"alice\s+Happy and well")
        self.assertIn("user59", text)
        self.assertNotIn("<", text)

    def test_a_user_page_keeps_its_lines(self):
        text = self.dump("/bob")
        self.assertIn("Café ouvert\nback at 5", text)


class StdlibClientTest(ClientTestCase):
    def test_xmlrpc_client(self):
        proxy = xmlrpc.client.ServerProxy(self.base + "/RPC2")
        self.assertEqual(proxy.getUser("alice"), "Happy and well")
        self.assertEqual(len(proxy.getUsers()), len(USERS))
        self.assertIn("getUser", proxy.system.listMethods())
        multi = xmlrpc.client.MultiCall(proxy)
        multi.getUser("alice")
        multi.getUser("nobody")
        self.assertEqual(list(multi()), ["Happy and well", "No such user"])

    def test_urllib_identity_and_gzip(self):
        with urllib.request.urlopen(self.base + "/users.json", timeout=10) as response:
            plain = response.read()
            self.assertIsNone(response.headers["Content-Encoding"])
        request = urllib.request.Request(self.base + "/users.json",
                                         headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(request, timeout=10) as response:
            self.assertEqual(response.headers["Content-Encoding"], "gzip")
            self.assertEqual(response.headers["Vary"], "Accept-Encoding")
            self.assertEqual(gzip.decompress(response.read()), plain)

    def test_gzip_refused_with_q_0_is_not_sent(self):
        for value in ("gzip;q=0", "identity", "br", "*;q=0", "gzip;q=0, *"):
            with self.subTest(value=value):
                request = urllib.request.Request(self.base + "/users.json",
                                                 headers={"Accept-Encoding": value})
                with urllib.request.urlopen(request, timeout=10) as response:
                    self.assertIsNone(response.headers["Content-Encoding"])
        self.assertTrue(fingerd.accepts_gzip("deflate, gzip;q=0.5"))
        self.assertTrue(fingerd.accepts_gzip("*"))
        self.assertFalse(fingerd.accepts_gzip("gzip;q=0, *"))


if __name__ == "__main__":
    unittest.main()
