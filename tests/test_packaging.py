"""The man page and the systemd units: lint-clean, complete, verified, sandboxed."""
import os
import re
import shutil
import subprocess
import tempfile
import unittest

from support import FINGERD, ROOT, command

MANPAGE = os.path.join(ROOT, "man", "fingerd.8")
UNITS = os.path.join(ROOT, "packaging", "debian")
INSTALLED = FINGERD == "/usr/sbin/fingerd"


def help_options():
    out = subprocess.run(command("--help"), capture_output=True, text=True, check=True).stdout
    return sorted(set(re.findall(r"--[a-z][a-z0-9-]+", out)))


def rendered_manpage():
    out = subprocess.run(["mandoc", "-T", "ascii", MANPAGE], capture_output=True, text=True,
                         check=True, env=dict(os.environ, MANWIDTH="200"))
    return re.sub(".\x08", "", out.stdout)


@unittest.skipUnless(shutil.which("mandoc"), "mandoc is not installed (apt-get install mandoc)")
class ManPageTest(unittest.TestCase):
    def test_lint_reports_nothing_above_style(self):
        out = subprocess.run(["mandoc", "-T", "lint", "-W", "warning", MANPAGE],
                             capture_output=True, text=True)
        self.assertEqual((out.returncode, out.stdout + out.stderr), (0, ""))

    def test_every_help_option_is_documented(self):
        page = rendered_manpage()
        options = help_options()
        self.assertIn("--backend", options)          # the check can see options at all
        missing = [o for o in options if o != "--help" and o not in page]
        self.assertEqual(missing, [], "options in --help but not in man/fingerd.8")

    def test_sections(self):
        page = rendered_manpage()
        for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "PROTOCOLS", "BACKENDS",
                        "SIGNALS", "FILES", "ENVIRONMENT", "EXIT STATUS", "EXAMPLES",
                        "SECURITY CONSIDERATIONS", "STANDARDS", "SEE ALSO"):
            self.assertRegex(page, r"(?m)^%s$" % section)
        for method in ("getUser", "getUsers", "system.multicall", "!finger"):
            self.assertIn(method, page)


@unittest.skipUnless(shutil.which("systemd-analyze"), "systemd-analyze is not installed")
class SystemdUnitTest(unittest.TestCase):
    def units(self):
        """The installed units when testing the package, else copies that run this checkout."""
        names = ("fingerd.socket", "fingerd.service", "fingerd-http.socket",
                 "fingerd-setter.socket")
        if INSTALLED and os.path.exists("/lib/systemd/system/fingerd.service"):
            return ["/lib/systemd/system/" + name for name in names], []
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        paths = []
        for name in names:
            source = name if name.startswith("fingerd.") else "fingerd." + name
            with open(os.path.join(UNITS, source)) as f:
                text = f.read().replace("/usr/sbin/fingerd", os.path.join(ROOT, "fingerd"))
            path = os.path.join(directory, name)
            with open(path, "w") as f:
                f.write(text)
            paths.append(path)
        return paths, ["--man=no"]

    def test_verify(self):
        paths, flags = self.units()
        out = subprocess.run(["systemd-analyze", "verify", *flags, *paths], capture_output=True,
                             text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)

    def test_exposure_at_most_2(self):
        paths, _ = self.units()
        out = subprocess.run(["systemd-analyze", "security", "--offline=true", paths[1]],
                             capture_output=True, text=True, timeout=60)
        match = re.search(r"Overall exposure level for fingerd.service: ([\d.]+)", out.stdout)
        self.assertIsNotNone(match, out.stdout[-500:] + out.stderr)
        self.assertLessEqual(float(match.group(1)), 2.0)

    def test_every_listener_is_a_named_socket_unit(self):
        for unit, name, listen in (("fingerd.socket", "finger", "79"),
                                   ("fingerd.fingerd-http.socket", "http", "8000"),
                                   ("fingerd.fingerd-setter.socket", "setter-unix",
                                    "/run/fingerd/setter.sock")):
            with open(os.path.join(UNITS, unit)) as f:
                text = f.read()
            self.assertIn("FileDescriptorName=%s\n" % name, text)
            self.assertIn("ListenStream=%s\n" % listen, text)
        with open(os.path.join(UNITS, "fingerd.service")) as f:
            service = f.read()
        # fingerd binds nothing itself, and the TCP setter is off in the package.
        self.assertIn("--finger off --http off --setter off --setter-socket off", service)


class PackagingFilesTest(unittest.TestCase):
    def test_version_is_above_netkit(self):
        with open(os.path.join(UNITS, "changelog")) as f:
            version = f.readline().split("(")[1].split(")")[0]
        self.assertEqual(version, subprocess.run(
            command("--version"), capture_output=True, text=True).stdout.split()[1])
        if shutil.which("dpkg"):
            self.assertEqual(subprocess.run(["dpkg", "--compare-versions", version, "gt",
                                             "0.17-17"]).returncode, 0)


if __name__ == "__main__":
    unittest.main()
