"""The pages in a real browser: headless Chromium renders them, the DOM is checked, and
screenshots are saved for a person to look at (FINGERD_ARTIFACTS, default .build/ in the
project).  Skipped where Chromium is not installed (apt-get install chromium)."""
import html.parser
import os
import shutil
import subprocess
import unittest

from support import ROOT, Daemon, temp_dir, write_file

HOSTILE = '<script>document.title="pwned"</script><img src=x onerror=alert(1)>'
ARTIFACTS = os.environ.get("FINGERD_ARTIFACTS") or os.path.join(ROOT, ".build")


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class DOM(html.parser.HTMLParser):
    """Just enough of the DOM to check: elements seen, links, text per element class."""

    def __init__(self):
        super().__init__()
        self.tags = []
        self.links = []
        self.text = {}
        self._stack = []

    VOID = {"br", "img", "meta", "link", "input", "hr", "wbr", "source"}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "a":
            self.links.append(attrs.get("href"))
        if tag == "br" and self._stack:
            self._stack[-1][1].append("\n")          # a line break inside the element's text
        if tag not in self.VOID:
            self._stack.append((attrs.get("class") or tag, []))

    def handle_endtag(self, tag):
        if self._stack and tag not in self.VOID:
            name, parts = self._stack.pop()
            if parts:
                self.text.setdefault(name, []).append("".join(parts))

    def handle_data(self, data):
        if self._stack:
            self._stack[-1][1].append(data)


@unittest.skipUnless(chromium(), "Chromium is not installed (apt-get install chromium)")
class BrowserTest(unittest.TestCase):
    def setUp(self):
        users = write_file(os.path.join(temp_dir(self), "users"),
                           "alice: Happy and well\nbob: first line\\nsecond line\n"
                           "mallory: %s\n" % HOSTILE)
        self.daemon = Daemon(self, "--backend", "file", "--users-file", users,
                             "--http", "127.0.0.1:0")
        self.base = "http://127.0.0.1:%d" % self.daemon.ports["http"]
        self.profile = temp_dir(self)

    def browse(self, *args):
        argv = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--user-data-dir=" + self.profile, *args]
        out = subprocess.run(argv, capture_output=True, timeout=90)
        self.assertEqual(out.returncode, 0, out.stderr.decode(errors="replace")[-2000:])
        return out.stdout.decode("utf-8")

    def dom(self, path):
        parser = DOM()
        parser.feed(self.browse("--dump-dom", self.base + path))
        return parser

    def test_user_list_in_the_browser(self):
        dom = self.dom("/")
        self.assertEqual(dom.links[:3], ["./alice", "./bob", "./mallory"])
        statuses = dom.text.get("status", [])
        self.assertIn("Happy and well", statuses)
        self.assertIn("first line\nsecond line", statuses)
        self.assertIn(HOSTILE, statuses)           # shown as text...
        self.assertNotIn("script", [tag for tag, _ in dom.tags])   # ...never as elements
        self.assertNotIn("img", [tag for tag, _ in dom.tags])

    def test_user_page_in_the_browser(self):
        dom = self.dom("/mallory")
        self.assertEqual(dom.text.get("h1"), ["mallory"])
        self.assertEqual(dom.text.get("status"), [HOSTILE])
        self.assertNotIn("script", [tag for tag, _ in dom.tags])
        self.assertIn("title", [tag for tag, _ in dom.tags])
        self.assertNotIn("pwned", "".join(dom.text.get("title", [])))

    def test_screenshots(self):
        os.makedirs(ARTIFACTS, exist_ok=True)
        shots = [("list-desktop.png", "/", "1200,900"), ("user-phone.png", "/bob", "390,844")]
        for name, path, size in shots:
            target = os.path.join(ARTIFACTS, name)
            if os.path.exists(target):
                os.unlink(target)
            self.browse("--hide-scrollbars", "--window-size=" + size,
                        "--screenshot=" + target, self.base + path)
            with open(target, "rb") as f:
                self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
            self.assertGreater(os.path.getsize(target), 5000)


if __name__ == "__main__":
    unittest.main()
