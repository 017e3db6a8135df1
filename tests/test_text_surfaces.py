"""Text that survives every surface: XML-illegal characters, legacy encodings, real finger
and telnet clients, IRC encodings and floods, GECOS (issue 14).

Each numbered reproduction of the issue is a test here; then the failures other servers had
with the same kinds of text, from public bug reports (named in each test); then a seeded
property test sending 2,000 random statuses through the setter and reading them back on
every surface.
"""
import html
import http.client
import json
import os
import pwd
import random
import re
import shutil
import subprocess
import threading
import unittest
import xml.etree.ElementTree as ET
import xmlrpc.client
import xmlrpc.server

from support import (Daemon, TIMEOUT, command, fingerd, query, serve, skip_unless_port_79_free,
                     temp_dir, write_file)
from test_backends import FakeAccounts, process_store
from test_irc import MeanRandom, ScriptedServer

Status = fingerd.Status
ATOM = "{http://www.w3.org/2005/Atom}"


def servers(test, store, public_url=""):
    """In-process finger, setter and web listeners on port 0 over one store."""
    finger = serve(test, fingerd.FingerServer(("127.0.0.1", 0), store))
    setter = serve(test, fingerd.SetterServer(("127.0.0.1", 0), store))
    web = serve(test, fingerd.WebServer(("127.0.0.1", 0), store,
                                        privacy=fingerd.Privacy(public_url=public_url)))
    return finger.port, setter.port, web.port


class Web:
    """One persistent HTTP/1.1 connection, as a browser keeps."""

    def __init__(self, test, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        test.addCleanup(self.conn.close)
        self.rpc = xmlrpc.client.ServerProxy("http://127.0.0.1:%d/RPC2" % port)
        test.addCleanup(self.rpc("close"))

    def get(self, path):
        self.conn.request("GET", path)
        response = self.conn.getresponse()
        return response.status, response.read().decode("utf-8")

    def page_status(self, user):
        """The status text of a user's page, lines joined by LF."""
        code, page = self.get("/" + user)
        match = re.search(r'<p class="status">(.*?)</p>', page, re.S)
        return html.unescape(match.group(1).replace("<br>", "\n")) if code == 200 else None

    def json_status(self, user):
        code, body = self.get("/%s.json" % user)
        return json.loads(body)["status"] if code == 200 else None

    def feed(self):
        """The Atom feed, parsed by xml.etree (an error if it is not well-formed)."""
        code, body = self.get("/feed.atom")
        assert code == 200, code
        return ET.fromstring(body.encode("utf-8"))

    def newest_entry(self):
        entry = self.feed().find(ATOM + "entry")
        return entry.find(ATOM + "content").text or ""


def printable(text):
    """What a reader sees of a text: its printable characters but spaces, in order."""
    return "".join(c for c in text if c.isprintable() and not c.isspace())


# -- 1. XML-illegal characters --------------------------------------------------------------

class XMLIllegalCharactersTest(unittest.TestCase):
    """Reproduction 1, and PyPI warehouse#5653 (\\x01 in one entry lost a whole XML-RPC list),
    supervisor#744 (NULs in readLog), twisted#3781 (ESC in an xmlrpc answer), hexo feed#35
    (\\x10 broke atom.xml), jhove#877 (a cleaner that missed U+FFFE/U+FFFF), dupeguru#170 (a
    lone surrogate crashed the XML writer)."""

    def setUp(self):
        self.store = fingerd.MemoryStore()
        self.finger, self.setter, self.http = servers(self, self.store)
        self.web = Web(self, self.http)

    def test_noncharacter_from_the_setter(self):
        reply = query(self.setter, b"alice\nwave \xef\xbf\xbe here\n", half_close=True)
        self.assertEqual(reply, b"OK\r\n")
        self.assertEqual(self.web.rpc.getUser("alice"), "wave  here")
        self.assertEqual(self.web.newest_entry(), "wave  here")
        self.assertEqual(query(self.finger, b"alice\r\n"), b"wave  here\r\n")

    def test_every_kind_of_xml_illegal_character(self):
        bad = ["\x00", "\x01", "\x08", "\x0b", "\x0c", "\x10", "\x1f", "\x7f", "\x85", "\x9c",
               "\ud800", "\udfff", "\ufdd0", "\ufdef", "\ufffe", "\uffff", "\U0001fffe",
               "\U0010ffff"]
        for number, char in enumerate(bad):
            with self.subTest(char=repr(char)):
                user = "u%d" % number
                data = ("%s\nbefore%safter\n" % (user, char)).encode("utf-8", "surrogatepass")
                self.assertEqual(query(self.setter, data, half_close=True), b"OK\r\n")
                self.assertEqual(self.web.rpc.getUser(user), "beforeafter")
                self.assertEqual(self.web.newest_entry(), "beforeafter")
                self.assertEqual(self.web.json_status(user), "beforeafter")
                self.assertEqual(self.web.page_status(user), "beforeafter")

    def test_store_seeded_directly_is_still_clean_on_the_way_out(self):
        # A backend that forgot to clean (or an older database) still cannot break XML.
        self.store.replace({"eve": Status("bad\ufffe\x00\ud800 end", 1.0)})
        self.assertEqual(self.web.rpc.getUser("eve"), "bad end")
        ET.fromstring(self.web.get("/feed.atom")[1].encode("utf-8"))
        self.assertEqual(self.web.json_status("eve"), "bad end")

    def test_xml_safe_keeps_what_xml_allows(self):
        allowed = "\t\n\r x\u00e9\ud7ff\ue000\ufffd\U00010000\U0010fffd"
        self.assertEqual(fingerd.xml_safe(allowed), allowed)


class FederationTest(unittest.TestCase):
    """Reproduction 1's front-end: an authority that puts XML-illegal text in its answers
    (here the stdlib's own SimpleXMLRPCServer, which does) loses one user's bad characters,
    never the remote or the other users."""

    def setUp(self):
        statuses = {"alice": "Happy", "bob": "wave \ufffe here", "carol": "nul\x00 and \x01",
                    "dave": "fine"}
        authority = xmlrpc.server.SimpleXMLRPCServer(("127.0.0.1", 0), logRequests=False)
        authority.register_function(lambda user: statuses.get(user, "No such user"),
                                    "getUser")
        authority.register_function(lambda: sorted(statuses), "getUsers")
        authority.register_multicall_functions()
        threading.Thread(target=authority.serve_forever, daemon=True).start()
        self.addCleanup(authority.server_close)
        self.addCleanup(authority.shutdown)
        url = "http://127.0.0.1:%d/RPC2" % authority.server_address[1]
        # The authority's answer really is not well-formed XML:
        with self.assertRaises(Exception):
            xmlrpc.client.ServerProxy(url).getUser("bob")
        self.front = fingerd.RemoteStore([url], refresh=3600, timeout=2.0)

    def test_the_list_keeps_every_user(self):
        # What XML forbids arrives as U+FFFD: the reader sees that something was there.
        self.assertEqual(dict(self.front.items()), {
            "alice": Status("Happy"), "bob": Status("wave \ufffd here"),
            "carol": Status("nul\ufffd and \ufffd"), "dave": Status("fine")})
        self.assertFalse(self.front.remotes[0].down)

    def test_single_lookups(self):
        self.assertEqual(self.front.get("bob").text, "wave \ufffd here")
        self.assertEqual(self.front.get("alice").text, "Happy")

    def test_xml_chars_only(self):
        clean = fingerd.xml_chars_only
        self.assertEqual(clean("<a>x\ufffey&#xFFFF;&#65;&#0;&#55296;\x1b[31m</a>".encode()),
                         "<a>x\ufffdy\ufffd&#65;\ufffd\ufffd</a>".encode())
        self.assertEqual(clean(b"<a>\xe9</a>"), "<a>\ufffd</a>".encode())
        latin = b'<?xml version="1.0" encoding="ISO-8859-1"?><a>\xe9</a>'
        self.assertIs(clean(latin), latin)


# -- 2, 5. Files people wrote -----------------------------------------------------------------

class FileDecodingTest(unittest.TestCase):
    """Reproductions 2 and 5; suplemon#31 and udhr#140 (Windows-1252 quotes read as C1
    controls), cpython#116310 and dulwich#875 (a BOM hid the first line), python-rtkit#52
    and dxr#631 (str.splitlines() split records on VT and FF)."""

    def test_decode_text(self):
        decode = fingerd.decode_text
        self.assertEqual(decode(b"Caf\xe9 ouvert \xe0 9h, na\xefve\n"),
                         "Caf\u00e9 ouvert \u00e0 9h, na\u00efve\n")
        self.assertEqual(decode(b"it\x92s \x93quoted\x94 \x80 5"),
                         "it\u2019s \u201cquoted\u201d \u20ac 5")
        # Undefined in Windows-1252: U+FFFD, never a C1 control (0x90 would open a DCS).
        self.assertEqual(decode(b"La fen\x90tre \x9d ok"), "La fen\ufffdtre \ufffd ok")
        self.assertEqual(decode(b"\xef\xbb\xbfalice: hi"), "alice: hi")
        self.assertEqual(decode("alice: hi".encode("utf-16")), "alice: hi")
        self.assertEqual(decode("caf\u00e9 \u20ac".encode("utf-8")), "caf\u00e9 \u20ac")

    def test_a_cut_never_splits_a_character(self):
        data = ("x" * 10 + "\u20ac").encode("utf-8")       # the euro sign is 3 bytes
        for cut in range(10, len(data)):
            with self.subTest(cut=cut):
                self.assertEqual(fingerd.decode_text(data[:cut], cut=True), "x" * 10)
        self.assertEqual(fingerd.decode_text(data, cut=True), "x" * 10 + "\u20ac")
        # Windows-1252 data cut anywhere is whole characters anyway.
        self.assertEqual(fingerd.decode_text(b"Caf\xe9 ouvert \xe0", cut=True),
                         "Caf\u00e9 ouvert \u00e0")

    def test_plan_cut_at_the_limit_keeps_whole_characters(self):
        root = temp_dir(self)
        path = os.path.join(root, ".plan")
        with open(path, "wb") as f:
            f.write(b"x" * (fingerd.PLAN_LIMIT - 1) + "\u20ac".encode() * 10)
        text, _, cut = fingerd.read_owned_file(path, os.getuid())
        self.assertTrue(cut)
        self.assertEqual(text, "x" * (fingerd.PLAN_LIMIT - 1))

    def test_users_file_with_bom_crlf_and_separators(self):
        data = ("\ufeffalice: first user\r\nbob: second\r\n"
                "eve: red alert\x0cff end\r\ncarol: a\x0bb\x85c\u2028d\u2029e\n").encode()
        with self.assertLogs("fingerd", "DEBUG") as logs:     # (assertNoLogs is 3.10+)
            fingerd.log.debug("start")
            users = fingerd.parse_users(fingerd.decode_text(data))
        self.assertEqual([r.levelname for r in logs.records], ["DEBUG"])
        self.assertEqual({u: s.text for u, s in users.items()}, {
            "alice": "first user", "bob": "second", "eve": "red alertff end",
            "carol": "abcde"})

    def test_users_file_in_windows_1252_through_the_file_backend(self):
        path = os.path.join(temp_dir(self), "users")
        with open(path, "wb") as f:
            f.write(b"\xef\xbb\xbfalice: Caf\xc3\xa9\n")     # UTF-8 with a BOM
        with open(path + "2", "wb") as f:
            f.write(b"bob: na\xefve \x93quoted\x94\r\n")     # Windows-1252, CRLF
        for users, name, text in ((path, "alice", "Caf\u00e9\r\n"),
                                  (path + "2", "bob", "na\u00efve \u201cquoted\u201d\r\n")):
            daemon = Daemon(self, "--backend", "file", "--users-file", users)
            self.assertEqual(query(daemon.ports["finger"], name.encode() + b"\r\n"),
                             text.encode("utf-8"))

    def test_arg_file_with_bom_and_crlf(self):
        path = os.path.join(temp_dir(self), "fingerd.conf")
        with open(path, "wb") as f:
            f.write(b"\xef\xbb\xbf--backend memory\r\n# comment\r\n--http off\r\n")
        daemon = Daemon(self, "@" + path)
        self.assertIn("serving with the memory backend", daemon.log)

    def test_set_at_is_a_status_not_a_file(self):
        parser = fingerd.build_parser()
        self.assertEqual(parser.parse_args(["--set", "@home by 5"]).set, "@home by 5")


class LegacyPlanTest(unittest.TestCase):
    """Reproduction 2: a Latin-1 ~/.plan on finger, the page and JSON, as netkit shows it."""

    def test_latin1_plan_on_every_surface(self):
        root = temp_dir(self)
        accounts = FakeAccounts()
        home = os.path.join(root, "alice")
        os.mkdir(home)
        with open(os.path.join(home, ".plan"), "wb") as f:
            f.write(b"Caf\xe9 ouvert \xe0 9h, na\xefve\n")
        accounts.add("alice", os.getuid(), home, "Alice")
        store = fingerd.PlanStore(refresh=3600, accounts=accounts,
                                  uids=(os.getuid(), os.getuid()))
        self.addCleanup(store.close)
        finger, _, http = servers(self, store)
        expected = "Caf\u00e9 ouvert \u00e0 9h, na\u00efve"
        self.assertEqual(query(finger, b"alice\r\n"), (expected + "\r\n").encode("utf-8"))
        web = Web(self, http)
        self.assertEqual(web.page_status("alice"), expected)
        self.assertEqual(web.json_status("alice"), expected)
        self.assertEqual(web.rpc.getUser("alice"), expected)


# -- 3. The process backend ------------------------------------------------------------------

ESCAPING_FINGER = r"""#!/bin/sh
# What Debian's finger 0.17 prints for a UTF-8 .plan: bytes 0x80-0x9F as M-^X.
printf 'Plan:\nBack at 5 \342M-^@M-^T caf\303\251 \342M-^@M-^Ytil late \342M-^B\254\n'
printf 'literal M-^@ stays\n'
"""


class ProcessBackendTest(unittest.TestCase):
    """Reproduction 3."""

    def test_escaped_utf8_is_put_back(self):
        path = write_file(os.path.join(temp_dir(self), "finger"), ESCAPING_FINGER)
        os.chmod(path, 0o755)
        store = process_store(path)
        self.assertEqual(store.get("alice").text,
                         "Plan:\nBack at 5 \u2014 caf\u00e9 \u2019til late \u20ac\n"
                         "literal M-^@ stays")

    def test_unescape_finger(self):
        self.assertEqual(fingerd.unescape_finger(b"\xe2M-^@M-^T \xc3M-^@ M-^T \xe2M-^@"),
                         b"\xe2\x80\x94 \xc3\x80 M-^T \xe2M-^@")

    def test_program_runs_in_a_utf8_locale(self):
        script = "#!/bin/sh\necho \"$LC_ALL\"\n"
        path = write_file(os.path.join(temp_dir(self), "finger"), script)
        os.chmod(path, 0o755)
        self.assertRegex(process_store(path).get("x").text, r"(?i)utf-?8")

    def test_debian_finger_with_a_real_account(self):
        if not shutil.which("finger") or not shutil.which("useradd") or os.geteuid() != 0:
            self.skipTest("needs root, useradd and Debian's finger (apt-get install finger)")
        name = "fgtext%d" % (os.getpid() % 10000)
        home = os.path.join(temp_dir(self), name)
        subprocess.run(["useradd", "-d", home, "-m", "-c", "Text Test", name], check=True)
        self.addCleanup(subprocess.run, ["userdel", name], check=False)
        plan = os.path.join(home, ".plan")
        with open(plan, "wb") as f:
            f.write("Back at 5 \u2014 caf\u00e9 \u2019til late \u20ac\n".encode("utf-8"))
        os.chown(plan, pwd.getpwnam(name).pw_uid, -1)
        status = fingerd.ProcessStore("finger").get(name)
        self.assertIn("Back at 5 \u2014 caf\u00e9 \u2019til late \u20ac", status.text)
        self.assertNotIn("M-^", status.text)


# -- 4. fingerd's own words on finger ----------------------------------------------------------

class OwnWordsTest(unittest.TestCase):
    """Reproduction 4: markers, labels, errors and time stamps are 7-bit ASCII."""

    def setUp(self):
        self.store = fingerd.MemoryStore(
            statuses={"alice": Status("Happy", 1_700_000_000.0, (("Name", "Alice"),),
                                      4_000_000_000.0),
                      "bob": Status("one\ntwo", 1_700_000_000.0)})
        self.finger = servers(self, self.store)[0]

    def test_every_reply_of_ascii_statuses_is_ascii(self):
        for line in [b"\r\n", b"/W\r\n", b"alice\r\n", b"/W alice bob\r\n", b"nobody\r\n",
                     b"a b c nobody\r\n", b"x" * 40 + b" y\r\n", b"a@b\r\n", b"x" * 2000,
                     b"/W nobody alice\r\n"]:
            with self.subTest(line=line[:40]):
                reply = query(self.finger, line)
                self.assertTrue(reply.isascii(), reply)
        self.assertIn(b"bob: one ...\r\n", query(self.finger, b"\r\n"))


@unittest.skipUnless(shutil.which("finger"), "the finger client is not installed "
                     "(apt-get install finger)")
class RealFingerClientTextTest(unittest.TestCase):
    """Reproduction 4 with Debian's finger on port 79 (it has no port option).  RFC 1288
    §3.3 lets a client escape what is not printable ASCII; Debian's finger 0.17 prints bytes
    0x80-0x9F as M-^X in any locale, so a UTF-8 status shows whole only when its bytes
    avoid that range (é à ï ö ü ñ do; — ’ € do not, and nc shows those)."""

    STATUSES = {"alice": "Happy and well", "bob": "one\ntwo\nthree",
                "carol": "caf\u00e9 \u00e0 9h, na\u00efve, \u00fcber, \u00f1and\u00fa"}

    def setUp(self):
        skip_unless_port_79_free(self)
        users = os.path.join(temp_dir(self), "users")
        write_file(users, "".join("%s: %s\n" % (u, s.replace("\n", "\\n"))
                                  for u, s in self.STATUSES.items()))
        self.daemon = Daemon(self, "--backend", "file", "--users-file", users,
                             "--finger", "127.0.0.1:79")

    def finger(self, target):
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        out = subprocess.run(["finger", target], capture_output=True, timeout=10, env=env)
        return out.stdout

    def nc(self, line):
        return query(79, line).replace(b"\r\n", b"\n")

    def test_ascii_is_byte_identical(self):
        for target, line in (("@127.0.0.1", b"\r\n"), ("alice@127.0.0.1", b"alice\r\n"),
                             ("bob@127.0.0.1", b"bob\r\n"),
                             ("nobody@127.0.0.1", b"nobody\r\n")):
            with self.subTest(target=target):
                shown = self.finger(target)
                self.assertEqual(shown, self.nc(line))
                self.assertTrue(target.startswith("@") or shown.isascii())
        self.assertIn(b"bob: one ...\n", self.finger("@127.0.0.1"))

    def test_utf8_shows_as_utf8(self):
        shown = self.finger("carol@127.0.0.1")
        self.assertEqual(shown.decode("utf-8"), self.STATUSES["carol"] + "\n")


# -- 6. Telnet ---------------------------------------------------------------------------------

class TelnetTest(unittest.TestCase):
    """Reproduction 6; RFC 742 and the BUGS of BSD in.fingerd(8) ("should be taught to
    filter out IAC's"), go3270#4 (IAC NOP mid-line read as data), node-telnet#8 (IAC IAC
    dropped with what came before it)."""

    def setUp(self):
        self.store = fingerd.MemoryStore(statuses={"alice": Status("Happy and well", 1.0),
                                                   "bob": Status("Busy", 1.0)})
        self.finger, self.setter, _ = servers(self, self.store)

    def test_negotiation_is_not_a_user(self):
        plain = query(self.finger, b"alice\r\n")
        self.assertEqual(plain, b"Happy and well\r\n")
        for data in [b"\xff\xfd\x03\xff\xfb\x18alice\r\n",              # the issue's
                     b"\xff\xfd\x18\xff\xfb\x1falice\r\n",              # DO TTYPE, WILL NAWS
                     b"\xff\xfa\x18\x00xterm-256color\xff\xf0alice\r\n",  # SB TTYPE IS ... SE
                     b"\xff\xfa\x1f\x00\x50\x00\x18\xff\xf0\xff\xfb\x01alice\r\n",
                     b"ali\xff\xf1ce\r\n",                              # IAC NOP mid-line
                     b"alice\r\x00\r\n",                                # CR NUL (inetutils)
                     b"alice\xff\xf1\r\n", b"\xff\xfc\x01\xff\xfe\x01alice\n"]:
            with self.subTest(data=data):
                self.assertEqual(query(self.finger, data), plain)

    def test_iac_iac_is_a_data_byte(self):
        self.assertEqual(fingerd.strip_telnet(b"a\xff\xffb"), b"a\xffb")
        self.assertEqual(query(self.finger, b"\xff\xffalice\r\n"), b"No such user\r\n")

    def test_verbose_query_through_telnet(self):
        self.assertEqual(query(self.finger, b"\xff\xfd\x03/W alice\r\n"),
                         query(self.finger, b"/W alice\r\n"))

    def test_inetd_mode(self):
        out = subprocess.run(
            command("--inetd", "--backend", "memory"),
            input=b"\xff\xfd\x03\xff\xfb\x18nobody\r\n", capture_output=True, timeout=10)
        self.assertEqual(out.stdout, b"No such user\r\n")

    def test_setter_through_telnet(self):
        reply = query(self.setter, b"\xff\xfd\x03\xff\xfb\x18bob\r\nat lunch\r\n",
                      half_close=True)
        self.assertEqual(reply, b"OK\r\n")
        self.assertEqual(self.store.get("bob").text, "at lunch")

    @unittest.skipUnless(shutil.which("telnet"), "no telnet client "
                         "(apt-get install inetutils-telnet)")
    def test_real_telnet_client(self):
        for typed in ("alice\\r\\n", "alice\\n"):
            with self.subTest(typed=typed):
                out = subprocess.run(
                    ["sh", "-c", "(printf '%s'; sleep 1) | telnet 127.0.0.1 %d"
                     % (typed, self.finger)], capture_output=True, timeout=10)
                self.assertIn(b"\nHappy and well\n", out.stdout.replace(b"\r", b""))
                self.assertNotIn(b"No such user", out.stdout)


# -- 7. IRC --------------------------------------------------------------------------------

class IRCTextTest(unittest.TestCase):
    """Reproduction 7; irc3#191, matterbridge#40, Slack-IRC-Gateway#7 (a long message sent
    as a burst of lines, then "Excess Flood"); KiwiIRC#580 and node-irc#507 (cut inside a
    character, lengths counted in characters); weechat#832/#451, cinch#173 and irssi#55
    (a CP1251 or Latin-1 channel or nick answered under other bytes); jaraco/irc#40 (an
    undecodable line ended the bot's session)."""

    def setUp(self):
        self.store = fingerd.MemoryStore(
            statuses={"alice": Status("Happy", 1.0),
                      "long": Status("word " * 1000, 1.0),               # 5 KB
                      "wide": Status("\u20ac\u00e9" * 1500, 1.0),
                      "lines": Status("\n".join("line %d" % i for i in range(50)), 1.0)})
        self.server = ScriptedServer(self)

    def bot(self, **kw):
        kw.setdefault("backoff", fingerd.Backoff(initial=0.05, rng=MeanRandom()))
        bot = fingerd.IRCBot(self.store, "127.0.0.1", self.server.port, channels=["#tilde"],
                             send_rate=1000.0, send_burst=100, **kw)
        bot.start()
        self.addCleanup(bot.stop)
        client = self.server.accept()
        client.welcome()
        client.expect(b"JOIN #tilde")
        return client

    def answer(self, client, ask, target=b"carol"):
        client.send(b":carol!c@h PRIVMSG fingerbot :" + ask)
        lines = [client.expect(b"PRIVMSG " + target + b" :")]
        return lines + client.quiet(0.5)

    def test_a_long_status_is_at_most_four_lines(self):
        client = self.bot()
        for user in (b"long", b"wide", b"lines"):
            with self.subTest(user=user):
                lines = self.answer(client, user)
                self.assertEqual(len(lines), fingerd.IRC_REPLY_LINES, lines)
                for line in lines:
                    self.assertLessEqual(len(line) + 2 + fingerd.IRC_RELAY_PREFIX, 512)
                    line.decode("utf-8")                  # never cut inside a character
                self.assertTrue(lines[-1].decode().endswith(" \u2026"), lines[-1][-20:])

    def test_the_cut_links_the_page_with_public_url(self):
        client = self.bot(privacy=fingerd.Privacy(public_url="https://finger.example.org/"))
        lines = self.answer(client, b"long")
        self.assertEqual(len(lines), 4)
        self.assertTrue(lines[-1].endswith(" \u2026 https://finger.example.org/long".encode()),
                        lines[-1][-60:])
        self.assertEqual(self.answer(client, b"alice"), [b"PRIVMSG carol :Status of alice: Happy"])

    def test_legacy_channel_and_nick_are_answered_on_their_own_bytes(self):
        client = self.bot()
        channel = "#\u0442\u0435\u0441\u0442".encode("cp1251")          # #тест in CP1251
        client.send(b":carol!c@h PRIVMSG " + channel + b" :!finger alice")
        self.assertEqual(client.expect(b"PRIVMSG #"),
                         b"PRIVMSG " + channel + b" :Status of alice: Happy")
        nick = "J\u00fcrgen".encode("latin-1")
        client.send(b":" + nick + b"!j@h PRIVMSG fingerbot :alice")
        self.assertEqual(client.expect(b"PRIVMSG J"),
                         b"PRIVMSG " + nick + b" :Status of alice: Happy")
        client.send(b":carol!c@h PRIVMSG fingerbot :Gr\xfc\xdfe")      # Latin-1 chatter
        client.send(b":carol!c@h PRIVMSG fingerbot :alice")
        self.assertEqual(client.expect(b"PRIVMSG carol"),
                         b"PRIVMSG carol :Status of alice: Happy")


# -- GECOS --------------------------------------------------------------------------------------

class GecosTest(unittest.TestCase):
    """finger(1) and passwd(5): lightdm#357 ('&' not expanded), whoami#23 and
    SparkleShare#79 ('Aron,,,' shown with its commas)."""

    def test_fields(self):
        details = fingerd.gecos_details
        self.assertEqual(details("User &,Rm 12,555-1234,555-9876", "bob"),
                         [("Name", "User Bob"), ("Office", "Rm 12, 555-1234"),
                          ("Home Phone", "555-9876")])
        self.assertEqual(details("Aron,,,", "aron"), [("Name", "Aron")])
        self.assertEqual(details("", "x"), [])
        self.assertEqual(details(",,555-1234", "x"), [("Office Phone", "555-1234")])
        self.assertEqual(details("A,B & C", "x"), [("Name", "A"), ("Office", "B & C")])

    def test_legacy_bytes(self):
        gecos = os.fsdecode(b"Ren\xe9 Fran\xe7ois,,,")     # as pwd gives Latin-1 bytes
        self.assertEqual(fingerd.gecos_details(gecos, "rene"),
                         [("Name", "Ren\u00e9 Fran\u00e7ois")])


# -- What an outsider found next (each once a defect) --------------------------------------------

class EdgesTest(unittest.TestCase):
    def setUp(self):
        self.store = fingerd.MemoryStore(statuses={"alice": Status("Happy and well", 1.0)})
        self.finger, self.setter, self.http = servers(self, self.store)

    def test_telnet_character_mode_return_ends_the_line(self):
        # inetutils telnet after "mode character": Return is CR NUL, no LF follows.
        self.assertEqual(query(self.finger, b"\xff\xfd\x03\xff\xfd\x01alice\r\x00"),
                         b"Happy and well\r\n")
        reply = query(self.setter, b"\xff\xfd\x03\xff\xfd\x01bob\r\x00char mode\r\x00",
                      half_close=True)
        self.assertEqual(reply, b"OK\r\n")
        self.assertEqual(self.store.get("bob").text, "char mode")

    def test_telnet_commands_236_to_239(self):
        for command_byte in b"\xec\xed\xee\xef":
            data = b"alice\xff" + bytes((command_byte,)) + b"\r\n"
            self.assertEqual(query(self.finger, data), b"Happy and well\r\n", data)

    def test_cesu8_zwj_zwnj_flags_and_tags(self):
        cases = [(b"\xed\xa0\xbd\xed\xb8\x80 smile", "\U0001f600 smile"),     # CESU-8
                 ("\U0001f468\u200d\U0001f469\u200d\U0001f467".encode(),
                  "\U0001f468\u200d\U0001f469\u200d\U0001f467"),             # ZWJ family
                 ("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645".encode(),
                  "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"),    # ZWNJ
                 ("\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074"
                  "\U000e007f flag".encode(),
                  "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074"
                  "\U000e007f flag"),                                        # Scotland
                 ("hi \U000e0073\U000e0065\U000e0063 there".encode(), "hi  there")]
        for number, (data, text) in enumerate(cases):
            with self.subTest(text=text):
                user = b"t%d" % number
                self.assertEqual(query(self.setter, user + b"\n" + data + b"\n",
                                       half_close=True), b"OK\r\n")
                self.assertEqual(self.store.get(user.decode()).text, text)

    def test_setter_bom_before_the_user_line(self):
        reply = query(self.setter, b"\xef\xbb\xbfcarol\nfrom notepad\n", half_close=True)
        self.assertEqual(reply, b"OK\r\n")
        self.assertEqual(self.store.get("carol").text, "from notepad")

    def test_expiry_takes_ascii_digits_only(self):
        reply = query(self.setter, "dan\nexpires: \u0661\u0662h\nx\n".encode(),
                      half_close=True)
        self.assertTrue(reply.startswith(b"ERROR bad expiry"), reply)


class FileEdgesTest(unittest.TestCase):
    def test_users_file_edges(self):
        legacy = b"mac: La fen\x90tre est ouverte, tr\x8fs bien\n"        # MacRoman
        joined = (b"\xef\xbb\xbfa: one\n\xef\xbb\xbfjoined: after a BOM mid-file\n"
                  b"path: C:\\\\new\\\\temp\nzed:\n")
        with self.assertLogs("fingerd", "WARNING") as logs:
            users = fingerd.parse_users(fingerd.decode_text(legacy))
            users.update(fingerd.parse_users(fingerd.decode_text(joined)))
        self.assertEqual({u: s.text for u, s in users.items()}, {
            "mac": "La fen\ufffdtre est ouverte, tr\ufffds bien", "a": "one",
            "joined": "after a BOM mid-file", "path": "C:\\new\\temp"})
        self.assertEqual(len(logs.records), 1)                # zed: an empty status

    def test_arg_file_keeps_a_latin1_path(self):
        directory = temp_dir(self)
        users = os.path.join(os.fsencode(directory), b"us\xe9rs")
        with open(users, "wb") as f:
            f.write(b"alice: from a Latin-1 path\n")
        conf = os.path.join(directory, "fingerd.conf")
        with open(conf, "wb") as f:
            f.write(b"--backend file\n--users-file " + users + b"\n")
        daemon = Daemon(self, "@" + conf)
        self.assertEqual(query(daemon.ports["finger"], b"alice\r\n"),
                         b"from a Latin-1 path\r\n")

    def test_process_output_is_decoded_line_by_line(self):
        script = ("#!/bin/sh\nprintf 'Name: Zo\\303\\253 \\303\\205ngstr\\303\\266m\\n"
                  "Plan:\\nCaf\\351 ouvert\\n'\n")
        path = write_file(os.path.join(temp_dir(self), "finger"), script)
        os.chmod(path, 0o755)
        self.assertEqual(process_store(path).get("u1").text,
                         "Name: Zo\u00eb \u00c5ngstr\u00f6m\nPlan:\nCaf\u00e9 ouvert")


class FederationEdgesTest(unittest.TestCase):
    def authority(self, statuses, names=None):
        server = xmlrpc.server.SimpleXMLRPCServer(("127.0.0.1", 0), logRequests=False)
        server.register_function(lambda user: statuses.get(user, "No such user"), "getUser")
        server.register_function(lambda: names or sorted(statuses), "getUsers")
        server.register_multicall_functions()
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        return "http://127.0.0.1:%d/RPC2" % server.server_address[1]

    def test_large_statuses_do_not_lose_the_remote(self):
        statuses = {"amp%02d" % i: "<" * 16384 for i in range(70)}     # 5.6 MB as XML
        statuses["alice"] = "normal status"
        front = fingerd.RemoteStore([self.authority(statuses)], refresh=3600, timeout=5)
        items = dict(front.items())
        self.assertEqual(len(items), 71)
        self.assertEqual(items["amp69"].text, "<" * 16384)
        self.assertFalse(front.remotes[0].down)

    def test_a_name_with_a_forbidden_character_is_not_another_name(self):
        url = self.authority({"alice": "Happy", "evil\ufffe": "x"},
                             names=["alice", "evil\ufffe"])
        front = fingerd.RemoteStore([url], refresh=3600, timeout=5)
        self.assertEqual(front.users(), ["alice"])

    def test_no_escape_residue(self):
        front = fingerd.RemoteStore([self.authority({"c": "ctrl \x01\x1b[31m red"})],
                                    refresh=3600, timeout=5)
        self.assertEqual(front.get("c").text, "ctrl \ufffd red")


# -- The property --------------------------------------------------------------------------------

SURROGATE_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")
ESCAPE_INTRODUCERS = "\x1b\x90\x98\x9b\x9d\x9e\x9f"    # they remove what follows, by design


def random_status(rng):
    """A status drawn from all of Unicode: ASCII, Latin-1, any BMP or astral code point,
    noncharacters, surrogates, controls, bidi and other format characters, line breaks."""
    pools = [
        lambda: chr(rng.randrange(0x20, 0x7f)),
        lambda: chr(rng.randrange(0xa0, 0x100)),
        lambda: chr(rng.randrange(0x100, 0xd800)),
        lambda: chr(rng.randrange(0xe000, 0x10000)),
        lambda: chr(rng.randrange(0x10000, 0x110000)),
        lambda: rng.choice("\ufdd0\ufdef\ufffe\uffff\U0001fffe\U0010ffff"),
        lambda: chr(rng.randrange(0xd800, 0xe000)),
        lambda: chr(rng.choice([c for c in range(0x00, 0x20)] + list(range(0x7f, 0xa0)))),
        lambda: rng.choice("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068"
                           "\u2069\u061c\u200b\ufeff\u2028\u2029\u00ad"),
        lambda: rng.choice(["\n", "\r\n", "\t", " "]),
    ]
    weights = [30, 8, 10, 6, 8, 3, 3, 6, 4, 6]
    length = rng.randrange(1, 120)
    chars = [rng.choices(pools, weights)[0]() for _ in range(length)]
    text = "".join(c for c in chars if c not in ESCAPE_INTRODUCERS)
    return text if text.strip() else text + "x"


class PropertyTest(unittest.TestCase):
    """2,000 random statuses through the setter, read back through finger, the page, JSON,
    XML-RPC (xmlrpc.client), the Atom feed (xml.etree) and IRC: every surface parses, and
    every printable character that went in comes out, in order."""

    ROUNDS = 2000

    def test_random_statuses_on_every_surface(self):
        rng = random.Random(1288)
        store = fingerd.MemoryStore()
        finger, setter, http = servers(self, store)
        web = Web(self, http)
        irc = ScriptedServer(self)
        bot = fingerd.IRCBot(store, "127.0.0.1", irc.port, send_rate=1e6, send_burst=1000,
                             backoff=fingerd.Backoff(initial=0.05, rng=MeanRandom()))
        bot.start()
        self.addCleanup(bot.stop)
        client = irc.accept()
        client.welcome()
        refused = 0
        for round_number in range(self.ROUNDS):
            status = random_status(rng)
            data = ("prop\n" + status + "\n").encode("utf-8", "surrogatepass")
            # Two surrogates in a row that make a pair are CESU-8 for one astral character,
            # and are read as that character (Java, MySQL 'utf8').
            status = SURROGATE_PAIR.sub(lambda m: m.group().encode(
                "utf-16-le", "surrogatepass").decode("utf-16-le"), status)
            reply = query(setter, data, half_close=True)
            expected = printable(status)
            if reply != b"OK\r\n":
                # Only a status with nothing a reader could see is refused.
                self.assertTrue(reply.startswith(b"ERROR empty status"), (reply, status))
                self.assertEqual(expected, "", repr(status))
                refused += 1
                continue
            surfaces = {}
            answer = query(finger, b"prop\r\n")
            self.assertTrue(answer.endswith(b"\r\n"))
            surfaces["finger"] = answer.decode("utf-8")
            surfaces["page"] = web.page_status("prop")
            surfaces["json"] = web.json_status("prop")
            surfaces["xmlrpc"] = web.rpc.getUser("prop")
            surfaces["atom"] = web.newest_entry()
            for name, text in surfaces.items():
                self.assertEqual(printable(text), expected,
                                 "%s, round %d: %r" % (name, round_number, status))
            client.send(b":carol!c@h PRIVMSG fingerbot :prop\r\n"
                        b":carol!c@h PRIVMSG fingerbot :zzend")
            said = []
            while True:
                line = client.expect(b"PRIVMSG carol :")
                if line == b"PRIVMSG carol :Status of zzend: No such user":
                    break
                said.append(line.decode("utf-8")[len("PRIVMSG carol :"):])
            self.assertLessEqual(len(said), fingerd.IRC_REPLY_LINES)
            shown = printable("".join(said))[len("Statusofprop:"):]
            if said[-1].endswith(" \u2026") and not expected.startswith(shown):
                self.assertTrue(expected.startswith(shown[:-1]),
                                "irc, round %d: %r" % (round_number, status))
            else:
                self.assertEqual(shown, expected, "irc, round %d: %r" % (round_number, status))
        self.assertLess(refused, self.ROUNDS // 20)


if __name__ == "__main__":
    unittest.main()
