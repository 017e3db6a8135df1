"""The LDAP directory harness (tests/directory.py) itself: a real slapd seen through nslcd and
NSS inside a private mount namespace, and never on the host.

The timings of lookups against a hung or stopped slapd are printed (not asserted beyond the
subprocess time-outs): they depend on nslcd's time-outs, chosen short here.
"""
import hashlib
import os
import subprocess
import sys
import time
import unittest

import support
from directory import Directory, DirectoryError

AVAILABLE, WHY_NOT = Directory.available()
DANA = ("dana", 1234500001, "Dana Scully")
# Short nslcd time-outs, so a hung or stopped slapd costs seconds, not nslcd's default 10 s.
QUICK = dict(bind_timelimit=2, timelimit=2, reconnect_sleeptime=1, reconnect_retrytime=3)
HOST_FILES = ("/etc/nsswitch.conf", "/etc/nslcd.conf")


def report(text):
    sys.stderr.write("\n    [directory] %s " % text)
    sys.stderr.flush()


def digest(path):
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError as e:
        return "unreadable: %s" % e


def host_mounts():
    with open("/proc/self/mountinfo") as f:
        return f.read()


@unittest.skipUnless(AVAILABLE, WHY_NOT)
class DirectoryHarnessTest(unittest.TestCase):

    def start(self, **options):
        self.home = os.path.join(support.temp_dir(self), "home", "dana")
        os.makedirs(self.home)
        directory = Directory(**options)
        self.addCleanup(directory.close)
        directory.add_users([(DANA[0], DANA[1], self.home, DANA[2])])
        started = time.monotonic()
        directory.start()
        report("harness start-up (slapd, namespace, nslcd, first lookup): %.2fs"
               % (time.monotonic() - started))
        return directory

    def expected_line(self):
        return "dana:*:%d:%d:%s:%s:/bin/sh" % (DANA[1], DANA[1], DANA[2], self.home)

    def assert_resolves(self, directory, timeout=15.0):
        started = time.monotonic()
        result = directory.wait_until_resolves("dana", timeout)
        self.assertEqual(result.stdout.strip(), self.expected_line())
        return time.monotonic() - started

    def timed_lookup(self, directory, what):
        """getent passwd dana in the namespace, reported; never waits more than 60 s."""
        try:
            result = directory.getent("passwd", "dana", timeout=60)
        except subprocess.TimeoutExpired:
            self.fail("getent passwd dana still waiting after 60 s with slapd %s" % what)
        report("slapd %s: getent passwd dana -> exit %d after %.2fs"
               % (what, result.returncode, result.elapsed))
        return result

    def test_directory_user_is_seen_in_the_namespace_only(self):
        before = {path: digest(path) for path in HOST_FILES}
        directory = self.start()
        inside = directory.getent("passwd", "dana")
        self.assertEqual(inside.returncode, 0, inside.stderr)
        self.assertEqual(inside.stdout.strip(), self.expected_line())
        by_uid = directory.getent("passwd", str(DANA[1]))
        self.assertEqual(by_uid.stdout.strip(), self.expected_line())
        group = directory.getent("group", "dana")
        self.assertEqual(group.stdout.strip(), "dana:*:%d:" % DANA[1])
        # Python's pwd module in the namespace, as fingerd's pwd backend asks.
        lookup = directory.run([sys.executable, "-c",
                                "import pwd; p = pwd.getpwnam('dana'); print(p.pw_uid, p.pw_dir)"])
        self.assertEqual(lookup.stdout.split(), [str(DANA[1]), self.home], lookup.stderr)
        # Local accounts still come from /etc/passwd.
        self.assertEqual(directory.getent("passwd", "root").returncode, 0)
        # The host sees none of it.
        outside = subprocess.run(["getent", "passwd", "dana"], stdout=subprocess.PIPE,
                                 universal_newlines=True, timeout=10)
        self.assertNotIn(str(DANA[1]), outside.stdout)
        self.assertEqual({path: digest(path) for path in HOST_FILES}, before)
        mounts = host_mounts()
        self.assertNotIn(directory.tmpdir, mounts)
        self.assertNotIn("fingerd-nslcd", mounts)

    def test_fingerd_pwd_backend_in_the_namespace(self):
        directory = self.start()
        support.write_file(os.path.join(self.home, ".plan"), "the truth is out there\n")
        for path in (self.home, os.path.join(self.home, ".plan")):
            os.chown(path, DANA[1], DANA[1])
        # uid 1234500001 is outside login.defs' UID_MIN-UID_MAX: shown because of the plan.
        argv = support.command("--inetd", "--backend", "pwd")
        inside = directory.run(argv, input="dana\r\n", timeout=30, cwd=support.ROOT)
        self.assertIn("the truth is out there", inside.stdout, inside.stderr)
        outside = subprocess.run(argv, input="dana\r\n", stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, universal_newlines=True, timeout=30,
                                 cwd=support.ROOT)
        self.assertNotIn("the truth is out there", outside.stdout)

    def test_enumeration_on_and_off(self):
        directory = self.start(enumeration=True)
        everyone = directory.getent("passwd")
        self.assertIn(self.expected_line(), everyone.stdout.splitlines())
        self.assertIn("root:", everyone.stdout)
        directory.set_enumeration(False)
        everyone = directory.getent("passwd")
        self.assertEqual(everyone.returncode, 0)
        self.assertIn("root:", everyone.stdout)
        self.assertNotIn("dana:", everyone.stdout)
        self.assertEqual(directory.getent("passwd", "dana").stdout.strip(),
                         self.expected_line())

    def test_enumeration_off_from_the_start(self):
        directory = self.start(enumeration=False)
        self.assertNotIn("dana:", directory.getent("passwd").stdout)
        self.assertEqual(directory.getent("passwd", "dana").stdout.strip(),
                         self.expected_line())
        directory.set_enumeration(True)
        self.assertIn("dana:", directory.getent("passwd").stdout)

    def test_users_added_while_running_show_at_once(self):
        directory = self.start()
        directory.add_user("fox", 1234500002, "/nonexistent/fox", "Fox Mulder")
        self.assertEqual(directory.getent("passwd", "fox").stdout.strip(),
                         "fox:*:1234500002:1234500002:Fox Mulder:/nonexistent/fox:/bin/sh")
        directory.add_group("xfiles", 1234509999, ["dana", "fox"])
        name, _, gid, members = directory.getent("group", "xfiles").stdout.strip().split(":")
        self.assertEqual((name, gid, sorted(members.split(","))),
                         ("xfiles", "1234509999", ["dana", "fox"]))
        directory.remove_user("fox")
        self.assertEqual(directory.getent("passwd", "fox").returncode, 2)

    def test_hung_slapd(self):
        directory = self.start(**QUICK)
        directory.hang_slapd()
        first = self.timed_lookup(directory, "hung (SIGSTOP)")
        self.assertEqual(first.returncode, 2)       # "not found": NSS cannot tell it apart
        self.timed_lookup(directory, "still hung")
        directory.resume_slapd()
        report("after SIGCONT, dana resolves again after %.2fs" % self.assert_resolves(directory))

    def test_stopped_slapd(self):
        directory = self.start(**QUICK)
        port = directory.port
        directory.stop_slapd()
        self.assertFalse(directory.slapd_running)
        first = self.timed_lookup(directory, "stopped")
        self.assertEqual(first.returncode, 2)
        self.timed_lookup(directory, "still stopped")
        lookup = directory.run([sys.executable, "-c", "import pwd\ntry:\n pwd.getpwnam('dana')\n"
                                "except KeyError as e:\n print('KeyError', e)"], timeout=60)
        report("slapd stopped: pwd.getpwnam('dana') -> %s (%.2fs)"
               % (lookup.stdout.strip(), lookup.elapsed))
        self.assertIn("KeyError", lookup.stdout)
        self.assertEqual(directory.getent("passwd", "root").returncode, 0)
        directory.start_slapd()
        self.assertEqual(directory.port, port)
        report("after restarting slapd (same port, same data), dana resolves again after "
               "%.2fs" % self.assert_resolves(directory))

    def test_close_tears_everything_down(self):
        before = {path: digest(path) for path in HOST_FILES}
        directory = self.start()
        directory.hang_slapd()      # close() must cope with a stopped slapd too
        pids = [directory.slapd_pid, directory.holder_pid, directory.nslcd_pid]
        tmpdir = directory.tmpdir
        directory.close()
        directory.close()
        for pid in pids:
            self.assertFalse(os.path.exists("/proc/%d" % pid) and not _zombie(pid), pid)
        self.assertFalse(os.path.exists(tmpdir))
        self.assertNotIn(tmpdir, host_mounts())
        self.assertEqual({path: digest(path) for path in HOST_FILES}, before)
        with self.assertRaises(DirectoryError):
            directory.namespace_command(["true"])
        with self.assertRaises(DirectoryError):
            directory.start()


def _zombie(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


if __name__ == "__main__":
    unittest.main()
