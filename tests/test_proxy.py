"""fingerd behind a real nginx (installed by .ci/run), as admins run it for TLS on port 443.

nginx is started on a loopback port with a generated configuration that forwards to a fingerd
daemon started with --trusted-proxy 127.0.0.1/32.  Clients connect from 127.0.0.2 and
127.0.0.3 (all of 127/8 is loopback on Linux) so that per-client limits can be seen.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import unittest
import xmlrpc.client

from support import TIMEOUT, Daemon, temp_dir, wait_for, write_file
from test_web import ResponseReader

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx")
                                  else None)
CONFIG = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
{user}
events {{ worker_connections 128; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream fingerd {{ server 127.0.0.1:{upstream}; keepalive 8; }}
    server {{
        listen 127.0.0.1:{port};
        server_name finger.test;
        location / {{
            proxy_pass http://fingerd;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path, source="127.0.0.2", headers=b"", host=b"finger.test"):
    """One HTTP/1.1 request from `source`: (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT,
                                  source_address=(source, 0)) as sock:
        sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + host +
                     b"\r\nConnection: close\r\n" + headers + b"\r\n")
        return ResponseReader(sock).read()


@unittest.skipUnless(NGINX, "nginx is not installed (apt-get install nginx-light)")
class BehindNginxTest(unittest.TestCase):
    def start(self, *extra):
        users = write_file(os.path.join(temp_dir(self), "users"),
                           "alice: Happy and well\nbob: Out for lunch\n")
        self.daemon = Daemon(self, "--backend", "file", "--users-file", users,
                             "--http", "127.0.0.1:0", "--trusted-proxy", "127.0.0.1/32",
                             "--limit-loopback", "--rate", "2", "--log-queries", *extra)
        self.upstream = self.daemon.ports["http"]
        work = temp_dir(self)
        self.port = free_port()
        user = "user root;" if os.geteuid() == 0 else ""
        conf = write_file(os.path.join(work, "nginx.conf"), CONFIG.format(
            dir=work, upstream=self.upstream, port=self.port, user=user))
        self.nginx = subprocess.Popen([NGINX, "-c", conf, "-p", work], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.addCleanup(self.stop_nginx)

        def up():
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False
        if not wait_for(up):
            self.fail("nginx did not start: %s" % self.nginx.stderr.read().decode())

    def stop_nginx(self):
        self.nginx.send_signal(signal.SIGQUIT)
        try:
            self.nginx.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.nginx.kill()
            self.nginx.wait(TIMEOUT)
        self.nginx.stderr.close()

    def test_pages_json_rpc_and_health_through_nginx(self):
        self.start("--rate", "0")
        for path, needle in (("/", b"alice"), ("/alice", b"Happy and well"),
                             ("/users.json", b'"count": 2'), ("/healthz", b"ok"),
                             ("/metrics", b"fingerd_requests_total")):
            with self.subTest(path=path):
                code, _, body = get(self.port, path)
                self.assertEqual(code, 200)
                self.assertIn(needle, body)
        proxy = xmlrpc.client.ServerProxy("http://127.0.0.1:%d/RPC2" % self.port)
        self.assertEqual(proxy.getUser("alice"), "Happy and well")
        self.assertEqual(proxy.getUsers(), ["alice", "bob"])

    def test_an_http_1_0_client_without_host_is_served_through_the_proxy(self):
        self.start("--rate", "0")
        with socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT) as sock:
            sock.sendall(b"GET /alice HTTP/1.0\r\n\r\n")
            code, _, body = ResponseReader(sock).read()
        self.assertEqual((code, b"Happy and well" in body), (200, True))

    def test_a_forwarded_header_from_the_client_is_not_believed_through_the_proxy(self):
        # nginx sets X-Forwarded-For but passes the client's own Forwarded through.
        self.start()
        codes = [get(self.port, "/alice", source="127.0.0.2",
                     headers=b"Forwarded: for=10.0.1.%d;proto=https;host=evil.example\r\n" % n)[0]
                 for n in range(8)]
        self.assertIn(429, codes)
        self.assertNotIn("10.0.1.", self.daemon.log)
        code, _, body = get(self.port, "/alice.json", source="127.0.0.3",
                            headers=b"Forwarded: proto=https;host=evil.example\r\n")
        self.assertNotIn(b"evil.example", body)

    def test_links_use_the_host_and_scheme_the_client_asked_the_proxy_for(self):
        self.start("--rate", "0")
        code, _, body = get(self.port, "/alice.json", host=b"finger.test:8443",
                            headers=b"X-Forwarded-Proto: https\r\n")
        self.assertEqual(code, 200)
        # nginx replaces what the client sent with its own $scheme (http): it is believed.
        self.assertEqual(json.loads(body)["url"], "http://finger.test:8443/alice")

    def test_public_url_wins(self):
        self.start("--rate", "0", "--public-url", "https://finger.example.org/")
        code, _, body = get(self.port,
                            "/.well-known/webfinger?resource=acct:alice@finger.example.org")
        self.assertEqual(code, 200)
        hrefs = [link["href"] for link in json.loads(body)["links"]]
        self.assertTrue(hrefs and all(h.startswith("https://finger.example.org/")
                                      for h in hrefs), hrefs)

    def test_clients_behind_the_proxy_are_limited_one_by_one(self):
        self.start()
        first = [get(self.port, "/alice", source="127.0.0.2")[0] for _ in range(8)]
        self.assertIn(429, first)                      # a burst of 4, then 2 a second
        self.assertEqual(first[:4], [200] * 4)
        self.assertEqual(get(self.port, "/alice", source="127.0.0.3")[0], 200)
        self.assertTrue(self.daemon.wait_for_log("http 127.0.0.2:0 'GET /alice HTTP/1.1' 429"))
        self.assertTrue(self.daemon.wait_for_log("http 127.0.0.3:0 'GET /alice HTTP/1.1' 200"))

    def test_a_forged_forwarded_for_is_not_believed_without_the_proxy(self):
        self.start()
        codes = [get(self.upstream, "/alice", source="127.0.0.5",
                     headers=b"X-Forwarded-For: 192.0.2.%d\r\n" % n)[0] for n in range(8)]
        self.assertIn(429, codes)            # one client, whatever it claims to be
        self.assertTrue(self.daemon.wait_for_log("http 127.0.0.5:"))
        self.assertNotIn("192.0.2.", self.daemon.log)

    def test_a_forged_forwarded_for_through_the_proxy_names_the_real_client(self):
        self.start("--rate", "0")
        code, _, _ = get(self.port, "/alice", source="127.0.0.4",
                         headers=b"X-Forwarded-For: 203.0.113.9\r\n")
        self.assertEqual(code, 200)
        self.assertTrue(self.daemon.wait_for_log("http 127.0.0.4:0 'GET /alice"))
        self.assertNotIn("203.0.113.9", self.daemon.log)


if __name__ == "__main__":
    unittest.main()
