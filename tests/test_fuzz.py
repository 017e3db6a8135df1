"""A seeded fuzz test of the finger, setter and HTTP request parsers, standard library only.

Thousands of random and mutated inputs per parser and run, each checked against what must
hold for any input: no exception other than the protocol's own refusals, replies well-formed
and filtered.  FINGERD_FUZZ_SEED picks another seed, FINGERD_FUZZ_COUNT more inputs; the run
is also bounded in time (FINGERD_FUZZ_SECONDS per parser)."""
import logging
import os
import random
import re
import socket
import sys
import time
import unittest

from support import fingerd

SEED = int(os.environ.get("FINGERD_FUZZ_SEED", "1288"))
COUNT = int(os.environ.get("FINGERD_FUZZ_COUNT", "10000"))
SECONDS = float(os.environ.get("FINGERD_FUZZ_SECONDS", "20"))
TOKENS = [b"\r\n", b"\n", b"\r", b"\x00", b"\xff", b"\x1b[31m", b"\x1b]0;x\x07", b"\x9b", b"@",
          b"/W ", b"/w", b"%00", b"%2e%2e/", b"../", b"-l", b"\xc0\xaf", b"\xed\xa0\x80",
          b"\xe2\x80\xae", b" ", b"\t", b":", b"\r\n\r\n", b"Content-Length: ", b"99999999999",
          b"-1", b"Transfer-Encoding: chunked\r\n", b"Expect: 100-continue\r\n", b"HTTP/1.1",
          b"HTTP/9.9", b"GET ", b"POST ", b"HEAD ", b"/RPC2", b"<!DOCTYPE x>", b"<methodCall>",
          b"\xff\xfd\x18", b"A" * 300, b"a" * 1100]
FINGER_SEEDS = [b"alice\r\n", b"/W alice\r\n", b"\r\n", b"alice bob\n", b"alice@host\r\n"]
SETTER_SEEDS = [b"alice\nGone fishing\n", b"bob\r\none\r\ntwo\r\n", b"carol\n"]
HTTP_SEEDS = [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"HEAD /alice HTTP/1.1\r\nHost: x\r\n\r\n",
              b"GET /alice HTTP/1.0\r\nIf-None-Match: \"x\"\r\n\r\n",
              b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: 99\r\n\r\n<?xml version='1.0'?>"
              b"<methodCall><methodName>getUser</methodName><params><param><value><string>alice"
              b"</string></value></param></params></methodCall>"]
UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def inputs(rng, seeds):
    """COUNT inputs: mutated seeds mostly, some purely random bytes."""
    for _ in range(COUNT):
        if rng.random() < 0.2:
            yield bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 200)))
            continue
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 6)):
            op = rng.randrange(5)
            pos = rng.randrange(len(data) + 1)
            if op == 0 and data:
                data[rng.randrange(len(data))] = rng.getrandbits(8)
            elif op == 1:
                data[pos:pos] = rng.choice(TOKENS)
            elif op == 2:
                del data[pos:pos + rng.randrange(1, 10)]
            elif op == 3 and data:
                start = rng.randrange(len(data))
                data[pos:pos] = data[start:start + rng.randrange(1, 40)]
            else:
                data[pos:pos] = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 8)))
        yield bytes(data)


def store():
    result = fingerd.MemoryStore(statuses={"alice": fingerd.Status("Happy and well", 1.0),
                                           "bob": fingerd.Status("one\n\x1b[31mtwo\x00", 2.0)})
    return result


class FuzzTest(unittest.TestCase):
    def setUp(self):
        self.rng = random.Random(SEED)
        self.deadline = time.monotonic() + SECONDS

    def report(self, name, count, handled):
        print("\nfuzz: %s: %d inputs, %d reached the handler (seed %d)"
              % (name, count, handled, SEED), file=sys.stderr)
        self.assertGreaterEqual(count, min(COUNT, 1000))
        self.assertGreaterEqual(handled, count // 5, "the mutations rarely reach the handler")

    def test_finger_query(self):
        data_store, count, handled = store(), 0, 0
        for data in inputs(self.rng, FINGER_SEEDS):
            if time.monotonic() > self.deadline:
                break
            count += 1
            for eof in (False, True):
                try:
                    length = fingerd.FingerHandler.request_length(data, eof)
                except fingerd.RequestTooLarge:
                    break
                if length is None:
                    continue
                handled += 1
                line = fingerd.decode_peer(data[:length])
                reply = fingerd.answer_finger(data_store, line, fingerd.Privacy(
                    listing=self.rng.random() < 0.5))
                text = reply.decode("utf-8")
                self.assertTrue(text.endswith("\r\n"), data)
                self.assertNotIn("\n", text.replace("\r\n", ""), data)
                self.assertNotIn("\r", text.replace("\r\n", ""), data)
                self.assertIsNone(UNSAFE.search(text.replace("\r\n", "")), data)
        self.report("finger", count, handled)

    def test_setter_request(self):
        data_store, count, handled = fingerd.MemoryStore(), 0, 0
        for data in inputs(self.rng, SETTER_SEEDS):
            if time.monotonic() > self.deadline:
                break
            count += 1
            try:
                if fingerd.SetterHandler.request_length(data, True) is None:
                    continue
                handled += 1
                request = fingerd.parse_setter_request(data)
                if request.text is None:
                    data_store.clear(request.user)
                    continue
                stored = data_store.set(request.user, request.text, request.expires_at)
            except (fingerd.BadName, fingerd.BadStatus, fingerd.RequestTooLarge):
                continue
            self.assertTrue(fingerd.valid_name(request.user))
            self.assertIsNone(UNSAFE.search(stored.text.replace("\n", "")), data)
            self.assertLessEqual(len(stored.text.encode()), fingerd.MAX_STATUS_BYTES)
        self.report("setter", count, handled)

    def test_http_request(self):
        server = fingerd.WebServer(("127.0.0.1", 0), store())
        self.addCleanup(server.server_close)
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        count = handled = 0
        logging.getLogger("fingerd").disabled = True     # refusals are logged at debug only,
        self.addCleanup(setattr, logging.getLogger("fingerd"), "disabled", False)
        errors = []
        server.handle_error = lambda request, address: errors.append(sys.exc_info()[1])
        for data in inputs(self.rng, HTTP_SEEDS):
            if time.monotonic() > self.deadline:
                break
            count += 1
            try:
                length = fingerd.WebHandler.request_length(data, True)
            except fingerd.RequestTooLarge as e:
                self.assertIn(e.reason, (fingerd.Refusal.URI, fingerd.Refusal.HEADERS,
                                         fingerd.Refusal.BODY))
                continue
            if length is None:
                continue
            handled += 1
            conn = fingerd.Connection(theirs, ("127.0.0.1", 4242), 0.0)
            conn.request = data[:length]
            parts, after = server._run_handler(conn)
            reply = b"".join(parts)
            self.assertEqual(errors, [], data)
            self.assertIn(after, (fingerd.After.KEEP, fingerd.After.CLOSE), data)
            head, _, body = reply.partition(b"\r\n\r\n")
            self.assertRegex(head, rb"^HTTP/1\.1 [1-5]\d\d ", data)
            match = re.search(rb"\r\nContent-Length: (\d+)", head)
            self.assertIsNotNone(match, data)
            method = data[:length].lstrip(b"\r\n").split(b" ", 1)[0]
            if method != b"HEAD" and b" 304 " not in head[:13]:
                self.assertEqual(len(body), int(match.group(1)), data)
            self.assertNotIn(b"<script", body.lower())
        self.report("http", count, handled)


if __name__ == "__main__":
    unittest.main()
