"""Privacy that holds on every surface (issue 15): --no-list, --show, .nofinger failing
closed, root and system accounts, WebFinger's domains and spellings, Atom ids, faults.

Cases from public bug reports, named in each test: Shaarli#199 and Friendica#4477 (a hide
option that the feed ignored), ffingerd(8) (.nofinger assumed absent when it cannot be
seen), Mastodon#16085 (hidden and unknown told apart), OpenSSH CVE-2018-15473 and
Rancher#15435 (timing), vutuv#1191, GoToSocial#236, BookWyrm#1335, goldfinger#16, Fedify#218,
GoToSocial#3133, Pixelfed#5068, Bridgy Fed#1025, Mastodon#13757 (WebFinger spellings and
authority), cetacean#230 (a tag id built from the request's Host), kobo#69 (faults that
show Python's internals).
"""
import contextlib
import errno
import io
import http.client
import json
import os
import pwd
import re
import shutil
import statistics
import subprocess
import time
import unittest
import unittest.mock
import xml.etree.ElementTree as ET
import xmlrpc.client

from support import Daemon, TIMEOUT, fingerd, query, serve, temp_dir, write_file
from test_backends import FakeAccounts

Status = fingerd.Status
ATOM = "{http://www.w3.org/2005/Atom}"


def get(port, path, host="localhost", headers=()):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def without_date(headers):
    return {k: v for k, v in headers.items() if k.lower() != "date"}


class rpc:
    """One XML-RPC call per attribute access, its connection closed after."""

    def __init__(self, port):
        self.url = "http://127.0.0.1:%d/RPC2" % port

    def __getattr__(self, name):
        def call(*args):
            with xmlrpc.client.ServerProxy(self.url) as proxy:
                method = proxy
                for part in name.split("."):
                    method = getattr(method, part)
                return method(*args)
        return call


def memory_store():
    alice = Status("Happy and well", 1_700_000_000.0,
                   (("Name", "Alice L"), ("Office", "Rm 1, 555"), ("Project", "Wonderland"),
                    ("PGP key", "KEY")), 4_000_000_000.0)
    bob = Status("one\ntwo", 1_700_000_100.0)
    store = fingerd.MemoryStore(statuses={"alice": alice, "bob": bob})
    store.changes.extend([("alice", alice, 1_700_000_000.0), ("bob", bob, 1_700_000_100.0)])
    return store


def web_and_finger(test, store, privacy):
    web = serve(test, fingerd.WebServer(("127.0.0.1", 0), store, privacy=privacy))
    finger = serve(test, fingerd.FingerServer(("127.0.0.1", 0), store, privacy))
    return web.port, finger.port


# -- Reproduction 1: --no-list on every surface ------------------------------------------------

class NoListTest(unittest.TestCase):
    """--no-list turns off every enumeration, one surface at a time; single users work."""

    def setUp(self):
        self.http, self.finger = web_and_finger(self, memory_store(),
                                                fingerd.Privacy(listing=False))

    def test_finger_list(self):
        self.assertEqual(query(self.finger, b"\r\n"), b"Finger online user list denied\r\n")
        self.assertEqual(query(self.finger, b"/W\r\n"), b"Finger online user list denied\r\n")
        self.assertEqual(query(self.finger, b"alice\r\n"), b"Happy and well\r\n")

    def test_html_index(self):
        code, _, body = get(self.http, "/")
        self.assertEqual(code, 403)
        self.assertIn(b"not published", body)
        self.assertNotIn(b"alice", body)
        self.assertNotIn(b"feed.atom", body)

    def test_users_json(self):
        code, headers, body = get(self.http, "/users.json")
        self.assertEqual(code, 403)
        self.assertTrue(headers["Content-Type"].startswith("application/json"))
        self.assertNotIn("alice", json.loads(body)["error"])

    def test_atom_feed(self):
        code, _, body = get(self.http, "/feed.atom")
        self.assertEqual(code, 403)
        self.assertNotIn(b"alice", body)

    def test_xmlrpc_get_users(self):
        with self.assertRaises(xmlrpc.client.Fault) as caught:
            rpc(self.http).getUsers()
        self.assertIn("not published", caught.exception.faultString)
        self.assertEqual(rpc(self.http).getUser("alice"), "Happy and well")

    def test_links_that_would_enumerate(self):
        code, _, page = get(self.http, "/alice")
        self.assertEqual(code, 200)
        self.assertNotIn(b"feed.atom", page)
        self.assertNotIn(b"All users", page)
        _, _, missing = get(self.http, "/nobody")
        self.assertNotIn(b"All users", missing)
        code, _, body = get(self.http, "/.well-known/webfinger?resource=acct:alice@localhost")
        self.assertEqual(code, 200)
        self.assertNotIn("feed.atom", body.decode())
        self.assertEqual(json.loads(get(self.http, "/alice.json")[2])["name"], "alice")

    def test_from_the_command_line(self):
        daemon = Daemon(self, "--backend", "memory", "--no-list", "--http", "127.0.0.1:0")
        self.assertEqual(query(daemon.ports["finger"], b"\r\n"),
                         b"Finger online user list denied\r\n")
        for path in ("/", "/users.json", "/feed.atom"):
            self.assertEqual(get(daemon.ports["http"], path)[0], 403, path)


# -- --show -------------------------------------------------------------------------------------

class ShowTest(unittest.TestCase):
    """RFC 1288 §3.2.5: --show FIELDS releases only those atoms, on every surface."""

    def surfaces(self, show):
        http, finger = web_and_finger(self, memory_store(), fingerd.Privacy(show=show))
        return http, finger

    def test_status_only(self):
        http, finger = self.surfaces({"status"})
        verbose = query(finger, b"/W alice\r\n").decode()
        self.assertEqual(verbose, "Login: alice\r\nHappy and well\r\n")
        code, headers, page = get(http, "/alice")
        self.assertNotIn("Last-Modified", headers)
        self.assertNotIn(b"Alice L", page)
        self.assertNotIn(b"<time", page)
        document = json.loads(get(http, "/alice.json")[2])
        self.assertIsNone(document["set_at"])
        self.assertIsNone(document["expires_at"])
        self.assertEqual(get(http, "/feed.atom")[0], 403)     # a timeline needs set times
        self.assertEqual(get(http, "/")[0], 200)

    def test_name_and_times_without_status(self):
        http, finger = self.surfaces({"name", "set-time"})
        verbose = query(finger, b"/W alice\r\n").decode()
        self.assertIn("Name: Alice L\r\n", verbose)
        self.assertIn("Set: 2023-11-14", verbose)
        self.assertNotIn("Happy", verbose)
        self.assertNotIn("Wonderland", verbose)
        self.assertNotIn("Rm 1", verbose)
        self.assertEqual(rpc(http).getUser("alice"), "")
        feed = ET.fromstring(get(http, "/feed.atom")[2])
        self.assertNotIn("Happy", ET.tostring(feed).decode())

    def test_command_line(self):
        parser = fingerd.build_parser()
        self.assertEqual(parser.parse_args(["--show", "status, Name"]).show,
                         frozenset({"status", "name"}))
        self.assertEqual(parser.parse_args([]).show, frozenset(fingerd.ATOMS))
        with self.assertRaises(SystemExit), contextlib.redirect_stderr(io.StringIO()) as err:
            parser.parse_args(["--show", "status,shoe-size"])
        self.assertIn("expected a comma list of status,name", err.getvalue())


# -- Reproductions 2 and 3: .nofinger fails closed; root and system accounts -------------------

class PlanPrivacyTestCase(unittest.TestCase):
    uid = os.getuid()

    def setUp(self):
        self.root = temp_dir(self)
        self.accounts = FakeAccounts()

    def account(self, name, home=None, uid=None, plan=None, nofinger=False):
        home = home or os.path.join(self.root, name)
        os.makedirs(home, exist_ok=True)
        self.accounts.add(name, self.uid if uid is None else uid, home)
        if plan is not None:
            write_file(os.path.join(home, ".plan"), plan)
        if nofinger:
            write_file(os.path.join(home, ".nofinger"), "")
        return home

    def store(self, uids=None):
        store = fingerd.PlanStore(refresh=3600, accounts=self.accounts,
                                  uids=uids or (self.uid, self.uid))
        self.addCleanup(store.close)
        return store


class FailClosedTest(PlanPrivacyTestCase):
    """ffingerd(8) and ansible#7374: an opt-out that cannot be seen is not an opt-in."""

    def test_errors_that_hide(self):
        self.account("alice", plan="visible\n")
        loop = os.path.join(self.root, "loop")
        os.symlink(loop, loop)                                        # ELOOP
        self.accounts.add("eve", self.uid, loop)
        self.accounts.add("mallory", self.uid, "/" + "x" * 300)      # ENAMETOOLONG
        self.accounts.add("nul", self.uid, "/tmp/a\0b")                # ValueError
        store = self.store()
        self.assertEqual(store.get("alice").text, "visible")
        for name in ("eve", "mallory", "nul"):
            self.assertIsNone(store.get(name), name)
        self.assertEqual([name for name, _ in store.items()], ["alice"])

    def test_eio_and_estale(self):
        self.account("dave", plan="secret plans\n")
        store = self.store()
        real_lstat = os.lstat
        for code in (errno.EIO, errno.ESTALE, errno.EACCES):
            def failing(path, *args, **kw):
                if path.endswith(".nofinger"):
                    raise OSError(code, os.strerror(code), path)
                return real_lstat(path, *args, **kw)
            with self.subTest(errno=errno.errorcode[code]):
                store.policy._unsure.clear()
                with unittest.mock.patch.object(fingerd.os, "lstat", failing):
                    with self.assertLogs("fingerd", "DEBUG") as logs:
                        self.assertIsNone(store.get("dave"))
                        self.assertIsNone(store.get("dave"))
                        store.refresh()
                        self.assertEqual(store.items(), [])
                said = [r.getMessage() for r in logs.records if "dave is hidden" in r.getMessage()]
                self.assertEqual(len(said), 1, said)                 # once per account
        self.assertEqual(store.get("dave").text, "secret plans")   # seen again when it can be

    @unittest.skipIf(os.geteuid() == 0, "root reads files whatever their mode")
    def test_an_unreadable_plan_is_not_published(self):
        home = self.account("ned", plan="private\n")
        os.chmod(os.path.join(home, ".plan"), 0)
        self.assertEqual(self.store().items(), [])

    @unittest.skipIf(os.geteuid() == 0, "root can enter any directory")
    def test_unreadable_home(self):
        locked = os.path.join(self.root, "locked")
        home = self.account("dave", home=os.path.join(locked, "dave"), plan="x\n",
                            nofinger=True)
        os.chmod(locked, 0)
        self.addCleanup(os.chmod, locked, 0o700)
        self.assertTrue(home)
        self.assertIsNone(self.store().get("dave"))


class SystemAccountTest(PlanPrivacyTestCase):
    """Reproduction 3: root and system accounts answer only while they publish a plan."""

    def test_outside_the_uid_range(self):
        # Our uid owns the files; the range leaves it out, so these are system accounts.
        self.account("root", plan="maintenance Tuesday 06:00 UTC\n")
        self.account("daemon")                        # no plan
        self.account("nobody", plan="x\n", nofinger=True)
        store = self.store(uids=(self.uid + 1, self.uid + 5))
        self.assertEqual(store.get("root").text, "maintenance Tuesday 06:00 UTC")
        self.assertIsNone(store.get("daemon"))
        self.assertIsNone(store.get("nobody"))
        self.assertEqual([name for name, _ in store.items()], ["root"])

    def test_ordinary_accounts_answer_without_a_plan(self):
        self.account("bob")
        self.assertEqual(self.store().get("bob").text, fingerd.NO_PLAN)


@unittest.skipUnless(os.geteuid() == 0 and shutil.which("useradd"),
                     "needs root and useradd: real accounts, fingerd as nobody")
class RealAccountsTest(unittest.TestCase):
    """Reproductions 2 and 3 as the issue ran them: real accounts, fingerd --user nobody."""

    def useradd(self, name, *args):
        subprocess.run(["useradd", *args, name], check=True, capture_output=True)
        self.addCleanup(subprocess.run, ["userdel", name], capture_output=True)
        return pwd.getpwnam(name)

    def owned_file(self, account, name, text, mode):
        path = os.path.join(account.pw_dir, name)
        write_file(path, text)
        os.chown(path, account.pw_uid, account.pw_gid)
        os.chmod(path, mode)

    def test_as_nobody(self):
        base = temp_dir(self)
        os.chmod(base, 0o755)
        tag = "%d" % (os.getpid() % 10000)
        dave = self.useradd("pdave" + tag, "-m", "-d", os.path.join(base, "dave"),
                            "-c", "Dave Private")
        self.owned_file(dave, ".plan", "my plan\n", 0o644)
        self.owned_file(dave, ".nofinger", "", 0o644)
        os.chmod(dave.pw_dir, 0o700)
        carol = self.useradd("pcarol" + tag, "-m", "-d", os.path.join(base, "carol"))
        self.owned_file(carol, ".plan", "carol's plan\n", 0o644)
        os.chmod(carol.pw_dir, 0o711)
        system = self.useradd("psys" + tag, "-r", "-m", "-d", os.path.join(base, "sys"))
        self.owned_file(system, ".plan", "maintenance Tuesday 06:00 UTC\n", 0o644)
        os.chmod(system.pw_dir, 0o711)
        nosys = self.useradd("pnosys" + tag, "-r", "-m", "-d", os.path.join(base, "nosys"))
        daemon = Daemon(self, "--backend", "pwd", "--user", "nobody", "--http", "127.0.0.1:0")
        finger, http = daemon.ports["finger"], daemon.ports["http"]
        unknown = query(finger, b"/W nosuchuser42\r\n")
        self.assertEqual(unknown, b"No such user\r\n")
        self.assertEqual(query(finger, ("/W %s\r\n" % dave.pw_name).encode()), unknown)
        self.assertEqual(get(http, "/" + dave.pw_name)[0], 404)
        self.assertIn(b"carol's plan", query(finger, carol.pw_name.encode() + b"\r\n"))
        self.assertEqual(query(finger, system.pw_name.encode() + b"\r\n"),
                         b"maintenance Tuesday 06:00 UTC\r\n")
        self.assertEqual(query(finger, nosys.pw_name.encode() + b"\r\n"), unknown)
        listing = query(finger, b"\r\n").decode()
        self.assertIn(system.pw_name + ":", listing)
        self.assertNotIn(dave.pw_name, listing)
        self.assertNotIn(nosys.pw_name, listing)


# -- Hidden is indistinguishable from unknown ---------------------------------------------------

class IndistinguishableTest(PlanPrivacyTestCase):
    """Mastodon#16085 (different answers), CVE-2018-15473 and Rancher#15435 (timing)."""

    def setUp(self):
        super().setUp()
        self.account("alice", plan="Happy\n")
        self.account("hidden", plan="secret\n", nofinger=True)
        store = self.store()
        self.http, self.finger = web_and_finger(self, store, fingerd.PUBLIC)

    def test_same_answer_on_every_surface(self):
        for query_line in (b"%s\r\n", b"/W %s\r\n", b"alice %s\r\n"):
            with self.subTest(query=query_line):
                # (several names: each is echoed, as asked; nothing else differs)
                self.assertEqual(query(self.finger, query_line % b"hidden"),
                                 query(self.finger, query_line % b"nobody").replace(
                                     b"nobody", b"hidden"))
        for path in ("/%s", "/%s.json", "/.well-known/webfinger?resource=acct:%s@localhost"):
            with self.subTest(path=path):
                hidden = get(self.http, path % "hidden")
                unknown = get(self.http, path % "nobody")
                self.assertEqual(hidden[0], 404)
                self.assertEqual((hidden[0], without_date(hidden[1]), hidden[2]),
                                 (unknown[0], without_date(unknown[1]), unknown[2]))
        self.assertEqual(rpc(self.http).getUser("hidden"), rpc(self.http).getUser("nobody"))

    def test_the_name_service_is_asked_once_per_name(self):
        # A miss costs the name service far more than a hit; asked once and kept, the
        # difference cannot be measured by asking again and again.
        for name in ("hidden", "nobody", "alice"):
            for _ in range(5):
                query(self.finger, name.encode() + b"\r\n")
        # (The list's enumeration found alice and hidden already: they are not asked.)
        asked = self.accounts.asked
        self.assertEqual(asked.count("nobody"), 1, asked)
        self.assertTrue(all(asked.count(name) <= 1 for name in asked), asked)

    def test_no_timing_difference(self):
        times = {"hidden": [], "nobody": []}
        for _ in range(200):
            for name in times:
                start = time.perf_counter()
                query(self.finger, name.encode() + b"\r\n")
                times[name].append(time.perf_counter() - start)
        hidden, unknown = (statistics.median(times[n]) for n in ("hidden", "nobody"))
        spread = statistics.median(abs(t - unknown) for t in times["nobody"])
        self.assertLess(abs(hidden - unknown), max(3 * spread, 0.0002),
                        "hidden %.3f ms, unknown %.3f ms" % (hidden * 1e3, unknown * 1e3))


# -- Reproduction 4: WebFinger's domains and spellings -------------------------------------------

class WebFingerTest(unittest.TestCase):
    def setUp(self):
        store = memory_store()
        self.http = serve(self, fingerd.WebServer(
            ("127.0.0.1", 0), store,
            privacy=fingerd.Privacy(domains=["tilde.example", "b\u00fccher.example"]))).port

    def finger(self, resource, host="finger.example.org:8000"):
        return get(self.http, "/.well-known/webfinger?resource=" + resource, host=host)

    def test_other_domains_are_404(self):
        for resource in ("acct:alice@other.example", "acct:alice@finger.example.org.evil",
                         "acct:alice@localhost", "https://other.example/alice",
                         "acct:alice@xn--other.example", "acct:alice@xn--a.example"):
            with self.subTest(resource=resource):
                code, _, body = self.finger(resource)
                self.assertEqual(code, 404)
                self.assertEqual(body, self.finger("acct:nobody@finger.example.org")[2])

    def test_spellings(self):
        expected = self.finger("acct:alice@finger.example.org")
        self.assertEqual(expected[0], 200)
        subject = json.loads(expected[2])["subject"]
        self.assertEqual(subject, "acct:alice@finger.example.org")
        for resource in ("ACCT:alice@FINGER.EXAMPLE.ORG", "acct:alice@finger.example.org.",
                         "acct:alice@finger.example.org:8000", "alice@finger.example.org",
                         "acct:@alice@finger.example.org", "@alice@finger.example.org",
                         "acct%3Aalice%40finger.example.org", "acct:Alice@finger.example.org",
                         "acct:%61lice@finger.example.org",
                         "https://finger.example.org/alice",
                         "https://finger.example.org/@alice",
                         "http://finger.example.org:8000/~alice",
                         "https://finger.example.org/users/alice"):
            with self.subTest(resource=resource):
                code, _, body = self.finger(resource)
                self.assertEqual(code, 200, body)
                self.assertEqual(json.loads(body)["subject"], subject)

    def test_added_domains_and_idn(self):
        for resource, subject in (
                ("acct:alice@tilde.example", "acct:alice@tilde.example"),
                ("acct:alice@xn--bcher-kva.example", "acct:alice@xn--bcher-kva.example"),
                ("acct:alice@b%C3%BCcher.example", "acct:alice@xn--bcher-kva.example")):
            with self.subTest(resource=resource):
                code, _, body = self.finger(resource)
                self.assertEqual(code, 200, body)
                self.assertEqual(json.loads(body)["subject"], subject)

    def test_malformed(self):
        for path, code in (("", 400), ("?resource=", 400),
                           ("?resource=acct:alice@finger.example.org"
                            "&resource=acct:bob@finger.example.org", 400),
                           ("?resource=acct:juliet%2540capulet.example@finger.example.org", 404),
                           ("?resource=foobarbaz", 404), ("?resource=acct:a+b@x", 404),
                           ("?resource=http://[::1/alice", 404),
                           ("?resource=https://a@[::1/alice", 404),
                           ("?resource=https://127.0.0.1:%5B/alice", 404)):
            with self.subTest(path=path):
                self.assertEqual(get(self.http, "/.well-known/webfinger" + path,
                                     host="finger.example.org")[0], code)

    def test_ipv6_hosts(self):
        code, _, body = self.finger("acct:alice@[::1]", host="[::1]:8000")
        self.assertEqual(code, 200, body)
        self.assertEqual(json.loads(body)["subject"], "acct:alice@[::1]")

    def test_one_cache_control_and_feed_links_follow_show(self):
        _, headers, _ = self.finger("acct:nobody@finger.example.org")
        self.assertEqual(list(headers).count("Cache-Control"), 1)
        http = serve(self, fingerd.WebServer(("127.0.0.1", 0), memory_store(),
                                             privacy=fingerd.Privacy(show={"status"}))).port
        for path in ("/nosuch", "/.well-known/webfinger?resource=acct:x@localhost", "/alice"):
            self.assertNotIn(b"feed.atom", get(http, path)[2], path)

    def test_public_url_with_a_path(self):
        http = serve(self, fingerd.WebServer(
            ("127.0.0.1", 0), memory_store(),
            privacy=fingerd.Privacy(public_url="https://finger.example.org:8443/base/"))).port
        code, _, body = get(http, "/.well-known/webfinger?resource=acct:alice@finger.example.org")
        self.assertEqual(code, 200)
        alias = json.loads(body)["aliases"][0]
        self.assertEqual(alias, "https://finger.example.org:8443/base/alice")
        self.assertEqual(get(http, "/.well-known/webfinger?resource=" + alias)[0], 200)
        self.assertEqual(get(http, "/.well-known/webfinger?resource="
                                   "https://finger.example.org/alice")[0], 404)

    def test_command_line_refuses_what_is_not_a_host(self):
        parser = fingerd.build_parser()
        for args in (["--webfinger-domain", "*"], ["--webfinger-domain", ".example"],
                     ["--webfinger-domain", "exa_mple.org"],
                     ["--public-url", "http://user:pw@host/"]):
            with self.subTest(args=args), self.assertRaises(SystemExit), \
                    contextlib.redirect_stderr(io.StringIO()):
                parser.parse_args(args)
        self.assertEqual(parser.parse_args(["--public-url", "https://f\u00fcnger.example/"])
                         .public_url, "https://xn--fnger-kva.example")

    def test_public_url_names_the_domain(self):
        http = serve(self, fingerd.WebServer(
            ("127.0.0.1", 0), memory_store(),
            privacy=fingerd.Privacy(public_url="https://finger.example.org/"))).port
        resource = "/.well-known/webfinger?resource=acct:alice@finger.example.org"
        self.assertEqual(get(http, resource, host="127.0.0.1:8000")[0], 200)
        self.assertEqual(get(http, resource.replace("finger.example.org", "127.0.0.1"),
                             host="127.0.0.1:8000")[0], 404)


# -- Reproduction 5: Atom identities -----------------------------------------------------------

TAG_URI = re.compile(r"tag:[a-z0-9.-]+,\d{4}(-\d{2}(-\d{2})?)?:[A-Za-z0-9._~!$&'()*+,;=:@/?-]*\Z")


class LogTest(unittest.TestCase):
    """RFC 1288 §3.2.7: who asked for what is logged only with --log-queries, at any level."""

    def test_debug_logs_no_client(self):
        daemon = Daemon(self, "--backend", "memory", "--http", "127.0.0.1:0",
                        "--log-level", "debug")
        get(daemon.ports["http"], "/alice")
        query(daemon.ports["setter"], b"bob\nhi\n", half_close=True)
        self.assertTrue(daemon.wait_for_log("GET /alice"))
        lines = [line for line in daemon.lines if "/alice" in line or "bob" in line]
        self.assertTrue(lines)
        self.assertFalse([line for line in lines if "127.0.0.1:" in line], lines)


class AtomIdTest(unittest.TestCase):
    def test_ids_survive_a_restart(self):
        directory = temp_dir(self)
        db = os.path.join(directory, "f.db")
        first = Daemon(self, "--db", db, "--http", "127.0.0.1:0")
        query(first.ports["setter"], b"alice\nstatus of alice\n", half_close=True)
        before = self.ids(first.ports["http"], "localhost")
        first.stop()
        second = Daemon(self, "--db", db, "--http", "127.0.0.1:0")
        self.assertEqual(self.ids(second.ports["http"], "localhost"), before)

    def ids(self, port, host, headers=()):
        code, _, body = get(port, "/feed.atom", host=host, headers=headers)
        self.assertEqual(code, 200)
        feed = ET.fromstring(body)
        return [feed.find(ATOM + "id").text] + [e.find(ATOM + "id").text
                                                for e in feed.findall(ATOM + "entry")]

    def test_ids_do_not_follow_the_host(self):
        port = serve(self, fingerd.WebServer(("127.0.0.1", 0), memory_store())).port
        ids = self.ids(port, "localhost")
        self.assertEqual(len(ids), 3)
        for host, headers in (("example.org", ()), ("EVIL.test:8443", ()),
                              ("127.0.0.1", (("X-Forwarded-Host", "x"),))):
            self.assertEqual(self.ids(port, host, headers), ids)
        for value in ids:
            self.assertRegex(value, TAG_URI)
        self.assertEqual(ids[0], "tag:%s,2026:fingerd" % fingerd.Privacy().canonical_name())
        self.assertNotIn(fingerd.Privacy().canonical_name(), ("", "localhost"))

    def test_public_url_names_them(self):
        port = serve(self, fingerd.WebServer(
            ("127.0.0.1", 0), memory_store(),
            privacy=fingerd.Privacy(public_url="https://Finger.Example.org/x/"))).port
        ids = self.ids(port, "localhost")
        self.assertEqual(ids[0], "tag:finger.example.org,2026:fingerd")
        self.assertEqual(ids[1], "tag:finger.example.org,2026:bob/1700000100.000000")


# -- XML-RPC faults -----------------------------------------------------------------------------

class FaultWordsTest(unittest.TestCase):
    """kobo#69, dbus-fast#645: a fault says what was wrong, never Python's internals."""

    def test_faults(self):
        port = serve(self, fingerd.WebServer(("127.0.0.1", 0), memory_store())).port
        proxy = xmlrpc.client.ServerProxy("http://127.0.0.1:%d/RPC2" % port)
        self.addCleanup(proxy("close"))
        calls = [(lambda: proxy.getUser("a", "b"), -32602), (lambda: proxy.getUser(), -32602),
                 (lambda: proxy.getUser({}), -32602), (lambda: proxy.getUser(1), -32602),
                 (lambda: proxy.getUsers(1), -32602), (lambda: proxy.nope(), -32601),
                 (lambda: proxy.system.methodHelp(), -32602),
                 (lambda: proxy.system.multicall("x"), -32602)]
        for call, code in calls:
            with self.assertRaises(xmlrpc.client.Fault) as caught:
                call()
            fault = caught.exception
            self.assertEqual(fault.faultCode, code, fault.faultString)
            for leak in ("<class", "<locals>", "Traceback", ".py", "Error", "rpc_dispatcher",
                         "get_user", "positional"):
                self.assertNotIn(leak, fault.faultString)
        results = proxy.system.multicall([1, {"methodName": "getUser"},
                                          {"methodName": "getUser", "params": ["alice"]}])
        self.assertEqual(results[2], ["Happy and well"])
        for result in results[:2]:
            self.assertNotIn("<class", result["faultString"])
        garbage = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        garbage.request("POST", "/RPC2", b"<methodCall><x", {"Content-Type": "text/xml"})
        body = garbage.getresponse().read().decode()
        garbage.close()
        self.assertIn("-32700", body)
        self.assertNotIn("expat", body.lower())


if __name__ == "__main__":
    unittest.main()
