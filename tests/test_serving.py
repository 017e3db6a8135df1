"""The serving loop (PooledTCPServer) on its own, with a toy line protocol and no store; then
per-address limits (ClientLimiter) and a blocking store's bounded workers.

Every test talks to a real server on port 0 over real sockets.  The toy protocol: a request
is one line; the reply is the line in upper case; the connection persists.  Lines starting
with "boom" make the handler raise, "wait" defers the reply to a worker (or never sends it),
and "big" answers 64 KiB.
"""
import os
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
import unittest
import unittest.mock

from support import (TIMEOUT, command, connect, fingerd, query, read_all, serve, temp_dir,
                     wait_for, write_file)
from test_hostile import Target, send_raw

After, Refusal, State = fingerd.After, fingerd.Refusal, fingerd.State


def stack_depth() -> int:
    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    return depth


class ToyHandler(fingerd.BufferedRequestHandler):
    """One line in, the same line upper-cased out; the connection stays open."""

    recv_size = 65536
    depths = []            # the stack depth at each handle(): constant when iterative
    raises = RuntimeError

    @classmethod
    def request_length(cls, buf, eof):
        end = buf.find(b"\n")
        if end < 0:
            if len(buf) > 1000:
                raise fingerd.RequestTooLarge()
            return len(buf) if eof and buf else None
        return end + 1

    @classmethod
    def refusal(cls, reason):
        return b"REFUSED " + reason.value.encode() + b"\n"

    def handle(self):
        line = self.rfile.read()
        self.depths.append(stack_depth())
        if line.startswith(b"boom"):
            raise self.raises("the handler failed on purpose")
        if line.startswith(b"big"):
            self.wfile.write(b"x" * 65535 + b"\n")
        elif line.startswith(b"never"):
            self.after = After.PENDING         # and nobody ever completes it
            return
        elif line.startswith(b"wait"):
            time.sleep(0.2)
            self.wfile.write(line.upper())
        else:
            self.wfile.write(line.upper())
        self.after = After.CLOSE if line.startswith(b"bye") or self.final else After.KEEP


class ToyServer(fingerd.PooledTCPServer):
    label = "toy"


def toy_server(test, **knobs):
    server = ToyServer(("127.0.0.1", 0), ToyHandler)
    for name, value in knobs.items():
        setattr(server, name, value)
    ToyHandler.depths = []
    return serve(test, server)


def send_quietly(sock, data):
    """sendall() that stops when the server has closed (it may, past its limits)."""
    try:
        sock.sendall(data)
    except OSError:
        pass


def rst_close(sock):
    """Close so that the kernel sends RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def round_trip(port, line=b"ping\n"):
    with connect(port) as s:
        s.sendall(line)
        s.shutdown(socket.SHUT_WR)
        return read_all(s)


class RefusalTest(unittest.TestCase):
    def test_every_handler_answers_every_refusal(self):
        handlers = [fingerd.FingerHandler, fingerd.SetterHandler, fingerd.UnixSetterHandler,
                    fingerd.WebHandler, ToyHandler]
        for handler in handlers:
            for reason in Refusal:
                with self.subTest(handler=handler.__name__, reason=reason):
                    reply = handler.refusal(reason)
                    self.assertIsInstance(reply, bytes)
                    self.assertTrue(reply.endswith(b"\n") or b"\r\n\r\n" in reply, reply)

    def test_refusal_reasons_are_data_not_messages(self):
        error = fingerd.RequestTooLarge(Refusal.HEADERS)
        self.assertIs(error.reason, Refusal.HEADERS)
        self.assertIs(fingerd.RequestTooLarge().reason, Refusal.TOO_LONG)
        self.assertIn(b"431", fingerd.WebHandler.refusal(Refusal.HEADERS).split(b"\r\n")[0])


class PipeliningTest(unittest.TestCase):
    def test_10000_pipelined_requests_are_answered_in_order_without_recursion(self):
        server = toy_server(self, max_requests=20000)
        lines = [b"r%d\n" % i for i in range(10000)]
        with connect(server.port) as s:
            s.sendall(b"".join(lines) + b"bye\n")
            data = read_all(s)
        self.assertEqual(data, b"".join(line.upper() for line in lines) + b"BYE\n")
        self.assertEqual(len(ToyHandler.depths), 10001)
        # The stack is as deep for the last request as for the first: served by a loop.
        self.assertLessEqual(max(ToyHandler.depths) - min(ToyHandler.depths), 4)

    def test_requests_per_connection_are_capped_then_closed_cleanly(self):
        server = toy_server(self, max_requests=100)
        with connect(server.port) as s:
            s.sendall(b"".join(b"r%d\n" % i for i in range(150)))
            data = read_all(s)        # no RST: every answer arrives, then EOF (after linger)
        self.assertEqual(data.count(b"\n"), 100)
        self.assertTrue(data.endswith(b"R99\n"))
        self.assertTrue(wait_for(lambda: server.open_connections == 0))

    def test_requests_then_half_close_are_all_answered(self):
        server = toy_server(self)
        self.assertEqual(round_trip(server.port, b"a\nb\nc\n"), b"A\nB\nC\n")

    def test_a_pipelining_client_does_not_starve_others(self):
        server = toy_server(self, max_requests=10 ** 6)
        flood = connect(server.port)
        self.addCleanup(flood.close)
        received = []

        def drain():
            received.append(read_all(flood))
        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        burst = b"flood\n" * 20000
        sender = threading.Thread(target=send_quietly, args=(flood, burst * 5), daemon=True)
        sender.start()
        worst = 0.0
        for _ in range(20):
            start = time.monotonic()
            self.assertEqual(round_trip(server.port, b"hi\n"), b"HI\n")
            worst = max(worst, time.monotonic() - start)
        sender.join(TIMEOUT)
        flood.sendall(b"bye\n")
        reader.join(TIMEOUT)
        self.assertEqual(received[0].count(b"FLOOD\n"), 100000)
        self.assertLess(worst, 2.0)     # a liveness bound, not a benchmark

    def test_a_client_that_does_not_read_is_not_read_either(self):
        server = toy_server(self, max_requests=10 ** 6)
        slow = connect(server.port)
        self.addCleanup(slow.close)
        slow.setblocking(False)
        stalls, end = 0, time.monotonic() + 5
        while stalls < 3 and time.monotonic() < end:   # until the buffers are full both ways
            try:
                slow.send(b"big\n" * 1024)
            except BlockingIOError:
                stalls += 1
                time.sleep(0.2)
        conn = next(iter(server._conns.values()))
        self.assertIs(conn.state, State.WRITING)
        # At most one reply is held in the server, whatever the client sent.
        self.assertLessEqual(sum(map(len, conn.outbuf)), 65536)
        self.assertLess(len(conn.inbuf), 4 * ToyHandler.recv_size + 65536)
        self.assertEqual(round_trip(server.port), b"PING\n")


class FaultTest(unittest.TestCase):
    def assert_contained(self, exception):
        server = toy_server(self)
        ToyHandler.raises = exception
        self.addCleanup(setattr, ToyHandler, "raises", RuntimeError)
        before = fingerd.FAULTS.count("toy")
        with self.assertLogs("fingerd", "ERROR") as logs:
            with connect(server.port) as s:
                s.sendall(b"ok\nboom\nnever read\n")
                data = read_all(s)
        self.assertEqual(data, b"OK\nREFUSED error\n")
        self.assertEqual(fingerd.FAULTS.count("toy"), before + 1)
        self.assertIn("internal error in toy", logs.output[0])
        self.assertIn("Traceback", logs.output[0])
        self.assertEqual(round_trip(server.port), b"PING\n")
        self.assertIsNone(server.loop_problem(time.monotonic(), 5))

    def test_a_handler_that_raises_is_answered_and_the_loop_goes_on(self):
        self.assert_contained(RuntimeError)

    def test_recursion_error_is_contained(self):
        self.assert_contained(RecursionError)

    def test_memory_error_is_contained(self):
        self.assert_contained(MemoryError)

    def test_sys_exit_in_a_handler_is_contained(self):
        # sopel #1943: a plugin's sys.exit() took the whole bot down.
        self.assert_contained(SystemExit)

    def test_a_framing_bug_closes_only_that_connection(self):
        server = toy_server(self)
        original = ToyHandler.request_length

        def broken(buf, eof):
            if buf.startswith(b"crash"):
                raise ValueError("a bug in the framing")
            return original(buf, eof)
        ToyHandler.request_length = staticmethod(broken)
        self.addCleanup(setattr, ToyHandler, "request_length", classmethod(original.__func__))
        before = fingerd.FAULTS.count("toy-loop")
        with self.assertLogs("fingerd", "ERROR"):
            self.assertEqual(round_trip(server.port, b"crash\n"), b"")
        self.assertEqual(fingerd.FAULTS.count("toy-loop"), before + 1)
        self.assertEqual(round_trip(server.port), b"PING\n")

    def test_reset_mid_request_frees_the_connection(self):
        server = toy_server(self)
        for _ in range(50):
            s = connect(server.port)
            s.sendall(b"half a requ")
            rst_close(s)
        self.assertTrue(wait_for(lambda: server.open_connections == 0))
        self.assertEqual(round_trip(server.port), b"PING\n")

    def test_connections_reset_before_accept_do_not_stop_the_listener(self):
        # A port scan (nmap -sT) connects and resets at once: pyftpdlib #105, CherryPy #686.
        server = toy_server(self)
        for _ in range(200):
            s = socket.socket()
            s.connect(("127.0.0.1", server.port))
            rst_close(s)
        self.assertEqual(round_trip(server.port), b"PING\n")

    def test_a_reply_never_completed_gets_an_error_at_busy_timeout(self):
        server = toy_server(self, busy_timeout=0.3)
        start = time.monotonic()
        self.assertEqual(round_trip(server.port, b"never\n"), b"REFUSED error\n")
        self.assertGreater(time.monotonic() - start, 0.25)
        self.assertEqual(round_trip(server.port), b"PING\n")

    def test_a_loop_that_dies_says_why_and_serves_again_when_restarted(self):
        server = ToyServer(("127.0.0.1", 0), ToyHandler)
        self.addCleanup(server.server_close)
        original = server._sweep

        def broken(now):
            raise RuntimeError("a bug in the loop itself")
        server._sweep = broken
        with self.assertLogs("fingerd", "ERROR") as logs:
            thread = threading.Thread(target=server.serve_forever, args=(0.05,))
            thread.start()
            thread.join(TIMEOUT)
        self.assertFalse(thread.is_alive())
        self.assertIn("RuntimeError", server.loop_error)
        self.assertIn("died", server.loop_problem(time.monotonic(), 5))
        self.assertIn("internal error in toy-loop", logs.output[0])
        server._sweep = original
        serve(self, server)          # the same listening socket, a new loop
        self.assertEqual(round_trip(server.port), b"PING\n")
        self.assertIsNone(server.loop_error)


class WorkerPoolTest(unittest.TestCase):
    def test_blocking_handlers_run_on_a_bounded_pool(self):
        server = toy_server(self, inline=False, max_workers=4)
        results = []
        threads = [threading.Thread(target=lambda: results.append(
            round_trip(server.port, b"wait\n"))) for _ in range(12)]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        self.assertEqual(results, [b"WAIT\n"] * 12)
        self.assertEqual(server.worker_threads, 4)
        self.assertGreater(time.monotonic() - start, 0.55)   # 12 x 0.2 s on 4 workers

    def test_a_handler_that_raises_on_a_worker_is_answered(self):
        server = toy_server(self, inline=False, max_workers=2)
        with self.assertLogs("fingerd", "ERROR"):
            for _ in range(5):
                self.assertEqual(round_trip(server.port, b"boom\n"), b"REFUSED error\n")
        self.assertEqual(round_trip(server.port, b"wait\n"), b"WAIT\n")
        self.assertEqual(server.workers_busy, 0)

    def test_no_thread_for_a_worker_is_a_busy_reply_not_a_dead_listener(self):
        # pogom #85: "can't start new thread" raised out of serve_forever.
        server = toy_server(self, inline=False, max_workers=2)
        failing = unittest.mock.patch.object(threading.Thread, "start",
                                             side_effect=RuntimeError("can't start new thread"))
        with failing, self.assertLogs("fingerd", "WARNING"):
            self.assertEqual(round_trip(server.port, b"wait\n"), b"REFUSED busy\n")
        self.assertEqual(round_trip(server.port, b"wait\n"), b"WAIT\n")

    def test_pipelined_requests_on_workers_stay_in_order(self):
        server = toy_server(self, inline=False, max_workers=4)
        with connect(server.port) as s:
            s.sendall(b"".join(b"r%d\n" % i for i in range(500)) + b"bye\n")
            data = read_all(s)
        self.assertEqual(data, b"".join(b"R%d\n" % i for i in range(500)) + b"BYE\n")


class StopTest(unittest.TestCase):
    def test_shutdown_lets_the_reply_in_flight_finish(self):
        server = ToyServer(("127.0.0.1", 0), ToyHandler)
        server.inline = False
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        self.addCleanup(server.server_close)
        with connect(server.port) as busy, connect(server.port) as idle:
            busy.sendall(b"wait\n")
            self.assertTrue(wait_for(lambda: server.workers_busy == 1))
            server.request_shutdown()
            self.assertEqual(busy.recv(100), b"WAIT\n")
            self.assertEqual(read_all(idle), b"")        # an idle client is let go at once
        thread.join(TIMEOUT)
        self.assertFalse(thread.is_alive())
        self.assertEqual(server.open_connections, 0)


@unittest.skipUnless(sys.platform.startswith("linux"), "reads /proc")
class DescriptorExhaustionTest(unittest.TestCase):
    """Out of file descriptors, accept() fails while the listener stays readable: servers
    have spun at 100% CPU there (sniproxy #89, libuv #690) or locked up (gunicorn #49)."""

    def test_the_listener_pauses_instead_of_spinning_and_recovers(self):
        users = write_file(os.path.join(temp_dir(self), "users"), "alice: here\n")

        def low_limit():
            resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))
        proc = subprocess.Popen(command("--backend", "memory", "--users-file", users,
                                        "--finger", "127.0.0.1:0", "--setter", "off",
                                        "--http", "off", "--max-conns-per-ip", "0",
                                        "--rate", "0"),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, preexec_fn=low_limit)
        self.addCleanup(proc.wait, TIMEOUT)
        self.addCleanup(proc.kill)
        port = None
        for raw in proc.stderr:
            line = raw.decode()
            if "finger listening on" in line:
                port = int(line.rsplit(":", 1)[1])
            if "serving with" in line:
                break
        self.assertIsNotNone(port)
        threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
        held = []
        self.addCleanup(lambda: [s.close() for s in held])
        for _ in range(80):             # more than the daemon has descriptors for
            held.append(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT))
        time.sleep(0.3)

        def cpu():
            with open("/proc/%d/stat" % proc.pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        before = cpu()
        time.sleep(1.0)
        self.assertLess(cpu() - before, 0.5)      # not spinning on the readable listener
        for s in held:
            s.close()
        held.clear()
        answer = b""
        end = time.monotonic() + TIMEOUT
        while answer != b"here\r\n" and time.monotonic() < end:
            with connect(port) as s:
                s.sendall(b"alice\r\n")
                answer = read_all(s)
        self.assertEqual(answer, b"here\r\n")
        self.assertIsNone(proc.poll())


class BlockingStore(fingerd.MemoryStore):
    """A store whose reads wait, like a remote one: handlers must run on workers."""
    blocking = True

    def _get(self, user, verbose, via):
        time.sleep(0.2)
        return super()._get(user, verbose, via)


class ClientStillSendingTest(unittest.TestCase):
    """A client that sends more while its slow answer is made still gets the answer: the
    close that follows may be a reset (unread input), so a reply is never held back for
    the FIN (MSG_MORE) unless the client has ended its side (outside tester, issue 19)."""

    def setUp(self):
        store = BlockingStore()
        store.replace({"alice": fingerd.Status("Happy and well", 1.0)})
        self.finger = serve(self, fingerd.FingerServer(("127.0.0.1", 0), store)).port
        self.web = serve(self, fingerd.WebServer(("127.0.0.1", 0), store)).port

    def answer(self, port, first, more):
        with connect(port) as sock:
            sock.sendall(first)
            time.sleep(0.05)                 # the answer is being made (0.2 s)
            sock.sendall(more)
            data = b""
            try:
                for chunk in iter(lambda: sock.recv(65536), b""):
                    data += chunk
            except ConnectionResetError:     # after the reply: the unread input
                pass
            return data

    def test_finger(self):
        for _ in range(3):
            self.assertEqual(self.answer(self.finger, b"alice\r\n", b"more\r\n"),
                             b"Happy and well\r\n")

    def test_http_connection_close(self):
        for request in (b"GET /alice.json HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
                        b"GET /alice.json HTTP/1.0\r\n\r\n"):
            reply = self.answer(self.web, request, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            self.assertTrue(reply.startswith(b"HTTP/1.1 200 OK\r\n"), reply[:100])
            self.assertIn(b"Happy and well", reply)


class BlockingStoreTest(unittest.TestCase):
    def test_blocking_store_runs_on_bounded_workers(self):
        store = BlockingStore()
        store.replace({"alice": fingerd.Status("Happy and well", 1.0)})
        server = fingerd.FingerServer(("127.0.0.1", 0), store)
        server.max_workers = 4
        serve(self, server)
        results = []
        threads = [threading.Thread(target=lambda: results.append(query(server.port,
                                                                        b"alice\r\n")))
                   for _ in range(12)]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
        self.assertEqual(results, [b"Happy and well\r\n"] * 12)
        self.assertEqual(server.worker_threads, 4)
        self.assertGreater(elapsed, 0.55)       # 12 reads of 0.2 s on 4 workers: 3 rounds
        self.assertLess(elapsed, 3.0)


class LimitTest(unittest.TestCase):
    def test_connections_per_address(self):
        target = Target(self, "--limit-loopback", "--max-conns-per-ip", "5", "--rate", "0")
        socks = [connect(target.finger) for _ in range(5)]
        self.addCleanup(lambda: [s.close() for s in socks])
        time.sleep(0.1)
        start = time.monotonic()
        self.assertEqual(query(target.finger, b"alice\r\n"),
                         b"Too many connections from your address, try again later\r\n")
        self.assertLess(time.monotonic() - start, 0.5)       # refused at once, not hanging
        reply = send_raw(target.http, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # per listener
        self.assertTrue(reply.startswith(b"HTTP/1.1 200"), reply[:40])
        for sock in socks:
            sock.close()
        time.sleep(0.2)
        target.check()

    def test_rate_per_address(self):
        target = Target(self, "--limit-loopback", "--rate", "5")
        time.sleep(1.0)                                      # the seeding used the burst
        replies = [query(target.finger, b"alice\r\n") for _ in range(20)]
        self.assertEqual(replies[0], b"Happy and well\r\n")
        refused = [r for r in replies if r.startswith(b"Too many")]
        self.assertGreater(len(refused), 5)
        time.sleep(1.0)
        self.assertEqual(query(target.finger, b"alice\r\n"), b"Happy and well\r\n")
        reply = send_raw(target.setter, b"x\ny\n")
        self.assertTrue(reply.startswith(b"OK") or reply.startswith(b"ERROR"))

    def test_http_gets_429(self):
        target = Target(self, "--limit-loopback", "--rate", "2")
        time.sleep(2.0)
        codes = [send_raw(target.http, b"GET /alice HTTP/1.1\r\nHost: x\r\n\r\n")[:12]
                 for _ in range(6)]
        self.assertIn(b"HTTP/1.1 429", codes)

    def test_loopback_is_exempt_by_default(self):
        target = Target(self, "--rate", "1", "--max-conns-per-ip", "1")
        socks = [connect(target.finger) for _ in range(5)]
        self.addCleanup(lambda: [s.close() for s in socks])
        for _ in range(10):
            target.check()

    def test_limiter_groups_ipv6_by_64_and_prunes(self):
        now = [0.0]
        limiter = fingerd.ClientLimiter(max_conns=2, rate=1, limit_loopback=False,
                                        clock=lambda: now[0])
        self.assertIsNone(limiter.admit(("2001:db8::1", 1)))
        self.assertIsNone(limiter.admit(("2001:db8::2", 1)))
        self.assertEqual(limiter.admit(("2001:db8::3", 1)), fingerd.Refusal.TOO_MANY)  # /64
        self.assertIsNone(limiter.admit(("2001:db8:0:1::1", 1)))           # another /64
        self.assertIsNone(limiter.admit(("127.0.0.1", 1)))                  # exempt
        limiter.release(("2001:db8::1", 1))
        limiter.release(("2001:db8::2", 1))
        limiter.release(("2001:db8:0:1::1", 1))
        now[0] = 100.0
        limiter.prune()
        self.assertEqual((limiter.open, limiter.buckets), ({}, {}))


if __name__ == "__main__":
    unittest.main()
