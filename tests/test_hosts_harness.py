"""tests/hosts.py, the network-namespace hosts for federation tests, proved on real fingerds:
an authority on host a, an xmlrpc front-end on host b, clients on host c; a partition of a.

Skipped unless this machine can make network namespaces (root, iproute2)."""
import ipaddress
import os
import socket
import subprocess
import sys
import time
import unittest

import support
import hosts
from hosts import Fingerd, Hosts, HostsError, Unsupported

HERE = os.path.dirname(os.path.abspath(__file__))
CLOSED_PORT = 9          # nothing listens there: a reachable host answers with a reset

# Inside a host: connect to ADDRESS:PORT, print how long until refused/timed out, and how.
CONNECT_TIME = r"""
import socket, sys, time
began = time.monotonic()
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    outcome = "connected"
except socket.timeout:
    outcome = "timeout"
except OSError as e:
    outcome = type(e).__name__
print(outcome, time.monotonic() - began)
"""


def root_links() -> list:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True,
                          timeout=10).stdout.splitlines()


def netns_names() -> set:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                         timeout=10).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


class HostsCase(unittest.TestCase):
    NAMES = ["a", "b", "c"]

    def setUp(self):
        ok, why = Hosts.available()
        if not ok:
            self.skipTest(why)
        self.links_before = root_links()
        self.addCleanup(self.assert_nothing_left)        # runs last, after hosts.close()
        self.hosts = Hosts.start_for(self, self.NAMES)

    def assert_nothing_left(self):
        group = self.hosts.group if hasattr(self, "hosts") else None
        if group:
            mine = {n for n in netns_names() if n == group or n.startswith(group + "-")}
            self.assertEqual(mine, set(), "namespaces left behind")
        self.assertEqual(root_links(), self.links_before, "root namespace links changed")

    def connect_outcome(self, src, address, port=CLOSED_PORT, timeout=1.5):
        out = self.hosts.python(src, CONNECT_TIME, address, port, timeout, timeout=15)
        self.assertEqual(out.returncode, 0, out.stderr)
        outcome, seconds = out.stdout.decode().split()
        return outcome, float(seconds)


class LayoutTest(HostsCase):

    def test_hosts_have_addresses_in_a_private_unrouted_subnet(self):
        subnet = self.hosts.subnet
        self.assertEqual(subnet.prefixlen, 24)
        self.assertTrue(subnet.subnet_of(ipaddress.ip_network("198.18.0.0/15"))
                        or subnet.subnet_of(ipaddress.ip_network("10.0.0.0/8")), subnet)
        addresses = [self.hosts.address(n) for n in self.NAMES]
        self.assertEqual(len(set(addresses)), 3)
        for address in addresses:
            self.assertIn(ipaddress.ip_network(address + "/32"), list(subnet.subnets(new_prefix=32)))
        for net in hosts._host_networks():                   # the machine's own routes
            self.assertFalse(subnet.overlaps(net), net)
        self.assertEqual(root_links(), self.links_before)     # nothing new in the root

    def test_each_host_has_lo_and_eth0_up(self):
        for name in self.NAMES:
            ns = self.hosts.namespace(name)
            self.assertTrue(ns.startswith(self.hosts.group + "-"))
            links = subprocess.run(["ip", "-n", ns, "-o", "link"], capture_output=True,
                                   text=True, timeout=10).stdout.splitlines()
            self.assertEqual(sorted(line.split(":")[1].strip().split("@")[0] for line in links),
                             ["eth0", "lo"])
            for line in links:
                self.assertIn("UP", line.split("<")[1].split(">")[0].split(","))
            addr = subprocess.run(["ip", "-n", ns, "-4", "-o", "addr"], capture_output=True,
                                  text=True, timeout=10).stdout
            self.assertIn("inet %s/24" % self.hosts.address(name), addr)
            self.assertIn("inet 127.0.0.1/8", addr)

    def test_command_runs_a_program_inside_a_host(self):
        argv = self.hosts.command("b", ["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
        self.assertEqual(argv[:4], ["ip", "netns", "exec", self.hosts.namespace("b")])
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        self.assertIn(self.hosts.address("b") + "/24", out.stdout)

    def test_unknown_host_is_a_key_error(self):
        with self.assertRaises(KeyError):
            self.hosts.address("z")


class PartitionTest(HostsCase):

    def test_isolate_drops_packets_and_reconnect_restores(self):
        a, b = self.hosts.address("a"), self.hosts.address("b")
        self.assertEqual(self.connect_outcome("b", a)[0], "ConnectionRefusedError")
        self.hosts.isolate("a")
        self.assertTrue(self.hosts.isolated("a"))
        outcome, seconds = self.connect_outcome("b", a)     # a black hole, not an error
        self.assertEqual(outcome, "timeout")
        self.assertGreaterEqual(seconds, 1.4)
        self.assertEqual(self.connect_outcome("a", b)[0], "timeout")          # both ways
        self.assertEqual(self.connect_outcome("a", a)[0], "ConnectionRefusedError")  # itself
        self.assertEqual(self.connect_outcome("c", b)[0], "ConnectionRefusedError")  # others
        self.hosts.reconnect("a")
        self.assertFalse(self.hosts.isolated("a"))
        self.assertEqual(self.connect_outcome("b", a)[0], "ConnectionRefusedError")

    def test_query_raises_the_clients_error(self):
        with self.assertRaises(ConnectionRefusedError):
            self.hosts.query("c", self.hosts.address("a"), CLOSED_PORT, timeout=2)
        self.hosts.isolate("a")
        began = time.monotonic()
        with self.assertRaises(socket.timeout):
            self.hosts.query("c", self.hosts.address("a"), CLOSED_PORT, timeout=1)
        self.assertLess(time.monotonic() - began, 5)

    def test_delay(self):
        ok, why = Hosts.delay_available()
        if not ok:
            with self.assertRaises(Unsupported):
                self.hosts.add_delay("a", 100)
            self.skipTest(why)
        a = self.hosts.address("a")
        _, fast = self.connect_outcome("b", a)
        self.hosts.add_delay("a", 100)
        outcome, slow = self.connect_outcome("b", a)
        self.assertEqual(outcome, "ConnectionRefusedError")
        self.assertGreaterEqual(slow, 0.19)                 # 100 ms each way
        self.assertLess(fast, 0.1)
        self.hosts.clear_delay("a")
        self.assertLess(self.connect_outcome("b", a)[1], 0.1)


class FederationTest(HostsCase):

    def test_front_end_answers_the_authoritys_user_and_stale_when_partitioned(self):
        users = support.write_file(os.path.join(support.temp_dir(self), "users"),
                                   "alice: Gone fishing\n")
        authority = Fingerd(self.hosts, "a", "--backend", "memory", "--users-file", users,
                            test=self)
        self.assertEqual(authority.url, "http://%s:8000/RPC2" % self.hosts.address("a"))
        front = Fingerd(self.hosts, "b", "--backend", "xmlrpc", "--remote", authority.url,
                        "--refresh", "1", test=self)

        def finger_b(timeout=10):
            """b's answer for alice, to a client on host c."""
            try:
                return front.finger("alice", via="c", timeout=timeout)
            except OSError as e:
                self.fail("b did not answer (%s)\n--- a:\n%s\n--- b:\n%s"
                          % (e, authority.log, front.log))

        # b answers a's user to a client on c
        self.assertIn("Gone fishing", finger_b())
        self.assertIn("OK", authority.set_status("alice", "Back at my desk", via="c"))
        self.assertTrue(support.wait_for(lambda: "Back at my desk" in finger_b(), timeout=10))

        # a partitioned: b serves its last answer, within its remote timeout
        self.hosts.isolate("a")
        self.assertIn("OK", authority.set_status("alice", "Changed in the partition"))
        time.sleep(1.2)                                      # b's answer is now past --refresh
        began = time.monotonic()
        answer = finger_b(timeout=20)
        waited = time.monotonic() - began
        self.assertIn("Back at my desk", answer)
        self.assertNotIn("Changed in the partition", answer)
        self.assertLess(waited, 3 * getattr(support.fingerd, "REMOTE_TIMEOUT", 5.0))
        self.assertIn("Changed in the partition", authority.finger("alice"))   # a itself is fine

        # healed: b catches up
        self.hosts.reconnect("a")
        self.assertTrue(support.wait_for(lambda: "Changed in the partition" in finger_b(20),
                                         timeout=25, step=0.2), front.log)
        self.assertIsNone(front.proc.poll(), front.log)


class CleanupTest(unittest.TestCase):
    """close() and its back-ups: atexit and sweep()."""

    def setUp(self):
        ok, why = Hosts.available()
        if not ok:
            self.skipTest(why)
        self.links_before = root_links()

    def group_left(self, group):
        return {n for n in netns_names() if n == group or n.startswith(group + "-")}

    def test_close_kills_strays_deletes_everything_and_is_idempotent(self):
        hosts = Hosts(["x", "y"])
        self.addCleanup(hosts.close)
        hosts.start()
        self.assertLess(hosts.setup_seconds, 10)
        self.assertEqual(self.group_left(hosts.group),
                         {hosts.group, hosts.namespace("x"), hosts.namespace("y")})
        tracked = hosts.popen("x", ["sleep", "300"])
        hosts.run("y", ["sh", "-c", "sleep 300 >/dev/null 2>&1 &"], timeout=10)  # a stray
        pids = subprocess.run(["ip", "netns", "pids", hosts.namespace("y")],
                              capture_output=True, text=True, timeout=10).stdout.split()
        self.assertEqual(len(pids), 1)
        hosts.close()
        self.assertLess(hosts.teardown_seconds, 10)
        self.assertIsNotNone(tracked.poll())
        self.assertFalse(os.path.exists("/proc/%s" % pids[0]) and
                         "sleep" in open("/proc/%s/cmdline" % pids[0]).read())
        self.assertEqual(self.group_left(hosts.group), set())
        self.assertEqual(root_links(), self.links_before)
        hosts.close()                                       # again: nothing to do
        with self.assertRaises(HostsError):
            hosts.isolate("x")

    def run_child(self, code):
        """A separate python that uses hosts.py; its output (the group it made)."""
        prelude = "import os, sys; sys.path.insert(0, %r); from hosts import Hosts\n" % HERE
        done = subprocess.run([sys.executable, "-c", prelude + code], capture_output=True,
                              text=True, timeout=30)
        group = done.stdout.strip()
        self.assertRegex(group, r"^fdt-[0-9a-f]{6}$", done.stderr)
        return group

    def test_a_run_that_dies_of_an_exception_is_cleaned_at_exit(self):
        group = self.run_child("h = Hosts(['p', 'q']).start(); h.popen('p', ['sleep', '300'], stdout=-3, stderr=-3)\n"
                               "print(h.group, flush=True); raise SystemExit('failed')")
        self.assertEqual(self.group_left(group), set())

    def test_sweep_removes_a_killed_runs_namespaces_only(self):
        live = Hosts(["l"])
        self.addCleanup(live.close)
        live.start()
        group = self.run_child("h = Hosts(['k']).start(); h.popen('k', ['sleep', '300'], stdout=-3, stderr=-3)\n"
                               "print(h.group, flush=True); os._exit(1)")   # no atexit
        self.addCleanup(Hosts.sweep)
        self.assertEqual(self.group_left(group), {group, group + "-k"})
        swept = Hosts.sweep()
        self.assertIn(group + "-k", swept)
        self.assertEqual(self.group_left(group), set())
        self.assertNotIn(live.group, swept)                 # a live run is left alone
        self.assertEqual(self.group_left(live.group), {live.group, live.namespace("l")})


if __name__ == "__main__":
    unittest.main()
