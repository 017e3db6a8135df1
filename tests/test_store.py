"""The store contract, run against every backend, then each backend's own rules, and
expiring statuses."""
import http.client
import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
import unittest

from support import TIMEOUT, fingerd, serve, temp_dir, wait_for, write_file

SEED = {"alice": "Happy and well", "bob": "line one\nline two", "carol": "Busy"}


class StoreContract:
    """Every backend: what get(), users(), items() answer for the same data."""

    knows_time = True       # statuses carry the time they were set
    rounds = 300            # reads per thread in the concurrency check

    def make_store(self, users):
        raise NotImplementedError

    def setUp(self):
        self.dir = temp_dir(self)
        self.store = self.make_store(SEED)
        self.addCleanup(self.store.close)

    def test_get_known_user(self):
        status = self.store.get("alice")
        self.assertEqual(status.text, "Happy and well")
        if self.knows_time:
            self.assertGreater(status.set_at, 0)

    def test_multi_line_status(self):
        self.assertEqual(self.store.get("bob").text, "line one\nline two")

    def test_unknown_and_invalid_names_are_none(self):
        for name in ["nobody", "", "-l", "../alice", "alice\x00", "a" * 40]:
            self.assertIsNone(self.store.get(name), repr(name))

    def test_users_sorted(self):
        self.assertEqual(self.store.users(), ["alice", "bob", "carol"])

    def test_items_sorted_pairs(self):
        items = self.store.items()
        self.assertEqual([name for name, _ in items], ["alice", "bob", "carol"])
        self.assertEqual(items[0][1].text, "Happy and well")

    def test_public_methods_are_the_templates_own(self):
        # A backend that overrode get() skipped name checks, timing or locking (django
        # #13325: cache backends missing validate_key(); ws-wss4j #6, rskj #1435: overrides
        # that dropped `synchronized`).  Backends implement _get/_items/_set only.
        for method in ("get", "items", "users", "set", "clear", "set_async"):
            self.assertIs(getattr(type(self.store), method), getattr(fingerd.Store, method),
                          method)
        before = sum(self.store.read_seconds.snapshot()[0])
        self.store.get("alice")
        self.store.items()
        self.store.users()
        self.store.get("../alice")          # refused before the backend is asked, not timed
        self.assertEqual(sum(self.store.read_seconds.snapshot()[0]), before + 3)

    def test_get_is_thread_safe_under_concurrent_use(self):
        errors = []

        def reader():
            try:
                for _ in range(self.rounds):
                    assert self.store.get("alice").text == "Happy and well"
                    assert "carol" in self.store.users()
            except Exception as e:          # collected for the assertion below
                errors.append(e)
        threads = [threading.Thread(target=reader) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])


class WritableContract(StoreContract):
    def test_set_then_get(self):
        before = time.time()
        stored = self.store.set("dave", "Gone fishing")
        self.assertEqual(stored.text, "Gone fishing")
        status = self.store.get("dave")
        self.assertEqual(status.text, "Gone fishing")
        self.assertGreaterEqual(status.set_at, before - 1)
        self.assertIn("dave", self.store.users())

    def test_set_replaces(self):
        self.store.set("alice", "Now busy")
        self.assertEqual(self.store.get("alice").text, "Now busy")

    def test_set_bumps_version(self):
        version = self.store.version
        self.store.set("alice", "changed")
        self.assertGreater(self.store.version, version)

    def test_set_cleans_text(self):
        self.store.set("erin", "\x1b[31mred\x1b[0m\r\nsecond\x00 line\n\n")
        self.assertEqual(self.store.get("erin").text, "red\nsecond line")

    def test_set_refuses_bad_input(self):
        cases = [("-l", "x", fingerd.BadName), ("a/b", "x", fingerd.BadName),
                 ("a" * 33, "x", fingerd.BadName),
                 ("frank", "x" * (fingerd.MAX_STATUS_BYTES + 1), fingerd.BadStatus),
                 ("frank", "l\n" * (fingerd.MAX_STATUS_LINES + 1), fingerd.BadStatus),
                 ("frank", "  \n \x1b[0m ", fingerd.BadStatus)]
        for user, text, error in cases:
            with self.assertRaises(error, msg=repr((user, text[:20]))):
                self.store.set(user, text)
        self.assertIsNone(self.store.get("frank"))

    def test_set_async_reports_success_and_failure(self):
        results = []
        done = threading.Event()

        def callback(error):
            results.append(error)
            if len(results) == 2:
                done.set()
        self.store.set_async("gina", "async", callback)
        self.store.set_async("-bad", "async", callback)
        self.assertTrue(done.wait(5))
        self.assertEqual(sum(r is None for r in results), 1)
        self.assertEqual(sum(isinstance(r, fingerd.BadName) for r in results), 1)
        self.assertEqual(self.store.get("gina").text, "async")


class MemoryStoreTest(WritableContract, unittest.TestCase):
    def make_store(self, users):
        path = write_file(os.path.join(self.dir, "users"),
                          "".join("%s: %s\n" % (u, s.replace("\n", "\\n"))
                                  for u, s in users.items()))
        return fingerd.MemoryStore(path)

    def test_without_seed_is_empty(self):
        self.assertEqual(fingerd.MemoryStore().users(), [])


class SQLiteStoreTest(WritableContract, unittest.TestCase):
    def make_store(self, users):
        self.db = os.path.join(self.dir, "fingerd.db")
        store = fingerd.SQLiteStore(self.db)
        for user, text in users.items():
            store.set(user, text)
        return store

    def test_survives_reopen(self):
        self.store.set("dave", "persisted")
        self.store.close()
        again = fingerd.SQLiteStore(self.db)
        self.addCleanup(again.close)
        self.assertEqual(again.get("dave").text, "persisted")
        self.assertEqual(again.get("bob").text, "line one\nline two")

    def test_wal_and_full_sync(self):
        db = sqlite3.connect(self.db)
        self.addCleanup(db.close)
        self.assertEqual(db.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        self.assertEqual(self.store._db.execute("PRAGMA synchronous").fetchone()[0], 2)  # FULL

    def test_write_is_committed_before_set_returns(self):
        self.store.set("dave", "committed")
        other = sqlite3.connect(self.db)          # another connection sees it at once
        self.addCleanup(other.close)
        self.assertEqual(other.execute("SELECT status FROM statuses WHERE user='dave'")
                         .fetchone()[0], "committed")

    def test_concurrent_writes_share_commits(self):
        batches = []
        real_commit = self.store._commit

        def counting_commit(batch):
            batches.append(len(batch))
            time.sleep(0.005)          # a slow disk: writes pile up behind the fsync
            real_commit(batch)
        self.store._commit = counting_commit
        done = threading.Semaphore(0)
        failures = []

        def callback(error):
            if error is not None:
                failures.append(error)
            done.release()
        for i in range(200):
            self.store.set_async("u%d" % i, "status %d" % i, callback)
        for _ in range(200):
            self.assertTrue(done.acquire(timeout=10))
        self.assertEqual(failures, [])
        self.assertEqual(sum(batches), 200)
        self.assertLess(len(batches), 50, "writes were not grouped: %s" % batches)
        other = sqlite3.connect(self.db)
        self.addCleanup(other.close)
        self.assertEqual(other.execute("SELECT count(*) FROM statuses WHERE user LIKE 'u%'")
                         .fetchone()[0], 200)

    def test_failed_commit_is_reported_not_acknowledged(self):
        blocker = sqlite3.connect(self.db, timeout=0, isolation_level=None)
        self.addCleanup(blocker.close)
        blocker.execute("BEGIN IMMEDIATE")          # another writer holds the lock
        self.store._db.execute("PRAGMA busy_timeout=50")
        with self.assertRaises(fingerd.StoreUnavailable):
            self.store.set("dave", "never stored")
        blocker.execute("ROLLBACK")
        self.assertIsNone(self.store.get("dave"))
        self.store.set("dave", "stored now")         # and the store recovers
        self.assertEqual(self.store.get("dave").text, "stored now")

    def test_close_commits_pending_writes(self):
        done = []
        for i in range(50):
            self.store.set_async("p%d" % i, "pending", done.append)
        self.store.close()
        self.assertEqual(len(done), 50)
        again = fingerd.SQLiteStore(self.db)
        self.addCleanup(again.close)
        self.assertEqual(len([u for u in again.users() if u.startswith("p")]), 50)

    def test_unopenable_database_is_a_startup_error(self):
        with self.assertRaises(fingerd.StartupError) as cm:
            fingerd.SQLiteStore(os.path.join(self.dir, "no", "such", "dir", "x.db"))
        self.assertIn("no/such/dir", str(cm.exception))


class FileStoreTest(StoreContract, unittest.TestCase):
    def make_store(self, users):
        self.path = os.path.join(self.dir, "users")
        self.write_users("".join("%s: %s\n" % (u, s.replace("\n", "\\n"))
                                 for u, s in users.items()))
        store = fingerd.FileStore(self.path, refresh=0.05)
        store.settle = 0.2
        return store

    def write_users(self, text):
        # A new inode and mtime for every write, as an editor saving the file would make.
        tmp = self.path + ".tmp"
        write_file(tmp, text)
        os.replace(tmp, self.path)

    def wait_for(self, predicate, timeout=5.0):
        return wait_for(predicate, timeout)

    def test_is_read_only(self):
        with self.assertRaises(fingerd.ReadOnlyStore):
            self.store.set("alice", "hacked")
        self.assertEqual(self.store.get("alice").text, "Happy and well")

    def test_rereads_when_changed(self):
        self.write_users("alice: Changed\nzed: New\n")
        self.assertTrue(self.wait_for(lambda: self.store.users() == ["alice", "zed"]))
        self.assertEqual(self.store.get("alice").text, "Changed")

    def test_unchanged_status_keeps_its_time(self):
        carol = self.store.get("carol").set_at
        time.sleep(0.05)
        self.write_users("alice: Changed\ncarol: Busy\n")
        self.assertTrue(self.wait_for(lambda: self.store.get("alice").text == "Changed"))
        self.assertEqual(self.store.get("carol").set_at, carol)
        self.assertGreaterEqual(self.store.get("alice").set_at, carol)

    def test_malformed_lines_are_skipped_with_line_numbers(self):
        with self.assertLogs("fingerd", logging.WARNING) as logs:
            self.write_users("# comment\n\nalice: ok\nno colon here\n-bad: name\n: empty\n"
                             "bob: fine: with colon\n")
            self.assertTrue(self.wait_for(lambda: self.store.users() == ["alice", "bob"]))
        text = "\n".join(logs.output)
        for number in ("line 4", "line 5", "line 6"):
            self.assertIn(number, text)
        self.assertEqual(self.store.get("bob").text, "fine: with colon")

    def test_missing_file_keeps_last_good_data(self):
        with self.assertLogs("fingerd", logging.WARNING) as logs:
            os.unlink(self.path)
            self.assertTrue(self.wait_for(lambda: any("keeping the last good data" in line
                                                      for line in logs.output)))
        self.assertEqual(self.store.get("alice").text, "Happy and well")
        self.write_users("alice: back\n")
        self.assertTrue(self.wait_for(lambda: self.store.get("alice").text == "back"))

    @unittest.skipIf(os.geteuid() == 0, "root reads files whatever their mode")
    def test_unreadable_file_keeps_last_good_data(self):
        os.chmod(self.path, 0)
        os.utime(self.path, (1, 1))
        time.sleep(0.2)
        self.assertEqual(self.store.get("alice").text, "Happy and well")

    def test_torn_write_is_not_applied_until_the_file_is_still(self):
        with open(self.path, "w") as f:           # an edit in place, under way
            f.write("alice: Changed\nbo")
            f.flush()
            time.sleep(0.1)
            self.assertEqual(self.store.get("alice").text, "Happy and well")
            self.assertEqual(self.store.users(), ["alice", "bob", "carol"])
            f.write("b: also changed\n")          # the writer finishes
        self.assertTrue(self.wait_for(lambda: self.store.users() == ["alice", "bob"]))
        self.assertEqual(self.store.get("bob").text, "also changed")

    def test_refresh_now(self):
        self.store.refresh_seconds = 3600
        self.write_users("alice: Now\n")
        os.utime(self.path, (time.time() - 5, time.time() - 5))   # long still
        self.store.refresh()
        self.assertEqual(self.store.get("alice").text, "Now")

    def test_missing_file_at_start_is_a_startup_error(self):
        with self.assertRaises(fingerd.StartupError) as cm:
            fingerd.FileStore(os.path.join(self.dir, "absent"))
        self.assertIn("absent", str(cm.exception))

    def test_statuses_are_filtered(self):
        self.write_users("alice: \x1b]0;title\x07ok\x1b[5m!\n")
        self.assertTrue(self.wait_for(lambda: self.store.get("alice").text == "ok!"))


class DefaultPathTest(unittest.TestCase):
    def test_state_directory(self):
        env = dict(os.environ, STATE_DIRECTORY="/var/lib/fingerd")
        out = subprocess.run([sys.executable, "-c",
                              "import sys; sys.path.insert(0, %r); import fingerd; "
                              "print(fingerd.default_db_path())"
                              % os.path.dirname(fingerd.__file__)],
                             env=env, capture_output=True, text=True, check=True)
        self.assertEqual(out.stdout.strip(), "/var/lib/fingerd/fingerd.db")


class ExpiryTest(unittest.TestCase):
    def setUp(self):
        self.now = [1_800_000_000.0]
        self.store = fingerd.MemoryStore()
        self.store.clock = lambda: self.now[0]

    def test_expiring_status_shadows_the_lasting_one(self):
        self.store.set("alice", "Working from home")
        self.store.set("alice", "At lunch", expires_at=self.now[0] + 3600)
        self.assertEqual(self.store.get("alice").text, "At lunch")
        version = self.store.version
        self.now[0] += 3601
        self.assertEqual(self.store.get("alice").text, "Working from home")
        self.assertGreater(self.store.version, version)    # caches notice the expiry
        self.assertEqual([(n, s.text) for n, s in self.store.items()],
                         [("alice", "Working from home")])

    def test_expired_without_a_lasting_status_is_no_status(self):
        self.store.set("bob", "Brb", expires_at=self.now[0] + 60)
        self.assertEqual(self.store.users(), ["bob"])
        self.now[0] += 61
        self.assertIsNone(self.store.get("bob"))
        self.assertEqual(self.store.users(), [])

    def test_a_new_lasting_status_ends_the_expiring_one(self):
        self.store.set("carol", "In a meeting", expires_at=self.now[0] + 3600)
        self.store.set("carol", "Back")
        self.now[0] += 3601
        self.assertEqual(self.store.get("carol").text, "Back")

    def test_expiry_must_be_ahead_and_within_a_year(self):
        for expires_at in (self.now[0] - 1, self.now[0] + 400 * 86400):
            with self.assertRaises(fingerd.BadStatus):
                self.store.set("dave", "x", expires_at=expires_at)

    def test_durations(self):
        self.assertEqual(fingerd.parse_duration("1h30m", now=0), 5400)
        self.assertEqual(fingerd.parse_duration("90", now=0), 90)
        self.assertEqual(fingerd.parse_duration("2d", now=10), 172810)
        for bad in ("", "soon", "-5m", "0", "400d", "1x"):
            with self.assertRaises(fingerd.BadStatus, msg=bad):
                fingerd.parse_duration(bad, now=0)

    def test_web_cache_and_pages_follow_the_expiry(self):
        self.store.set("alice", "Lasting")
        self.store.set("alice", "Fleeting", expires_at=self.now[0] + 60)
        web = serve(self, fingerd.WebServer(("127.0.0.1", 0), self.store))
        conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=TIMEOUT)
        self.addCleanup(conn.close)
        conn.request("GET", "/alice")
        page = conn.getresponse().read().decode()
        self.assertIn("Fleeting", page)
        self.assertIn("Until <time datetime=", page)
        conn.request("GET", "/alice.json")
        self.assertIsNotNone(json.loads(conn.getresponse().read())["expires_at"])
        self.now[0] += 61
        conn.request("GET", "/alice")
        self.assertIn("Lasting", conn.getresponse().read().decode())

    def test_sqlite_keeps_both_and_migrates_schema_1(self):
        path = os.path.join(temp_dir(self), "old.db")
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE statuses (user TEXT PRIMARY KEY, status TEXT NOT NULL, "
                   "set_at REAL NOT NULL, expires_at REAL)")
        db.execute("INSERT INTO statuses VALUES ('alice', 'From schema 1', 5.0, NULL)")
        db.commit()
        db.close()
        store = fingerd.SQLiteStore(path)
        self.assertEqual(store.get("alice"), fingerd.Status("From schema 1", 5.0))
        store.set("alice", "For an hour", expires_at=time.time() + 3600)
        store.close()
        again = fingerd.SQLiteStore(path)
        self.addCleanup(again.close)
        self.assertEqual(again.get("alice").text, "For an hour")
        again.clock = lambda: time.time() + 7200       # the expiring status has ended
        self.assertEqual(again.get("alice").text, "From schema 1")
        again.clock = time.time
        self.assertEqual(sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0],
                         fingerd.SCHEMA_VERSION)
        again.clear("alice")
        self.assertIsNone(again.get("alice"))


if __name__ == "__main__":
    unittest.main()
