"""The pluggable backends: pwd (~/.plan), process (the local finger program), xmlrpc
(remote servers).  Each passes the store contract, then the safety rules of its own."""
import http.client
import logging
import os
import pwd
import shutil
import socket
import stat
import subprocess
import threading
import time
import unittest
import xmlrpc.client

from support import Daemon, command, fingerd, query, serve, temp_dir, write_file
from test_store import StoreContract

Status = fingerd.Status


# -- pwd ----------------------------------------------------------------------------------

class FakeAccounts:
    """The seam PlanStore reads accounts through: getpwnam and getpwall, recorded."""

    def __init__(self):
        self.entries = []
        self.asked = []

    def add(self, name, uid, home, gecos=""):
        self.entries.append(pwd.struct_passwd((name, "x", uid, uid, gecos, home, "/bin/sh")))

    def getpwnam(self, name):
        self.asked.append(name)
        for entry in self.entries:
            if entry.pw_name == name:
                return entry
        raise KeyError(name)

    def getpwall(self):
        return list(self.entries)


class PlanTestCase(unittest.TestCase):
    """Homes in a temporary directory; fake accounts whose uid is ours, so we own the files."""

    uid = os.getuid()

    def setUp(self):
        super().setUp()
        self.root = temp_dir(self)
        self.accounts = FakeAccounts()

    def account(self, name, plan=None, uid=None, gecos="", **files):
        home = os.path.join(self.root, name)
        os.mkdir(home)
        self.accounts.add(name, self.uid if uid is None else uid, home, gecos)
        if plan is not None:
            write_file(os.path.join(home, ".plan"), plan)
        for filename, text in files.items():
            write_file(os.path.join(home, "." + filename), text)
        return home

    def plan_store(self):
        store = fingerd.PlanStore(refresh=3600, accounts=self.accounts,
                                  uids=(self.uid, self.uid + 10))
        self.addCleanup(store.close)
        return store


class PlanStoreContractTest(PlanTestCase, StoreContract):
    def make_store(self, users):
        for name, text in users.items():
            self.account(name, plan=text + "\n")
        return self.plan_store()

    def setUp(self):
        PlanTestCase.setUp(self)
        StoreContract.setUp(self)


class PlanStoreTest(PlanTestCase):
    def test_nofinger_hides_a_user_completely(self):
        self.account("alice", plan="hello\n", nofinger="")
        self.account("bob", plan="hi\n")
        store = self.plan_store()
        self.assertIsNone(store.get("alice"))
        self.assertEqual(store.users(), ["bob"])
        server = serve(self, fingerd.FingerServer(("127.0.0.1", 0), store))
        self.assertEqual(query(server.port, b"alice\r\n"), query(server.port, b"nobody\r\n"))
        self.assertEqual(query(server.port, b"/W alice\r\n"), b"No such user\r\n")

    def test_no_plan(self):
        self.account("alice")
        self.assertEqual(self.plan_store().get("alice").text, "No Plan.")

    def test_symlink_to_a_secret_is_not_followed(self):
        secret = write_file(os.path.join(self.root, "shadow"), "root:$6$secret\n")
        home = self.account("alice")
        os.symlink(secret, os.path.join(home, ".plan"))
        os.symlink("/etc/passwd", os.path.join(home, ".project"))
        store = self.plan_store()
        status = store.get("alice", verbose=True)
        self.assertEqual(status.text, "No Plan.")
        self.assertNotIn("secret", repr(status))
        self.assertNotIn("root:", repr(status))

    def test_fifo_does_not_hang(self):
        home = self.account("alice")
        os.mkfifo(os.path.join(home, ".plan"))
        start = time.monotonic()
        self.assertEqual(self.plan_store().get("alice").text, "No Plan.")
        self.assertLess(time.monotonic() - start, 1.0)

    @unittest.skipUnless(os.geteuid() == 0, "creating a device node needs root")
    def test_device_is_not_read(self):
        home = self.account("alice")
        os.mknod(os.path.join(home, ".plan"), stat.S_IFCHR | 0o644, os.makedev(1, 5))  # zero
        self.assertEqual(self.plan_store().get("alice").text, "No Plan.")

    def test_file_owned_by_someone_else_is_not_read(self):
        self.account("alice", plan="not alice's words\n", uid=self.uid + 1)   # we own it
        status = self.plan_store().get("alice")
        self.assertEqual(status.text, "No Plan.")

    def test_huge_plan_is_cut(self):
        self.account("alice", plan="x" * 100 + "\n" + "y" * (2 * 1024 * 1024))
        text = self.plan_store().get("alice").text
        self.assertLess(len(text), fingerd.PLAN_LIMIT + 100)
        self.assertTrue(text.endswith("[plan cut at 64 KiB]"))

    def test_verbose_details(self):
        self.account("alice", plan="Gone fishing\n", gecos="Alice Liddell,Room 1,555-1234,,",
                     project="Wonderland survey\nsecond line\n",
                     pgpkey="-----BEGIN PGP PUBLIC KEY BLOCK-----\nabc\n")
        store = self.plan_store()
        status = store.get("alice", verbose=True)
        self.assertEqual(dict(status.details), {
            "Name": "Alice Liddell", "Office": "Room 1, 555-1234",
            "Project": "Wonderland survey",
            "PGP key": "-----BEGIN PGP PUBLIC KEY BLOCK-----\nabc"})
        self.assertEqual(store.get("alice").details, ())       # brief: no extra reads
        reply = fingerd.finger_reply(store, fingerd.parse_query("/W alice"))
        self.assertIn("Login: alice\r\nName: Alice Liddell\r\nOffice: Room 1, 555-1234\r\n"
                      "Project: Wonderland survey\r\n"
                      "PGP key: -----BEGIN PGP PUBLIC KEY BLOCK-----\r\n  abc\r\n", reply)
        self.assertTrue(reply.endswith("Gone fishing\r\n"))

    def test_plan_is_filtered(self):
        self.account("alice", plan="\x1b]0;title\x07\x1b[31mred\x1b[0m\x00\n")
        self.assertEqual(self.plan_store().get("alice").text, "red")

    def test_user_list(self):
        self.account("alice", plan="a\n")
        self.account("bob")                                     # no .plan: not listed
        self.account("carol", plan="c\n", nofinger="")          # hidden
        self.account("sys", plan="s\n", uid=self.uid + 100)     # outside UID_MIN..UID_MAX
        store = self.plan_store()
        self.assertEqual(store.users(), ["alice"])
        self.assertIsNone(store.get("sys"))
        write_file(os.path.join(self.root, "bob", ".plan"), "now b\n")
        store.refresh()
        self.assertEqual(store.users(), ["alice", "bob"])

    def test_invalid_names_never_reach_pwd(self):
        store = self.plan_store()
        for name in ["-l", "--help", "a/b", "../etc", "a\x00b", "", "x" * 40, ".."]:
            self.assertIsNone(store.get(name))
        self.assertEqual(self.accounts.asked, [])

    def test_read_only(self):
        with self.assertRaises(fingerd.ReadOnlyStore):
            self.plan_store().set("alice", "x")

    def test_uid_range_from_login_defs(self):
        defs = write_file(os.path.join(self.root, "login.defs"),
                          "# comment\nUID_MIN\t\t 2000\nUID_MAX 3000\nGID_MIN 5\n")
        self.assertEqual(fingerd.uid_range(defs), (2000, 3000))
        self.assertEqual(fingerd.uid_range(os.path.join(self.root, "missing")), (1000, 60000))


class RealAccountTest(unittest.TestCase):
    def test_the_account_running_the_tests(self):
        me = pwd.getpwuid(os.getuid())
        store = fingerd.PlanStore(refresh=3600, uids=(0, 2 ** 32))
        self.addCleanup(store.close)
        if not fingerd.valid_name(me.pw_name):
            self.skipTest("this account's name is not one fingerd serves")
        status = store.get(me.pw_name, verbose=True)
        if os.path.exists(os.path.join(me.pw_dir, ".nofinger")):
            self.assertIsNone(status)
        else:
            self.assertIsNotNone(status)
            self.assertTrue(status.text)
        self.assertIsNone(store.get("no-such-user-here-42"))


# -- process ------------------------------------------------------------------------------

FAKE_FINGER = """#!/bin/sh
echo "$@" >> "{log}"
if [ $# -eq 0 ]; then
  printf 'Login     Name       Tty   Idle\\nalice     Alice      pts/1    1\\nbob       Bob        pts/2    5\\ncarol     Carol      pts/3\\n'
  exit 0
fi
case "$2" in
  alice) echo "Happy and well" ;;
  bob) printf 'line one\\nline two\\n' ;;
  carol) echo "Busy" ;;
  args) for a in "$@"; do echo "arg:$a"; done ;;
  evil) printf '\\033]0;title\\007\\033[31mred\\033[0m\\n' ;;
  slow) exec sleep 30 ;;
  flood) exec yes ;;
  *) echo "finger: $2: no such user." >&2 ;;
esac
"""


class AnyAccount:
    """An accounts seam where every name is an ordinary account (uid 1000) whose home does
    not exist: so no ~/.nofinger, and the fake finger program decides who is known."""

    def getpwnam(self, name):
        return pwd.struct_passwd((name, "x", 1000, 1000, "", "/nonexistent/" + name,
                                  "/bin/sh"))


def process_store(program, **kw):
    return fingerd.ProcessStore(program, accounts=AnyAccount(), uids=(1000, 60000), **kw)


class ProcessTestCase(unittest.TestCase):
    def fake_finger(self):
        directory = temp_dir(self)
        self.calls = os.path.join(directory, "calls")
        write_file(self.calls, "")
        path = write_file(os.path.join(directory, "finger"), FAKE_FINGER.format(log=self.calls))
        os.chmod(path, 0o755)
        return path

    def called(self):
        with open(self.calls) as f:
            return f.read().splitlines()


class ProcessStoreContractTest(StoreContract, ProcessTestCase):
    knows_time = False
    rounds = 5

    def make_store(self, users):
        return process_store(self.fake_finger())


class ProcessStoreTest(ProcessTestCase):
    def setUp(self):
        self.store = process_store(self.fake_finger(), timeout=1.0)

    def test_name_goes_after_double_dash(self):
        self.assertEqual(self.store.get("args").text, "arg:--\narg:args")
        self.assertEqual(self.called(), ["-- args"])

    def test_option_like_names_never_run_the_program(self):
        for name in ["-l", "--help", "-m", "a;rm", "$(id)", "a b", "`id`", "a/b"]:
            self.assertIsNone(self.store.get(name))
        self.assertEqual(self.called(), [])

    def test_unknown_user(self):
        self.assertIsNone(self.store.get("nobody"))

    def test_output_is_filtered(self):
        self.assertEqual(self.store.get("evil").text, "red")

    def test_timeout_kills_the_program(self):
        start = time.monotonic()
        with self.assertRaises(fingerd.StoreUnavailable):
            self.store.get("slow")
        self.assertLess(time.monotonic() - start, 3.0)
        out = os.popen("pgrep -f '^sleep 30$' || true").read().strip()
        self.assertEqual(out, "", "the program was left running")

    def test_output_is_capped(self):
        start = time.monotonic()
        text = self.store.get("flood").text
        self.assertLessEqual(len(text), fingerd.PROGRAM_OUTPUT_LIMIT)
        self.assertLess(time.monotonic() - start, 3.0)

    def test_missing_program_is_a_startup_error(self):
        with self.assertRaises(fingerd.StartupError):
            fingerd.ProcessStore("/no/such/finger")
        with self.assertRaises(fingerd.StartupError):
            fingerd.ProcessStore("no-such-finger-program-here")

    def test_read_only(self):
        with self.assertRaises(fingerd.ReadOnlyStore):
            self.store.set("alice", "x")

    def test_only_accounts_the_policy_shows_run_the_program(self):
        home = temp_dir(self)
        write_file(os.path.join(home, ".nofinger"), "")

        class Accounts:
            def getpwnam(self, name):
                if name not in ("alice", "hidden", "root"):
                    raise KeyError(name)
                return pwd.struct_passwd((name, "x", 0 if name == "root" else 1000, 0, "",
                                          home if name == "hidden" else "/nonexistent",
                                          "/bin/sh"))
        store = fingerd.ProcessStore(self.store.program, accounts=Accounts(),
                                     uids=(1000, 60000))
        self.assertEqual(store.get("alice").text, "Happy and well")
        for name in ("hidden", "root", "carol"):      # opted out; system, no plan; no account
            self.assertIsNone(store.get(name), name)
        self.assertEqual(self.called(), ["-- alice"])

    @unittest.skipUnless(os.geteuid() == 0 and shutil.which("useradd"),
                         "needs root and useradd: a real account for the finger program")
    def test_from_the_command_line_with_the_worker_pool(self):
        name = "pproc%d" % (os.getpid() % 10000)
        subprocess.run(["useradd", name], check=True, capture_output=True)
        self.addCleanup(subprocess.run, ["userdel", name], capture_output=True)
        program = write_file(os.path.join(temp_dir(self), "finger"),
                             "#!/bin/sh\n[ $# -eq 0 ] && printf 'Login\\n%s pts/1\\n' && exit\n"
                             "echo \"Happy and well\"\n" % name)
        os.chmod(program, 0o755)
        daemon = Daemon(self, "--backend", "process", "--finger-program", program)
        port = daemon.ports["finger"]
        self.assertEqual(query(port, name.encode() + b"\r\n"), b"Happy and well\r\n")
        self.assertEqual(query(port, b"-l\r\n"), b"No such user\r\n")
        self.assertEqual(query(port, b"nosuchaccount42\r\n"), b"No such user\r\n")
        self.assertIn(name.encode() + b": Happy and well", query(port, b"\r\n"))
        out = subprocess.run(command("--backend", "process", "--finger-program", program,
                                     "--show", "status"), capture_output=True, timeout=10)
        self.assertEqual(out.returncode, 1)
        self.assertIn(b"--show cannot apply to --backend process", out.stderr)

    def test_missing_program_from_the_command_line(self):
        from support import run_cli
        out = run_cli("--backend", "process", "--finger-program", "/no/such/finger",
                      "--finger", "127.0.0.1:0", "--setter", "off", "--http", "off")
        self.assertEqual(out.returncode, 1)
        self.assertIn("/no/such/finger", out.stderr.strip().splitlines()[-1])


# -- xmlrpc -------------------------------------------------------------------------------

def remote_server(test, users):
    """A fingerd web server in this process, serving `users`, as a remote."""
    store = fingerd.MemoryStore(statuses={name: Status(text, 1.0) for name, text in users.items()})
    remote_server.count += 1                # another server than this process in Via chains
    server = serve(test, fingerd.WebServer(("127.0.0.1", 0), store,
                                           instance_id="remote%d" % remote_server.count))
    return server, "http://127.0.0.1:%d/RPC2" % server.port


remote_server.count = 0


class RemoteStoreContractTest(StoreContract, unittest.TestCase):
    knows_time = False
    rounds = 20

    def make_store(self, users):
        _, url = remote_server(self, users)
        return fingerd.RemoteStore([url], refresh=30, timeout=2)


class FakeRemote:
    """A TCP server on port 0 that misbehaves: 'hang' (accept, never answer), 'garbage',
    'huge'; it counts connections."""

    def __init__(self, test, behaviour):
        self.behaviour = behaviour
        self.connections = 0
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(50)
        self.url = "http://127.0.0.1:%d/RPC2" % self.listener.getsockname()[1]
        self.held = []
        test.addCleanup(self.close)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            if self.behaviour == "hang":
                self.held.append(sock)
                continue
            try:
                sock.recv(65536)
                if self.behaviour == "garbage":
                    sock.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/xml\r\n\r\n<<<not xml")
                elif self.behaviour == "huge":
                    sock.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/xml\r\n\r\n"
                                 b"<?xml version='1.0'?><methodResponse><params><param><value>"
                                 b"<string>" + b"x" * (5 * 1024 * 1024))
                elif self.behaviour == "bomb":
                    body = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]>'
                            b"<methodResponse><params><param><value><string>&a;</string>"
                            b"</value></param></params></methodResponse>")
                    sock.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(body), body))
            except OSError:
                pass
            sock.close()

    def close(self):
        self.listener.close()
        for sock in self.held:
            sock.close()


class RemoteStoreTest(unittest.TestCase):
    def test_federation_first_that_knows_wins_and_lists_merge(self):
        _, first = remote_server(self, {"alice": "from first", "carol": "c1"})
        _, second = remote_server(self, {"alice": "from second", "bob": "b2"})
        store = fingerd.RemoteStore([first, second], timeout=2)
        self.assertEqual(store.get("alice").text, "from first")
        self.assertEqual(store.get("bob").text, "b2")
        self.assertIsNone(store.get("nobody"))
        self.assertEqual(store.users(), ["alice", "bob", "carol"])
        self.assertEqual([(n, s.text) for n, s in store.items()],
                         [("alice", "from first"), ("bob", "b2"), ("carol", "c1")])

    def test_list_uses_multicall_not_one_call_per_user(self):
        server, url = remote_server(self, {"u%03d" % i: "s%d" % i for i in range(500)})
        calls = []
        dispatcher = server.rpc()
        real = dispatcher._marshaled_dispatch
        dispatcher._marshaled_dispatch = lambda data, *a: calls.append(1) or real(data, *a)
        store = fingerd.RemoteStore([url], timeout=5)
        items = store.items()
        self.assertEqual(len(items), 500)
        self.assertEqual(items[499], ("u499", Status("s499")))
        self.assertLessEqual(len(calls), 4)          # getUsers + 3 multicalls of 200

    def test_answers_are_cached(self):
        server, url = remote_server(self, {"alice": "Happy"})
        store = fingerd.RemoteStore([url], refresh=30, timeout=2)
        self.assertEqual(store.get("alice").text, "Happy")
        server.store.update({"alice": Status("Changed", 2.0)})     # a change
        self.assertEqual(store.get("alice").text, "Happy")        # within --refresh
        store.refresh_seconds = 0
        self.assertEqual(store.get("alice").text, "Changed")

    def test_stale_answers_while_a_remote_fingerd_is_down(self):
        users = write_file(os.path.join(temp_dir(self), "users"), "alice: Happy and well\n")
        remote = Daemon(self, "--backend", "file", "--users-file", users,
                        "--http", "127.0.0.1:0")
        url = "http://127.0.0.1:%d/RPC2" % remote.ports["http"]
        store = fingerd.RemoteStore([url], refresh=0.05, timeout=1)
        self.assertEqual(store.get("alice").text, "Happy and well")
        self.assertEqual(store.users(), ["alice"])
        remote.proc.kill()
        remote.wait()
        time.sleep(0.1)                                  # the cached answer is now stale
        with self.assertLogs("fingerd", logging.WARNING) as logs:
            for _ in range(20):
                self.assertEqual(store.get("alice").text, "Happy and well")
            self.assertEqual(store.users(), ["alice"])
        downs = [line for line in logs.output if "does not answer" in line]
        self.assertEqual(len(downs), 1, logs.output)     # logged once
        with self.assertRaises(fingerd.StoreUnavailable):
            store.get("newcomer")                        # nothing to fall back on

    def test_no_stampede_on_a_remote_known_to_be_down(self):
        fake = FakeRemote(self, "garbage")
        store = fingerd.RemoteStore([fake.url], refresh=0, timeout=1)
        with self.assertRaises(fingerd.StoreUnavailable):
            store.get("alice")                     # now it is known to be down
        self.assertEqual(fake.connections, 1)

        def burst():
            threads = [threading.Thread(target=lambda: self.assertRaises(
                fingerd.StoreUnavailable, store.get, "alice")) for _ in range(20)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        burst()
        for _ in range(50):
            with self.assertRaises(fingerd.StoreUnavailable):
                store.get("alice")
        self.assertEqual(fake.connections, 1)      # the back-off holds everyone off
        store.remotes[0].retry_at = 0              # the wait is over: one probe, not 20
        burst()
        self.assertEqual(fake.connections, 2)

    def test_hanging_remote_is_cut_off_at_the_timeout(self):
        fake = FakeRemote(self, "hang")
        store = fingerd.RemoteStore([fake.url], timeout=0.5)
        start = time.monotonic()
        with self.assertRaises(fingerd.StoreUnavailable):
            store.get("alice")
        self.assertLess(time.monotonic() - start, 2.0)

    def test_garbage_huge_and_dtd_answers_are_refused(self):
        for behaviour in ("garbage", "huge", "bomb"):
            fake = FakeRemote(self, behaviour)
            store = fingerd.RemoteStore([fake.url], timeout=2)
            with self.assertRaises(fingerd.StoreUnavailable, msg=behaviour):
                store.get("alice")

    def test_hanging_remote_does_not_block_finger_past_the_deadline(self):
        fake = FakeRemote(self, "hang")
        store = fingerd.RemoteStore([fake.url], timeout=0.5)
        server = serve(self, fingerd.FingerServer(("127.0.0.1", 0), store))
        start = time.monotonic()
        self.assertEqual(query(server.port, b"alice\r\n"), (fingerd.UNAVAILABLE + "\r\n").encode())
        self.assertLess(time.monotonic() - start, 2.0)

    def test_a_remote_pointing_back_at_this_server_is_detected(self):
        sock = fingerd.listen_socket(("127.0.0.1", 0))     # bound first, as the daemon does
        url = "http://127.0.0.1:%d/RPC2" % sock.getsockname()[1]
        store = fingerd.RemoteStore([url], timeout=2)
        serve(self, fingerd.WebServer(None, store, sock=sock))
        with self.assertLogs("fingerd", logging.ERROR) as logs:
            with self.assertRaises(xmlrpc.client.Fault):
                xmlrpc.client.ServerProxy(url).getUser("alice")
        self.assertIn("leads back to this server", "\n".join(logs.output))
        self.assertTrue(store.remotes[0].looped)
        start = time.monotonic()                         # and it is not called again
        with self.assertRaises(fingerd.StoreUnavailable):
            store.get("bob")
        self.assertLess(time.monotonic() - start, 0.1)

    def test_loop_through_the_command_line(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        daemon = Daemon(self, "--backend", "xmlrpc", "--remote",
                        "http://127.0.0.1:%d/RPC2" % port, "--http", "127.0.0.1:%d" % port)
        reply = query(daemon.ports["finger"], b"alice\r\n")
        self.assertEqual(reply, (fingerd.UNAVAILABLE + "\r\n").encode())
        self.assertTrue(daemon.wait_for_log("leads back to this server"), daemon.log)

    def test_bad_remote_urls(self):
        for urls in ([], ["ftp://x/RPC2"], ["not a url"], ["http:///RPC2"]):
            with self.assertRaises(fingerd.StartupError, msg=urls):
                fingerd.RemoteStore(urls)

    def test_web_pages_from_a_remote(self):
        _, url = remote_server(self, {"alice": "Happy <b>and</b> well"})
        store = fingerd.RemoteStore([url], timeout=2)
        web = serve(self, fingerd.WebServer(("127.0.0.1", 0), store))
        conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=10)
        self.addCleanup(conn.close)
        conn.request("GET", "/alice")
        body = conn.getresponse().read().decode()
        self.assertIn("Happy &lt;b&gt;and&lt;/b&gt; well", body)


if __name__ == "__main__":
    unittest.main()
