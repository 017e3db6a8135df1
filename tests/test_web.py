"""Web pages and XML-RPC over real sockets: pages, escaping, caching, limits, keep-alive,
JSON, WebFinger and the Atom feed."""
import base64
import hashlib
import http.client
import json
import logging
import os
import signal
import socket
import threading
import time
import unittest
import xml.etree.ElementTree as ElementTree
import xmlrpc.client

from support import (TIMEOUT, Daemon, connect, fingerd, read_all, serve, set_status, temp_dir,
                     thread_count)

Status = fingerd.Status
HOSTILE = '<script>alert("x")</script> & <b>bold</b>'


class ResponseReader:
    """Reads HTTP responses one by one from a socket, keeping what arrived past each."""

    def __init__(self, sock):
        self.sock, self.buf = sock, b""

    def _fill(self):
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def read(self):
        """(status, headers dict, body); the body by Content-Length; status 0 at EOF."""
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                return 0, {}, b""
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        code = int(lines[0].split()[1])
        length = 0 if code == 304 else int(headers.get("content-length", 0))
        while len(self.buf) < length and self._fill():
            pass
        body, self.buf = self.buf[:length], self.buf[length:]
        return code, headers, body


def read_response(sock):
    """One HTTP response (the socket is not read past it only if nothing else was sent)."""
    return ResponseReader(sock).read()


def raw(port, data, timeout=10):
    """Send raw bytes, read one response, then whatever follows until close."""
    with connect(port, timeout=timeout) as sock:
        sock.sendall(data)
        code, headers, body = read_response(sock)
        return code, headers, body


class WebTestCase(unittest.TestCase):
    def setUp(self):
        self.store = fingerd.MemoryStore(
            statuses={"alice": Status("Happy and well", 1_700_000_000.0),
                      "bob": Status("line one\nline two", 1_700_000_100.0),
                      "mallory": Status(HOSTILE, 1_700_000_200.0)})
        self.server = serve(self, fingerd.WebServer(("127.0.0.1", 0), self.store))
        self.port = self.server.port

    def get(self, path, method="GET", headers=None, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        self.addCleanup(conn.close)
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response, response.read()


class PagesTest(WebTestCase):
    def test_user_list(self):
        response, body = self.get("/")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.getheader("Content-Type"), "text/html; charset=utf-8")
        page = body.decode("utf-8")
        self.assertTrue(page.startswith("<!DOCTYPE html>"))
        self.assertIn('<meta name="viewport"', page)
        for name in ("alice", "bob", "mallory"):
            self.assertIn('<a href="./%s">%s</a>' % (name, name), page)
        self.assertIn("Happy and well", page)

    def test_user_page(self):
        response, body = self.get("/bob")
        self.assertEqual(response.status, 200)
        page = body.decode("utf-8")
        self.assertIn("<h1>bob</h1>", page)
        self.assertIn('<p class="status">line one<br>line two</p>', page)
        self.assertIn('<time datetime="2023-11-14T22:15:00Z">2023-11-14 22:15:00 UTC</time>',
                      page)

    def test_hostile_status_is_escaped_everywhere(self):
        for path in ("/", "/mallory"):
            page = self.get(path)[1].decode("utf-8")
            self.assertNotIn("<script>", page)
            self.assertNotIn("<b>bold", page)
            self.assertIn("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; "
                          "&lt;b&gt;bold&lt;/b&gt;", page)

    def test_control_characters_never_reach_the_page(self):
        self.store.update({"eve": Status("\x1b[31mred\x00\x07", 1.0)})
        page = self.get("/eve")[1].decode("utf-8")
        self.assertIn('<p class="status">red</p>', page)

    def test_names_in_links_are_percent_encoded(self):
        self.assertEqual(fingerd.user_link("a.b_c-d"), '<a href="./a.b_c-d">a.b_c-d</a>')
        self.assertEqual(fingerd.user_link('x"<y>'), '<a href="./x%22%3Cy%3E">x&quot;&lt;y&gt;</a>')

    def test_unknown_user_is_a_friendly_404(self):
        response, body = self.get("/nobody")
        self.assertEqual(response.status, 404)
        self.assertIn("There is no such user here.", body.decode())
        self.assertIn('<a href="/">All users</a>', body.decode())

    def test_path_tricks(self):
        for path in ("/..", "/%2e%2e", "/../etc/passwd", "/%2e%2e%2fetc%2fpasswd", "/.",
                     "/alice/extra", "/" + "a" * 300, "/etc/passwd", "/%2Fetc%2Fpasswd"):
            self.assertEqual(self.get(path)[0].status, 404, path)
        for path in ("/alice%00", "/%00", "/%ff%fe", "/a%1b[31m"):
            self.assertEqual(self.get(path)[0].status, 400, path)

    def test_empty_store(self):
        self.store.replace({})
        self.assertIn("Nobody has set a status yet.", self.get("/")[1].decode())

    def test_query_strings_are_ignored_for_pages(self):
        self.assertEqual(self.get("/alice?x=1")[0].status, 200)

    def test_absolute_form_target(self):
        code, _, body = raw(self.port, b"GET http://example/alice HTTP/1.1\r\nHost: x\r\n"
                                       b"Connection: close\r\n\r\n")
        self.assertEqual(code, 200)
        self.assertIn(b"Happy and well", body)


class HeadersAndCachingTest(WebTestCase):
    def test_security_headers_on_every_response(self):
        for path in ("/", "/alice", "/nobody", "/%00"):
            response, _ = self.get(path)
            csp = response.getheader("Content-Security-Policy")
            self.assertIn("default-src 'none'", csp)
            self.assertNotIn("unsafe-inline", csp)
            self.assertNotIn("script-src", csp)
            self.assertEqual(response.getheader("X-Content-Type-Options"), "nosniff")

    def test_style_hash_matches_the_stylesheet(self):
        digest = base64.b64encode(hashlib.sha256(fingerd.PAGE_STYLE.encode()).digest()).decode()
        self.assertEqual(fingerd.PAGE_STYLE_SHA256, digest,
                         "the stylesheet changed: set PAGE_STYLE_SHA256 = %r" % digest)
        self.assertIn("'sha256-%s'" % digest, fingerd.CONTENT_SECURITY_POLICY)

    def test_head_matches_get(self):
        get, body = self.get("/alice")
        head, head_body = self.get("/alice", method="HEAD")
        self.assertEqual(head.status, 200)
        self.assertEqual(head_body, b"")
        self.assertEqual(head.getheader("Content-Length"), str(len(body)))
        self.assertEqual(head.getheader("ETag"), get.getheader("ETag"))
        self.assertEqual(self.get("/nobody", method="HEAD")[0].status, 404)

    def test_etag_304(self):
        response, _ = self.get("/alice")
        etag = response.getheader("ETag")
        self.assertTrue(etag.startswith('"'))
        self.assertEqual(response.getheader("Cache-Control"), "no-cache")
        again, body = self.get("/alice", headers={"If-None-Match": etag})
        self.assertEqual(again.status, 304)
        self.assertEqual(body, b"")
        self.assertEqual(again.getheader("ETag"), etag)
        self.store.set("alice", "Changed")
        changed, body = self.get("/alice", headers={"If-None-Match": etag})
        self.assertEqual(changed.status, 200)
        self.assertIn(b"Changed", body)
        self.assertNotEqual(changed.getheader("ETag"), etag)

    def test_last_modified_304(self):
        response, _ = self.get("/alice")
        self.assertEqual(response.getheader("Last-Modified"), "Tue, 14 Nov 2023 22:13:20 GMT")
        again, _ = self.get("/alice", headers={"If-Modified-Since":
                                               "Tue, 14 Nov 2023 22:13:20 GMT"})
        self.assertEqual(again.status, 304)
        older, _ = self.get("/alice", headers={"If-Modified-Since":
                                               "Tue, 14 Nov 2023 22:00:00 GMT"})
        self.assertEqual(older.status, 200)
        bad, _ = self.get("/alice", headers={"If-Modified-Since": "garbage"})
        self.assertEqual(bad.status, 200)

    def test_pages_render_once_per_store_change(self):
        renders = []
        for name in ("render_user_list", "render_user"):
            real = getattr(self.server, name)
            setattr(self.server, name, lambda path, base, via, real=real:
                    renders.append(path) or real(path, base, via))
        for _ in range(5):
            self.get("/")
            self.get("/alice")
        self.assertEqual(renders, ["/", "/alice"])
        self.store.set("carol", "new")
        self.assertIn(b"carol", self.get("/")[1])
        self.assertEqual(renders, ["/", "/alice", "/"])

    def test_nodelay_on_the_listener(self):
        self.assertEqual(self.server.socket.getsockopt(socket.IPPROTO_TCP,
                                                       socket.TCP_NODELAY), 1)


class KeepAliveTest(WebTestCase):
    def test_many_requests_on_one_connection(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        self.addCleanup(conn.close)
        conn.request("GET", "/alice")
        first = conn.getresponse()
        first.read()
        local = conn.sock.getsockname()
        start = time.monotonic()
        for path in ["/", "/bob", "/nobody", "/alice"] * 25:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            self.assertIn(response.status, (200, 404))
        self.assertEqual(conn.sock.getsockname(), local)   # never reconnected
        self.assertLess(time.monotonic() - start, 2.0)     # no Nagle/delayed-ACK stalls

    def test_pipelined_requests(self):
        with connect(self.port) as sock:
            sock.sendall(b"GET /alice HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"GET /bob HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"GET /nobody HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reader = ResponseReader(sock)
            codes = [reader.read()[0] for _ in range(3)]
        self.assertEqual(codes, [200, 200, 404])

    def test_http10_closes_unless_asked(self):
        with connect(self.port) as sock:
            sock.sendall(b"GET /alice HTTP/1.0\r\n\r\n")
            code, headers, _ = read_response(sock)
            self.assertEqual(code, 200)
            self.assertEqual(headers.get("connection"), "close")
            self.assertEqual(read_all(sock), b"")

    def test_idle_keep_alive_connections_cost_no_thread(self):
        before = thread_count()
        socks = []
        for _ in range(200):
            sock = connect(self.port)
            sock.sendall(b"GET /alice HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertEqual(read_response(sock)[0], 200)
            socks.append(sock)
        self.addCleanup(lambda: [s.close() for s in socks])
        self.assertEqual(self.server.open_connections, 200)
        self.assertLessEqual(thread_count(), before)

    def test_idle_keep_alive_is_closed_after_the_idle_timeout(self):
        self.server.idle_timeout = 0.5
        with connect(self.port) as sock:
            sock.sendall(b"GET /alice HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertEqual(read_response(sock)[0], 200)
            start = time.monotonic()
            self.assertEqual(read_all(sock), b"")
            self.assertLess(time.monotonic() - start, 2.0)


class LimitsTest(WebTestCase):
    def test_request_line_too_long(self):
        code, headers, _ = raw(self.port, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(code, 414)
        self.assertEqual(headers.get("connection"), "close")

    def test_request_line_without_end(self):
        self.assertEqual(raw(self.port, b"GET /" + b"a" * 10000)[0], 414)

    def test_headers_too_large(self):
        big = b"X-Big: " + b"b" * 70000 + b"\r\n"
        self.assertEqual(raw(self.port, b"GET / HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n")[0], 431)

    def test_too_many_headers(self):
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(101))
        self.assertEqual(raw(self.port, b"GET / HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")[0],
                         431)
        some = b"".join(b"X-H%d: v\r\n" % i for i in range(90))
        self.assertEqual(raw(self.port, b"GET / HTTP/1.1\r\nHost: x\r\n" + some + b"\r\n")[0],
                         200)

    def test_slowloris_is_dropped_on_time(self):
        self.server.deadline = 1.0
        with connect(self.port) as sock:
            start = time.monotonic()
            reply = b""
            try:
                for piece in [b"GET / HTTP/1.1\r\n"] + [b"X-a: b\r\n"] * 30:
                    sock.sendall(piece)
                    time.sleep(0.1)
                    sock.settimeout(0.01)
                    try:
                        reply += sock.recv(65536)
                    except socket.timeout:
                        pass
                    sock.settimeout(10)
                    if reply:
                        break
            except OSError:
                pass
            reply += read_all(sock)
        self.assertTrue(reply.startswith(b"HTTP/1.1 408 "), reply[:40])
        self.assertLess(time.monotonic() - start, 2.0)

    def test_bad_request_lines(self):
        for line in (b"GARBAGE\r\n\r\n", b"GET /\r\n\r\n", b"GET / HTTP/1.1 extra\r\n\r\n",
                     b"GET / FTP/1.0\r\n\r\n", b"G\x00T / HTTP/1.1\r\nHost: x\r\n\r\n"):
            self.assertEqual(raw(self.port, line)[0], 400, line)
        self.assertEqual(raw(self.port, b"GET / HTTP/2.0\r\n\r\n")[0], 505)
        self.assertEqual(raw(self.port, b"GET / HTTP/1.1\r\n\r\n")[0], 400)        # no Host
        self.assertEqual(raw(self.port, b"GET / HTTP/1.1\r\nHost: x\r\n bad fold\r\n\r\n")[0],
                         400)

    def test_methods(self):
        self.assertEqual(self.get("/", method="POST", body=b"x")[0].status, 405)
        self.assertEqual(self.get("/alice", method="DELETE")[0].status, 405)
        response = self.get("/RPC2")[0]
        self.assertEqual(response.status, 405)
        self.assertEqual(response.getheader("Allow"), "POST, OPTIONS")
        self.assertEqual(self.get("/", method="BREW")[0].status, 501)

    def rpc_post(self, body, extra=b""):
        return raw(self.port, b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
                   + extra + b"\r\n" + body)

    def test_rpc_body_limits(self):
        call = xmlrpc.client.dumps(("alice",), "getUser").encode()
        self.assertEqual(self.rpc_post(call)[0], 411)
        self.assertEqual(self.rpc_post(call, b"Content-Length: -1\r\n")[0], 400)
        self.assertEqual(self.rpc_post(call, b"Content-Length: abc\r\n")[0], 400)
        self.assertEqual(self.rpc_post(call, b"Content-Length: %d\r\nContent-Length: 5\r\n"
                                       % len(call))[0], 400)
        self.assertEqual(self.rpc_post(b"", b"Content-Length: 99999999999\r\n")[0], 413)
        self.assertEqual(self.rpc_post(b"x" * 70000, b"Content-Length: 70000\r\n")[0], 413)
        self.assertEqual(self.rpc_post(call, b"Transfer-Encoding: chunked\r\n")[0], 411)
        self.assertEqual(self.rpc_post(call, b"Content-Length: %d\r\nContent-Encoding: gzip\r\n"
                                       % len(call))[0], 415)
        code, _, body = self.rpc_post(call, b"Content-Length: %d\r\n" % len(call))
        self.assertEqual(code, 200)
        self.assertIn(b"Happy and well", body)

    def test_expect_100_continue(self):
        call = xmlrpc.client.dumps(("alice",), "getUser").encode()
        with connect(self.port) as sock:
            sock.sendall(b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(call))
            self.assertEqual(sock.recv(100), b"HTTP/1.1 100 Continue\r\n\r\n")
            sock.sendall(call)
            code, _, body = read_response(sock)
        self.assertEqual(code, 200)
        self.assertIn(b"Happy and well", body)

    def test_other_clients_are_served_during_abuse(self):
        hogs = [connect(self.port) for _ in range(50)]
        self.addCleanup(lambda: [s.close() for s in hogs])
        for sock in hogs:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-slow: ")
        start = time.monotonic()
        self.assertEqual(self.get("/alice")[0].status, 200)
        self.assertLess(time.monotonic() - start, 0.5)


class XMLRPCTest(WebTestCase):
    def proxy(self):
        return xmlrpc.client.ServerProxy("http://127.0.0.1:%d/RPC2" % self.port)

    def test_get_user(self):
        self.assertEqual(self.proxy().getUser("alice"), "Happy and well")
        self.assertEqual(self.proxy().getUser("bob"), "line one\nline two")
        self.assertEqual(self.proxy().getUser("nobody"), fingerd.NO_SUCH_USER)
        self.assertEqual(self.proxy().getUser("-l"), fingerd.NO_SUCH_USER)

    def test_get_users(self):
        self.assertEqual(self.proxy().getUsers(), ["alice", "bob", "mallory"])

    def test_introspection(self):
        proxy = self.proxy()
        methods = proxy.system.listMethods()
        for name in ("getUser", "getUsers", "system.listMethods", "system.methodHelp",
                     "system.methodSignature", "system.multicall"):
            self.assertIn(name, methods)
        self.assertIn("status", proxy.system.methodHelp("getUser"))
        self.assertEqual(proxy.system.methodSignature("getUser"), "signatures not supported")

    def test_multicall(self):
        multi = xmlrpc.client.MultiCall(self.proxy())
        multi.getUser("alice")
        multi.getUsers()
        self.assertEqual(list(multi()), ["Happy and well", ["alice", "bob", "mallory"]])

    def test_faults(self):
        with self.assertRaises(xmlrpc.client.Fault):
            self.proxy().noSuchMethod()
        with self.assertRaises(xmlrpc.client.Fault):
            self.proxy().getUser(42)
        with self.assertRaises(xmlrpc.client.Fault):
            self.proxy().getUser("a", "b")

    def post(self, body):
        code, _, reply = raw(self.port, b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nConnection: close"
                             b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        self.assertEqual(code, 200)
        return reply

    def test_malformed_xml_is_a_fault(self):
        for body in (b"<methodCall><methodName>getUser</methodName><params><param>",
                     b"not xml at all", b"\xff\xfe\x00<", b""):
            reply = self.post(body)
            self.assertIn(b"<fault>", reply, body)
        self.assertEqual(self.proxy().getUser("alice"), "Happy and well")

    def test_entity_bomb_is_a_fault(self):
        bomb = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                + b"".join(b'<!ENTITY lol%d "%s">' % (i, b"&lol%d;" % (i - 1) * 10 if i else
                                                      b"&lol;" * 10) for i in range(9))
                + b']><methodCall><methodName>getUser</methodName><params><param><value>'
                  b'<string>&lol8;</string></value></param></params></methodCall>')
        start = time.monotonic()
        reply = self.post(bomb)
        self.assertIn(b"<fault>", reply)
        self.assertIn(b"DTDs and entities are not accepted", reply)
        self.assertLess(time.monotonic() - start, 1.0)

    def test_deep_nesting_is_answered(self):
        depth = 5000
        body = (b"<methodCall><methodName>getUser</methodName><params><param>"
                + b"<value><array><data>" * depth + b"</data></array></value>" * depth
                + b"</param></params></methodCall>")[:65000]
        reply = self.post(body)
        self.assertIn(b"<fault>", reply)

    def test_status_with_control_characters_is_valid_xml(self):
        self.store.update({"eve": Status("ok\x00\x01\x1b[31m", 1.0)})
        self.assertEqual(self.proxy().getUser("eve"), "ok")


class LoggingTest(WebTestCase):
    def test_access_is_logged_through_logging_escaped(self):
        with self.assertLogs("fingerd", logging.DEBUG) as logs:
            raw(self.port, b"GET /\x1b[31mevil HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            self.get("/alice")
        text = "\n".join(logs.output)
        self.assertIn("'GET /alice HTTP/1.1' 200", text)
        self.assertIn("\\x1b[31mevil", text)
        self.assertNotIn("\x1b", text)


class ConcurrencyTest(WebTestCase):
    def test_concurrent_clients(self):
        results = []

        def client():
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            for _ in range(25):
                conn.request("GET", "/alice")
                response = conn.getresponse()
                results.append((response.status, b"Happy" in response.read()))
            conn.close()
        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(results, [(200, True)] * 200)


class JSONAndWebFingerTest(unittest.TestCase):
    def setUp(self):
        self.store = fingerd.MemoryStore(
            statuses={"alice": Status("Happy and well", 1_700_000_000.0),
                      "bob": Status("one\n\x1b[31mtwo", 1_700_000_100.0)})
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
