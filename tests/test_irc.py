"""The IRC bot: against a scripted IRC server on port 0, then against the real ngircd."""
import os
import queue
import shutil
import signal
import socket
import subprocess
import threading
import time
import unittest

from support import Daemon, TIMEOUT, fingerd, temp_dir, wait_for, write_file

Status = fingerd.Status


class ScriptedClient:
    """The server side of one bot connection: read the bot's lines, send it lines."""

    def __init__(self, sock):
        self.sock = sock
        self.lines = queue.Queue()
        self.all = []
        threading.Thread(target=self._reader, daemon=True).start()

    def _reader(self):
        buf = b""
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                buf += data
                while b"\r\n" in buf:
                    line, buf = buf.split(b"\r\n", 1)
                    self.all.append(line)
                    self.lines.put(line)
        except OSError:
            pass
        self.lines.put(None)

    def expect(self, prefix, timeout=5.0):
        """The next line starting with prefix (others are skipped); fails the test if none."""
        end = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                raise AssertionError("no line starting %r; got %r" % (prefix, self.all))
            if line is None:
                raise AssertionError("connection closed waiting for %r; got %r"
                                     % (prefix, self.all))
            if line.startswith(prefix):
                return line

    def quiet(self, seconds):
        """Lines the bot sent within `seconds` (not counting any already read)."""
        out, end = [], time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                line = self.lines.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            out.append(line)
        return out

    def send(self, line):
        self.sock.sendall(line + b"\r\n")

    def welcome(self, nick=b"fingerbot"):
        self.expect(b"NICK ")
        self.expect(b"USER ")
        self.send(b":irc.test 001 " + nick + b" :Welcome")

    def close(self):
        try:        # shutdown first: close() alone leaves the reader thread's recv running
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class ScriptedServer:
    def __init__(self, test):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(5)
        self.port = self.listener.getsockname()[1]
        test.addCleanup(self.listener.close)
        self.clients = []
        test.addCleanup(lambda: [c.close() for c in self.clients])

    def accept(self, timeout=10.0):
        self.listener.settimeout(timeout)
        sock, _ = self.listener.accept()
        client = ScriptedClient(sock)
        self.clients.append(client)
        return client


class MeanRandom:
    """A random source with no jitter: normalvariate returns its mean."""

    def normalvariate(self, mu, sigma):
        return mu


class BotTestCase(unittest.TestCase):
    def setUp(self):
        self.store = fingerd.MemoryStore(
            statuses={"alice": Status("Happy and well", 1.0),
                      "bob": Status("one\ntwo\nthree\nfour\nfive", 1.0),
                      "evil": Status("x\r\nQUIT :x\r\nPRIVMSG #c :owned\x00", 1.0)})
        self.server = ScriptedServer(self)

    def bot(self, **kw):
        kw.setdefault("channels", ["#tilde"])
        kw.setdefault("backoff", fingerd.Backoff(initial=0.05, rng=MeanRandom()))
        bot = fingerd.IRCBot(self.store, "127.0.0.1", self.server.port, **kw)
        bot.start()
        self.addCleanup(bot.stop)
        return bot

    def registered(self, **kw):
        bot = self.bot(**kw)
        client = self.server.accept()
        client.welcome()
        client.expect(b"JOIN #tilde")
        return bot, client


class RegistrationTest(BotTestCase):
    def test_registers_and_joins(self):
        bot = self.bot(channels=["#tilde", "#fingerd"])
        client = self.server.accept()
        self.assertEqual(client.expect(b"NICK "), b"NICK fingerbot")
        self.assertTrue(client.expect(b"USER ").startswith(b"USER fingerd 0 * :"))
        client.send(b":irc.test 001 fingerbot :Welcome")
        self.assertEqual(client.expect(b"JOIN "), b"JOIN #tilde,#fingerd")
        self.assertTrue(bot.connected.wait(5))

    def test_nick_collision(self):
        self.bot()
        client = self.server.accept()
        client.expect(b"USER ")
        client.send(b":irc.test 433 * fingerbot :Nickname is already in use")
        self.assertEqual(client.expect(b"NICK "), b"NICK fingerbot_")
        client.send(b":irc.test 433 * fingerbot_ :Nickname is already in use")
        self.assertEqual(client.expect(b"NICK "), b"NICK fingerbot__")
        client.send(b":irc.test 437 * fingerbot__ :Nick temporarily unavailable")
        self.assertEqual(client.expect(b"NICK "), b"NICK fingerbot___")
        client.send(b":irc.test 001 fingerbot___ :Welcome")
        client.expect(b"JOIN #tilde")
        client.send(b":carol!c@h PRIVMSG fingerbot___ :alice")
        client.expect(b"PRIVMSG carol :Status of alice: Happy and well")

    def test_answers_ping_at_once(self):
        _, client = self.registered()
        start = time.monotonic()
        client.send(b"PING :irc.test-123")
        self.assertEqual(client.expect(b"PONG"), b"PONG irc.test-123")
        self.assertLess(time.monotonic() - start, 0.5)

    def test_pings_a_silent_server_and_reconnects_without_answer(self):
        self.registered(ping_after=0.3, ping_timeout=0.3)
        client = self.server.clients[0]
        self.assertTrue(client.expect(b"PING", timeout=3).startswith(b"PING"))
        again = self.server.accept(timeout=5)       # no PONG: the bot gives up and returns
        again.expect(b"NICK fingerbot")

    def test_password(self):
        self.bot(password="s3cret")
        client = self.server.accept()
        self.assertEqual(client.expect(b"PASS"), b"PASS s3cret")

    def test_sasl_plain(self):
        bot = self.bot(password="s3cret", sasl=True)
        client = self.server.accept()
        self.assertEqual(client.expect(b"CAP"), b"CAP REQ sasl")
        client.send(b":irc.test CAP * ACK :sasl")
        self.assertEqual(client.expect(b"AUTHENTICATE"), b"AUTHENTICATE PLAIN")
        client.send(b"AUTHENTICATE +")
        token = client.expect(b"AUTHENTICATE ")
        import base64
        self.assertEqual(base64.b64decode(token.split()[1]),
                         b"fingerbot\0fingerbot\0s3cret")
        client.send(b":irc.test 903 fingerbot :SASL authentication successful")
        self.assertEqual(client.expect(b"CAP END"), b"CAP END")
        client.send(b":irc.test 001 fingerbot :Welcome")
        self.assertTrue(bot.connected.wait(5))

    def test_quit_on_stop(self):
        bot, client = self.registered()
        start = time.monotonic()
        bot.stop()
        self.assertTrue(client.expect(b"QUIT").startswith(b"QUIT :fingerd"))
        self.assertLess(time.monotonic() - start, 1.0)


class AnswerTest(BotTestCase):
    def test_private_message_round_trip(self):
        _, client = self.registered()
        client.send(b":carol!carol@host PRIVMSG fingerbot :alice")
        self.assertEqual(client.expect(b"PRIVMSG"),
                         b"PRIVMSG carol :Status of alice: Happy and well")
        client.send(b":carol!carol@host PRIVMSG fingerbot :nobody")
        self.assertEqual(client.expect(b"PRIVMSG"), b"PRIVMSG carol :Status of nobody: No such user")

    def test_channel_command(self):
        _, client = self.registered()
        client.send(b":carol!c@h PRIVMSG #tilde :!finger alice")
        self.assertEqual(client.expect(b"PRIVMSG"),
                         b"PRIVMSG #tilde :Status of alice: Happy and well")
        client.send(b":carol!c@h PRIVMSG #tilde :alice")         # plain chatter: ignored
        client.send(b":carol!c@h PRIVMSG #tilde :!finger")
        self.assertEqual(client.quiet(0.5), [])

    def test_multi_line_status_is_cut_to_four_lines(self):
        _, client = self.registered()
        client.send(b":carol!c@h PRIVMSG fingerbot :bob")
        lines = [client.expect(b"PRIVMSG") for _ in range(4)]
        self.assertEqual(lines, [b"PRIVMSG carol :Status of bob: one", b"PRIVMSG carol :two",
                                 b"PRIVMSG carol :three", "PRIVMSG carol :four \u2026".encode()])
        self.assertEqual(client.quiet(1.2), [])

    def test_cr_injection_arrives_as_one_harmless_line(self):
        self.store.update({"evil": Status("x\rQUIT :x\x00\rPRIVMSG #c :owned", 1.0)})
        _, client = self.registered()
        client.send(b":carol!c@h PRIVMSG fingerbot :evil")
        line = client.expect(b"PRIVMSG")
        self.assertEqual(line, b"PRIVMSG carol :Status of evil: xQUIT :xPRIVMSG #c :owned")
        self.assertEqual(client.quiet(0.5), [])
        self.assertFalse(any(l.startswith(b"QUIT") for l in client.all))

    def test_crlf_in_a_status_is_a_line_break_never_a_command(self):
        _, client = self.registered()
        client.send(b":carol!c@h PRIVMSG fingerbot :evil")
        lines = [client.expect(b"PRIVMSG") for _ in range(3)]
        self.assertEqual(lines, [b"PRIVMSG carol :Status of evil: x",
                                 b"PRIVMSG carol :QUIT :x", b"PRIVMSG carol :PRIVMSG #c :owned"])
        self.assertFalse(any(l.startswith(b"QUIT") for l in client.all))

    def test_never_answers_notices_itself_or_other_ctcp(self):
        _, client = self.registered()
        client.send(b":carol!c@h NOTICE fingerbot :alice")
        client.send(b":fingerbot!f@h PRIVMSG fingerbot :alice")
        client.send(b":otherbot!o@h PRIVMSG fingerbot :\x01PING 123\x01")
        client.send(b":otherbot!o@h PRIVMSG fingerbot :\x01ACTION waves\x01")
        client.send(b":otherbot!o@h PRIVMSG fingerbot :hello there, bot")
        self.assertEqual(client.quiet(0.7), [])

    def test_ctcp_version_and_finger(self):
        _, client = self.registered()
        client.send(b":carol!c@h PRIVMSG fingerbot :\x01VERSION\x01")
        self.assertEqual(client.expect(b"NOTICE"),
                         ("NOTICE carol :\x01VERSION fingerd %s\x01" % fingerd.__version__).encode())
        client.send(b":carol!c@h PRIVMSG fingerbot :\x01FINGER\x01")
        self.assertTrue(client.expect(b"NOTICE").startswith(b"NOTICE carol :\x01FINGER "))

    def test_long_status_is_split_on_utf8_boundaries(self):
        self.store.update({"long": Status("\u00e9\u20ac" * 400, 1.0)})      # 2000 bytes
        _, client = self.registered(send_burst=20)
        client.send(b":carol!c@h PRIVMSG fingerbot :long")
        lines = [client.expect(b"PRIVMSG")]
        lines += client.quiet(1.0)
        text = ""
        self.assertEqual(len(lines), fingerd.IRC_REPLY_LINES)      # wrapping counts
        for line in lines:
            self.assertLessEqual(len(line) + 2 + fingerd.IRC_RELAY_PREFIX, 512)
            text += line.decode("utf-8").split(" :", 1)[1]      # each line decodes alone
        self.assertTrue(text.endswith(" \u2026"), text[-20:])
        self.assertTrue(("Status of long: " + "\u00e9\u20ac" * 400).startswith(text[:-2]))
        self.assertGreater(len(text), 600)

    def test_flood_is_paced_by_the_token_bucket(self):
        _, client = self.registered()
        for _ in range(200):
            client.send(b":carol!c@h PRIVMSG fingerbot :alice")
        start = time.monotonic()
        got = [l for l in client.quiet(2.5) if l.startswith(b"PRIVMSG")]
        elapsed = time.monotonic() - start
        self.assertGreaterEqual(len(got), 4)
        self.assertLessEqual(len(got), 4 + int(elapsed) + 1)     # burst 4, then 1 a second
        client.send(b"PING :still-there")                        # and PING is not queued
        self.assertEqual(client.expect(b"PONG", timeout=1), b"PONG still-there")

    def test_oversized_and_undecodable_lines(self):
        _, client = self.registered()
        client.send(b":carol!c@h PRIVMSG fingerbot :" + b"x" * 9000)
        client.send(b":carol!c@h PRIVMSG fingerbot :\xff\xfe")      # not a name: no answer
        client.send(b":carol!c@h PRIVMSG fingerbot :-l")
        client.send(b":carol!c@h PRIVMSG fingerbot :alice")
        self.assertEqual(client.expect(b"PRIVMSG"),
                         b"PRIVMSG carol :Status of alice: Happy and well")

    def test_server_vanishing_mid_line(self):
        _, client = self.registered()
        client.sock.sendall(b":carol!c@h PRIVMSG fingerbot :ali")   # no end of line
        client.close()
        again = self.server.accept(timeout=5)
        again.welcome()
        again.send(b":carol!c@h PRIVMSG fingerbot :alice")
        self.assertEqual(again.expect(b"PRIVMSG"),
                         b"PRIVMSG carol :Status of alice: Happy and well")
        self.assertFalse(any(b"Status of ali:" in l for l in client.all + again.all))

    def test_nick_refused_outright_backs_off(self):
        waits = []
        bot = fingerd.IRCBot(self.store, "127.0.0.1", self.server.port,
                             wait=lambda s: waits.append(s) or len(waits) >= 2,
                             backoff=fingerd.Backoff(rng=MeanRandom()))
        with self.assertLogs("fingerd", "WARNING") as logs:
            bot.start()
            self.addCleanup(bot.stop)
            for _ in range(2):
                client = self.server.accept()
                client.expect(b"USER ")
                client.send(b":irc.test 432 * fingerbot :Erroneous nickname")
            bot._thread.join(5)
        self.assertEqual(waits, [1.0, fingerd.BACKOFF_FACTOR])
        self.assertIn("refuses the nick fingerbot", "\n".join(logs.output))

    def test_server_error_means_reconnect(self):
        self.registered()
        self.server.clients[0].send(b"ERROR :Closing link (flood)")
        self.server.accept(timeout=5).expect(b"NICK fingerbot")


@unittest.skipUnless(shutil.which("openssl"), "the openssl command is not installed")
class TLSTest(unittest.TestCase):
    """--irc-tls: the server's certificate and host name are verified, SNI is sent."""

    def setUp(self):
        import ssl
        self.dir = temp_dir(self)
        self.cert = os.path.join(self.dir, "cert.pem")
        key = os.path.join(self.dir, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                        "-keyout", key, "-out", self.cert], check=True, capture_output=True)
        self.server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server_context.load_cert_chain(self.cert, key)
        self.sni = []
        self.server_context.sni_callback = lambda sock, name, ctx: self.sni.append(name)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(5)
        self.addCleanup(self.listener.close)
        self.port = self.listener.getsockname()[1]
        self.store = fingerd.MemoryStore(statuses={"alice": Status("Happy and well", 1.0)})

    def accept_tls(self):
        self.listener.settimeout(10)
        sock, _ = self.listener.accept()
        tls = self.server_context.wrap_socket(sock, server_side=True)
        client = ScriptedClient(tls)
        self.addCleanup(client.close)
        return client

    def test_verified_connection_with_sni(self):
        import ssl
        context = ssl.create_default_context(cafile=self.cert)
        bot = fingerd.IRCBot(self.store, "localhost", self.port, tls=True, ssl_context=context)
        bot.start()
        self.addCleanup(bot.stop)
        client = self.accept_tls()
        client.welcome()
        self.assertTrue(bot.connected.wait(5))
        self.assertEqual(self.sni, ["localhost"])
        client.send(b":carol!c@h PRIVMSG fingerbot :alice")
        self.assertEqual(client.expect(b"PRIVMSG"), b"PRIVMSG carol :Status of alice: Happy and well")

    def refused_handshake(self, bot):
        """Start the bot (which gives up after one attempt), offer our certificate, and
        return what it logged."""
        with self.assertLogs("fingerd", "WARNING") as logs:
            bot.start()
            self.addCleanup(bot.stop)
            self.listener.settimeout(10)
            sock, _ = self.listener.accept()
            try:
                self.server_context.wrap_socket(sock, server_side=True)
            except OSError:
                pass                                   # the bot hung up on our certificate
            sock.close()
            bot._thread.join(5)
        self.assertFalse(bot.connected.is_set())
        return "\n".join(logs.output)

    def test_untrusted_certificate_is_refused(self):
        bot = fingerd.IRCBot(self.store, "localhost", self.port, tls=True,
                             wait=lambda s: True)        # the system's trust, not our CA
        self.assertIn("CERTIFICATE_VERIFY_FAILED", self.refused_handshake(bot))

    def test_wrong_host_name_is_refused(self):
        import ssl
        context = ssl.create_default_context(cafile=self.cert)
        bot = fingerd.IRCBot(self.store, "127.0.0.1", self.port, tls=True, ssl_context=context,
                             wait=lambda s: True)
        self.assertRegex(self.refused_handshake(bot), "IP address mismatch|doesn't match")


class ParsingTest(unittest.TestCase):
    def test_parse(self):
        parse = fingerd.parse_irc_line
        self.assertEqual(parse(":nick!u@h PRIVMSG #c :hello world"),
                         ("nick", "PRIVMSG", ["#c", "hello world"]))
        self.assertEqual(parse("@time=x :srv 001 me :Welcome"), ("srv", "001", ["me", "Welcome"]))
        self.assertEqual(parse("PING :abc"), ("", "PING", ["abc"]))
        self.assertIsNone(parse(""))
        self.assertIsNone(parse(":prefixonly"))

    def test_utf8_chunks(self):
        chunks = fingerd.utf8_chunks("a\u00e9" * 10, 5)
        self.assertTrue(all(len(c.encode()) <= 5 for c in chunks))
        self.assertEqual("".join(chunks), "a\u00e9" * 10)

    def test_server_spec(self):
        parse = fingerd.parse_irc_server
        self.assertEqual(parse("irc.libera.chat", False), ("irc.libera.chat", 6667))
        self.assertEqual(parse("irc.libera.chat", True), ("irc.libera.chat", 6697))
        self.assertEqual(parse("localhost:7000", True), ("localhost", 7000))
        self.assertEqual(parse("[::1]:7000", False), ("::1", 7000))
        self.assertIsNone(parse("off", False))
        for bad in ("", ":6667", "host:x", "host:0"):
            with self.assertRaises(ValueError):
                parse(bad, False)


class BackoffTest(unittest.TestCase):
    def test_schedule(self):
        backoff = fingerd.Backoff(rng=MeanRandom())
        delays = [backoff.next() for _ in range(8)]
        self.assertEqual(delays[0], 1.0)
        for earlier, later in zip(delays, delays[1:6]):
            self.assertAlmostEqual(later / earlier, 2.718281828, places=6)
        self.assertEqual(delays[-1], 300.0)
        backoff.reset()
        self.assertEqual(backoff.next(), 1.0)

    def test_jitter_is_bounded_and_seeded(self):
        import random
        a = fingerd.Backoff(rng=random.Random(7))
        b = fingerd.Backoff(rng=random.Random(7))
        first = [a.next() for _ in range(10)]
        self.assertEqual(first, [b.next() for _ in range(10)])
        self.assertTrue(all(0 <= d <= 300 for d in first))
        self.assertNotEqual(first[1], 2.718281828459045)

    def test_link_drops_follow_the_schedule_and_reset_on_welcome(self):
        store = fingerd.MemoryStore()
        server = ScriptedServer(self)
        waits = []

        def fake_wait(seconds):              # the injected clock: record, do not sleep
            waits.append(round(seconds, 3))
            return False
        bot = fingerd.IRCBot(store, "127.0.0.1", server.port, wait=fake_wait,
                             backoff=fingerd.Backoff(rng=MeanRandom()))
        bot.start()
        self.addCleanup(bot.stop)
        for _ in range(3):                   # three drops before any welcome
            server.accept().close()
        client = server.accept()
        client.welcome()                     # a registration resets the back-off
        self.assertTrue(bot.connected.wait(5))
        client.close()
        server.accept().expect(b"NICK")
        self.assertEqual(waits, [1.0, 2.718, 7.389, 1.0])

    def test_refused_connection_backs_off(self):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        listener.close()                      # nothing listens there now
        waits = []
        done = threading.Event()

        def fake_wait(seconds):
            waits.append(seconds)
            if len(waits) >= 4:
                done.set()
                return True                   # stop
            return False
        bot = fingerd.IRCBot(fingerd.MemoryStore(), "127.0.0.1", port, wait=fake_wait,
                             backoff=fingerd.Backoff(rng=MeanRandom()))
        bot.start()
        self.addCleanup(bot.stop)
        self.assertTrue(done.wait(10))
        self.assertEqual([round(w, 2) for w in waits], [1.0, 2.72, 7.39, 20.09])

    def test_stop_interrupts_a_long_wait(self):
        bot = fingerd.IRCBot(fingerd.MemoryStore(), "127.0.0.1", 1,
                             backoff=fingerd.Backoff(initial=300))
        bot.start()
        time.sleep(0.3)
        start = time.monotonic()
        bot.stop()
        self.assertFalse(bot._thread.is_alive())
        self.assertLess(time.monotonic() - start, 1.0)


NGIRCD_CONF = """\
[Global]
Name = irc.fingerd.test
Info = fingerd test server
Listen = 127.0.0.1
Ports = {port}
PidFile = {dir}/ngircd.pid
MotdPhrase = fingerd tests
ServerUID = {uid}
ServerGID = {gid}
[Limits]
PingTimeout = 120
PongTimeout = 20
MaxConnectionsIP = 0
[Options]
DNS = no
Ident = no
PAM = no
"""


@unittest.skipUnless(shutil.which("ngircd") or os.path.exists("/usr/sbin/ngircd"),
                     "ngircd is not installed (apt-get install ngircd)")
class RealNgircdTest(unittest.TestCase):
    """fingerd's bot on a real ngircd (no daemon, loopback), talked to by a raw client."""

    def setUp(self):
        self.dir = temp_dir(self)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.conf = write_file(os.path.join(self.dir, "ngircd.conf"), NGIRCD_CONF.format(
            port=self.port, dir=self.dir, uid=os.getuid(), gid=os.getgid()))
        self.ircd = None
        self.addCleanup(self.stop_ircd)
        self.start_ircd()

    def start_ircd(self):
        binary = shutil.which("ngircd") or "/usr/sbin/ngircd"
        self.ircd = subprocess.Popen([binary, "-n", "-f", self.conf], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + TIMEOUT
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.fail("ngircd did not start")

    def stop_ircd(self):
        if self.ircd is not None and self.ircd.poll() is None:
            self.ircd.terminate()
            self.ircd.wait(TIMEOUT)

    def client(self, nick):
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)
        self.addCleanup(sock.close)
        sock.sendall(b"NICK %s\r\nUSER %s 0 * :test client\r\n" % (nick, nick))
        reader = ScriptedClient(sock)
        reader.expect(b":irc.fingerd.test 001", timeout=TIMEOUT)
        return reader

    def ask(self, client, nick, question, timeout=TIMEOUT):
        """PRIVMSG the bot until it answers this question (it may still be reconnecting)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            client.send(b"PRIVMSG %s :%s" % (nick, question))
            try:
                while True:
                    line = client.expect(b":%s!" % nick, timeout=1.0)
                    if b"Status of %s:" % question in line:
                        return line
            except AssertionError:
                continue
        self.fail("the bot never answered %r" % question)

    def test_round_trip_restarts_and_injection(self):
        store = fingerd.MemoryStore(statuses={"alice": Status("Happy and well", 1.0),
                                              "evil": Status("x\rQUIT :x\x00", 1.0),
                                              "evil2": Status("y\r\nQUIT :y", 1.0)})
        bot = fingerd.IRCBot(store, "127.0.0.1", self.port, channels=["#fingerd"],
                             backoff=fingerd.Backoff(initial=0.1))
        bot.start()
        self.addCleanup(bot.stop)
        self.assertTrue(bot.connected.wait(TIMEOUT), "the bot did not register on ngircd")
        client = self.client(b"carol")
        reply = self.ask(client, b"fingerbot", b"alice")
        self.assertTrue(reply.endswith(b"PRIVMSG carol :Status of alice: Happy and well"), reply)
        reply = self.ask(client, b"fingerbot", b"evil")     # one harmless line
        self.assertTrue(reply.endswith(b"PRIVMSG carol :Status of evil: xQUIT :x"), reply)
        reply = self.ask(client, b"fingerbot", b"evil2")    # LF is a line break: two lines
        self.assertTrue(reply.endswith(b"PRIVMSG carol :Status of evil2: y"), reply)
        self.assertTrue(client.expect(b":fingerbot!").endswith(b"PRIVMSG carol :QUIT :y"))
        self.assertTrue(bot.connected.is_set())          # the injection did not QUIT it
        for restart in range(10):
            self.stop_ircd()
            self.assertTrue(self.wait_for(lambda: not bot.connected.is_set()), restart)
            self.start_ircd()
            self.assertTrue(bot.connected.wait(TIMEOUT), "no reconnect after restart %d"
                            % (restart + 1))
            client = self.client(b"carol%d" % restart)
            reply = self.ask(client, b"fingerbot", b"alice")
            self.assertIn(b"Status of alice: Happy and well", reply)
        self.assertEqual(bot.connects, 11)

    def test_nick_in_use_on_a_real_server(self):
        """ngircd allows 9-character nicks, as RFC 1459: fingerbot_ is too long."""
        self.client(b"fingerbot")                         # someone has the nick
        store = fingerd.MemoryStore(statuses={"alice": Status("Happy and well", 1.0)})
        bot = fingerd.IRCBot(store, "127.0.0.1", self.port, backoff=fingerd.Backoff(0.1))
        bot.start()
        self.addCleanup(bot.stop)
        self.assertTrue(bot.connected.wait(TIMEOUT))
        self.assertEqual(bot.nick, "fingerbo_")
        reply = self.ask(self.client(b"dave"), b"fingerbo_", b"alice")
        self.assertIn(b"Status of alice: Happy and well", reply)

    def test_from_the_command_line(self):
        users = write_file(os.path.join(self.dir, "users"), "alice: Happy and well\n")
        daemon = Daemon(self, "--backend", "file", "--users-file", users,
                        "--irc", "127.0.0.1:%d" % self.port, "--irc-nick", "fbot",
                        "--irc-channel", "#fingerd")
        self.assertTrue(daemon.wait_for_log("irc: registered"), daemon.log)
        client = self.client(b"erin")
        client.send(b"JOIN #fingerd")
        client.expect(b":erin!")
        client.send(b"PRIVMSG #fingerd :!finger alice")
        self.assertTrue(client.expect(b":fbot!").endswith(
            b"PRIVMSG #fingerd :Status of alice: Happy and well"))
        daemon.signal(signal.SIGTERM)
        self.assertEqual(daemon.wait(), 0)

    def wait_for(self, predicate, timeout=TIMEOUT):
        return wait_for(predicate, timeout)


if __name__ == "__main__":
    unittest.main()
