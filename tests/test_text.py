"""Text helpers: names, filtering of control characters and escapes, endpoints."""
import unittest
import unittest.mock

from support import fingerd


class NameTest(unittest.TestCase):
    def test_valid_names(self):
        for name in ["alice", "a", "Bob.Smith", "x_y-z", "_svc", "9lives", "a" * 32]:
            self.assertTrue(fingerd.valid_name(name), name)

    def test_invalid_names(self):
        for name in ["", "-l", "--help", "a" * 33, "a/b", "../etc", "a b", "a\x00", "é",
                     "a@b", "a:b", "a\n", "\u202ealice"]:
            self.assertFalse(fingerd.valid_name(name), repr(name))


class FilterTest(unittest.TestCase):
    def test_plain_text_is_unchanged(self):
        self.assertEqual(fingerd.clean_line("Happy and well, café ☕"), "Happy and well, café ☕")

    def test_tab_is_kept(self):
        self.assertEqual(fingerd.clean_line("a\tb"), "a\tb")

    def test_c0_del_c1_are_removed(self):
        self.assertEqual(fingerd.clean_line("a\x00b\x07c\x08d\x7fe\x85f\x80g\x9b"), "abcdefg")

    def test_csi_sequences_are_removed_whole(self):
        self.assertEqual(fingerd.clean_line("\x1b[31mred\x1b[0m \x1b[2J\x1b[H!"), "red !")
        self.assertEqual(fingerd.clean_line("\x9b31mred"), "red")

    def test_osc_sequences_are_removed_whole(self):
        self.assertEqual(fingerd.clean_line("\x1b]0;pwned title\x07ok"), "ok")
        self.assertEqual(fingerd.clean_line("\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\"),
                         "link")
        self.assertEqual(fingerd.clean_line("\x1bPdevice control\x1b\\ok"), "ok")

    def test_lone_escape_and_two_byte_escapes(self):
        self.assertEqual(fingerd.clean_line("a\x1bcb\x1b"), "ab")

    def test_bidi_overrides_are_removed(self):
        self.assertEqual(fingerd.clean_line("abc\u202edef\u2066x\u2069"), "abcdefx")

    def test_clean_text_lines_end_in_lf_or_crlf_only(self):
        # A bare CR, FF, VT, NEL, U+2028/U+2029 are not line ends (str.splitlines() would
        # say they are): they are characters, filtered like any control character.
        self.assertEqual(fingerd.clean_text("one\r\ntwo\rthree\nfour\u2028five  \n\n"),
                         "one\ntwothree\nfourfive")
        self.assertEqual(fingerd.clean_text("a\x0cb\x0bc\x85d\u2029e\r\n\r\n"), "abcde")

    def test_clean_text_line_breaks_cannot_hide_in_escapes(self):
        self.assertEqual(fingerd.clean_text("\x1b[1mbold\x1b[0m\r\n\x00x"), "bold\nx")

    def test_decode_peer_replaces_invalid_utf8(self):
        # invalid, overlong encoding of '/', an encoded surrogate
        text = fingerd.decode_peer(b"a\xffb\xc0\xafc\xed\xa0\x80d")
        self.assertNotIn("/", text)
        self.assertEqual(text.replace("\ufffd", ""), "abcd")
        text.encode("utf-8")          # no lone surrogates survive

    def test_shown_name_is_cut_and_filtered(self):
        self.assertEqual(fingerd.shown_name("\x1b[31m" + "x" * 40), "x" * 32 + "...")


class EndpointTest(unittest.TestCase):
    def test_forms(self):
        parse = fingerd.parse_endpoint
        self.assertEqual(parse("79"), ("", 79))
        self.assertEqual(parse("127.0.0.1:1079"), ("127.0.0.1", 1079))
        self.assertEqual(parse("[::]:79"), ("::", 79))
        self.assertEqual(parse("[::1]:0"), ("::1", 0))
        self.assertEqual(parse("localhost:8000"), ("localhost", 8000))
        self.assertIsNone(parse("off"))
        self.assertIsNone(parse("OFF"))

    def test_bad_forms(self):
        for spec in ["", "x", "70000", "-1", "::1:79", "[::1]79", "[::1", "1.2.3.4:"]:
            with self.assertRaises(ValueError, msg=spec):
                fingerd.parse_endpoint(spec)

    def test_format_address(self):
        self.assertEqual(fingerd.format_address("::1", 79), "[::1]:79")
        self.assertEqual(fingerd.format_address("10.0.0.1", 79), "10.0.0.1:79")


class TimeTest(unittest.TestCase):
    def test_format_time(self):
        self.assertEqual(fingerd.format_time(0), "unknown")
        self.assertEqual(fingerd.format_time(86400 * 2, now=86400 * 2 + 7200),
                         "1970-01-03 00:00:00 UTC (2 hours ago)")
        self.assertTrue(fingerd.format_time(100, now=100).endswith("(just now)"))


class OneEndpointGrammarTest(unittest.TestCase):
    """Every option that takes an address reads it the same way (hashicorp/boundary #701,
    ElementsProject/lightning #5317, cfal/shoes #155: options of one program that split
    [IPv6]:PORT differently)."""

    def test_listeners_and_peers_agree(self):
        listen = fingerd.parse_endpoint
        peer = lambda spec: fingerd.parse_endpoint(spec, default_port=6667)     # noqa: E731
        for spec, host, port in [("[::1]:7000", "::1", 7000), ("127.0.0.1:8080", "127.0.0.1",
                                 8080), ("[fe80::1%eth0]:80", "fe80::1%eth0", 80),
                                 ("localhost:7000", "localhost", 7000)]:
            self.assertEqual(listen(spec), (host, port), spec)
            self.assertEqual(peer(spec), (host, port), spec)
            self.assertEqual(fingerd.parse_irc_server(spec, True), (host, port), spec)
        self.assertEqual(peer("[::1]"), ("::1", 6667))
        self.assertEqual(peer("::1"), ("::1", 6667))
        self.assertEqual(peer("fe80::1%lo"), ("fe80::1%lo", 6667))
        self.assertEqual(peer("[fe80::1%lo]:7000"), ("fe80::1%lo", 7000))
        for spec in ("::1]", "a]b:7000", "[::1]]:7000", "irc.example.net:6667:6667",
                     "ircs://irc.libera.chat:6697", "irc.libera.chat/6697", "user@host",
                     "irc.libera.chat :6667", "fe80::1%lo:6667"):
            with self.assertRaises(ValueError, msg=spec):
                peer(spec)
        for spec in ("[::1]79", "[::1", "1.2.3.4:", "host:x", "host:70000"):
            for parse in (listen, peer):
                with self.assertRaises(ValueError, msg=(spec, parse)):
                    parse(spec)
        for spec in ("::1:79",):
            with self.assertRaises(ValueError):
                listen(spec)

    def test_the_command_line_takes_the_same_forms(self):
        parse = fingerd.build_parser().parse_args
        args = parse(["--finger", "[::1]:7979", "--http", "127.0.0.1:0", "--irc", "[::1]:7000"])
        self.assertEqual(args.finger, ("::1", 7979))
        self.assertEqual(fingerd.parse_irc_server(args.irc, args.irc_tls), ("::1", 7000))
        for bad in (["--irc", "host:0"], ["--irc", ":6667"], ["--finger", "[::1]79"]):
            with self.assertRaises(SystemExit, msg=bad), \
                    unittest.mock.patch("sys.stderr"):
                parse(bad)


if __name__ == "__main__":
    unittest.main()
