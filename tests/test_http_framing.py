"""HTTP framing, persistence, methods and dates (RFC 9110, RFC 9112), over real sockets.

Every request whose end could be read two ways is refused and the connection closed, so
nothing hidden in a body is ever served as a request of its own (request smuggling).
"""
import os
import shutil
import socket
import subprocess
import time
import unittest

from support import Daemon, connect, fingerd, read_all, serve, temp_dir, write_file
from test_web import ResponseReader

Status = fingerd.Status
SET_AT = 1_700_000_000.0            # alice's status time: Tue, 14 Nov 2023 22:13:20 GMT


def exchange(port, data, timeout=5.0):
    """Send data in one write; every response that comes back, and whether the server then
    closed the connection by itself (within `timeout`)."""
    with connect(port, timeout=timeout) as sock:
        sock.sendall(data)
        reader = ResponseReader(sock)
        responses = []
        while True:
            try:
                code, headers, body = reader.read()
            except socket.timeout:
                return responses, False
            if code == 0:
                return responses, True
            responses.append((code, headers, body))


class FramingTest(unittest.TestCase):
    def setUp(self):
        store = fingerd.MemoryStore(statuses={"alice": Status("Happy and well", SET_AT),
                                              "bob": Status("Hidden request answered", SET_AT)})
        self.port = serve(self, fingerd.WebServer(("127.0.0.1", 0), store)).port

    def assert_refused_and_closed(self, request, code):
        start = time.monotonic()
        responses, closed = exchange(self.port, request)
        self.assertEqual([r[0] for r in responses], [code], request)
        self.assertEqual(responses[0][1].get("connection"), "close", request)
        self.assertTrue(closed, request)
        self.assertLess(time.monotonic() - start, 3.0, request)   # at once, not at a timeout

    def test_the_smuggling_reproduction(self):
        self.assert_refused_and_closed(
            b"GET /alice HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: "
            b"chunked\r\n\r\n2c\r\nGET /bob HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            b"\r\n0\r\n\r\n", 400)

    def test_transfer_encodings(self):
        hidden = b"GET /bob HTTP/1.1\r\nHost: x\r\n\r\n"
        cases = [(b"chunked", 411), (b"Chunked", 411), (b"gzip, chunked", 411),
                 (b"chunked, identity", 501), (b"xchunked", 501), (b"identity", 501),
                 (b"chunked\r\nTransfer-Encoding: gzip", 501),
                 # gunicorn #3364: only SP and HTAB are whitespace around a coding
                 (b"\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0chunked\x0b\x0c\x1c\x85\xa0", 501),
                 (b",chunked", 411), (b"chunked,", 411),        # gunicorn #3087
                 (b"chunked\r\nContent-Length: 4", 400)]       # hypercorn #279, waitress #464
        for coding, code in cases:
            with self.subTest(coding=coding):
                for method, path in ((b"GET", b"/alice"), (b"POST", b"/RPC2")):
                    self.assert_refused_and_closed(
                        method + b" " + path + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: "
                        + coding + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n" + hidden, code)

    def test_content_lengths_that_can_be_read_two_ways(self):
        hidden = b"GET /bob HTTP/1.1\r\nHost: x\r\n\r\n"
        for lengths in ([b"4", b"5"], [b"4", b"4"], [b"+4"], [b"0x4"], [b"4, 4"], [b"-1"],
                        [b"4 4"], [b"\xd9\xa4"]):
            with self.subTest(lengths=lengths):
                head = b"".join(b"Content-Length: " + n + b"\r\n" for n in lengths)
                self.assert_refused_and_closed(
                    b"POST /RPC2 HTTP/1.1\r\nHost: x\r\n" + head + b"\r\nabcd" + hidden, 400)

    def test_a_body_too_large_is_refused_and_never_parsed(self):
        self.assert_refused_and_closed(
            b"GET /alice HTTP/1.1\r\nHost: x\r\nContent-Length: 999999\r\n\r\n"
            b"GET /bob HTTP/1.1\r\nHost: x\r\n\r\n", 413)

    def test_a_refused_post_body_is_not_read_as_the_next_request(self):
        # werkzeug #2380, CherryPy #819: an unread body became the next request line.
        responses, _ = exchange(self.port, b"POST /alice HTTP/1.1\r\nHost: x\r\n"
                                b"Content-Length: 2\r\n\r\n{}GET /alice HTTP/1.1\r\nHost: x\r\n"
                                b"Connection: close\r\n\r\n")
        self.assertEqual([r[0] for r in responses], [405, 200])

    def test_a_get_body_within_its_length_is_consumed(self):
        body = b"GET /bob HTTP/1.1\r\nHost: x\r\n\r\n"
        responses, _ = exchange(self.port, b"GET /alice HTTP/1.1\r\nHost: x\r\n"
                                b"Content-Length: %d\r\n\r\n%s" % (len(body), body) +
                                b"GET /alice HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertEqual([r[0] for r in responses], [200, 200])
        self.assertNotIn(b"Hidden", b"".join(r[2] for r in responses))

    def test_malformed_header_blocks(self):
        for head in (b"Host : x\r\n", b"Host: x\r\n folded: on\r\n", b"Host: x\r\n\tfolded\r\n",
                     b"Host: x\r\nX-A: a\x00b\r\n", b"Host: x\r\nX-A: a\rb\r\n",   # cheroot #720
                     b"Host: x\r\nX-Abc: \rxTransfer-Encoding: chunked\r\n",   # aiohttp #7664
                     b"Host: x\r\nTransfer-Encoding : chunked\r\n",            # gunicorn #2176
                     b"Host: x\r\nBad Name: y\r\n", b"Host: x\r\n: empty\r\n",
                     b"Host: x\r\nHost: y\r\n", b"",
                     b"Host: a b\r\n", b"Host: evil@x\r\n", b'Host: x"><script>\r\n',
                     b"Host: [::1\r\n", b"Host: x:99999\r\n"):
            with self.subTest(head=head):
                self.assert_refused_and_closed(b"GET /alice HTTP/1.1\r\n" + head + b"\r\n", 400)
        self.assert_refused_and_closed(
            b"GET /alice HTTP/1.0\r\nHost: x\r\nHost: y\r\n\r\n", 400)

    def test_bad_request_lines_are_answered_at_once(self):
        for line in (b"GET /alice\r\n", b"GET /alice\n", b"GET\r\n", b"GET /a\rb HTTP/1.1\r\n",
                     b"GET  /alice HTTP/1.1\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\n",
                     b"\x01\x02\x03\xff\xfe", b"\x16\x03\x01\x02\x00", b"\r\n" * 100):
            with self.subTest(line=line):
                start = time.monotonic()
                with connect(self.port) as sock:
                    sock.sendall(line)            # and nothing more: no header block follows
                    data = read_all(sock)
                self.assertTrue(data.startswith(b"HTTP/1.1 400 "), data[:60])
                self.assertLess(time.monotonic() - start, 3.0)


class PersistenceTest(unittest.TestCase):
    def setUp(self):
        store = fingerd.MemoryStore(statuses={"alice": Status("Happy and well", SET_AT)})
        self.port = serve(self, fingerd.WebServer(("127.0.0.1", 0), store)).port

    def test_http_1_0_keep_alive_is_answered_in_kind(self):
        request = b"GET /alice HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"
        with connect(self.port) as sock:
            reader = ResponseReader(sock)
            for _ in range(3):
                sock.sendall(request)
                code, headers, _ = reader.read()
                self.assertEqual((code, headers.get("connection")), (200, "keep-alive"))

    def test_who_closes_and_who_keeps(self):
        cases = [(b"HTTP/1.0", b"", "close"), (b"HTTP/1.0", b"keep-alive", "keep-alive"),
                 (b"HTTP/1.0", b"Keep-Alive, close", "close"),
                 (b"HTTP/1.1", b"", "keep-alive"), (b"HTTP/1.1", b"close", "close"),
                 (b"HTTP/1.1", b"Close", "close"), (b"HTTP/1.1", b"keep-alive, close", "close"),
                 (b"HTTP/1.1", b"Upgrade", "keep-alive")]
        for version, connection, expected in cases:
            with self.subTest(version=version, connection=connection):
                head = b"GET /alice " + version + b"\r\nHost: x\r\n"
                if connection:
                    head += b"Connection: " + connection + b"\r\n"
                responses, closed = exchange(self.port, head + b"\r\n", timeout=1.0)
                self.assertEqual(responses[0][1]["connection"], expected)
                self.assertEqual(closed, expected == "close")

    def test_an_error_closes_even_a_keep_alive_connection(self):
        responses, closed = exchange(
            self.port, b"GET /alice HTTP/1.1\r\nHost: x\r\n\r\nGET /alice HTTP/1.1\r\n\r\n"
            b"GET /alice HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual([r[0] for r in responses], [200, 400])
        self.assertTrue(closed)

    @unittest.skipUnless(shutil.which("ab"), "ab is not installed (apt-get install "
                                              "apache2-utils)")
    def test_ab_keep_alive(self):
        start = time.monotonic()
        out = subprocess.run(["ab", "-k", "-n", "1000", "-c", "8",
                              "http://127.0.0.1:%d/alice" % self.port],
                             capture_output=True, text=True, timeout=60)
        elapsed = time.monotonic() - start
        self.assertIn("Keep-Alive requests:    1000", out.stdout)
        self.assertIn("Failed requests:        0", out.stdout)
        self.assertLess(elapsed, 10.0)     # it took 15 s per connection before (issue 13)

    @unittest.skipUnless(shutil.which("curl"), "curl is not installed")
    def test_curl_http_1_0_reuses_its_connection(self):
        url = "http://127.0.0.1:%d/alice" % self.port
        out = subprocess.run(["curl", "-sv", "--http1.0", "-H", "Connection: keep-alive",
                              url, url], capture_output=True, text=True, timeout=20)
        self.assertEqual(out.stdout.count("Happy and well"), 2)
        self.assertIn("Re-using existing connection", out.stderr)


class MethodTest(unittest.TestCase):
    def setUp(self):
        store = fingerd.MemoryStore(statuses={"alice": Status("Happy and well", SET_AT)})
        self.port = serve(self, fingerd.WebServer(("127.0.0.1", 0), store)).port

    def one(self, request):
        responses, _ = exchange(self.port, request + b"Connection: close\r\n\r\n")
        return responses[0]

    def test_options_and_allow(self):
        for target, allow in ((b"/alice", "GET, HEAD, OPTIONS"), (b"/", "GET, HEAD, OPTIONS"),
                              (b"/RPC2", "POST, OPTIONS"), (b"*", "GET, HEAD, POST, OPTIONS")):
            with self.subTest(target=target):
                code, headers, body = self.one(b"OPTIONS " + target + b" HTTP/1.1\r\nHost: x\r\n")
                self.assertEqual((code, headers.get("allow"), body), (204, allow, b""))
                self.assertNotIn("content-length", headers)
                self.assertEqual(headers.get("x-content-type-options"), "nosniff")
        code, headers, _ = self.one(b"OPTIONS /.well-known/webfinger HTTP/1.1\r\nHost: x\r\n"
                                    b"Origin: https://a.example\r\n"
                                    b"Access-Control-Request-Method: GET\r\n")
        self.assertEqual((code, headers.get("access-control-allow-origin")), (204, "*"))

    def test_405_names_what_is_allowed_and_501_for_unknown_methods(self):
        for method, target, code, allow in (
                (b"POST", b"/alice", 405, "GET, HEAD, OPTIONS"),
                (b"PUT", b"/", 405, "GET, HEAD, OPTIONS"),
                (b"DELETE", b"/RPC2", 405, "POST, OPTIONS"),
                (b"GET", b"/RPC2", 405, "POST, OPTIONS"),
                (b"TRACE", b"/alice", 405, "GET, HEAD, OPTIONS"),
                (b"BREW", b"/alice", 501, "GET, HEAD, OPTIONS"),
                (b"PoST", b"/RPC2", 501, "POST, OPTIONS"),      # hypercorn #278: case counts
                (b"CONNECT", b"/alice", 405, "GET, HEAD, OPTIONS")):     # hypercorn #277
            with self.subTest(method=method, target=target):
                got, headers, _ = self.one(method + b" " + target + b" HTTP/1.1\r\nHost: x\r\n"
                                           b"Content-Length: 0\r\n")
                self.assertEqual((got, headers.get("allow")), (code, allow))
        code, _, _ = self.one(b"GET * HTTP/1.1\r\nHost: x\r\n")
        self.assertEqual(code, 400)


class DateTest(unittest.TestCase):
    """Conditional requests against a daemon whose TZ is far from UTC."""

    def setUp(self):
        users = write_file(os.path.join(temp_dir(self), "users"), "alice: Happy and well\n")
        os.utime(users, (SET_AT, SET_AT))
        self.daemon = Daemon(self, "--backend", "file", "--users-file", users,
                             "--http", "127.0.0.1:0", env={"TZ": "America/Los_Angeles"})
        self.port = self.daemon.ports["http"]

    def code(self, *headers):
        request = b"GET /alice HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        request += b"".join(h + b"\r\n" for h in headers)
        responses, _ = exchange(self.port, request + b"\r\n")
        return responses[0][0]

    def test_every_date_form_is_gmt(self):
        responses, _ = exchange(self.port, b"GET /alice HTTP/1.1\r\nHost: x\r\n"
                                b"Connection: close\r\n\r\n")
        self.assertEqual(responses[0][1]["last-modified"], "Tue, 14 Nov 2023 22:13:20 GMT")
        for date in (b"Tue, 14 Nov 2023 22:13:20 GMT", b"Tuesday, 14-Nov-23 22:13:20 GMT",
                     b"Tue Nov 14 22:13:20 2023", b"Tue, 14 Nov 2023 23:00:00 GMT"):
            with self.subTest(date=date):
                self.assertEqual(self.code(b"If-Modified-Since: " + date), 304)
        for date in (b"Tue, 14 Nov 2023 21:13:20 GMT", b"Tue Nov 14 21:13:20 2023",
                     b"Tuesday, 14-Nov-23 14:13:20 GMT",
                     b"Tue, 14 Nov 2023 22:13:20 GMT, Tue, 14 Nov 2023 22:13:20 GMT"):
            with self.subTest(date=date):
                self.assertEqual(self.code(b"If-Modified-Since: " + date), 200)

    def test_two_digit_years_are_at_most_50_years_ahead(self):
        # Python alone reads 69-99 as 19xx; RFC 9110 §5.6.7 reads 45 years ahead as ahead
        # (after Last-Modified: 304) and 60 years ahead as 40 years ago (before it: 200).
        this_year = time.gmtime().tm_year
        ahead = (this_year + 45) % 100
        behind = (this_year + 60) % 100
        self.assertEqual(self.code(b"If-Modified-Since: Saturday, 30-Nov-%02d 12:00:00 GMT"
                                   % ahead), 304)
        self.assertEqual(self.code(b"If-Modified-Since: Saturday, 30-Nov-%02d 12:00:00 GMT"
                                   % behind), 200)

    def test_two_if_modified_since_fields_are_ignored(self):
        date = b"If-Modified-Since: Tue, 14 Nov 2023 22:13:20 GMT"
        self.assertEqual(self.code(date), 304)
        self.assertEqual(self.code(date, date), 200)

    def test_invalid_dates_are_ignored(self):
        # tornado #3408 and twisted #3601: a date that does not parse gave a 500; CPython
        # PR 298: a zone other than GMT is not an HTTP date.
        for date in (b"yesterday", b"", b"Tue, 99 Nov 2023 22:13:20 GMT", b"0",
                     b"Tue, 14 Nov 99999 22:13:20 GMT", b"\xff\xfe", b"${jndi:ldap://x/a}",
                     b"Tue, 14 Nov 2023 23:13:20 +0100", b"Tue, 14 Nov 2023 22:13:20 -0000"):
            with self.subTest(date=date):
                self.assertEqual(self.code(b"If-Modified-Since: " + date), 200)

    def test_if_none_match_wins(self):
        self.assertEqual(self.code(b'If-None-Match: "nope"',
                                   b"If-Modified-Since: Tue, 14 Nov 2023 22:13:20 GMT"), 200)


class OneResponseEachTest(unittest.TestCase):
    """Every request on a connection gets exactly one response, in order, and HEAD, 204 and
    304 carry no body: a second response after an error desynchronises keep-alive
    (falabellamichael/SignalR.E.A.C.H #10, matrix-org/synapse #3925), an unread rejected body
    is parsed as the next request (JustVugg/colibri #610), error answers to HEAD carried a
    body (mar10/wsgidav #371, fujita/swift3 #74), 304 a body (vibe-d/vibe.d #2268), 405 no
    Allow (NLstn/go-odata #729)."""

    def setUp(self):
        store = fingerd.MemoryStore(statuses={"alice": Status("Happy and well", SET_AT)})
        self.port = serve(self, fingerd.WebServer(("127.0.0.1", 0), store)).port

    def test_errors_and_empty_bodies_keep_the_connection_in_step(self):
        get = exchange(self.port, b"GET /alice HTTP/1.1\r\nHost: x\r\nConnection: close"
                                  b"\r\n\r\n")[0][0]
        etag, length = get[1]["etag"], get[1]["content-length"]
        requests = [
            (b"HEAD", b"HEAD /nobody HTTP/1.1\r\nHost: x\r\n\r\n", 404),
            (b"HEAD", b"HEAD /alice HTTP/1.1\r\nHost: x\r\n\r\n", 200),
            (b"GET", b"GET /nobody.json HTTP/1.1\r\nHost: x\r\n\r\n", 404),
            (b"POST", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 26\r\n\r\n"
                      b"GET /evil HTTP/1.1\r\nX: y\r\n", 405),
            (b"OPTIONS", b"OPTIONS /alice HTTP/1.1\r\nHost: x\r\n\r\n", 204),
            (b"GET", b"GET /alice HTTP/1.1\r\nHost: x\r\nIf-None-Match: " + etag.encode()
                     + b"\r\n\r\n", 304),
            (b"HEAD", b"HEAD /alice HTTP/1.1\r\nHost: x\r\nIf-None-Match: " + etag.encode()
                      + b"\r\n\r\n", 304),
            (b"GET", b"GET /alice HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 200)]
        with connect(self.port) as sock:
            sock.sendall(b"".join(request for _, request, _ in requests))
            data = read_all(sock)
        for method, _, code in requests:
            self.assertTrue(data.startswith(b"HTTP/1.1 %d " % code), (method, code, data[:80]))
            head, _, data = data.partition(b"\r\n\r\n")
            fields = dict(line.split(": ", 1) for line in
                          head.decode("latin-1").split("\r\n")[1:])
            if method == b"HEAD" and code == 200:
                self.assertEqual(fields["Content-Length"], length)      # as GET's
            if method == b"HEAD" or code in (204, 304):
                continue                            # no body, whatever the fields say
            body, data = data[:int(fields["Content-Length"])], \
                data[int(fields["Content-Length"]):]
            if code == 405:
                self.assertEqual(fields["Allow"], "GET, HEAD, OPTIONS")
            if code == 200:
                self.assertIn(b"Happy and well", body)
        self.assertEqual(data, b"")                 # nothing more: no second response


class RepeatedHeadTest(unittest.TestCase):
    """A head seen before is answered from what parsing it made (WebHandler.PARSED), and a
    response built this second is sent again (BUILT): neither may change an answer."""

    def setUp(self):
        store = fingerd.MemoryStore(statuses={"alice": Status("Happy and well", SET_AT)})
        server = fingerd.WebServer(("127.0.0.1", 0), store)
        server.max_requests = 3
        self.port = serve(self, server).port

    def test_the_same_head_again_gets_the_same_answer_and_the_last_one_closes(self):
        head = b"GET /alice HTTP/1.1\r\nHost: finger.test\r\n\r\n"
        responses, closed = exchange(self.port, head * 3)
        self.assertTrue(closed)
        self.assertEqual([(code, h.get("connection")) for code, h, _ in responses],
                         [(200, "keep-alive"), (200, "keep-alive"), (200, "close")])
        self.assertEqual(len({body for _, _, body in responses}), 1)
        with connect(self.port) as sock:               # HEAD, then GET, of the same page
            sock.sendall(head.replace(b"GET", b"HEAD") + head.replace(
                b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
            raw = read_all(sock)
        self.assertEqual((raw.count(b"HTTP/1.1 200 OK\r\n"), raw.count(b"<!DOCTYPE")), (2, 1))

    def test_a_bad_head_stays_bad_and_the_memory_is_bounded(self):
        bad = b"GET /alice HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
        for _ in range(2):
            self.assertEqual(exchange(self.port, bad)[0][0][0], 400)
        for i in range(3 * fingerd.WebHandler.PARSED_MAX):
            with connect(self.port) as sock:
                sock.sendall(b"GET /u%d HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
                             % i)
                read_all(sock)
        self.assertLessEqual(len(fingerd.WebHandler.PARSED), fingerd.WebHandler.PARSED_MAX)
        self.assertLessEqual(len(fingerd.WebHandler.BUILT), fingerd.WebHandler.BUILT_MAX)


if __name__ == "__main__":
    unittest.main()
