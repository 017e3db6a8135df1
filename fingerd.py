#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""fingerd -- a finger daemon appliance in one file.

fingerd answers "what is alice up to?" over several protocols at once, all backed by one
lock-guarded store of statuses:

  finger  (RFC 1288, default port 79)     "alice" -> her status; "/W alice" adds when it was set;
                                          an empty query lists users; "@host" forwarding refused
  setter  (default 127.0.0.1:1079)        send "alice\\n", the status line(s), then half-close;
                                          the answer is "OK" or "ERROR <reason>"
  http    (default port 8000)             GET / (every user), GET /USER (one user's page);
                                          POST /RPC2: XML-RPC getUser(user), getUsers();
                                          /USER.json, /users.json, WebFinger, /feed.atom,
                                          /healthz, /metrics
  setter socket (--setter-socket PATH)    local users set their own status, known by the
                                          kernel: fingerd --set "At lunch" --expires 1h

Backends (--backend): sqlite (default; durable, group-committed writes), memory (volatile,
seeded from --users-file), file (the admin's "user: status" file, re-read when it changes),
pwd (local accounts' ~/.plan), process (the local finger program), xmlrpc (other servers).

Every connection is read by one selectors loop (epoll on Linux) with a size cap and one
deadline before any handler runs, so idle or trickling clients cost no thread; handlers run
inline when the store never blocks, else on a small bounded pool of worker threads.  A failure
while serving one connection, request or message is contained: answered, counted, logged.
Everything sent is filtered of control characters and terminal escape sequences.

Usage:
    ./fingerd --finger 7979 --setter 7980 --backend sqlite --db ./fingerd.db
    finger -l alice@localhost           # with --finger 79 as root
    printf 'alice\\nGone fishing\\n' | nc -N localhost 7980

Standard library only, Python 3.9+.  Copy this one file anywhere and run it.
"""

from __future__ import annotations   # annotations stay text: typing is never imported

# Only what every mode uses is imported here.  Each listener, backend and client imports its
# own modules where it starts (HTTP's, sqlite3, ssl, xmlrpc, subprocess ...), so that --inetd,
# fingerd --set and a finger-only daemon do not pay for the web server's (issue 19; a test
# pins the set: tests/test_cli.py ImportCostTest).  preload() imports them before --user.
import argparse
import bisect
import codecs
import enum
import errno
import functools
import io
import itertools
import os
import re
import select
import selectors
import socket
import socketserver
import stat
import sys
import threading
import time
from collections import deque, namedtuple

TYPE_CHECKING = False
if TYPE_CHECKING:                    # for type checkers only; never at run time
    import logging
    from typing import (Callable, Dict, FrozenSet, Iterable, List, Optional, Sequence,
                        Tuple)

__all__ = [
    "Status", "Store", "MemoryStore", "FileStore", "SQLiteStore", "BACKENDS", "open_store",
    "FingerQuery", "parse_query", "finger_reply", "parse_setter_request",
    "PooledTCPServer", "FingerServer", "SetterServer", "build_parser", "main",
]

__version__ = "1.0.0"

# -- Constants ----------------------------------------------------------------------------

DEFAULT_FINGER = "79"                 # RFC 1288 §2.1
DEFAULT_SETTER = "127.0.0.1:1079"     # the tutorial's port; loopback because it writes
DEFAULT_HTTP = "8000"
DEFAULT_REFRESH = 30.0                # the tutorial re-reads /etc/users every 30 s
DB_NAME = "fingerd.db"
DEFAULT_SETTER_SOCKET = "/run/fingerd/setter.sock"   # what the client tries; systemd's path

MAX_QUERY = 1024                      # one finger query line; real names are < 40 bytes
MAX_NAMES_PER_QUERY = 16              # "alice bob ..." answered each, up to this many
MAX_NAME = 32                         # user names: useradd's limit
MAX_STATUS_BYTES = 16 * 1024          # a status is a .plan, not a document
MAX_STATUS_LINES = 100
MAX_EXPIRY = 366 * 86400              # a status may expire at most a year from now
MAX_SETTER_REQUEST = MAX_STATUS_BYTES + 1024   # status plus its user line and CRLFs
MAX_USERS_FILE = 16 * 1024 * 1024     # 16 MiB is ~250k users; beyond that it is not a users file
CONNECTION_DEADLINE = 10.0            # whole connection, not per recv: trickling clients lose
DRAIN_SECONDS = 5.0                   # replies in flight may finish this long after SIGTERM
LISTEN_BACKLOG = 1024                 # socketserver's 5 makes bursts wait for SYN retries
MAX_CONNECTIONS = 4096                # per listener; beyond it new clients get a busy line
MAX_WORKERS = 16                      # per listener, only for stores that may block
BUSY_TIMEOUT = 60.0                   # a handler this late gets its client an error reply
MAX_REQUESTS_PER_CONNECTION = 1000    # then the server closes it (nginx keepalive_requests)
FAIR_SHARE = 16                       # pipelined requests served per connection per turn
ACCEPT_PAUSE = 0.1                    # seconds without accepting when out of descriptors
LINGER_SECONDS = 2.0                  # after an error reply, read and discard this long
MAX_CONNS_PER_IP = 16                 # open connections from one address (IPv6: one /64)
RATE_PER_IP = 20.0                    # new connections a second from one address, burst 2x
CHANGE_LOG = 100                      # recent status changes kept for /feed.atom

# Reply texts the protocols pin (finger's unknown-user text is shared with XML-RPC).
NO_SUCH_USER = "No such user"
LIST_DENIED = "Finger online user list denied"
FORWARDING_DENIED = "Finger forwarding service denied"
QUERY_TOO_LONG = "Query too long"
TIMED_OUT = "Timed out"
SERVER_BUSY = "Server busy, try again later"
TOO_MANY = "Too many connections from your address, try again later"
INTERNAL_ERROR = "Internal error in server"     # the tutorial's wording
UNAVAILABLE = "Status service temporarily unavailable, try again later"
NO_USERS = "No users"



class LazyLogger:
    """logging.getLogger(name), with `logging` imported at the first use rather than at
    start: --inetd and fingerd --set log only when something goes wrong, and logging (with
    the traceback module it imports) is 4 ms of their 25.  `setup`, when set before that
    first use, is then called with the logger (configure_logging(..., deferred=True)).  At
    the first use the module-level names bound to it (`log`) are rebound to the logger, so
    that later calls cost nothing more; anything else holding it gets the logger's
    attributes through it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.setup: Optional[Callable[[logging.Logger], None]] = None

    def __getattr__(self, attr: str):
        import logging
        logger = logging.getLogger(self.name)
        setup, self.setup = self.setup, None
        if setup is not None:
            setup(logger)
        module = globals()
        for name, value in list(module.items()):
            if value is self:
                module[name] = logger
        return getattr(logger, attr)


log = LazyLogger("fingerd")
LOG_DEBUG = 10                        # logging.DEBUG, without importing logging for it


class LazyPattern:
    """re.compile(pattern, flags) done at the first use, so that a module-level pattern costs
    nothing in a mode that never matches it (the 32 patterns were 3 ms of every start).
    After that first use, the compiled pattern's methods (match, fullmatch, search, sub,
    subn, split, findall, finditer) are this object's own attributes, so a call costs what
    it costs on a re.Pattern; any other attribute (pattern, groups ...) is the compiled
    pattern's.  The module-level names bound to it are rebound to the compiled pattern then,
    so that later calls cost nothing more.  Compiling twice in two threads at once is
    harmless: re.compile is pure."""

    METHODS = ("match", "fullmatch", "search", "sub", "subn", "split", "findall", "finditer")

    def __init__(self, pattern, flags: int = 0) -> None:
        self.source = (pattern, flags)

    def __getattr__(self, name: str):
        compiled = re.compile(*self.source)
        self.__dict__.update((method, getattr(compiled, method)) for method in self.METHODS)
        module = globals()
        for global_name, value in list(module.items()):   # from now on, the pattern itself
            if value is self:
                module[global_name] = compiled
        return getattr(compiled, name)


# -- Errors -------------------------------------------------------------------------------

class FingerdError(Exception):
    """Root of fingerd's own errors: predictable failures with a one-line message."""


class StartupError(FingerdError):
    """fingerd cannot start (a port, a database, a file); main() prints it and exits 1."""


class ReadOnlyStore(FingerdError):
    """The backend's data belongs to someone else (the admin's file, ...)."""


class BadName(FingerdError):
    """A user name outside the allowed shape."""


class BadStatus(FingerdError):
    """A status that is too long, has too many lines, or is not text."""


class StoreUnavailable(FingerdError):
    """The backend could not do what was asked (disk full, database locked, ...)."""


class Refusal(enum.Enum):
    """Why the serving loop answers a connection itself instead of (or before) its handler.

    The value is the `reason` label of fingerd_refusals_total in /metrics.  Every handler's
    refusal() has an answer for each member (tests/test_serving.py checks that)."""
    TOO_LONG = "too-long"     # a request over the protocol's size limit
    URI = "uri"               # HTTP: the request line is too long (414)
    HEADERS = "headers"       # HTTP: the header section is too large (431)
    BODY = "body"             # HTTP: the body is too large (413)
    TIMEOUT = "timeout"       # the request did not arrive within the connection's deadline
    BUSY = "busy"             # the listener already holds max_connections
    TOO_MANY = "too-many"     # this address holds too many connections or connects too fast
    DENIED = "denied"         # verify_request() refused the peer
    ERROR = "error"           # the handler failed: an internal error, answered and counted


class RequestTooLarge(FingerdError):
    """A peer sent more than the protocol allows before completing a request.

    `reason` says which limit (Refusal.TOO_LONG unless a protocol distinguishes more, as HTTP
    does: URI, HEADERS, BODY); the loop passes it to the handler's refusal()."""

    def __init__(self, reason: "Refusal" = Refusal.TOO_LONG) -> None:
        super().__init__("request too large (%s)" % reason.value)
        self.reason = reason


class Faults:
    """Internal errors (bugs, or failures nothing else expected), counted by where they
    happened: 'finger', 'http', 'setter' (a handler), 'finger-loop' (the loop itself), 'irc',
    'sqlite-writer', a refresher's thread name, 'daemon'.

    report() is called from an `except` block: it counts the fault for /metrics
    (fingerd_internal_errors_total{where=...}) and logs it with its traceback, at most
    `burst` tracebacks per place every `window` seconds; past that one line per fault, so a
    fault that repeats on every request cannot flood the journal.  Thread-safe.  One instance
    per process (FAULTS), like the log it writes to."""

    burst = 5
    window = 60.0      # seconds

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Dict[str, int] = {}
        self._logged: Dict[str, Tuple[float, int]] = {}     # where -> (window start, count)

    def report(self, where: str, what: str, *args) -> None:
        """Count one fault at `where` and log `what % args` (with the current exception)."""
        now = time.monotonic()
        with self.lock:
            self.counts[where] = self.counts.get(where, 0) + 1
            start, logged = self._logged.get(where, (now, 0))
            if now - start >= self.window:
                start, logged = now, 0
            self._logged[where] = (start, logged + 1)
        try:
            message = "internal error in %s: %s" % (where, what % args if args else what)
        except Exception:                          # a bad format must not hide the fault
            message = "internal error in %s: %r %r" % (where, what, args)
        if logged < self.burst:
            log.error(message, exc_info=True)
        else:
            log.error("%s (%s; traceback logged %d times this minute)", message,
                      clean_line(repr(sys.exc_info()[1]))[:200], self.burst)

    def count(self, where: str) -> int:
        with self.lock:
            return self.counts.get(where, 0)


FAULTS = Faults()


# -- Request loops between federated servers ----------------------------------------------

# All of loop detection (--backend xmlrpc).  Each fingerd has an id; a remote call carries the
# Via chain of the request it answers with this id added (via_chain()); a call that arrives
# with the server's own id in Via already is answered with loop_fault() instead of being
# passed on (WebHandler.do_xmlrpc); a server that gets that fault back either stops using the
# remote (its own id: RemoteStore._call) or passes it back (RequestLoop, another's id).

class RequestLoop(StoreUnavailable):
    """A remote answered that this request loops through the fingerd `instance` (its id in
    Via chains): not this one, so the loop is another server's to break; the fault is
    passed back towards it (loop_fault())."""

    def __init__(self, instance: str) -> None:
        super().__init__("request loop through fingerd/%s" % instance)
        self.instance = instance


INSTANCE_ID = os.urandom(8).hex()     # this process, in Via chains: 16 hex digits
_LOOP_FAULT = LazyPattern(r"request loop: fingerd/([0-9a-zA-Z]+)")


def via_chain(via: str, instance: str = INSTANCE_ID) -> str:
    """The Via field a remote call carries: the request's chain, then fingerd `instance`."""
    return (via + ", " if via else "") + "fingerd/" + instance


def loops_through(via: str, instance: str) -> bool:
    """True when a request's Via chain already went through fingerd `instance`."""
    return "fingerd/" + instance in via


def loop_fault(instance: str) -> str:
    """The fault string of a request that arrived at fingerd `instance` with its own id in
    Via already: its remotes lead back to it."""
    return "request loop: fingerd/%s is among its own remotes" % instance


def loop_origin(fault_string: str) -> Optional[str]:
    """The id of the fingerd a loop_fault() names, or None for another fault."""
    match = _LOOP_FAULT.search(fault_string)
    return match.group(1) if match else None


# -- Helpers: text, addresses, back-off, caches -------------------------------------------

# Names made only of dots ('.', '..') are refused: they are paths, not people.
NAME_RE = LazyPattern(r"(?!\.+\Z)[A-Za-z0-9._][A-Za-z0-9._-]{0,%d}\Z" % (MAX_NAME - 1))
BAD_NAME = "bad user name (1-%d letters, digits, '.', '_', '-'; no leading '-')" % MAX_NAME

# What text may hold -- the one definition, for every surface.
#
# XML 1.0 §2.2 allows #x9 #xA #xD [#x20-#xD7FF] [#xE000-#xFFFD] [#x10000-#x10FFFF]; less the
# 66 noncharacters (Unicode §23.7: U+FDD0-U+FDEF and the last two of every plane), which
# XML discourages and no interchange needs.  Nothing fingerd emits holds anything else, so a
# status can never make an XML-RPC answer or the Atom feed not well-formed.
_NONCHARACTERS = "\ufdd0-\ufdef" + "".join(
    chr(plane + 0xfffe) + chr(plane + 0xffff) for plane in range(0, 0x110000, 0x10000))
_NOT_XML = LazyPattern("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff%s]" % _NONCHARACTERS)
# A stored status is stricter: lines joined by LF, and within a line no control character
# but TAB (C0, DEL, C1: so CR, FF, VT, NEL are gone too), no terminal escape sequence, and
# none of the invisible format characters that reorder or hide text (bidi overrides, "Trojan
# Source"), BOM, tag characters (invisible text) but in a flag's tag sequence.  Terminal
# escape sequences are removed whole, so that no "[31m" residue is left: OSC/DCS/SOS/PM/APC
# strings (to BEL or ST; unterminated, only the introducer goes, which leaves the rest
# inert), CSI sequences (7- and 8-bit), other ESC forms.  ZWJ and ZWNJ stay: emoji
# sequences and Persian or Indic words need them.
_ESCAPE_SEQUENCE = LazyPattern(
    r"(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)"
    r"|(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?"
    r"|\x1b[\x20-\x2f]*[\x30-\x7e]?")
_UNSAFE_CLASS = ("[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200b\u200e\u200f\u2028-\u202e"
                 "\u2060-\u2069\ufeff\ufff9-\ufffb\ud800-\udfff\U000e0000-\U000e007f%s]"
                 % _NONCHARACTERS)
_UNSAFE_CHARS = LazyPattern(_UNSAFE_CLASS)
_UNSAFE_BUT_FLAGS = LazyPattern("(\U0001f3f4[\U000e0020-\U000e007e]+\U000e007f)|" + _UNSAFE_CLASS)
# Records (a users file's lines, a status's lines) end in LF or CRLF, nothing else: FF, VT,
# NEL, U+2028 and U+2029 inside a line are text, filtered as above (str.splitlines() would
# split on them).
_LINE_END = LazyPattern("\r?\n")


def valid_name(name: str) -> bool:
    """True for 1-32 letters, digits, '.', '_', '-', not starting with '-'."""
    return bool(NAME_RE.match(name))


def clean_line(text: str) -> str:
    """One line as fingerd stores and shows it: no control character but TAB, no escape
    sequence, no noncharacter or lone surrogate, no bidi override (see _UNSAFE_CHARS)."""
    if text.isprintable():          # the common case costs one C-level scan
        return text
    text = _ESCAPE_SEQUENCE.sub("", text)
    if "\U0001f3f4" in text:                  # a flag's tag sequence is kept
        return _UNSAFE_BUT_FLAGS.sub(_keep_flag, text)
    return _UNSAFE_CHARS.sub("", text)


def clean_lines(text: str) -> List[str]:
    """Every LF-separated line of a stored text through clean_line(): what each surface
    does to a status (or a detail) on the way out, whatever the backend gave."""
    return [clean_line(line) for line in text.split("\n")]


def _keep_flag(match) -> str:
    return match.group(1) or ""


def split_lines(text: str) -> List[str]:
    """The lines of text ending in LF or CRLF; no other character ends a line."""
    return _LINE_END.split(text)


def clean_text(text: str) -> str:
    """A status as stored and shown: clean_line() lines joined by LF, trailing blanks and
    leading and trailing empty lines trimmed."""
    if text.isprintable():      # one line (CR and LF are not printable), nothing to filter
        return text.rstrip()
    lines = [clean_line(line).rstrip() for line in split_lines(text)]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    return "\n".join(lines)


def xml_safe(text: str) -> str:
    """text with every character XML 1.0 forbids (or discourages: noncharacters) removed;
    the last check on what goes out as XML-RPC or Atom."""
    return _NOT_XML.sub("", text) if _NOT_XML.search(text) else text


def decode_peer(data: bytes) -> str:
    """Peer bytes as text: invalid, overlong or surrogate UTF-8 becomes U+FFFD, never an error."""
    return data.decode("utf-8", "replace")


# Windows-1252 leaves 0x81 0x8D 0x8F 0x90 0x9D undefined; they read as U+FFFD, never as the
# C1 controls of Latin-1 (0x90 and 0x9D would open a DCS or OSC string).
codecs.register_error("fingerd-cp1252", lambda e: ("\ufffd" * (e.end - e.start), e.end))
_SURROGATE_PAIR = LazyPattern("[\ud800-\udbff][\udc00-\udfff]")


def decode_utf8(data: bytes) -> str:
    """UTF-8, strictly, but for surrogates: a pair (CESU-8, as Java and MySQL's 'utf8'
    write astral characters) is read as the character it encodes, a lone one is kept for
    clean_line() to remove.  Raises UnicodeDecodeError."""
    text = data.decode("utf-8", "surrogatepass")
    if b"\xed" in data and _SURROGATE_PAIR.search(text):     # ED A0-BF: a surrogate
        text = _SURROGATE_PAIR.sub(lambda m: m.group().encode(
            "utf-16-le", "surrogatepass").decode("utf-16-le"), text)
    return text


def decode_text(data: bytes, source: str = "", cut: bool = False) -> str:
    """Bytes a person wrote (a .plan, the users file, an @ARGFILE, a program's output, a
    GECOS field) as text, decided per file: UTF-8 with its BOM removed (or UTF-16 when it
    starts with a UTF-16 BOM); when it is not valid UTF-8, Windows-1252 (whose five
    undefined bytes read as Latin-1), as on long-lived shared hosts.  `cut`: the data was cut
    at a size limit, so a character cut in two at its end is dropped, not shown as U+FFFD.
    The fallback is logged at debug level, naming `source`."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return codecs.getincrementaldecoder("utf-16")("replace").decode(data, final=not cut)
    if data[:3] == b"\xef\xbb\xbf":
        data = data[3:]
    if cut:                      # an incomplete last character is left out, not replaced
        decoder = codecs.getincrementaldecoder("utf-8")("surrogatepass")
        try:
            decoder.decode(data)
            data = data[:len(data) - len(decoder.getstate()[0])]
        except UnicodeDecodeError:
            pass
    try:
        return decode_utf8(data)
    except UnicodeDecodeError:
        if source:
            log.debug("%s is not UTF-8; read as Windows-1252", source)
        return data.decode("cp1252", "fingerd-cp1252")


def os_text(text: str, source: str = "") -> str:
    """A string Python made from OS bytes (argv, pwd fields: undecodable bytes kept as lone
    surrogates) decoded again as decode_text() decodes files."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return decode_text(os.fsencode(text), source)


def shown_name(name: str) -> str:
    """A peer-supplied name made safe to echo: filtered and cut to MAX_NAME characters
    (then '...': fingerd's own words on finger are ASCII)."""
    name = clean_line(name)
    return name if len(name) <= MAX_NAME else name[:MAX_NAME] + "..."


def format_time(epoch: float, now: Optional[float] = None) -> str:
    """'2026-11-22 02:12:32 UTC (3 hours ago)': unambiguous for readers anywhere."""
    if not epoch:
        return "unknown"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))
    age = (time.time() if now is None else now) - epoch
    for unit, seconds in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if abs(age) >= seconds:
            count = int(abs(age) // seconds)
            plural = "" if count == 1 else "s"
            return ("%s (%d %s%s ago)" if age > 0 else "%s (in %d %s%s)") % (
                stamp, count, unit, plural)
    return stamp + (" (just now)" if age >= 0 else " (in a moment)")


def format_address(host: str, port: int) -> str:
    """HOST:PORT with IPv6 hosts in brackets, as people type them."""
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def normalise_ip(address):
    """An IP address as an ipaddress object: a zone (%eth0) dropped, an IPv4-mapped IPv6
    address (::ffff:192.0.2.1, a dual-stack socket's IPv4 client) as the IPv4 address;
    None when it is not an IP address."""
    import ipaddress
    try:
        ip = ipaddress.ip_address(str(address).split("%")[0])
    except ValueError:
        return None
    return getattr(ip, "ipv4_mapped", None) or ip


def describe_peer(peer) -> str:
    """A client for the log: HOST:PORT, or what a Unix socket knows (set by its handler)."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        return format_address(str(peer[0]), peer[1])
    return str(peer) if peer else "a local client"


_HOST_NAME_CHARS = LazyPattern(r"[A-Za-z0-9._-]+")


def host_or_address(host: str) -> bool:
    """True for a host name (letters, digits, '.', '_', '-') or an IP address, an IPv6 one
    with a zone of the same characters (fe80::1%eth0)."""
    address, percent, zone = host.partition("%")
    return bool(_HOST_NAME_CHARS.fullmatch(host) or normalise_ip(address) and (
        not percent or _HOST_NAME_CHARS.fullmatch(zone)))


def parse_endpoint(spec: str, default_host: str = "", default_port: Optional[int] = None
                   ) -> Optional[Tuple[str, int]]:
    """The one HOST:PORT grammar of the command line -> (host, port), or None for 'off'.

    Where fingerd listens (default_port None): '[HOST:]PORT' or '[IPV6]:PORT'; host ''
    (default_host) is every address, port 0-65535 (0: any free one).  A peer fingerd
    connects to (default_port given): 'HOST[:PORT]', '[IPV6][:PORT]' or a bare IPv6
    address; the port, 1-65535, defaults to default_port.  ValueError says what is wrong."""
    spec = spec.strip()
    if spec.lower() == "off":
        return None
    peer = default_port is not None
    port: Optional[str] = None                   # None: no port given
    if spec.startswith("["):
        close = spec.find("]")
        rest = spec[close + 1:] if close >= 0 else ""
        if close < 0 or not (rest.startswith(":") or (peer and not rest)):
            raise ValueError("expected [IPV6]:PORT, got %r" % spec)
        host, port = spec[1:close], rest[1:] if rest else None
    elif peer and spec.count(":") > 1:
        host = spec                              # a bare IPv6 address
    elif ":" in spec:
        host, _, port = spec.rpartition(":")
        if ":" in host:
            raise ValueError("put IPv6 addresses in brackets: [%s]:%s" % (host, port))
    elif peer:
        host = spec
    else:
        host, port = default_host, spec
    if not peer:
        if host and not host_or_address(host):
            raise ValueError("not a host name or address: %r" % host)
        if not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("port must be 0-65535 (0: any free port), got %r" % port)
        return host, int(port)
    if not host or not host_or_address(host):
        raise ValueError("expected HOST[:PORT] or off, got %r" % spec)
    if port is None:
        return host, default_port
    if not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError("bad port in %r (1-65535)" % spec)
    return host, int(port)


# Twisted's ReconnectingClientFactory: factor e, jitter 0.11962656472, here capped at 300 s.
BACKOFF_FACTOR = 2.7182818284590451
BACKOFF_JITTER = 0.11962656472
BACKOFF_MAX = 300.0


class Backoff:
    """Exponential back-off with jitter: initial, then x factor per failure, capped.

    Each delay is drawn from a normal distribution around the nominal one (standard
    deviation jitter x delay), as Twisted does, so that many bots do not reconnect in step.
    reset() after a success.  `rng` is injectable (anything with normalvariate())."""

    def __init__(self, initial: float = 1.0, factor: float = BACKOFF_FACTOR,
                 jitter: float = BACKOFF_JITTER, maximum: float = BACKOFF_MAX,
                 rng=None) -> None:
        import random
        self.initial, self.factor, self.jitter, self.maximum = initial, factor, jitter, maximum
        self.rng = rng or random.Random()
        self.nominal = initial

    def next(self) -> float:
        """The delay before the next attempt; the one after it will be longer."""
        nominal = self.nominal
        self.nominal = min(self.nominal * self.factor, self.maximum)
        if self.jitter:
            return min(self.maximum, max(0.0, self.rng.normalvariate(nominal,
                                                                     nominal * self.jitter)))
        return nominal

    def reset(self) -> None:
        self.nominal = self.initial


class TTLCache:
    """Answers by key, each fresh for `ttl` seconds, then kept, stale, until `keep` seconds
    after it was put (put()'s argument; at least ttl), for use while their source is out.
    At most `size` keys: beyond it the expired go, and all of them if that is not enough.
    Monotonic seconds.  Not locked: its owner's lock guards it."""

    def __init__(self, ttl: float, size: int = 100000) -> None:
        self.ttl, self.size = ttl, size
        self._entries: Dict[object, Tuple[float, float, object]] = {}   # put, kept, value

    def put(self, key, value, keep: float = 0.0) -> None:
        now = time.monotonic()
        if len(self._entries) >= self.size and key not in self._entries:
            self._entries = {k: e for k, e in self._entries.items() if e[1] > now}
            if len(self._entries) >= self.size:
                self._entries.clear()
        self._entries[key] = (now, now + max(self.ttl, keep), value)

    def fresh(self, key, default=None):
        """The value put less than `ttl` seconds ago (ttl as it is now), else default."""
        entry = self._entries.get(key)
        return entry[2] if entry is not None and time.monotonic() - entry[0] < self.ttl \
            else default

    def stale(self, key, default=None):
        """The value while it is kept, however old, else default."""
        entry = self._entries.get(key)
        return entry[2] if entry is not None and entry[1] > time.monotonic() else default

    def pop(self, key) -> None:
        self._entries.pop(key, None)


class VersionCache:
    """Answers kept while the store's version is unchanged, at most `size` of them (then it
    starts afresh): rendered once per change, not once per request.  One thread only (a
    listener's loop: the store is not blocking)."""

    def __init__(self, size: int) -> None:
        self.size, self.version, self.values = size, -1, {}

    def answer(self, store: "Store", key, make: Callable[[], object],
               keep: Callable[[object], bool] = lambda value: True):
        """make()'s value, kept for `key` while store.version is unchanged unless
        keep(value) says no; a blocking store's answers are never kept (its version says
        nothing of its upstream's data)."""
        if store.blocking:
            return make()
        version = store.version            # a property: DictStore expires statuses there
        if version != self.version:
            self.values, self.version = {}, version
        value = self.values.get(key)
        if value is None:
            value = make()
            if value is not None and keep(value):
                if len(self.values) >= self.size:
                    self.values = {}
                self.values[key] = value
        return value


# -- Metrics and health -------------------------------------------------------------------

class Histogram:
    """Latencies in seconds, counted into fixed buckets (Prometheus' histogram: cumulative
    on output); thread-safe, cheap to bump."""

    BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts = [0] * (len(self.BUCKETS) + 1)     # the last one: over 5 s
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        index = bisect.bisect_left(self.BUCKETS, seconds)
        with self.lock:
            self.counts[index] += 1
            self.total += seconds

    def snapshot(self) -> Tuple[List[int], float]:
        """(count per bucket, sum of seconds), consistent with each other."""
        with self.lock:
            return list(self.counts), self.total


class Metrics:
    """Counters for /metrics, by name and labels; thread-safe, cheap to bump.  The backend's
    read latencies are the store's own (Store.read_seconds)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counters: Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float] = {}

    @staticmethod
    def key(name: str, **labels: str) -> Tuple[str, Tuple[Tuple[str, str], ...]]:
        """A counter's identity; make it once, then add() to it (the hot paths do)."""
        return (name, tuple(sorted(labels.items())))

    def add(self, key: Tuple[str, Tuple[Tuple[str, str], ...]], amount: float = 1.0) -> None:
        with self.lock:
            self.counters[key] = self.counters.get(key, 0.0) + amount

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        self.add(self.key(name, **labels), amount)


class Monitor:
    """What /healthz and /metrics report: the store, the listeners' loops, the IRC bot and
    the counters they all bump.  `servers` is the daemon's own list of listeners (so it
    includes the web listener serving this); `missing` names listeners that could not bind
    under socket activation."""

    STALL = 5.0           # a loop that has not turned in this long is stuck

    def __init__(self, store: Optional["Store"], metrics: Metrics,
                 servers: Sequence["PooledTCPServer"] = (), bot: Optional["IRCBot"] = None,
                 missing: Sequence[str] = ()) -> None:
        self.store, self.metrics, self.bot = store, metrics, bot
        self.servers, self.missing = servers, missing

    def health(self) -> Tuple[bool, str]:
        """(True, 'ok') when every listener's loop turns and the store answers; a listener
        that could not bind under socket activation (`missing`) is named after the 'ok'."""
        now = time.monotonic()
        for server in self.servers:
            problem = server.loop_problem(now, self.STALL)
            if problem:
                return False, "the %s listener's loop %s" % (server.label, problem)
        problem = self.store.problem() if self.store is not None else None
        if problem:
            return False, problem
        for upstream in self.store.upstreams() if self.store is not None else ():
            problem = upstream.problem(1.0)    # an outage: served as last known, not fatal
            if problem:
                return False, problem + "; " + upstream.fallback
        bot = self.bot
        if bot is not None and not bot.running:
            return False, "the IRC bot's thread is not running"
        try:
            if self.store is not None:
                self.store.get("healthz-probe")
        except Exception as e:            # any failure of the backend is what we report
            return False, "the %s backend does not answer: %s" % (
                getattr(self.store, "name", "?"), clean_line(str(e))[:200])
        if self.missing:
            return True, "ok; not listening: " + "; ".join(self.missing)
        return True, "ok"


FINGER_REQUEST = Metrics.key("fingerd_requests_total", protocol="finger")
HTTP_REQUEST = Metrics.key("fingerd_requests_total", protocol="http")
RPC_REQUEST = Metrics.key("fingerd_requests_total", protocol="xmlrpc")
WRITE_OK = Metrics.key("fingerd_setter_writes_total", result="ok")
WRITE_ERROR = Metrics.key("fingerd_setter_writes_total", result="error")


# -- Stores -------------------------------------------------------------------------------

class Status(namedtuple("Status", "text set_at details expires_at",
                        defaults=(0.0, (), 0.0))):
    """A user's status: its text (lines joined by LF), when it was set (epoch seconds, 0 when
    unknown), what a verbose query adds ((label, text) pairs such as ("Name", ...)), and when
    it expires (epoch seconds; 0: never)."""
    __slots__ = ()


def check_status(text: str) -> str:
    """A status as stored (clean_text()) once it is within MAX_STATUS_BYTES and
    MAX_STATUS_LINES and not empty; else BadStatus."""
    text = clean_text(text)
    if len(text.encode("utf-8")) > MAX_STATUS_BYTES:
        raise BadStatus("status too long (at most %d bytes)" % MAX_STATUS_BYTES)
    if text.count("\n") >= MAX_STATUS_LINES:
        raise BadStatus("status has too many lines (at most %d)" % MAX_STATUS_LINES)
    if not text:
        raise BadStatus("empty status")
    return text


def parse_duration(spec: str, now: Optional[float] = None) -> float:
    """'90s', '15m', '2h', '1d', '1h30m', '1w' or plain seconds -> the epoch time it ends;
    BadStatus unless it is in the future and within MAX_EXPIRY."""
    parts = re.fullmatch(r"\s*((?:\d+(?:\.\d+)?[smhdw]?\s*)+)", spec or "", re.ASCII)
    if not parts:
        raise BadStatus("bad expiry %r (like 90s, 15m, 2h, 1d, 1h30m)" % spec[:40])
    seconds = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)([smhdw]?)", parts.group(1),
                                   re.ASCII):
        seconds += float(number) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400,
                                    "w": 604800}[unit]
    if not 0 < seconds <= MAX_EXPIRY:
        raise BadStatus("expiry must be between 1 second and %d days" % (MAX_EXPIRY // 86400))
    return (time.time() if now is None else now) + seconds


class Store:
    """Where statuses live, and nothing about protocols (the Template Method pattern).

    Callers use get(), items(), users(), set(), clear(), set_async(), refresh(),
    invalidate(), close() and the attributes `writable` (set() works), `blocking` (reads may
    wait on I/O, so protocol handlers run on worker threads), `version` (bumped on every
    change, for caches), `changes` (the recent ones, for /feed.atom) and `read_seconds` (a
    Histogram of every read, for /metrics).  The public methods are final: they validate
    names, time reads and lock, once for every backend.

    Subclasses implement _get(user, verbose, via), _items() and, if writable, _set(user,
    status); optionally _users() (when names are cheaper than statuses) and _set_async().
    A store that is not `blocking` is read under self.lock; a blocking one locks what it
    needs itself, so that one slow read (NFS, a remote) never holds up the others.  Each
    backend is made from the command line by from_args(); `name` is its --backend word
    (BACKENDS)."""

    name = "?"
    writable = True
    blocking = False
    groups_writes = False           # set_async(batch=...) and submit(batch) group writes

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._version = 0
        self.clock: Callable[[], float] = time.time
        self.changes: deque = deque(maxlen=CHANGE_LOG)   # (user, Status or None, when)
        self.read_seconds = Histogram()

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Store":
        """The store the command line describes, opened; StartupError when it cannot be."""
        raise NotImplementedError

    @property
    def version(self) -> int:
        """Bumped on every change, an expiry included: what caches compare."""
        return self._version

    def get(self, user: str, verbose: bool = False, via: str = "") -> Optional[Status]:
        """The user's status, or None for no such user (an invalid name is no such user).
        verbose asks for the details a backend can add (/W); `via` is the Via chain of the
        HTTP request being answered (RFC 9110 §7.6.3), which a backend asking other servers
        passes on (loop detection).  StoreUnavailable when the backend cannot answer now."""
        return self._read(self._get, user, verbose, via) if valid_name(user) else None

    def items(self, via: str = "") -> List[Tuple[str, Status]]:
        """(user, status) pairs sorted by name; StoreUnavailable as get()."""
        return sorted(self._read(self._items, via))

    def users(self, via: str = "") -> List[str]:
        """Sorted user names; StoreUnavailable as get()."""
        return sorted(self._read(self._users, via))

    def _read(self, read: Callable, *args):
        """read(*args), timed into read_seconds, under the lock unless blocking."""
        start = time.perf_counter()
        try:
            if self.blocking:
                return read(*args)
            with self.lock:
                return read(*args)
        finally:
            self.read_seconds.observe(time.perf_counter() - start)

    def set(self, user: str, text: str, expires_at: float = 0.0) -> Status:
        """Store a status (until expires_at, when given: then the user's lasting status shows
        again); return it as stored, once it is durable.  Raises BadName, BadStatus,
        ReadOnlyStore, StoreUnavailable."""
        status = self._status_to_set(user, text, expires_at)
        self._set(user, status)
        return status

    def clear(self, user: str) -> None:
        """Remove the user's statuses, lasting and expiring; raises as set()."""
        self._check_write(user)
        self._set(user, None)

    def set_async(self, user: str, text: Optional[str],
                  done: Callable[[Optional[FingerdError]], None], expires_at: float = 0.0,
                  batch: Optional[list] = None) -> None:
        """set() (or clear(), when text is None) without waiting: done(None) once it is
        durable, done(error) if not.  done may run on another thread (the sqlite writer), or
        before this returns.  `batch`: a list the calling thread owns and hands to submit()
        soon (a serving loop, at the end of its turn), so that the writes of one turn share
        a transaction, an fsync and one thread handoff; a store that does not group writes
        (groups_writes False) ignores it."""
        try:
            if text is None:
                self._check_write(user)
                status = None
            else:
                status = self._status_to_set(user, text, expires_at)
        except FingerdError as e:
            done(e)
            return
        if batch is not None and self.groups_writes:
            batch.append(_Write(user, status, done))
        else:
            self._set_async(user, status, done)

    def submit(self, batch: list) -> None:
        """Make durable the writes set_async() put in `batch`: each one's done() runs once
        it is (on another thread, or before this returns).  Only stores that group
        writes (groups_writes) get batches."""
        for w in batch:
            self._set_async(w.user, w.status, w.done)

    def problem(self) -> Optional[str]:
        """Why the store cannot serve at all (a thread of its own has died: the daemon
        exits), or None.  An outage of what it asks is not one (upstreams())."""
        return None

    def upstreams(self) -> List["Upstream"]:
        """What it asks and does not control (the name service, remote authorities)."""
        return []

    def refresh(self) -> None:
        """Re-read the source now (SIGHUP); a no-op where there is nothing to re-read."""

    def invalidate(self) -> None:
        """Count a change now, so that every answer cached for the old version goes
        (SIGHUP, after refresh())."""
        with self.lock:
            self._changed()

    def close(self) -> None:
        """Release files and threads; pending acknowledged writes are completed first."""

    def _check_write(self, user: str) -> None:
        if not self.writable:
            raise ReadOnlyStore("the %s backend is read-only" % self.name)
        if not valid_name(user):
            raise BadName(BAD_NAME)

    def _status_to_set(self, user: str, text: str, expires_at: float = 0.0) -> Status:
        """The Status a write of `text` stores (cleaned, stamped now); raises as set()."""
        self._check_write(user)
        now = self.clock()
        if expires_at and not now < expires_at <= now + MAX_EXPIRY:
            raise BadStatus("the expiry must be in the future, within %d days"
                            % (MAX_EXPIRY // 86400))
        return Status(check_status(text), now, (), expires_at)

    def _changed(self) -> None:
        self._version += 1

    def _get(self, user: str, verbose: bool, via: str) -> Optional[Status]:
        raise NotImplementedError

    def _items(self, via: str) -> Iterable[Tuple[str, Status]]:
        raise NotImplementedError

    def _users(self, via: str) -> Iterable[str]:
        return [user for user, _ in self._items(via)]

    def _set(self, user: str, status: Optional[Status]) -> None:
        """Store `status` for `user` (None: clear both slots), durably, then return."""
        raise NotImplementedError

    def _set_async(self, user: str, status: Optional[Status],
                   done: Callable[[Optional[FingerdError]], None]) -> None:
        try:
            self._set(user, status)
        except FingerdError as e:
            done(e)
            return
        done(None)


class DictStore(Store):
    """A store whose answers come from dicts in memory, so reads never block.

    _data holds each user's lasting status, _expiring the statuses that shadow it until they
    expire; the first expiry ahead is tracked so that `version` moves when it passes."""

    def __init__(self) -> None:
        super().__init__()
        self._data: Dict[str, Status] = {}
        self._expiring: Dict[str, Status] = {}
        self._next_expiry = 0.0

    @property
    def version(self) -> int:
        if self._next_expiry and self.clock() >= self._next_expiry:
            with self.lock:
                self._expire()
        return self._version

    def _expire(self) -> None:
        """Forget expired statuses (the lock held); the lasting ones show again."""
        now = self.clock()
        gone = [user for user, status in self._expiring.items() if status.expires_at <= now]
        for user in gone:
            del self._expiring[user]
        self._next_expiry = min((s.expires_at for s in self._expiring.values()), default=0.0)
        if gone:
            self._changed()

    def _get(self, user, verbose, via):
        status = self._expiring.get(user)
        if status is not None and status.expires_at > self.clock():
            return status
        return self._data.get(user)

    def _items(self, via):
        now = self.clock()
        merged = dict(self._data)
        merged.update((user, status) for user, status in self._expiring.items()
                      if status.expires_at > now)
        return merged.items()

    def _set(self, user, status):
        with self.lock:
            self._apply(user, status)

    def _apply(self, user: str, status: Optional[Status]) -> None:
        """One write, the lock held: None clears both; an expiring status shadows the lasting
        one; a lasting status replaces it and ends any expiring one."""
        if status is None:
            self._data.pop(user, None)
            self._expiring.pop(user, None)
        elif status.expires_at:
            self._expiring[user] = status
            if not self._next_expiry or status.expires_at < self._next_expiry:
                self._next_expiry = status.expires_at
        else:
            self._data[user] = status
            self._expiring.pop(user, None)
        # The change's time is the status's own (as stored, so that after a restart the feed
        # gives the entry the same id), or now for a clear.
        self.changes.append((user, status, status.set_at if status is not None and
                             status.set_at else self.clock()))
        self._changed()

    def _replace(self, data: Dict[str, Status]) -> None:
        with self.lock:
            if data != self._data:
                for user, status in data.items():
                    if self._data.get(user) != status:
                        self.changes.append((user, status, status.set_at or self.clock()))
                self._data = data
                self._changed()


def parse_users(text: str, source: str = "users file") -> Dict[str, Status]:
    """The seeds' /etc/users format: 'user: status' per line, split on the first colon.

    Records are lines ending in LF or CRLF (split_lines): a form feed or U+2028 inside one is
    text, filtered as in any status.  Blank lines and '#' comments are ignored; a malformed
    line, or one with an empty status, is skipped with a warning that names its line number.
    A status may use '\\n' for a line break and '\\\\' for a backslash."""
    users = {}
    for number, line in enumerate(split_lines(text), 1):
        stripped = line.strip(" \t\ufeff")     # a BOM mid-file: two files joined by cat
        if not stripped or stripped.startswith("#"):
            continue
        user, colon, status = stripped.partition(":")
        user = user.strip()
        status = status.strip(" \t")
        if "\\" in status:
            status = _USERS_FILE_ESCAPE.sub(_unescape, status)
        text = clean_text(status)
        if not colon or not valid_name(user) or not text:
            log.warning("%s line %d skipped: expected 'user: status' with a valid name and a "
                        "status, got %r", source, number, stripped[:80])
            continue
        users[user] = Status(text)
    return users


_USERS_FILE_ESCAPE = LazyPattern(r"\\([n\\])")


def _unescape(match) -> str:
    return "\n" if match.group(1) == "n" else "\\"


class MemoryStore(DictStore):
    """Volatile statuses in memory, seeded from a users file when given (statuses set when
    the file was last modified), or from `statuses`, user -> Status, taken as given: not
    filtered, so that tests can play a careless backend.  Raises OSError for the file."""

    name = "memory"

    def __init__(self, users_file: Optional[str] = None,
                 statuses: Optional[Dict[str, Status]] = None) -> None:
        super().__init__()
        if users_file:
            mtime = os.stat(users_file).st_mtime
            self._data = {user: status._replace(set_at=mtime) for user, status in
                          parse_users(read_users_file(users_file), users_file).items()}
        self._data.update(statuses or {})

    @classmethod
    def from_args(cls, args):
        try:
            return cls(args.users_file)
        except OSError as e:
            raise StartupError("cannot read users file %s: %s" % (args.users_file, e.strerror))

    def replace(self, statuses: Dict[str, Status]) -> None:
        """Every lasting status at once, taken as given (like `statuses`): a change."""
        self._replace(dict(statuses))

    def update(self, statuses: Dict[str, Status]) -> None:
        """These users' lasting statuses, taken as given; the others stay: a change."""
        with self.lock:
            self._replace(dict(self._data, **statuses))


def read_users_file(path: str) -> str:
    """The text of a users file (decode_text()), at most MAX_USERS_FILE bytes; raises
    OSError."""
    with open(path, "rb") as f:
        data = f.read(MAX_USERS_FILE + 1)
    cut = len(data) > MAX_USERS_FILE
    if cut:
        log.warning("%s is over %d bytes; only the start is read", path, MAX_USERS_FILE)
        data = data[:MAX_USERS_FILE]
    return decode_text(data, path, cut)


class Refresher:
    """Calls refresh() every `period` seconds on a named daemon thread until stop();
    soon(delay) asks for one earlier call."""

    def __init__(self, refresh: Callable[[], None], period: float, name: str) -> None:
        self._refresh, self.period = refresh, period
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._soon_at: Optional[float] = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            soon = self._soon_at
            self._wake.wait(self.period if soon is None else max(0.0, soon - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                return
            if self._soon_at is not None and time.monotonic() < self._soon_at:
                continue                        # woken to set a nearer time, not yet due
            self._soon_at = None
            try:
                self._refresh()
            except Exception:
                FAULTS.report(self._thread.name, "refresh failed")

    def soon(self, delay: float) -> None:
        at = time.monotonic() + delay
        if self._soon_at is None or at < self._soon_at:
            self._soon_at = at
            self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()


class FileStore(DictStore):
    """The admin's users file, re-read when it changes (checked every `refresh` seconds).

    Read-only to the network.  A missing or unreadable file keeps the last good data; a file
    that changes while being read is read again on the next check, never half-applied."""

    name = "file"
    writable = False
    settle = 1.0       # seconds a changed file must be still before it is read

    def __init__(self, path: str, refresh: float = DEFAULT_REFRESH) -> None:
        super().__init__()
        self.path = path
        self.refresh_seconds = refresh
        self._stamp = None
        self._problem = None          # the last failure logged, so it is logged once
        try:
            self._load(initial=True)
        except OSError as e:
            raise StartupError("cannot read users file %s: %s" % (path, e.strerror or e))
        self._refresher = Refresher(self.refresh, refresh, "file-refresh")

    @classmethod
    def from_args(cls, args):
        if not args.users_file:
            raise StartupError("--backend file needs --users-file PATH")
        return cls(args.users_file, args.refresh)

    def _file_stamp(self):
        st = os.stat(self.path)
        return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)

    def _load(self, initial: bool = False) -> bool:
        """Re-read the file if it changed; return True when new data was applied."""
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return False
        age = time.time() - stamp[0] / 1e9
        if not initial and 0 <= age < self.settle:
            # Changed a moment ago: perhaps still being written (cat > users). Half a file
            # is never applied; look again once it has been still for `settle` seconds.
            self._refresher.soon(self.settle - age + 0.05)
            return False
        text = read_users_file(self.path)
        if self._file_stamp() != stamp:       # written while we read it: try again later
            if initial:
                raise OSError(errno.EAGAIN, "file changed while being read")
            return False
        data = parse_users(text, self.path)
        mtime = stamp[0] / 1e9
        for user, status in data.items():   # a status is as old as the edit that made it
            old = self._data.get(user)
            data[user] = status._replace(set_at=old.set_at if old and old.text == status.text
                                         else mtime)
        self._replace(data)
        self._stamp = stamp
        if not initial:
            log.info("re-read %s: %d users", self.path, len(self._data))
        return True

    def refresh(self) -> None:
        try:
            self._load()
            if self._problem:
                log.info("users file %s is readable again", self.path)
            self._problem = None
        except OSError as e:
            problem = e.strerror or str(e)
            if problem != self._problem:
                log.warning("cannot read %s (%s); keeping the last good data", self.path,
                            problem)
            self._problem = problem

    def close(self) -> None:
        self._refresher.stop()


class _Write(namedtuple("_Write", "user status done")):
    """One setter write waiting for its group commit: the user (str), the Status (None: a
    clear), and whom to tell when it is done (done(error), error None or a FingerdError)."""
    __slots__ = ()


SCHEMA_VERSION = 2


def default_db_path() -> str:
    """fingerd.db in $STATE_DIRECTORY (systemd's StateDirectory=) or the current directory."""
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return os.path.join(state or ".", DB_NAME)


DB_BUSY_TIMEOUT = 5.0                 # seconds a write waits for another process's lock


class _Busy(Exception):
    """BEGIN IMMEDIATE found the write lock taken, and was not to wait for it."""


class SQLiteStore(DictStore):
    """The embedded default: statuses in an SQLite database, durable before acknowledged.

    WAL journal, synchronous=FULL, every write in a BEGIN IMMEDIATE transaction.  set() returns
    only after its COMMIT returned.  Writes are group-committed, so concurrent setters share
    an fsync: one writer thread commits whatever is waiting in one transaction, and a
    setter listener hands it the writes of each turn of its loop at once (set_async(batch=)
    then submit()), so that they cost one thread handoff, not one each.  Reads come from a copy in
    memory, updated after each commit: this process is the database's only writer.  A user has
    up to two rows: slot 0 the lasting status, slot 1 an expiring one."""

    name = "sqlite"
    MAX_BATCH = 512
    groups_writes = True
    SLOW_COMMIT = 0.25        # seconds: a commit this slow ...
    SLOW_FOR = 10             # ... has the writer thread commit every write until this long
                              # has passed without one (submit())

    def __init__(self, path: str) -> None:
        import queue
        import sqlite3
        super().__init__()
        self.path = path
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                       timeout=DB_BUSY_TIMEOUT)
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                log.warning("%s: WAL journal not available here (got %s)", path, mode)
            self._db.execute("PRAGMA synchronous=FULL")
            self._migrate()
            self._db.execute("DELETE FROM statuses WHERE slot = 1 AND expires_at <= ?",
                             (self.clock(),))
            rows = self._db.execute(
                "SELECT user, slot, status, set_at, expires_at FROM statuses").fetchall()
        except sqlite3.Error as e:
            raise StartupError("cannot open database %s: %s" % (path, e))
        now = self.clock()
        for user, slot, text, set_at, expires_at in rows:
            status = Status(text, set_at, (), expires_at or 0.0)
            if slot == 0:
                self._data[user] = status
            elif status.expires_at > now:
                self._expiring[user] = status
        self._next_expiry = min((s.expires_at for s in self._expiring.values()), default=0.0)
        recent = sorted(((status.set_at, user, status) for user, status in
                         list(self._data.items()) + list(self._expiring.items())))
        self.changes.extend((user, status, when) for when, user, status in recent[-CHANGE_LOG:])
        self._queue: "queue.SimpleQueue[Optional[_Write]]" = queue.SimpleQueue()
        self._write_lock = threading.Lock()      # one transaction at a time on self._db
        self._no_wait = False                    # _begin(): _Busy rather than wait
        self._handoff_until = 0.0                # submit(): the writer commits until then
        self._closed = False
        self._writer = threading.Thread(target=self._write_loop, name="sqlite-writer",
                                        daemon=True)
        self._writer.start()

    def _migrate(self) -> None:
        """Create the schema, or bring an older database to it, in one transaction."""
        import sqlite3
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError("made by a newer fingerd (schema %d)" % version)
        self._db.execute("BEGIN IMMEDIATE")
        old = self._db.execute("SELECT name FROM sqlite_master WHERE type='table' AND "
                               "name='statuses'").fetchone()
        if old:                         # schema 1: one row a user, no slots
            self._db.execute("ALTER TABLE statuses RENAME TO statuses_v1")
        self._db.execute(
            "CREATE TABLE statuses (user TEXT NOT NULL, slot INTEGER NOT NULL, status TEXT NOT "
            "NULL, set_at REAL NOT NULL, expires_at REAL, PRIMARY KEY (user, slot)) "
            "WITHOUT ROWID")
        if old:
            self._db.execute("INSERT INTO statuses SELECT user, 0, status, set_at, NULL FROM "
                             "statuses_v1")
            self._db.execute("DROP TABLE statuses_v1")
        self._db.execute("PRAGMA user_version=%d" % SCHEMA_VERSION)
        self._db.execute("COMMIT")

    @classmethod
    def from_args(cls, args):
        return cls(args.db or default_db_path())

    def _set(self, user, status):
        finished = threading.Event()
        errors: List[FingerdError] = []

        def done(error):
            if error is not None:
                errors.append(error)
            finished.set()
        self._set_async(user, status, done)
        finished.wait()
        if errors:
            raise errors[0]

    def _set_async(self, user, status, done):
        if self.problem():         # nobody would ever answer: refuse at once
            done(StoreUnavailable("the database writer is not running"))
            return
        self._queue.put(_Write(user, status, done))

    def problem(self) -> Optional[str]:
        if not self._writer.is_alive() and not self._closed:
            return "the sqlite writer thread is not running"
        return None

    def _write_loop(self) -> None:
        """The writer thread: whatever is queued (single writes, and the batches of
        serving loops' turns), committed together, until None."""
        import queue
        while True:
            first = self._queue.get()
            if first is None:
                break
            batch = list(first) if isinstance(first, list) else [first]
            while len(batch) < self.MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)      # finish this batch, then stop
                    break
                if isinstance(item, list):
                    batch.extend(item)
                else:
                    batch.append(item)
            self.commit(batch)

    def submit(self, batch: List[_Write]) -> None:
        """A serving loop's writes of one turn, committed right here in one transaction:
        no thread handoff, which costs more than the rest of a write (47 -> 40 µs of
        CPU).  Handed to the writer thread instead, so that the loop does not wait on
        them, when the writer is committing, when another process holds the database's
        write lock (at once, not after the busy timeout), and while the disk is slow: from
        a commit slower than SLOW_COMMIT (the loop's, which it waited for once, or the
        writer's) until SLOW_FOR seconds have passed without one."""
        if self.problem():
            error = StoreUnavailable("the database writer is not running")
            for w in batch:
                w.done(error)
            return
        if time.monotonic() < self._handoff_until or not self.commit(batch, wait=False):
            self._queue.put(batch)

    def commit(self, batch: List[_Write], wait: bool = True) -> bool:
        """The writes of `batch` in one transaction, on this thread; every done() has run
        when this returns True.  One transaction at a time.  With wait False, nothing is
        done and False returned when that would mean waiting: on another commit, or on
        another process's write lock."""
        if not self._write_lock.acquire(blocking=wait):
            return False
        try:
            if self._db is None or self.problem():   # closed, or the store is failing
                error = StoreUnavailable("the database writer is not running")
                for w in batch:
                    w.done(error)
                return True
            if not wait:
                self._db.execute("PRAGMA busy_timeout=0")
                self._no_wait = True
            started = time.monotonic()
            try:
                self._commit(batch)
                took = time.monotonic() - started
                if took > self.SLOW_COMMIT:          # the disk is slow: see submit()
                    if time.monotonic() >= self._handoff_until:
                        log.warning("database %s: a commit took %.1f s; the writer thread "
                                    "commits every write until %d s pass without a slow "
                                    "one", self.path, took, self.SLOW_FOR)
                    self._handoff_until = time.monotonic() + self.SLOW_FOR
            except _Busy:
                return False
            except Exception:
                # A bug, not a database error (those _commit answers itself): the batch is
                # refused, nothing in it was acknowledged, and the writers go on.
                FAULTS.report("sqlite-writer", "writing %d statuses to %s", len(batch),
                              self.path)
                self._rollback()
                for w in batch:
                    try:
                        w.done(StoreUnavailable("internal error: the status was not stored"))
                    except Exception:
                        FAULTS.report("sqlite-writer", "completion callback")
            finally:
                if not wait:
                    self._no_wait = False
                    self._db.execute("PRAGMA busy_timeout=%d" % (DB_BUSY_TIMEOUT * 1000))
            return True
        finally:
            self._write_lock.release()

    def _begin(self) -> None:
        """BEGIN IMMEDIATE: the write lock now, waiting up to the busy timeout for another
        process's; _Busy at once instead while _no_wait."""
        import sqlite3
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            if self._no_wait and "locked" in str(e):      # SQLITE_BUSY
                raise _Busy() from e
            raise

    UPSERT = ("INSERT INTO statuses (user, slot, status, set_at, expires_at) VALUES (?, ?, ?, ?, "
              "?) ON CONFLICT (user, slot) DO UPDATE SET status = excluded.status, set_at = "
              "excluded.set_at, expires_at = excluded.expires_at")

    def _commit(self, batch: List[_Write]) -> None:
        import sqlite3
        db = self._db
        try:
            self._begin()                # _Busy is not an sqlite3.Error: it goes up
            if all(w.status is not None and not w.status.expires_at for w in batch):
                self._write_lasting(batch)
            else:
                for w in batch:
                    self._write_one(w)
            db.execute("COMMIT")
        except sqlite3.Error as e:
            log.error("database %s: write of %d statuses failed: %s", self.path, len(batch), e)
            self._rollback()
            error: Optional[FingerdError] = StoreUnavailable("could not store the status: %s"
                                                             % e)
        else:
            error = None
            with self.lock:
                for w in batch:
                    self._apply(w.user, w.status)
        for w in batch:
            try:
                w.done(error)
            except Exception:
                FAULTS.report("sqlite-writer", "completion callback")

    def _write_lasting(self, batch: List[_Write]) -> None:
        """The common batch, lasting statuses only, in two statements.  A user has a slot-1
        row only while in _expiring (expired ones are purged at load)."""
        self._db.executemany(self.UPSERT, [(w.user, 0, w.status.text, w.status.set_at, None)
                                           for w in batch])
        with self.lock:
            shadowed = [(w.user,) for w in batch if w.user in self._expiring]
        if shadowed:
            self._db.executemany("DELETE FROM statuses WHERE user = ? AND slot = 1", shadowed)

    def _write_one(self, w: _Write) -> None:
        """A clear (both slots go), a lasting status (slot 0; an expiring one ends) or an
        expiring one (slot 1)."""
        status = w.status
        if status is None:
            self._db.execute("DELETE FROM statuses WHERE user = ?", (w.user,))
            return
        if not status.expires_at:
            self._db.execute("DELETE FROM statuses WHERE user = ? AND slot = 1", (w.user,))
        self._db.execute(self.UPSERT, (w.user, 1 if status.expires_at else 0, status.text,
                                       status.set_at, status.expires_at or None))

    def _rollback(self) -> None:
        import sqlite3
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def close(self) -> None:
        self._closed = True
        if self._writer.is_alive():
            self._queue.put(None)
            self._writer.join()
        with self._write_lock:           # after a commit in progress
            if self._db is not None:
                self._db.close()
                self._db = None


# -- Read-only backends -------------------------------------------------------------------

# The seeds' pluggable backends, read-only: local accounts' ~/.plan, the local finger program,
# and other servers' XML-RPC.  Their reads may wait on I/O (blocking = True), so the protocol
# handlers run on worker threads.

PLAN_LIMIT = 64 * 1024                # bytes of a .plan read; more is cut (RFC 1288 §3.2.5)
NO_PLAN = "No Plan."                  # what finger servers have always said
PROGRAM_TIMEOUT = 5.0                 # seconds for the local finger program
PROGRAM_OUTPUT_LIMIT = 64 * 1024      # bytes of its output kept
REMOTE_TIMEOUT = 5.0                  # seconds for each remote call (connect and reads)
REMOTE_MAX_RESPONSE = 4 * 1024 * 1024 # an XML-RPC answer larger than this is refused
# getUser calls per system.multicall for the user list; an answer over REMOTE_MAX_RESPONSE
# (large statuses: XML escaping can make one 16 KiB status 80 KiB) is asked again in halves.
REMOTE_BATCH = 200


LOOKUP_TIMEOUT = 2.0                  # seconds one account lookup in the name service may take
LOOKUP_WORKERS = 4                    # threads asking the name service, for all listeners
LOOKUP_WAITERS = 8                    # callers waiting on a slow name service; more: at once
LOOKUP_SLOW = 0.25                    # seconds a lookup may run before the name service is slow
STALE_ACCOUNTS = 86400.0              # an account found is still served this long in an outage
ENUMERATION_TIMEOUT = 20.0            # seconds for listing every account (getent passwd)
ENUMERATION_LIMIT = 64 * 1024 * 1024  # bytes of getent passwd's output read (~500k accounts)


def uid_range(login_defs: str = "/etc/login.defs") -> Tuple[int, int]:
    """UID_MIN and UID_MAX of login.defs: the ordinary accounts (default 1000-60000)."""
    found = {"UID_MIN": 1000, "UID_MAX": 60000}
    try:
        with open(login_defs, encoding="utf-8", errors="replace") as f:
            for line in f:
                words = line.split()
                if len(words) >= 2 and words[0] in found and words[1].isdigit():
                    found[words[0]] = int(words[1])
    except OSError:
        pass
    return found["UID_MIN"], found["UID_MAX"]


def default_homes(useradd: str = "/etc/default/useradd") -> str:
    """Where the homes are, as a glob: HOME= of useradd's defaults (default /home) + '/*'."""
    home = "/home"
    try:
        with open(useradd, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.strip().partition("=")
                value = value.strip().strip("\"'")
                if key.strip() == "HOME" and value.startswith("/"):
                    home = value.rstrip("/") or "/"
    except OSError:
        pass
    return os.path.join(home, "*")


def passwd_entry(line: bytes):
    """One passwd(5) line (bytes, as getent passwd or /etc/passwd give it) as a
    pwd.struct_passwd, text decoded as the pwd module decodes it (the file system encoding,
    surrogateescape); None for a line that is not an account (a comment, a NIS '+' line,
    a uid or gid that is not a number)."""
    import pwd
    fields = line.rstrip(b"\r\n").split(b":")
    if len(fields) != 7 or not fields[0] or fields[0][:1] in (b"#", b"+", b"-"):
        return None
    try:
        uid, gid = int(fields[2]), int(fields[3])
    except ValueError:
        return None
    text = [os.fsdecode(field) for field in fields]
    return pwd.struct_passwd((text[0], text[1], uid, gid, text[4], text[5], text[6]))


@functools.lru_cache(maxsize=None)
def libc_passwd():
    """The C library's getpwnam_r and getpwuid_r (through ctypes, on Linux: glibc and musl
    share struct passwd), or None elsewhere.  They tell "no such account" (0 and no entry)
    from "the name service failed" (an errno: ENOENT when nslcd cannot reach slapd or
    sssd is not running, EAGAIN, EIO...), where the pwd module raises KeyError for both
    (CPython's pwdmodule.c), which would make a directory outage a "No such user"."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)

        class Passwd(ctypes.Structure):
            _fields_ = [("pw_name", ctypes.c_char_p), ("pw_passwd", ctypes.c_char_p),
                        ("pw_uid", ctypes.c_uint32), ("pw_gid", ctypes.c_uint32),
                        ("pw_gecos", ctypes.c_char_p), ("pw_dir", ctypes.c_char_p),
                        ("pw_shell", ctypes.c_char_p)]
        result = ctypes.POINTER(Passwd)
        by_name, by_uid = libc.getpwnam_r, libc.getpwuid_r
        by_name.argtypes = [ctypes.c_char_p, result, ctypes.c_char_p, ctypes.c_size_t,
                            ctypes.POINTER(result)]
        by_uid.argtypes = [ctypes.c_uint32, result, ctypes.c_char_p, ctypes.c_size_t,
                           ctypes.POINTER(result)]
        by_name.restype = by_uid.restype = ctypes.c_int
    except (ImportError, OSError, AttributeError):
        return None

    def lookup(key):
        """The pwd.struct_passwd of `key` (a name or a uid); KeyError when there is no
        such account, OSError when the name service failed."""
        import pwd
        if isinstance(key, int):
            if not 0 <= key < 2 ** 32:
                raise KeyError(key)
            function, argument = by_uid, key
        else:
            function, argument = by_name, os.fsencode(key)
            if b"\0" in argument:
                raise KeyError(key)
        size = 16384
        while True:
            entry, found, buffer = Passwd(), result(), ctypes.create_string_buffer(size)
            code = function(argument, ctypes.byref(entry), buffer, size, ctypes.byref(found))
            if code == errno.ERANGE and size < 1 << 20:
                size *= 4
                continue
            if code:
                raise OSError(code, os.strerror(code))
            if not found:
                raise KeyError(key)
            text = [os.fsdecode(value or b"") for value in (
                entry.pw_name, entry.pw_passwd, entry.pw_gecos, entry.pw_dir, entry.pw_shell)]
            return pwd.struct_passwd((text[0], text[1], entry.pw_uid, entry.pw_gid,
                                      text[2], text[3], text[4]))
    return lookup


class Upstream:
    """Something a backend asks and does not control: the name service, or one remote
    authority (README: More than one machine).

    An outage begins with the first failure (a time-out, a refused connection) and ends with
    the first answer after it; each is logged once, at its start (WARNING) and at its end
    (INFO).  /healthz reports an outage (503, with problem()'s reason) and /metrics counts
    (fingerd_upstream_up, fingerd_upstream_outages_total, fingerd_upstream_failures_total,
    fingerd_upstream_slowdowns_total, labelled upstream=`label`).  Thread-safe."""

    fallback = "serving what it last said"

    def __init__(self, label: str, what: str) -> None:
        self.label = label              # "nss", or a remote's URL: the metrics label
        self.what = what                # in words, for logs and /healthz
        self.state_lock = threading.Lock()
        self.down_since: Optional[float] = None     # time.monotonic() of the outage's start
        self.reason = ""
        self.outages = 0                # outages begun
        self.failures = 0               # calls failed (several per outage)
        self.slowdowns = 0              # answers asking us to slow down (429, 503)
        self.shed = 0                   # calls answered without asking it (stale, or not)

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def failed(self, reason: str) -> bool:
        """Record one failure; True when it begins an outage (the caller logged nothing)."""
        with self.state_lock:
            self.failures += 1
            self.reason = reason
            if self.down_since is not None:
                return False
            self.down_since = time.monotonic()
            self.outages += 1
        log.warning("%s does not answer (%s); %s until it does", self.what, reason,
                    self.fallback)
        return True

    def worked(self) -> None:
        """Record an answer; ends an outage."""
        if self.down_since is None:
            return
        with self.state_lock:
            since, self.down_since = self.down_since, None
        if since is not None:
            log.info("%s answers again, after %.0f s", self.what, time.monotonic() - since)

    def problem(self, wait: float = 0.0) -> Optional[str]:
        """Why it is out, for /healthz, or None.  `wait`: seconds a subclass may wait for
        a check it starts."""
        since = self.down_since
        if since is None:
            return None
        return "%s has not answered for %.0f s (%s)" % (self.what, time.monotonic() - since,
                                                         self.reason)


class DaemonPool:
    """At most `workers` daemon threads running submitted calls in order, each answering
    through a concurrent.futures.Future: ThreadPoolExecutor's contract, except that a call
    stuck in the C library (a lookup in a hung directory) never holds up the process's exit,
    where ThreadPoolExecutor joins its threads (so SIGTERM and --inetd would wait on it)."""

    def __init__(self, workers: int, name: str) -> None:
        import queue
        self.workers, self.name = workers, name
        self._calls: "queue.SimpleQueue" = queue.SimpleQueue()
        self._threads = 0
        self._idle = 0
        self._lock = threading.Lock()

    def submit(self, function: Callable, *args):
        """Run function(*args) on a pool thread; its Future (cancel() works while queued)."""
        import concurrent.futures
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._calls.put((future, function, args))
        with self._lock:
            if self._idle == 0 and self._threads < self.workers:
                self._threads += 1
                threading.Thread(target=self._run, daemon=True,
                                 name="%s_%d" % (self.name, self._threads)).start()
        return future

    def _run(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            future, function, args = self._calls.get()
            with self._lock:
                self._idle -= 1
            if not future.set_running_or_notify_cancel():
                continue                                  # cancelled while queued
            try:
                result = function(*args)
            except Exception as e:
                future.set_exception(e)
            else:
                future.set_result(result)


class NameService(Upstream):
    """Account lookups that never hold up a listener (README: More than one machine).

    Accounts in /etc/passwd are read from the file itself (re-read when it changes), so
    local users never wait on a directory.  Any other name is asked of NSS (pwd.getpwnam,
    or the C library directly: libc_passwd()) on a pool of at most LOOKUP_WORKERS threads,
    each lookup within `timeout` seconds; once lookups have run LOOKUP_SLOW seconds, at
    most LOOKUP_WAITERS callers wait at once.  Answers, "no such account" included, are kept
    `ttl` seconds.  A lookup over its deadline, or one the C library reports as failed,
    begins an outage (Upstream): until a lookup answers in time again, nobody waits: one
    lookup at a time probes in the background, and callers get at once the account as last
    found (for up to STALE_ACCOUNTS seconds) or StoreUnavailable, never "no such account".

    enumerate() lists every account NSS gives (`getent passwd` in a subprocess, so a slow
    directory never holds the interpreter lock; within ENUMERATION_TIMEOUT).  `accounts`
    replaces the pwd module (tests): then lookups and getpwall() run on the pool too."""

    fallback = "serving accounts as last found"

    def __init__(self, accounts=None, ttl: float = DEFAULT_REFRESH,
                 timeout: float = LOOKUP_TIMEOUT, passwd: Optional[str] = None) -> None:
        super().__init__("nss", "the name service (NSS)")
        self.real = accounts is None              # the system's own: enumerate with getent
        if accounts is None:
            import pwd
            accounts, passwd = pwd, passwd or "/etc/passwd"
        self.accounts, self.passwd, self.timeout = accounts, passwd, timeout
        self._files: Tuple[object, Dict[object, object]] = (None, {})
        self._known = TTLCache(ttl)       # name or uid: the account, or None for none
        self._pending: Dict[object, object] = {}       # key: the Future asking NSS
        self._pool = None
        self._waiters = 0
        self._pending_since: Dict[object, float] = {}  # key: when its lookup was asked
        self._check = None                # the lookup probing during an outage
        self.lock = threading.Lock()

    # /etc/passwd, read directly ---------------------------------------------------------

    def local(self) -> Dict[object, object]:
        """The accounts of /etc/passwd by name and by uid (the first of a uid wins)."""
        if self.passwd is None:
            return {}
        try:
            st = os.stat(self.passwd)
        except OSError:
            return {}
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        files = self._files
        if files[0] == stamp:
            return files[1]
        found: Dict[object, object] = {}
        try:
            with open(self.passwd, "rb") as f:
                for line in f:
                    pw = passwd_entry(line)
                    if pw is not None:
                        found.setdefault(pw.pw_name, pw)
                        found.setdefault(pw.pw_uid, pw)
        except OSError:
            return files[1]
        self._files = (stamp, found)
        return found

    # Lookups ------------------------------------------------------------------------------

    def getpwnam(self, name: str):
        """The account named exactly `name`, or None; StoreUnavailable when the name service
        cannot tell now."""
        pw = self.local().get(name)
        return pw if pw is not None else self._lookup(name)

    def getpwuid(self, uid: int):
        """The account of `uid`, or None; StoreUnavailable as getpwnam()."""
        pw = self.local().get(uid)
        return pw if pw is not None else self._lookup(uid)

    def remember(self, pw) -> None:
        """Keep an account enumeration found, as a lookup would."""
        with self.lock:
            self._keep(pw.pw_name, pw)

    def _keep(self, key, pw) -> None:
        """An answer (the lock held): an account found is kept for outages."""
        self._known.put(key, pw, STALE_ACCOUNTS if pw else 0.0)

    def _ask(self, key):
        """On a pool thread: one NSS lookup.  The account or None; OSError when the name
        service failed (it said so, or answered after the deadline: a late "no such
        account" is what a dead directory says)."""
        start = time.monotonic()
        failure = None
        try:
            libc = libc_passwd() if self.real else None
            if libc is not None:
                pw = libc(key)
            elif isinstance(key, int):
                pw = self.accounts.getpwuid(key)
            else:
                pw = self.accounts.getpwnam(key)
            if not isinstance(key, int) and pw.pw_name != key:
                pw = None
        except (KeyError, ValueError, OverflowError):
            pw = None
        except OSError as e:
            pw, failure = None, e
        late = time.monotonic() - start > self.timeout
        with self.lock:
            self._pending.pop(key, None)
            self._pending_since.pop(key, None)
            if failure is None and not late:
                self._keep(key, pw)
        if failure is not None:
            raise failure
        if late:
            raise TimeoutError("a lookup took over %g s" % self.timeout)
        self.worked()
        return pw

    def _lookup(self, key):
        now = time.monotonic()
        with self.lock:
            known = self._known.fresh(key, self)          # self: not known
            if known is not self:
                return known
            if self.down_since is not None:        # an outage: nobody waits on it
                self._start_check(key)
                return self._stale(key, "does not answer")
            if self._waiters >= LOOKUP_WAITERS and self._pending and \
                    now - min(self._pending_since.values()) > LOOKUP_SLOW:
                return self._stale(key, "is slow")       # the others already wait
            future = self._submit(key)
            self._waiters += 1
        try:
            import concurrent.futures
            return future.result(self.timeout)
        except concurrent.futures.TimeoutError:
            if future.cancel():       # still queued: never asked (running: its answer is late)
                with self.lock:
                    if self._pending.get(key) is future:
                        del self._pending[key]
                        self._pending_since.pop(key, None)
            self.failed("a lookup took over %g s" % self.timeout)
            return self._stale(key, "does not answer")
        except concurrent.futures.CancelledError:   # another caller's deadline passed first
            return self._stale(key, "does not answer")
        except OSError as e:          # the name service said it failed (ENOENT, EAGAIN...)
            self.failed("a lookup failed: %s" % (e.strerror or e))
            return self._stale(key, "fails")
        finally:
            with self.lock:
                self._waiters -= 1

    def _submit(self, key):
        """The lookup of `key` under way, or a new one on the pool (the lock held)."""
        future = self._pending.get(key)
        if future is None:
            if self._pool is None:
                self._pool = DaemonPool(LOOKUP_WORKERS, "nss-lookup")
            future = self._pending[key] = self._pool.submit(self._ask, key)
            self._pending_since[key] = time.monotonic()
        return future

    def _start_check(self, key) -> None:
        """During an outage: one lookup at a time in the background (the lock held), whose
        answer in time ends the outage; callers meanwhile get what was last found."""
        check = self._check
        if check is None or check.done():
            self._check = self._submit(key)

    def problem(self, wait: float = 0.0) -> Optional[str]:
        """Upstream.problem(); during an outage it also starts a lookup in the background
        (one at a time) and waits up to `wait` seconds for it, so that /healthz sees a
        recovery at once, even when no query comes."""
        if self.down_since is None:
            return None
        with self.lock:
            if self._pool is not None:
                self._start_check("fingerd-healthz-probe")
            check = self._check
        if check is not None and wait > 0:
            import concurrent.futures
            try:
                check.result(wait)
            except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError,
                    OSError):
                pass
        return super().problem()

    def _stale(self, key, why: str):
        """The account as last found (the lock held, or not: a counter may miss one), else
        StoreUnavailable: a lookup answered without asking the name service."""
        self.shed += 1
        pw = self._known.stale(key)
        if pw is not None:
            return pw
        raise StoreUnavailable("the name service %s" % why)

    # Enumeration ----------------------------------------------------------------------------

    def enumerate(self, timeout: Optional[float] = None, quiet: bool = False) -> List[object]:
        """Every account NSS lists (local ones and, where the directory allows enumeration,
        the directory's), within `timeout` seconds (ENUMERATION_TIMEOUT); StoreUnavailable
        when it cannot: an outage, unless `quiet` (a short deadline, at start-up: a big
        directory may simply need longer)."""
        import shutil
        import subprocess
        timeout = ENUMERATION_TIMEOUT if timeout is None else timeout
        if not self.real:                            # an injected accounts module
            result: List[object] = []

            def run() -> None:
                result.extend(self.accounts.getpwall())
            thread = threading.Thread(target=run, name="nss-enumerate", daemon=True)
            thread.start()
            thread.join(timeout)
            if thread.is_alive():
                if not quiet:
                    self.failed("listing the accounts took over %g s" % timeout)
                raise StoreUnavailable("the name service does not answer")
            return result
        getent = shutil.which("getent")
        argv = [getent, "passwd"] if getent else [
            sys.executable, "-I", "-S", "-c",
            "import os, pwd, sys\nfor p in pwd.getpwall():\n"
            "    sys.stdout.buffer.write(os.fsencode(':'.join(map(str, p))) + b'\\n')"]
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, timeout=timeout,
                                  close_fds=True)
        except subprocess.TimeoutExpired:
            if not quiet:
                self.failed("listing the accounts took over %g s" % timeout)
            raise StoreUnavailable("the name service does not answer")
        except OSError as e:
            raise StoreUnavailable("cannot run %s: %s" % (argv[0], e.strerror or e))
        # getent exits 0, or 2 when NSS has nothing to list: the lines it gave stand.
        entries = [passwd_entry(line) for line in
                   done.stdout[:ENUMERATION_LIMIT].split(b"\n")[:-1]]
        return [pw for pw in entries if pw is not None]


def read_owned_file(path: str, uid: int, limit: int = PLAN_LIMIT
                    ) -> Optional[Tuple[str, float, bool]]:
    """(text, mtime, truncated) of a regular file owned by `uid`, else None.

    Never follows a symlink (O_NOFOLLOW: ~/.plan -> /etc/shadow), never waits on a FIFO or a
    device (O_NONBLOCK, then fstat must show a regular file), never reads a file someone else
    owns (a hard link to a root file), never reads more than `limit` bytes.  The text is
    decode_text()'s: UTF-8, else Windows-1252, never a character cut in two."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except (OSError, ValueError):
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != uid:
            return None
        chunks, size = [], 0
        while size <= limit:
            data = os.read(fd, limit + 1 - size)
            if not data:
                break
            chunks.append(data)
            size += len(data)
    except OSError:
        return None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    return decode_text(data[:limit], path, len(data) > limit), st.st_mtime, len(data) > limit


def gecos_details(gecos: str, login: str) -> List[Tuple[str, str]]:
    """The GECOS field as finger(1) shows it (passwd(5), BSD chfn): comma-separated full
    name, office, office phone, home phone; '&' in the name is the login name capitalised.
    -> [("Name", ...), ("Office", "ROOM, PHONE"), ("Home Phone", ...)], empty fields left
    out.  Bytes that are not UTF-8 are read as decode_text() reads files."""
    fields = [clean_line(field).strip() for field in
              os_text(gecos, "the GECOS field of " + login).split(",")] + ["", "", "", ""]
    name, office, office_phone, home_phone = fields[:4]
    details = []
    if name:
        details.append(("Name", name.replace("&", login[:1].upper() + login[1:])))
    if office and office_phone:
        details.append(("Office", "%s, %s" % (office, office_phone)))
    elif office or office_phone:
        details.append(("Office" if office else "Office Phone", office or office_phone))
    if home_phone:
        details.append(("Home Phone", home_phone))
    return details


class AccountPolicy:
    """Which accounts the pwd and process backends may show (README: Privacy).

    Ordinary accounts (`uids`, MIN..MAX: --uid-range, by default UID_MIN..UID_MAX of
    login.defs; never the overflow uid 65534 nor (uid_t)-2, -1) are shown with or without a
    plan; root, system and other accounts only while they publish a .plan this process can
    read.  ~/.nofinger hides an account, and the check fails closed: when it cannot be made
    (EACCES on a 0700 home, EIO, a stale NFS handle) the account is hidden, logged once at
    debug level.  Accounts come from a NameService, which keeps lookups, found or not, for
    `ttl` seconds: the name service answers "no such account" far slower than it finds one
    (50 us against 6 us with Debian's systemd NSS module), which would tell hidden accounts
    from unknown names to anyone who asks twice.  lookup() raises StoreUnavailable when the
    name service cannot tell now."""

    NOT_PEOPLE = frozenset((65534, 2 ** 32 - 2, 2 ** 32 - 1))    # overflow uid, (uid_t)-2, -1

    def __init__(self, accounts=None, uids: Optional[Tuple[int, int]] = None,
                 ttl: float = DEFAULT_REFRESH, timeout: float = LOOKUP_TIMEOUT) -> None:
        self.names = accounts if isinstance(accounts, NameService) else \
            NameService(accounts, ttl, timeout)
        self.accounts = self.names.accounts
        self.uid_min, self.uid_max = uids or uid_range()
        self._unsure: set = set()          # accounts already logged as hidden for an error

    def lookup(self, user: str):
        """The account named exactly `user` (a pwd entry), or None."""
        return self.names.getpwnam(user)

    def ordinary(self, pw) -> bool:
        return self.uid_min <= pw.pw_uid <= self.uid_max and pw.pw_uid not in self.NOT_PEOPLE

    def opted_out(self, pw) -> bool:
        """True when ~/.nofinger exists, or when that cannot be known: only "no such file"
        (ENOENT, ENOTDIR) means the user did not opt out."""
        try:
            os.lstat(os.path.join(pw.pw_dir, ".nofinger"))
            return True
        except (FileNotFoundError, NotADirectoryError):
            return False
        except (OSError, ValueError) as e:
            if pw.pw_name not in self._unsure and len(self._unsure) < 10000:
                self._unsure.add(pw.pw_name)
                log.debug("pwd: %s is hidden: cannot tell whether %s/.nofinger exists (%s)",
                          pw.pw_name, pw.pw_dir, getattr(e, "strerror", None) or e)
            return True

    def visible(self, user: str):
        """The account `user` if it may be shown at all (not opted out), else None."""
        pw = self.lookup(user)
        return None if pw is None or self.opted_out(pw) else pw

    def publishes(self, pw) -> bool:
        """True when the account's ~/.plan is a regular file it owns and we can read."""
        path = os.path.join(pw.pw_dir, ".plan")
        try:
            st = os.lstat(path)
        except (OSError, ValueError):
            return False
        return stat.S_ISREG(st.st_mode) and st.st_uid == pw.pw_uid and os.access(path, os.R_OK)


class PlanStore(Store):
    """Accounts and their ~/.plan, as finger has always shown them.

    Accounts come from the name service (NameService: /etc/passwd, then NSS, so LDAP or
    SSSD accounts work, each lookup with a deadline).  Ordinary accounts (AccountPolicy) are
    answered with or without a plan ('No Plan.'); root and system accounts only while they
    publish a readable .plan.  ~/.nofinger hides an account completely, failing closed.
    Files are read with read_owned_file().  /W (verbose) adds the GECOS fields
    (gecos_details()), ~/.project, ~/.pgpkey.

    The list is the visible accounts that publish a .plan, refreshed every `refresh`
    seconds from what a site really has (README: More than one machine): every account
    NSS enumerates, plus the owners of the .plan files under `homes` (a glob such as
    '/home/*'; directories that do not enumerate, SSSD's default), each confirmed by a
    lookup.  An account listed before is dropped only once a lookup says it is gone: while
    the directory does not answer, the list keeps it."""

    name = "pwd"
    writable = False
    blocking = True

    def __init__(self, refresh: float = DEFAULT_REFRESH, accounts=None,
                 uids: Optional[Tuple[int, int]] = None, homes: str = "",
                 timeout: float = LOOKUP_TIMEOUT) -> None:
        super().__init__()
        self.policy = AccountPolicy(accounts, uids, refresh, timeout)
        self.names = self.policy.names
        self.accounts = self.policy.accounts
        self.homes = homes
        self._listed: List[str] = []
        # Start-up waits at most a lookup's time for the enumeration (and one more for the
        # lookups, should the directory be out): a directory that is down must not hold up
        # start-up; the next refresh, in the background, waits as long as a big one needs.
        complete = self.refresh(enumeration_timeout=self.names.timeout, quiet=True)
        self._refresher = Refresher(self.refresh, refresh, "pwd-refresh")
        if not complete:
            self._refresher.soon(1.0)

    @classmethod
    def from_args(cls, args):
        return cls(args.refresh, uids=args.uid_range, timeout=args.lookup_timeout,
                   homes=default_homes() if args.homes is None else args.homes)

    def upstreams(self) -> List[Upstream]:
        return [self.names]

    def _get(self, user, verbose, via):
        # Blocking, so no store-wide lock around file reads: a slow home directory (NFS)
        # must not make every other query wait.
        pw = self.policy.visible(user)
        return None if pw is None else self._status(pw, verbose)

    def _status(self, pw, verbose: bool) -> Optional[Status]:
        """The account's status; None for a root or system account without a readable
        plan."""
        home, uid = pw.pw_dir, pw.pw_uid
        plan = read_owned_file(os.path.join(home, ".plan"), uid)
        if plan is None and not self.policy.ordinary(pw):
            return None
        text, mtime = NO_PLAN, 0.0
        if plan is not None:
            text = clean_text(plan[0]) or NO_PLAN
            mtime = plan[1]
            if plan[2]:
                text += "\n[plan cut at %d KiB]" % (PLAN_LIMIT // 1024)
        details = []
        if verbose:
            details.extend(gecos_details(pw.pw_gecos, pw.pw_name))
            project = read_owned_file(os.path.join(home, ".project"), uid)
            if project is not None and clean_text(project[0]):
                details.append(("Project", clean_text(project[0]).split("\n")[0]))
            key = read_owned_file(os.path.join(home, ".pgpkey"), uid)
            if key is not None and clean_text(key[0]):
                details.append(("PGP key", clean_text(key[0])))
        return Status(text, mtime, tuple(details))

    def _items(self, via):
        with self.lock:
            names = list(self._listed)
        out = []
        for name in names:
            try:
                pw = self.policy.visible(name)
            except StoreUnavailable:
                continue          # not found since the directory went away: left out now
            status = None if pw is None else self._status(pw, False)
            if status is not None:
                out.append((name, status))
        return out

    def _plan_owners(self) -> Iterable[Tuple[str, int]]:
        """(directory name, owner uid) of each home under `homes` holding a regular .plan."""
        if not self.homes:
            return
        import glob
        for home in sorted(glob.glob(self.homes))[:100000]:
            try:
                st = os.lstat(os.path.join(home, ".plan"))
            except (OSError, ValueError):
                continue
            if stat.S_ISREG(st.st_mode):
                yield os.path.basename(home.rstrip("/")), st.st_uid

    def refresh(self, enumeration_timeout: Optional[float] = None, quiet: bool = False
                ) -> bool:
        """Re-list the accounts that publish a .plan this process can read: enumeration,
        the owners of .plan files under `homes`, and the accounts listed before; a name is
        dropped only when a lookup says the account is gone or does not publish.  False
        when the name service could not answer all of it."""
        names = self.names
        found: Dict[str, object] = {}
        unsure: set = set()                 # could not be confirmed: the directory is out
        enumerated = True
        try:
            for pw in names.enumerate(enumeration_timeout, quiet):
                if valid_name(pw.pw_name):
                    found.setdefault(pw.pw_name, pw)
                    names.remember(pw)
        except StoreUnavailable:
            enumerated = False
        for home_name, uid in self._plan_owners():
            if home_name in found and found[home_name].pw_uid == uid:
                continue
            try:
                pw = names.getpwnam(home_name) if valid_name(home_name) else None
                if pw is None or pw.pw_uid != uid:
                    pw = names.getpwuid(uid)
            except StoreUnavailable:
                unsure.add(home_name)
                continue
            if pw is not None and valid_name(pw.pw_name):
                found.setdefault(pw.pw_name, pw)
        with self.lock:
            before = list(self._listed)
        for name in before:
            if name not in found:
                try:
                    pw = names.getpwnam(name)
                except StoreUnavailable:
                    unsure.add(name)
                    continue
                if pw is not None:
                    found[name] = pw
        policy = self.policy
        listed = {name for name, pw in found.items()
                  if not policy.opted_out(pw) and policy.publishes(pw)}
        listed.update(name for name in unsure if name in before)
        with self.lock:
            if sorted(listed) != self._listed:
                self._listed = sorted(listed)
                self._changed()
        return enumerated and not unsure

    def close(self) -> None:
        self._refresher.stop()


@functools.lru_cache(maxsize=None)
def utf8_locale() -> str:
    """The locale a program runs in for us: C.UTF-8 when this system has it (Debian always;
    glibc 2.35 builds it in), else the first UTF-8 locale our own environment names."""
    for name in ("C.utf8", "C.UTF-8"):
        if os.path.isdir(os.path.join("/usr/lib/locale", name)):
            return "C.UTF-8"
    for variable in ("LC_ALL", "LC_CTYPE", "LANG"):
        value = os.environ.get(variable, "")
        if value.lower().replace("-", "").endswith("utf8"):
            return value
    return "C.UTF-8"


# BSD finger (Debian's netkit-derived finger 0.17) prints every byte 0x80-0x9F as "M-^X"
# whatever the locale, which cuts UTF-8 apart: the dash U+2014 (E2 80 94) comes out as
# E2 "M-^@M-^T".  A run of bytes that is UTF-8 once those escapes are put back is put back.
_FINGER_ESCAPED_UTF8 = LazyPattern(rb"[\xc2-\xf4](?:[\x80-\xbf]|M-\^[@-_]){1,3}")
_FINGER_META = LazyPattern(rb"M-\^([@-_])")


def unescape_finger(data: bytes) -> bytes:
    """Output of finger(1) with the UTF-8 it escaped put back (see _FINGER_ESCAPED_UTF8);
    every other byte, and an escape that is not part of UTF-8, is left as it is."""
    if b"M-^" not in data:
        return data

    def restore(match):
        raw = _FINGER_META.sub(lambda m: bytes((m.group(1)[0] + 0x40,)), match.group())
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return match.group()
        return raw
    return _FINGER_ESCAPED_UTF8.sub(restore, data)


class ProcessStore(Store):
    """Statuses from the local finger program, run as PROGRAM -- USER without a shell.

    The name is validated first, so it can never be an option; the program gets 5 s, its own
    process group (killed whole on time-out), no input, a minimal environment in a UTF-8
    locale (utf8_locale()), and at most 64 KiB of its output is kept, read line by line as
    a file is (decode_text(), after unescape_finger()) and filtered like every status.

    The program runs only for an account that AccountPolicy lets be shown: a local login
    name (not a real name finger(1) would match), not hidden by ~/.nofinger, and for root
    and system accounts only while they publish a readable .plan."""

    name = "process"
    writable = False
    blocking = True

    def __init__(self, program: str = "finger", refresh: float = DEFAULT_REFRESH,
                 timeout: float = PROGRAM_TIMEOUT, accounts=None,
                 uids: Optional[Tuple[int, int]] = None,
                 lookup_timeout: float = LOOKUP_TIMEOUT) -> None:
        import shutil
        super().__init__()
        self.policy = AccountPolicy(accounts, uids, refresh, lookup_timeout)
        path = shutil.which(program)
        if path is None:
            raise StartupError("finger program %r not found or not executable (see "
                               "--finger-program)" % program)
        self.program, self.timeout = path, timeout
        self._list = TTLCache(refresh)      # "list": the logged-in users with statuses

    @classmethod
    def from_args(cls, args):
        if frozenset(args.show) != frozenset(ATOMS):
            raise StartupError("--show cannot apply to --backend process: its statuses are "
                               "the finger program's whole output, not separate atoms")
        return cls(args.finger_program, args.refresh, uids=args.uid_range,
                   lookup_timeout=args.lookup_timeout)

    def upstreams(self) -> List[Upstream]:
        return [self.policy.names]

    def run(self, *args: str) -> Tuple[int, str]:
        """(exit status, output) of PROGRAM ARGS; StoreUnavailable when it takes too long."""
        import signal
        import subprocess
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": utf8_locale()}
        try:
            proc = subprocess.Popen([self.program, *args], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                                    start_new_session=True, close_fds=True)
        except OSError as e:      # removed or made unrunnable since start-up; no processes
            raise StoreUnavailable("cannot run %s: %s" % (self.program, e.strerror or e))
        chunks, size, end = [], 0, time.monotonic() + self.timeout
        timed_out = False
        try:
            fd = proc.stdout.fileno()
            while size <= PROGRAM_OUTPUT_LIMIT:
                left = end - time.monotonic()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    timed_out = True
                    break
                data = os.read(fd, 65536)
                if not data:
                    break
                chunks.append(data)
                size += len(data)
        finally:
            try:          # the whole group, even when the program itself has exited: what
                os.killpg(proc.pid, signal.SIGKILL)     # it left running in the background
            except OSError:
                pass
            proc.stdout.close()
            proc.wait()
        if timed_out:
            raise StoreUnavailable("%s took longer than %g s" % (self.program, self.timeout))
        data = b"".join(chunks)
        cut = len(data) > PROGRAM_OUTPUT_LIMIT
        # Line by line: one account's Latin-1 .plan must not turn the UTF-8 GECOS above it
        # into mojibake.
        lines = unescape_finger(data[:PROGRAM_OUTPUT_LIMIT]).split(b"\n")
        return proc.returncode, "\n".join(
            decode_text(line, cut=cut and number == len(lines) - 1)
            for number, line in enumerate(lines))

    def _get(self, user, verbose, via):
        policy = self.policy
        pw = policy.visible(user)
        if pw is None or not (policy.ordinary(pw) or policy.publishes(pw)):
            return None
        _, output = self.run("--", user)
        text = clean_text(output)
        return Status(text) if text else None     # finger says "no such user" on stderr

    def _items(self, via):
        """Who is logged in (PROGRAM's table, run without arguments) with their statuses;
        cached for --refresh seconds, so a list costs one run per user per period."""
        items = self._list.fresh("list")
        if items is not None:
            return items
        _, output = self.run()
        names = []
        for line in clean_text(output).split("\n")[1:]:        # after the header line
            name = line.partition(" ")[0]
            if valid_name(name) and name not in names:
                names.append(name)
        found = []
        for name in sorted(names):
            status = self._get(name, False, via)
            if status is not None:
                found.append((name, status))
        with self.lock:
            if found != self._list.stale("list", []):
                self._changed()
            self._list.put("list", found, float("inf"))
        return found


class AnswerTooLarge(FingerdError):
    """A remote's answer over REMOTE_MAX_RESPONSE: the remote works, the question was too
    big (RemoteStore asks again for fewer users)."""


_XML_ENCODING = LazyPattern(rb"\s*<\?xml[^>]*?encoding\s*=\s*[\"']([A-Za-z0-9._-]+)")
_C0_BYTES = LazyPattern(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]")
_CHAR_REFERENCE = LazyPattern(r"&#(?:x([0-9A-Fa-f]{1,8})|([0-9]{1,10}));")


def xml_chars_only(data: bytes, source: str = "") -> bytes:
    """A UTF-8 XML document with what XML forbids replaced by U+FFFD (raw, as invalid
    UTF-8, or as a character reference such as &#xFFFE;) and terminal escape sequences
    removed whole, so that one bad string in an answer (an older server's status holding
    U+FFFF) does not make the whole answer, and every other user in it, unreadable; a name
    so marked is no longer a valid name, so it cannot stand for another.  A document
    declaring another encoding is returned as it is."""
    if data.isascii() and b"&#" not in data and not _C0_BYTES.search(data):
        return data                      # the common answer: nothing to look at
    declared = _XML_ENCODING.match(data)
    if declared and declared.group(1).lower() not in (b"utf-8", b"utf8"):
        return data
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    cleaned = text if text is not None else data.decode("utf-8", "replace")
    if _NOT_XML.search(cleaned):
        cleaned = _NOT_XML.sub("\ufffd", _ESCAPE_SEQUENCE.sub("", cleaned))

    def reference(match):
        code = int(match.group(1), 16) if match.group(1) else int(match.group(2))
        return match.group() if code <= 0x10FFFF and not _NOT_XML.match(chr(code)) else "\ufffd"
    if "&#" in cleaned:
        cleaned = _CHAR_REFERENCE.sub(reference, cleaned)
    if cleaned == text:
        return data
    if source:
        log.debug("%s: characters XML forbids removed from an answer", source)
    return cleaned.encode("utf-8")


@functools.lru_cache(maxsize=None)
def remote_transport_class(secure: bool):
    """An xmlrpc.client transport with a deadline, a size cap, no gzip and no DTDs; made on
    first use so that xmlrpc.client is not loaded at start-up."""
    import xmlrpc.client
    base = xmlrpc.client.SafeTransport if secure else xmlrpc.client.Transport

    class BoundedTransport(base):
        accept_gzip_encoding = False          # a gzip bomb would pass the size cap

        def __init__(self, timeout: float, via: str) -> None:
            super().__init__()
            self.timeout, self.via = timeout, via
            self._conn = None

        def request(self, host, handler, request_body, verbose=False):
            # One attempt on a new connection: Transport.request retries any failed
            # connection at once, which doubles the load on a remote that is already
            # failing.  The whole call has a
            # deadline: a remote that drips its answer a byte at a time (each read within
            # the socket timeout) is cut off by shutting the socket down under it.
            # A kept connection the remote closed while idle (its keep-alive timeout) fails
            # at once: that one call is tried again on a new connection (getUser, getUsers
            # and system.multicall of them are idempotent).
            reused = self._connection[1] is not None
            timer = threading.Timer(3 * self.timeout, self._expire)
            timer.daemon = True
            timer.start()
            try:
                try:
                    return self.single_request(host, handler, request_body, verbose)
                except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
                    if not reused:
                        raise
                return self.single_request(host, handler, request_body, verbose)
            finally:
                timer.cancel()

        def _expire(self) -> None:
            sock = getattr(self._conn, "sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        def make_connection(self, host):
            conn = self._conn = super().make_connection(host)
            conn.timeout = self.timeout
            return conn

        def send_headers(self, connection, headers):
            super().send_headers(connection, list(headers) + [("Via", self.via)])

        def parse_response(self, response):
            end = time.monotonic() + 2 * self.timeout
            data = bytearray()
            while True:
                chunk = response.read1(65536)      # what one recv gives: the deadline holds
                if not chunk:
                    break
                data += chunk
                if len(data) > REMOTE_MAX_RESPONSE:
                    raise AnswerTooLarge("answer over %d bytes" % REMOTE_MAX_RESPONSE)
                if time.monotonic() > end:
                    raise xmlrpc.client.ProtocolError(self.via, 502, "answer too slow", {})
            response.close()      # read whole: the connection is ready for the next call
            if re.search(rb"<!(?:DOCTYPE|ENTITY)", data, re.I):
                raise xmlrpc.client.ProtocolError(self.via, 502, "answer has a DTD", {})
            parser, unmarshaller = self.getparser()
            parser.feed(xml_chars_only(bytes(data), self.via))
            parser.close()
            return unmarshaller.close()

    return BoundedTransport


REMOTE_CONNECTIONS = 8                # persistent HTTP/1.1 connections kept to each remote


def retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """Seconds a Retry-After field (RFC 9110 §10.2.3: delay-seconds or an HTTP date) asks
    to wait, or None when there is no valid one."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value[:12])
    when = http_date_seconds(value)
    return None if when is None else max(0.0, when - (time.time() if now is None else now))


class Remote(Upstream):
    """One remote authority: its health, its back-off and its connections.

    A failure begins an outage (Upstream) and a back-off during which nobody calls it; when
    the wait is over one probe runs in the background (no stampede, and no caller waits on
    a remote that is down: they get its last answers).  The back-off advances once
    per round of calls, not once per call: calls in flight together that fail together
    count once (twelve failures at once are one step, not twelve), and it never exceeds
    `cap` (--refresh), so a recovered authority is noticed within --refresh.  A 429, or a
    503 with Retry-After, means "slow down", not "down": nobody calls it until Retry-After
    has passed (at most `cap` seconds), and no outage begins.  Calls share at most
    REMOTE_CONNECTIONS persistent HTTP/1.1 connections, so a burst of lookups opens no new
    TCP connection (and meets no per-address connection limit of the authority)."""

    fallback = "serving its last answers"

    def __init__(self, url: str, cap: float = DEFAULT_REFRESH,
                 timeout: float = REMOTE_TIMEOUT) -> None:
        super().__init__(url, "remote " + url)
        self.url, self.timeout = url, timeout
        self.cap = max(1.0, min(60.0, cap))
        self.backoff = Backoff(initial=1.0, maximum=self.cap)
        self.retry_at = 0.0
        self.round = 0               # back-off steps taken: a call fails its round once
        self.looped = False
        self.check: Optional[Callable[[], None]] = None   # the probe during an outage
        self._checker: Optional[threading.Thread] = None  # the thread running it
        self.users: Optional[List[str]] = None      # its last good user list
        self.listed_at = -1e9                       # when (time.monotonic()) it was asked
        self.lock = threading.Lock()
        self._idle: List[object] = []               # transports with a connection open
        self._slots = threading.BoundedSemaphore(REMOTE_CONNECTIONS)

    def may_call(self, probe: bool = False) -> Optional[int]:
        """The round a call begins in, or None when nobody may call it now.  During an
        outage only the `probe` (check(), in the background, once the back-off allows) may:
        a caller asking then starts it and gets None, so nobody waits on a remote that is
        down."""
        if self.looped:
            return None
        with self.lock:
            now = time.monotonic()
            if now < self.retry_at:
                return None
            if self.down:
                if not probe:
                    self._start_check()
                    return None
                self.retry_at = now + 3 * self.timeout      # one probe at a time
            return self.round

    def _start_check(self) -> None:
        """Start check() on a thread of its own, unless one runs (self.lock held)."""
        if self.check is None or (self._checker is not None and self._checker.is_alive()):
            return
        self._checker = threading.Thread(target=self.check, name="remote-check", daemon=True)
        self._checker.start()

    def failed_call(self, reason: str, round_: int) -> None:
        """A call begun in `round_` failed: the back-off takes one step per round."""
        with self.lock:
            if round_ == self.round:
                self.round += 1
                delay = self.backoff.next()
                self.retry_at = time.monotonic() + delay
                log.debug("remote %s: next try in %.1f s", self.url, delay)
        self.failed(reason)

    def answered(self) -> None:
        if self.retry_at or self.down:
            with self.lock:
                self.retry_at = 0.0
                self.backoff.reset()
        self.worked()

    def slow_down(self, seconds: float, code: int) -> None:
        """The remote answered `code` (429 or 503) asking to wait `seconds`."""
        seconds = min(max(seconds, 0.0), self.cap)
        with self.lock:
            self.retry_at = max(self.retry_at, time.monotonic() + seconds)
        with self.state_lock:
            self.slowdowns += 1
        log.debug("remote %s answered %d: not calling it for %.1f s", self.url, code, seconds)

    def problem(self, wait: float = 0.0) -> Optional[str]:
        """Upstream.problem(), or the loop found; during an outage it also starts the
        probe (once the back-off allows) and waits up to `wait` seconds for it, so that
        /healthz sees a recovery at once, even when no query comes."""
        if self.looped:
            return "remote %s leads back to this server" % self.url
        if not self.down:
            return None
        with self.lock:
            if time.monotonic() >= self.retry_at:
                self._start_check()
            checker = self._checker
        if checker is not None and wait > 0:
            checker.join(wait)
        return super().problem()

    def transport(self, via: str):
        """A transport from this remote's pool (its connection kept open between calls), or
        None when all REMOTE_CONNECTIONS are busy for `timeout` seconds.  release() it."""
        if not self._slots.acquire(timeout=self.timeout):
            return None
        with self.lock:
            transport = self._idle.pop() if self._idle else None
        if transport is None:
            transport = remote_transport_class(self.url.startswith("https:"))(self.timeout,
                                                                               via)
        transport.via = via
        return transport

    def release(self, transport, keep: bool) -> None:
        """Give a transport back: kept for the next call, or closed (after a failure, its
        connection may hold half an answer)."""
        if keep:
            with self.lock:
                self._idle.append(transport)
        else:
            transport.close()
        self._slots.release()

    def close(self) -> None:
        with self.lock:
            idle, self._idle = self._idle, []
        for transport in idle:
            transport.close()


class RemoteStore(Store):
    """Statuses from other fingerd servers (or compatible ones) over XML-RPC /RPC2.

    Several remotes (authorities) are federated (README: More than one machine): the user
    lists are merged, and a user's answer comes from the authority that last answered for
    them (at first, the first in --remote order that knows them).  Answers, unknown users
    included, are cached for `refresh` seconds.  While an authority is down (Remote), its
    users keep their last answers, in lookups and in the list alike, and another
    authority's "No such user" never hides them; a name that only a down authority might
    know is "temporarily unavailable", not unknown.  Calls go over persistent connections
    with a deadline and a size cap.  A remote that leads back to this server (found by the
    Via chain of instance ids) is disabled with one log line."""

    name = "xmlrpc"
    writable = False
    blocking = True
    def __init__(self, urls: Sequence[str], refresh: float = DEFAULT_REFRESH,
                 timeout: float = REMOTE_TIMEOUT) -> None:
        import urllib.parse
        super().__init__()
        if not urls:
            raise StartupError("--backend xmlrpc needs at least one --remote URL")
        for url in urls:
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise StartupError("--remote %s: expected an http:// or https:// URL" % url)
        self.remotes = [Remote(url, refresh, timeout) for url in urls]
        for remote in self.remotes:
            remote.check = functools.partial(self._check, remote)
        self.timeout = timeout
        self._known: Dict[str, Tuple[float, Status, Remote]] = {}   # when, status, authority
        self._unknown = TTLCache(refresh, 10000)    # names no authority knew: True
        self._merged: List[str] = []                 # the merged list last made

    @classmethod
    def from_args(cls, args):
        return cls(args.remote, args.refresh)

    @property
    def refresh_seconds(self) -> float:
        """--refresh: how long an answer, "no such user" included, is fresh."""
        return self._unknown.ttl

    @refresh_seconds.setter
    def refresh_seconds(self, value: float) -> None:
        self._unknown.ttl = value

    def upstreams(self) -> List[Upstream]:
        return list(self.remotes)

    def _check(self, remote: Remote) -> None:
        """The probe of a remote that is out (Remote.may_call()): its list, asked in the
        background; an answer ends the outage."""
        try:
            self._list(remote, "", probe=True)
        except AnswerTooLarge:
            pass

    def _list(self, remote: Remote, via: str, probe: bool = False) -> None:
        """Ask a remote for its list (getUsers) into remote.users; a remote that cannot
        answer now keeps its last good list."""
        try:
            answer = self._call(remote, "getUsers", via=via, probe=probe)
        except StoreUnavailable:
            return
        if isinstance(answer, list):
            remote.users = [n for n in answer if isinstance(n, str) and valid_name(n)]
        remote.listed_at = time.monotonic()

    def _call(self, remote: Remote, method: str, *args, via: str = "", probe: bool = False):
        """One call; StoreUnavailable when the remote cannot answer now, AnswerTooLarge
        when its answer is over REMOTE_MAX_RESPONSE, RequestLoop when it leads back to
        another server (which answers the loop).  `via`: the Via chain of the request
        being answered, which the call carries on with this server's id added (RFC 9110
        §7.6.3), so that a chain of front-ends that leads back here is seen (loop_fault()).
        `probe`: the one call allowed during an outage."""
        import http.client
        round_ = remote.may_call(probe)
        if round_ is None:
            with remote.state_lock:
                remote.shed += 1
            raise StoreUnavailable("remote %s is not answering" % remote.url)
        import xmlrpc.client
        transport = remote.transport(via_chain(via))
        if transport is None:
            raise StoreUnavailable("remote %s: all %d connections busy"
                                   % (remote.url, REMOTE_CONNECTIONS))
        keep = False
        try:
            result = getattr(xmlrpc.client.ServerProxy(remote.url, transport=transport),
                             method)(*args)
            keep = True
        except xmlrpc.client.Fault as e:
            keep = True
            if "request loop" in str(e.faultString):
                origin = loop_origin(str(e.faultString))
                remote.answered()
                if origin and origin != INSTANCE_ID:
                    raise RequestLoop(origin)    # another's loop, passed on
                remote.looped = True
                log.error("remote %s leads back to this server; it is not used", remote.url)
                raise StoreUnavailable("remote loop")
            remote.answered()                      # it answered, with a fault
            raise StoreUnavailable("remote fault: %s" % clean_line(str(e.faultString))[:200])
        except AnswerTooLarge:
            remote.answered()                      # it answered: ask for less
            raise
        except xmlrpc.client.ProtocolError as e:
            fields = {str(k).lower(): v for k, v in (e.headers or {}).items()}
            wait = retry_after(fields.get("retry-after"))
            if e.errcode == 429 or (e.errcode == 503 and wait is not None):
                remote.slow_down(1.0 if wait is None else wait, e.errcode)
                raise StoreUnavailable("remote %s asks to slow down" % remote.url)
            remote.failed_call("HTTP %d %s" % (e.errcode, clean_line(str(e.errmsg))[:100]),
                               round_)
            raise StoreUnavailable("remote %s failed" % remote.url)
        except (OSError, xmlrpc.client.Error, http.client.HTTPException, ValueError,
                TypeError, AttributeError) as e:
            remote.failed_call(clean_line(str(e))[:200] or type(e).__name__, round_)
            raise StoreUnavailable("remote %s failed" % remote.url)
        except Exception as e:                     # malformed XML and other garbage
            remote.failed_call("bad answer: %s" % type(e).__name__, round_)
            raise StoreUnavailable("remote %s answered garbage" % remote.url)
        finally:
            remote.release(transport, keep)
        remote.answered()
        return result

    def _remember(self, user: str, status: Optional[Status], remote: Optional[Remote]) -> None:
        now = time.monotonic()
        with self.lock:
            if status is None:
                self._known.pop(user, None)
                self._unknown.put(user, True)
                return
            self._unknown.pop(user)
            if len(self._known) > 100000:
                listed = set(self._merged)
                self._known = {k: v for k, v in self._known.items() if k in listed}
            self._known[user] = (now, status, remote)

    def _might_know(self, remote: Remote, user: str) -> bool:
        """Whether a remote that could not be asked might know `user`: it is on its last
        list, or it never gave one (a remote leading back here knows nobody)."""
        return not remote.looped and (remote.users is None or user in remote.users)

    def _get(self, user, verbose, via):
        now = time.monotonic()
        with self.lock:
            known = self._known.get(user)
            unknown = self._unknown.fresh(user, False)
        if known is not None and now - known[0] < self.refresh_seconds:
            return known[1]
        if known is None and unknown:
            return None
        authority = known[2] if known is not None else None
        order = self.remotes if authority is None else \
            [authority] + [r for r in self.remotes if r is not authority]
        unsure, answered, loop = False, False, None
        for remote in order:
            try:
                text = self._call(remote, "getUser", user, via=via)
            except AnswerTooLarge:
                log.warning("remote %s: the status of %s is over %d bytes; left out",
                            remote.url, user, REMOTE_MAX_RESPONSE)
                unsure = True
                continue
            except RequestLoop as e:
                loop = e
                continue
            except StoreUnavailable:
                if remote is authority:
                    return known[1]        # its authority is out: its last answer, stale
                unsure = unsure or self._might_know(remote, user)
                continue
            answered = True
            if isinstance(text, str) and text.strip() not in ("", NO_SUCH_USER):
                status = Status(clean_text(text))
                self._remember(user, status, remote)
                return status
        if loop is not None and not answered:
            raise loop
        if unsure or not answered:
            raise StoreUnavailable("no authority that answered knows %s" % user)
        self._remember(user, None, None)
        return None

    def _users(self, via):
        """The merged lists.  Each authority's list is asked again once it is `refresh`
        seconds old; one that could not be asked is asked at the next call (calls to a
        remote that is down wait for its back-off), so a recovered authority's list shows
        at once, and the others are not asked more often meanwhile."""
        now = time.monotonic()
        if all(now - remote.listed_at < self.refresh_seconds for remote in self.remotes):
            return self._merged
        merged = set()
        for remote in self.remotes:
            if now - remote.listed_at >= self.refresh_seconds:
                self._list(remote, via)
            merged.update(remote.users or ())
        if any(remote.users is None for remote in self.remotes):
            with self.lock:        # never listed (down since start-up): whom it answered for
                merged.update(name for name, (_, _, authority) in self._known.items()
                              if authority is not None and authority.users is None)
        names = sorted(merged)
        with self.lock:
            if names != self._merged:
                self._changed()
            self._merged = names
        return names

    def _items(self, via):
        """The merged list with statuses, asked with system.multicall (not once per user);
        a user whose authority does not answer keeps their last status."""
        names = self._users(via)
        now = time.monotonic()
        found: Dict[str, Optional[Status]] = {}
        with self.lock:
            known = {name: self._known.get(name) for name in names}
        for name, entry in known.items():
            if entry is not None and now - entry[0] < self.refresh_seconds:
                found[name] = entry[1]
        def elsewhere(name: str, remote: Remote) -> bool:
            """The user stays with another authority: down, or still listing them."""
            entry = known.get(name)
            owner = entry[2] if entry is not None else None
            return owner is not None and owner is not remote and (
                owner.down or owner.users is None or name in owner.users)
        for remote in self.remotes:
            wanted = [n for n in (remote.users or ())
                      if found.get(n) is None and not elsewhere(n, remote)]
            for start in range(0, len(wanted), REMOTE_BATCH):
                if not self._fetch(remote, wanted[start:start + REMOTE_BATCH], found, via):
                    break
        for name, entry in known.items():
            if found.get(name) is None and entry is not None:
                found[name] = entry[1]             # stale: its authority did not answer
        return [(name, found[name]) for name in names if found.get(name) is not None]

    def _fetch(self, remote: Remote, batch: List[str], found: Dict[str, Optional[Status]],
               via: str) -> bool:
        """The statuses of `batch` from one system.multicall into `found`; an answer too
        large is asked again in halves.  False when the remote cannot answer now."""
        calls = [{"methodName": "getUser", "params": [n]} for n in batch]
        try:
            results = self._call(remote, "system.multicall", calls, via=via)
        except AnswerTooLarge:
            if len(batch) == 1:
                log.warning("remote %s: the status of %s is over %d bytes; left out",
                            remote.url, batch[0], REMOTE_MAX_RESPONSE)
                return True
            half = len(batch) // 2
            return (self._fetch(remote, batch[:half], found, via)
                    and self._fetch(remote, batch[half:], found, via))
        except StoreUnavailable:
            return False
        for name, result in zip(batch, results if isinstance(results, list) else []):
            if isinstance(result, list) and result and isinstance(result[0], str) \
                    and result[0].strip() not in ("", NO_SUCH_USER):
                found[name] = Status(clean_text(result[0]))
                self._remember(name, found[name], remote)
        return True

    def close(self) -> None:
        for remote in self.remotes:
            remote.close()


BACKENDS: Dict[str, type] = {store.name: store for store in (
    SQLiteStore, MemoryStore, FileStore, PlanStore, ProcessStore, RemoteStore)}


def open_store(args: argparse.Namespace) -> Store:
    """The backend the command line names (--backend), opened; StartupError when it cannot
    be."""
    return BACKENDS[args.backend].from_args(args)


# -- Serving loop -------------------------------------------------------------------------

class ClientLimiter:
    """Per-address limits for one listener: open connections and new connections a second.

    Addresses are counted whole for IPv4 and by /64 for IPv6 (one subscriber's share).
    Loopback is exempt unless `limit_loopback`: local tools and reverse proxies all come from
    there.  Only the listener's loop thread uses it, so it needs no lock."""

    def __init__(self, max_conns: int = MAX_CONNS_PER_IP, rate: float = RATE_PER_IP,
                 limit_loopback: bool = False, clock: Callable[[], float] = time.monotonic,
                 exempt: Sequence = ()) -> None:
        """`exempt`: networks never limited here (trusted reverse proxies: their clients are
        limited one by one, per request, through admit_request())."""
        self.max_conns, self.rate, self.limit_loopback = max_conns, rate, limit_loopback
        self.exempt = list(exempt)
        self.clock = clock
        self.open: Dict[str, int] = {}
        self.buckets: Dict[str, Tuple[float, float]] = {}      # key -> (tokens, when)
        self._keys: Dict[str, Optional[str]] = {}               # address -> key

    def key(self, peer) -> Optional[str]:
        """The address a peer is counted under; None when it is not limited.  Memoised: it
        runs for every accepted connection."""
        host = peer[0] if isinstance(peer, tuple) and peer else peer
        try:
            return self._keys[host]
        except (KeyError, TypeError):
            pass
        key = self._key(peer)
        if len(self._keys) >= 4096:              # a scan of many addresses: start over
            self._keys.clear()
        try:
            self._keys[host] = key
        except TypeError:
            pass
        return key

    def _key(self, peer) -> Optional[str]:
        import ipaddress
        address = normalise_ip(peer[0]) if isinstance(peer, tuple) and peer else None
        if address is None:
            return None                         # not an IP client (a Unix socket)
        if address.is_loopback and not self.limit_loopback:
            return None
        if any(address in net for net in self.exempt):
            return None
        if address.version == 6:
            return str(ipaddress.ip_network("%s/64" % address, strict=False))
        return str(address)

    def admit(self, peer) -> Optional[Refusal]:
        """None when the peer may connect (then counted until release()), else the reason."""
        key = self.key(peer)
        if key is None:
            return None
        if self.max_conns and self.open.get(key, 0) >= self.max_conns:
            return Refusal.TOO_MANY
        if not self._take_token(key):
            return Refusal.TOO_MANY
        self.open[key] = self.open.get(key, 0) + 1
        return None

    def admit_request(self, address: str) -> Optional[Refusal]:
        """The rate limit for one request of a client behind a trusted proxy (whose
        connections are the proxy's): None when allowed, else Refusal.TOO_MANY."""
        key = self.key((address, 0))
        if key is None or self._take_token(key):
            return None
        return Refusal.TOO_MANY

    def _take_token(self, key: str) -> bool:
        """One token from key's bucket (`rate` a second, up to twice that); False if none."""
        if not self.rate:
            return True
        now = self.clock()
        tokens, when = self.buckets.get(key, (2 * self.rate, now))
        tokens = min(2 * self.rate, tokens + (now - when) * self.rate)
        if tokens < 1:
            self.buckets[key] = (tokens, now)
            return False
        self.buckets[key] = (tokens - 1, now)
        return True

    def release(self, peer) -> None:
        key = self.key(peer)
        if key is not None and key in self.open:
            self.open[key] -= 1
            if not self.open[key]:
                del self.open[key]

    def prune(self) -> None:
        """Forget addresses whose bucket is full again and that hold no connection."""
        now = self.clock()
        for key, (tokens, when) in list(self.buckets.items()):
            if key not in self.open and tokens + (now - when) * self.rate >= 2 * self.rate:
                del self.buckets[key]


class State(enum.Enum):
    """Where a connection is in its life.  Only the listener's loop thread changes it."""
    READING = "reading"       # waiting for (the rest of) a request
    BUSY = "busy"             # its handler is making the reply elsewhere (a worker, a commit)
    WRITING = "writing"       # a reply is partly sent; waiting for the socket to take more
    LINGERING = "lingering"   # our side is shut after an error reply; input is discarded


class After(enum.Enum):
    """What a handler asks the loop to do with its connection once the reply is sent."""
    CLOSE = "close"           # close (lingering first if unread input is buffered)
    KEEP = "keep"             # a persistent connection: read the next request
    LINGER = "linger"         # an error: shut our side, discard input briefly, then close
    PENDING = "pending"       # no reply yet: it comes later through server.complete()


class Connection:
    """One accepted client, owned by its server's loop thread (or by one worker at a time,
    while BUSY).  `served` counts the requests framed on it so far."""

    __slots__ = ("sock", "fd", "peer", "inbuf", "outbuf", "deadline", "state", "eof",
                 "request", "after", "watching", "interim_sent", "served", "queued")

    def __init__(self, sock: socket.socket, peer, deadline: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.inbuf = b""
        self.outbuf: List[memoryview] = []   # the unsent rest of a reply: views, not copies
        self.deadline = deadline
        self.state = State.READING
        self.eof = False
        self.request = b""          # the complete request the handler reads
        self.after = After.CLOSE    # what follows the reply being sent
        self.watching = 0           # the selector events registered for it (0: none)
        self.interim_sent = False   # an interim reply went out for the request being read
        self.served = 0             # requests framed on this connection
        self.queued = False         # in the loop's queue of connections with input to serve


class ReplyBuffer:
    """The handler's wfile: it keeps the bytes objects written, not a copy of them, so a
    large cached page or user list is held once however many slow clients are sent it."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: List[bytes] = []

    def write(self, data: bytes) -> int:
        if data:
            self.parts.append(data)
        return len(data)

    def flush(self) -> None:
        pass

    def getvalue(self) -> bytes:
        return b"".join(self.parts)


class BufferedRequestHandler(socketserver.BaseRequestHandler):
    """A request handler that runs on one complete request the loop already read, with
    StreamRequestHandler's rfile and wfile (whose own setup() would read the socket).

    `self.request` is the Connection; `self.rfile` holds exactly the request bytes and
    `self.wfile` collects the reply, which the loop sends without blocking.  `self.final` is
    True for the last request the connection may carry (PooledTCPServer.max_requests): a
    persistent protocol says so in its reply (HTTP: Connection: close).

    Subclasses implement handle() and the class methods request_length() and refusal().
    handle() may set `self.after` to an After member (default CLOSE).  An exception from
    handle() is contained by the server: counted, logged, answered with refusal(ERROR)."""

    recv_size = 4096
    interim = None      # optional class method: buffered incomplete request -> bytes to send

    def setup(self) -> None:
        conn = self.request
        self.connection = conn.sock
        self.rfile = io.BytesIO(conn.request)
        self.wfile = ReplyBuffer()
        self.after = After.CLOSE
        self.final = conn.served >= self.server.max_requests

    def finish(self) -> None:
        pass

    @classmethod
    def request_length(cls, buf: bytes, eof: bool) -> Optional[int]:
        """Bytes of buf forming one complete request, None if more is needed, or raise
        RequestTooLarge.  `eof` is True once the peer has closed its side."""
        raise NotImplementedError

    @classmethod
    def refusal(cls, reason: Refusal) -> bytes:
        """The protocol's answer when the loop refuses a request for `reason`."""
        raise NotImplementedError


EVENT_READ, EVENT_WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
FINAL_SEND = socket.MSG_DONTWAIT | getattr(socket, "MSG_MORE", 0)   # see _send_reply


def listen_socket(address) -> socket.socket:
    """A listening socket: TCP on (host, port) (socket.create_server(); '::' also takes IPv4
    clients where the system allows it), or a Unix stream socket at a path (unix_listener()).
    LISTEN_BACKLOG: socketserver's 5 makes bursts wait for SYN retries.  Raises OSError."""
    if isinstance(address, str):
        return unix_listener(address)
    host, port = address[0], address[1]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG,
                                dualstack_ipv6=host == "::" and socket.has_dualstack_ipv6())


def unix_listener(path: str) -> socket.socket:
    """A Unix stream socket listening at `path`, mode 0666 so that every local user can
    reach it.  A socket file there that refuses connections (ECONNREFUSED: a previous run's)
    is replaced; one that a process listens on, even with its backlog full, is EADDRINUSE,
    and one that cannot be probed (EACCES) is refused too, never taken.  Starts in the same
    directory take turns (flock on the directory), so two cannot both take the path.
    Raises OSError."""
    import fcntl
    try:
        directory = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    except OSError:
        directory = None                    # bind() will say what is wrong
    try:
        if directory is not None:
            fcntl.flock(directory, fcntl.LOCK_EX)
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    probe.settimeout(1.0)
                    probe_error = probe.connect_ex(path)
                if probe_error in (0, errno.EAGAIN):        # EAGAIN: alive, backlog full
                    raise OSError(errno.EADDRINUSE, "another process listens on it")
                if probe_error != errno.ECONNREFUSED:
                    raise OSError(probe_error, "cannot tell whether another process listens "
                                               "on it: " + os.strerror(probe_error))
                os.unlink(path)                     # left by a previous run
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            os.chmod(path, 0o666)
            sock.listen(LISTEN_BACKLOG)
        except OSError:
            sock.close()
            raise
        return sock
    finally:
        if directory is not None:
            os.close(directory)                 # and with it the lock
class PooledTCPServer(socketserver.BaseServer):
    """A TCPServer that serves many clients from one thread, and runs handlers that may block
    on a small pool of worker threads instead of a thread per connection.

    serve_forever() is a `selectors` loop (epoll on Linux, kqueue or poll elsewhere) that
    accepts clients and reads each request whole, within the handler's size limit and one
    `deadline` per request (a client trickling a byte a second is dropped on time), so idle
    and slow clients cost no thread.  A complete request runs its handler inline when `inline`
    is true (the store answers from memory), else on a concurrent.futures.ThreadPoolExecutor
    of at most `max_workers` threads, made on first use.  Replies are sent without blocking;
    the rest of a reply waits until the socket is writable, and the connection reads nothing
    meanwhile (a client that does not read its replies stops being read: TCP back-pressure).

    Pipelined requests are served one after another in a loop, never by recursion: at most
    `fair_share` of them per connection per turn before other clients get theirs, and at most
    `max_requests` per connection (the last one is told it is final, then the server closes).

    Fault containment: an exception while serving one connection (its handler, or the loop's
    own work for it) is counted in FAULTS, logged, answered with the handler's
    refusal(ERROR) where a reply is still possible, and closes only that connection.  If the
    loop itself fails, serve_forever() records why in `loop_error`, closes its connections and
    returns; the listening socket stays open, so serve_forever() can simply be called again
    (the daemon's supervisor does).

    Built once, with everything it needs: a listening socket (`sock`, from listen_socket()
    or systemd) or an address to listen on, the handler class, the `store` its handlers
    read (handlers run inline unless it is blocking or `inline` is False), and optionally
    the shared `metrics`, the per-address `limiter` (ClientLimiter) and `log_queries`
    (--log-queries: every request logged at INFO, else at DEBUG).

    From socketserver.BaseServer these still apply: server_address, RequestHandlerClass,
    verify_request (a refused client gets refusal(DENIED)), handle_error (a handler's
    failure), and TCPServer's fileno() and server_close(), written here.  Replaced:
    serve_forever, shutdown.  Never called: handle_request, process_request,
    finish_request, service_actions, handle_timeout (the loop does their work per
    connection).  Binding is listen_socket()'s, before the server is built.

    Knobs (class or instance attributes): deadline, idle_timeout, busy_timeout,
    max_connections, max_workers, max_requests, fair_share, drain_seconds, inline, nodelay.
    complete() delivers a deferred reply from any thread.  shutdown() stops accepting and
    lets replies in flight finish for at most `drain_seconds`."""

    deadline = CONNECTION_DEADLINE      # seconds for one request to arrive whole
    idle_timeout = CONNECTION_DEADLINE  # seconds a persistent connection may sit idle
    busy_timeout = BUSY_TIMEOUT         # seconds a handler may take before the client is told
    max_connections = MAX_CONNECTIONS
    max_workers = MAX_WORKERS
    max_requests = MAX_REQUESTS_PER_CONNECTION
    fair_share = FAIR_SHARE
    drain_seconds = DRAIN_SECONDS
    inline = True        # handlers run on the loop's thread (when the store is not blocking)
    nodelay = False      # TCP_NODELAY for protocols that write several segments per exchange
    label = "server"

    def __init__(self, server_address, handler_class, store: Optional[Store] = None, *,
                 sock: Optional[socket.socket] = None, metrics: Optional[Metrics] = None,
                 limiter: Optional[ClientLimiter] = None, log_queries: bool = False) -> None:
        """Serve `sock`, or listen on server_address ((host, port), or a path for AF_UNIX:
        listen_socket()).  Raises OSError when it cannot listen."""
        if sock is None:
            sock = listen_socket(server_address)
        self.store = store
        self.inline = self.inline and not (store is not None and store.blocking)
        self.metrics = metrics if metrics is not None else Metrics()
        self.limiter = limiter if limiter is not None else ClientLimiter()
        self.log_queries = log_queries
        self._conns: Dict[int, Connection] = {}
        self._ready: deque = deque()            # connections with buffered requests to serve
        self._completed: deque = deque()        # (conn, reply, after) from other threads
        self.turn_writes: list = []             # writes made this turn (_commit_turn)
        self._wake_pending = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._pool = None                       # the ThreadPoolExecutor, made on first use
        self._pool_lock = threading.Lock()
        self._worker_idents: set = set()
        self._busy = 0
        self._selector: Optional[selectors.BaseSelector] = None
        self._listening = False
        self._resume_at: Optional[float] = None  # when to accept again after a pause
        self._stopping = False
        self._stopped = threading.Event()
        self._stopped.set()
        self.last_turn = time.monotonic()
        self.loop_error: Optional[str] = None   # why the loop last died, if it did
        super().__init__(sock.getsockname(), handler_class)
        self.socket, self.address_family = sock, sock.family
        self.socket.setblocking(False)
        if self.nodelay:     # Linux gives accepted sockets the listener's TCP_NODELAY
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def fileno(self) -> int:
        return self.socket.fileno()

    @property
    def address(self) -> str:
        return socket_address(self.socket)

    @property
    def port(self) -> int:
        return self.socket.getsockname()[1]

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    @property
    def worker_threads(self) -> int:
        """Worker threads started so far (the pool starts them as calls need them)."""
        return len(self._worker_idents)

    @property
    def workers_busy(self) -> int:
        return self._busy

    def loop_problem(self, now: float, limit: float) -> Optional[str]:
        """Why this listener is not serving, or None: its loop died, is not running, or has
        not turned for `limit` seconds."""
        if self._stopped.is_set():
            return "died (%s)" % self.loop_error if self.loop_error else "is not running"
        if now - self.last_turn > limit:
            return "has not turned for %.0f s" % (now - self.last_turn)
        return None

    def handle_error(self, request, client_address) -> None:
        """A handler's failure: counted and logged (rate-limited), never printed to stderr,
        and it never stops the server."""
        FAULTS.report(self.label, "while serving %s", describe_peer(client_address))

    def count_refusal(self, reason: Refusal) -> None:
        self.metrics.inc("fingerd_refusals_total", listener=self.label, reason=reason.value)

    # The loop ---------------------------------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Serve until shutdown(); returns early (with loop_error set) only if the loop
        itself fails.  poll_interval bounds how late deadlines are enforced."""
        self._stopped.clear()
        self.loop_error = None
        self._selector = selectors.DefaultSelector()
        try:
            self._loop(poll_interval)
        except BaseException as e:
            self.loop_error = clean_line("%s: %s" % (type(e).__name__, e))[:200]
            FAULTS.report(self.label + "-loop", "the %s loop stopped", self.label)
            if not isinstance(e, Exception):
                raise                   # KeyboardInterrupt where the loop runs in main
        finally:
            for conn in list(self._conns.values()):
                self._close(conn)
            self._ready.clear()
            self._selector.close()
            self._listening = False
            self._stopped.set()

    def _loop(self, poll_interval: float) -> None:
        selector, conns, ready = self._selector, self._conns, self._ready
        selector.register(self._wake_r, EVENT_READ)
        self._listen(True)
        sweep_every = max(0.01, min(0.25, self.deadline / 8, poll_interval))
        next_sweep = time.monotonic() + sweep_every
        drain_end = None
        while True:
            if self._stopping and drain_end is None:
                drain_end = time.monotonic() + self.drain_seconds
                self._listen(False)
                self._close_idle()
            if drain_end is not None and (not conns or time.monotonic() >= drain_end):
                return
            events = selector.select(0 if ready else sweep_every)
            now = self.last_turn = time.monotonic()
            for key, mask in events:
                conn = key.data
                if conn is None:
                    if key.fd == self._wake_r:
                        self._take_completed(now)
                    else:
                        self._accept(now)
                elif conns.get(conn.fd) is conn:
                    try:     # by state: a hang-up is reported as readable and writable
                        if conn.state is State.WRITING:
                            self._flush(conn, now)
                        else:
                            self._read(conn, now)
                    except Exception:
                        self._contain(conn)
            for _ in range(len(ready)):        # the next share of pipelined requests
                conn = ready.popleft()
                conn.queued = False
                if conns.get(conn.fd) is conn and conn.state is State.READING:
                    try:
                        self._serve_or_watch(conn, now)
                    except Exception:
                        self._contain(conn)
            if self.turn_writes:
                self._submit_turn(now)
            if now >= next_sweep:
                next_sweep = now + sweep_every
                self._sweep(now)

    def _contain(self, conn: Connection) -> None:
        """A failure in the loop's own work for one connection: count, log, close it."""
        FAULTS.report(self.label + "-loop", "while serving %s", describe_peer(conn.peer))
        self._close(conn)

    def _listen(self, on: bool) -> None:
        """Watch the listening socket for new clients, or stop (a pause, or draining)."""
        if on != self._listening:
            if on:
                self._selector.register(self.socket.fileno(), EVENT_READ)
            else:
                self._selector.unregister(self.socket.fileno())
            self._listening = on
        self._resume_at = None

    def _accept(self, now: float) -> None:
        conns = self._conns
        # socket.accept() without its wrapping, which converts the family and type to
        # enums for every client (a tenth of a finger query's CPU): the same accept4()
        # and the same socket object, made from the listener's family and type once.
        listener = self.socket
        raw_accept = getattr(listener, "_accept", None)
        kind = (int(listener.family), int(listener.type), listener.proto)
        for _ in range(64):          # a burst at a time, so connected clients keep moving
            try:
                if raw_accept is None:
                    sock, peer = listener.accept()
                else:
                    fd, peer = raw_accept()
                    try:
                        sock = socket.socket(*kind, fileno=fd)
                    except OSError:
                        os.close(fd)
                        raise
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors or memory: stop accepting for a moment (the sweep
                    # resumes it) rather than spin on a listener that stays readable.
                    log.warning("%s: cannot accept: %s; pausing new connections",
                                self.label, e.strerror)
                    self._listen(False)
                    self._resume_at = now + ACCEPT_PAUSE
                    return
                continue     # ECONNABORTED, EPROTO, EPERM (a firewall): that client only
            # The socket stays in blocking mode: every recv/send passes MSG_DONTWAIT, which
            # saves a system call per client.
            conn = Connection(sock, peer, now + self.deadline)
            try:
                if len(conns) >= self.max_connections:
                    self._refuse_now(conn, Refusal.BUSY)
                    continue
                limited = self.limiter.admit(peer)
                if limited is not None:
                    self._refuse_now(conn, limited)
                    continue
                conns[conn.fd] = conn
                if not self.verify_request(sock, peer):
                    self._refuse(conn, Refusal.DENIED, After.LINGER, now)
                else:
                    self._read(conn, now)    # the request often came with the handshake
            except Exception:
                if conns.get(conn.fd) is conn:
                    self._contain(conn)
                else:
                    FAULTS.report(self.label + "-loop", "while accepting %s",
                                  describe_peer(peer))
                    sock.close()

    def _read(self, conn: Connection, now: float) -> None:
        """Take what the socket has and serve it; a request is served as soon as it is
        whole, without a further recv() to learn that nothing more came (what arrives
        together, data then FIN, is still read together)."""
        size = self.RequestHandlerClass.recv_size
        for _ in range(4):
            try:
                data = conn.sock.recv(size, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._close(conn)
                return
            if conn.state is State.LINGERING:
                if not data:
                    self._close(conn)
                    return
                continue
            if data:
                if not conn.inbuf and conn.served:
                    conn.deadline = now + self.deadline     # the next request has begun
                conn.inbuf += data
            else:
                conn.eof = True
            if not self._serve(conn, now):
                return                  # answered, held, queued, lingering or closed
            if conn.eof:
                return
        self._watch(conn, EVENT_READ)

    def _serve(self, conn: Connection, now: float) -> bool:
        """Answer the complete requests buffered on conn, at most fair_share this turn.

        A loop, not recursion: a burst of 10,000 pipelined requests never deepens the stack.
        Returns True when part of a request is buffered and more is needed (the caller reads
        on, or watches for it); otherwise the connection is idle and watched for its next
        request, held for a worker, queued for the next turn, writing, lingering or closed."""
        handler = self.RequestHandlerClass
        for _ in range(self.fair_share):
            if not conn.inbuf and not conn.eof:
                self._watch(conn, EVENT_READ)     # the usual case: wait for the next request
                return False
            try:
                length = handler.request_length(conn.inbuf, conn.eof)
            except RequestTooLarge as e:
                conn.inbuf = b""
                self._refuse(conn, e.reason, After.LINGER, now)
                return False
            if length is None:
                if conn.eof:                 # the peer left before finishing a request
                    self._close(conn)
                    return False
                if handler.interim is not None and not conn.interim_sent:
                    note = handler.interim(conn.inbuf)    # e.g. HTTP's "100 Continue"
                    if note:
                        conn.interim_sent = True
                        try:
                            conn.sock.send(note, socket.MSG_DONTWAIT)
                        except OSError:
                            pass
                return True
            conn.interim_sent = False
            conn.request, conn.inbuf = conn.inbuf[:length], conn.inbuf[length:]
            conn.served += 1
            if not self.inline:
                self._hold(conn, now)
                self._submit(conn)
                return False
            reply, after = self._run_handler(conn)
            if after is After.PENDING:
                self._hold(conn, now)
                return False
            if not (self._send_reply(conn, reply, after, now) and self._next(conn, now)):
                return False
        # Its share is used up and input is still buffered: the others go first.
        self._watch(conn, 0)
        conn.queued = True
        self._ready.append(conn)
        return False

    def _serve_or_watch(self, conn: Connection, now: float) -> None:
        if self._serve(conn, now):
            self._watch(conn, EVENT_READ)

    def _hold(self, conn: Connection, now: float) -> None:
        """Park a connection while its reply is being made elsewhere."""
        conn.state = State.BUSY
        conn.deadline = now + self.busy_timeout
        self._watch(conn, 0)

    def _run_handler(self, conn: Connection) -> Tuple[List[bytes], After]:
        """Run the handler on conn's request: (reply parts, after).  Its failure is
        contained."""
        try:
            handler = self.RequestHandlerClass(conn, conn.peer, self)
            return handler.wfile.parts, handler.after
        except (Exception, SystemExit):    # sys.exit() in a backend is a bug here too
            self.handle_error(conn, conn.peer)
            return self.RequestHandlerClass.refusal(Refusal.ERROR), After.LINGER

    def _submit(self, conn: Connection) -> None:
        if self._pool is None:
            with self._pool_lock:
                if self._pool is None:
                    import concurrent.futures       # only stores that may block need it
                    self._pool = concurrent.futures.ThreadPoolExecutor(
                        self.max_workers, thread_name_prefix=self.label + "-worker")
        try:
            self._pool.submit(self._work, conn)
        except RuntimeError as e:     # the pool is shut down, or no thread can be started
            log.warning("%s: cannot run a worker: %s", self.label, e)
            conn.state = State.READING
            self._refuse(conn, Refusal.BUSY, After.CLOSE, time.monotonic())

    def _work(self, conn: Connection) -> None:
        """On a worker thread: run the handler, then give the reply back to the loop."""
        if self._conns.get(conn.fd) is not conn or conn.state is not State.BUSY:
            return          # already answered (busy, or its busy_timeout): nothing to do
        with self._pool_lock:
            self._busy += 1
            self._worker_idents.add(threading.get_ident())
        try:
            reply, after = self._run_handler(conn)
        finally:
            with self._pool_lock:
                self._busy -= 1
        if after is not After.PENDING:
            self.complete(conn, reply, after)

    def complete(self, conn: Connection, reply: bytes, after: After = After.CLOSE) -> None:
        """Deliver the reply of a held connection; safe from any thread.  A reply for a
        connection that is gone (closed at its busy_timeout, or at shutdown) is dropped."""
        self._completed.append((conn, reply, after))
        if not self._wake_pending:          # one wake-up per batch, not per reply
            self._wake_pending = True
            try:
                os.write(self._wake_w, b"\0")
            except OSError:
                pass                        # the pipe is full: the loop is waking up anyway

    def _take_completed(self, now: float) -> None:
        try:
            os.read(self._wake_r, 4096)
        except OSError:
            pass
        # Cleared after reading the pipe and before draining: a complete() that finds it
        # set is drained below, one that finds it clear writes a fresh wake-up byte.
        self._wake_pending = False
        self._drain_completed(now)

    def _submit_turn(self, now: float) -> None:
        """The writes this turn's handlers made (turn_writes, set_async's batch), handed
        to the store together before the loop waits again: one transaction and one fsync
        for all of them (SQLiteStore.submit commits them here when it need not wait).
        Their replies come back through complete(); those already done go at once."""
        batch, self.turn_writes = self.turn_writes, []
        self._wake_pending = True       # complete() needs no wake-up byte: drained below
        try:
            self.store.submit(batch)
        except Exception:               # a bug: these writes are refused, the loop goes on
            FAULTS.report(self.label + "-loop", "submitting %d writes", len(batch))
            for w in batch:
                try:
                    w.done(StoreUnavailable("internal error: the status was not stored"))
                except Exception:
                    FAULTS.report(self.label + "-loop", "completion callback")
        finally:
            self._wake_pending = False
            self._drain_completed(now)

    def _drain_completed(self, now: float) -> None:
        while self._completed:
            conn, reply, after = self._completed.popleft()
            if self._conns.get(conn.fd) is not conn or conn.state is not State.BUSY:
                continue
            try:
                conn.state = State.READING
                if self._send_reply(conn, reply, after, now) and self._next(conn, now):
                    self._serve_or_watch(conn, now)
            except Exception:
                self._contain(conn)

    @staticmethod
    def _send_parts(sock: socket.socket, parts, flags: int = socket.MSG_DONTWAIT) -> int:
        """Bytes of `parts` the socket took now (0 when none); raises OSError but not
        BlockingIOError."""
        try:
            if len(parts) == 1:
                return sock.send(parts[0], flags)
            return sock.sendmsg(parts, (), flags)   # gathered, not joined
        except (BlockingIOError, InterruptedError):
            return 0

    @staticmethod
    def _rest(parts, sent: int) -> List[memoryview]:
        """What is left of `parts` after `sent` bytes went: views, never copies."""
        rest = []
        for part in parts:
            if sent >= len(part):
                sent -= len(part)
                continue
            rest.append(memoryview(part)[sent:])
            sent = 0
        return rest

    def _send_reply(self, conn: Connection, reply, after: After, now: float) -> bool:
        """Send what the socket takes now of `reply` (bytes, or a list of bytes parts);
        True when all of it went.  Otherwise the rest waits for the socket to be writable
        (or the connection is closed)."""
        conn.after = after
        parts = [reply] if isinstance(reply, bytes) else reply
        if parts:
            try:
                # A reply the connection ends with goes out with the FIN that follows at
                # once (in _next): one segment, one wake-up of the client, not two (Linux:
                # MSG_MORE holds it; the FIN pushes it).
                sent = self._send_parts(conn.sock, parts, FINAL_SEND if after is not
                                        After.KEEP else socket.MSG_DONTWAIT)
            except OSError:
                self._close(conn)
                return False
            if sent < (len(parts[0]) if len(parts) == 1 else sum(map(len, parts))):
                conn.outbuf = self._rest(parts, sent)
                conn.state = State.WRITING
                conn.deadline = now + self.deadline
                self._watch(conn, EVENT_WRITE)
                return False
        return True

    def _flush(self, conn: Connection, now: float) -> None:
        try:
            sent = self._send_parts(conn.sock, conn.outbuf)
        except OSError:
            self._close(conn)
            return
        conn.outbuf = self._rest(conn.outbuf, sent)
        if not conn.outbuf:
            conn.state = State.READING
            if self._next(conn, now):
                self._serve_or_watch(conn, now)

    def _next(self, conn: Connection, now: float) -> bool:
        """The reply is out.  True when the connection goes on to its next request; else it
        lingers or is closed here."""
        after = conn.after
        if after is After.KEEP and conn.served >= self.max_requests:
            after = After.CLOSE
        if after is After.KEEP and not self._stopping and (conn.inbuf or not conn.eof):
            conn.deadline = now + (self.deadline if conn.inbuf else self.idle_timeout)
            return True
        if conn.eof or (after is not After.LINGER and not conn.inbuf):
            if not conn.eof:
                # The client may still send, and input left unread makes the close a
                # reset, which would discard a reply still held for the FIN (MSG_MORE):
                # shutting our side first sends them, then the reset, if any, follows.
                try:
                    conn.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            self._close(conn)
        else:
            # Closing with unread input would send RST and could destroy the reply in
            # flight: shut our side and discard what still comes, briefly.
            conn.state = State.LINGERING
            conn.inbuf = b""
            conn.deadline = now + LINGER_SECONDS
            try:
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                self._close(conn)
                return False
            self._watch(conn, EVENT_READ)
        return False

    def _refuse(self, conn: Connection, reason: Refusal, after: After, now: float) -> None:
        """Answer a tracked connection with the handler's refusal, counted."""
        self.count_refusal(reason)
        if self._send_reply(conn, self.RequestHandlerClass.refusal(reason), after, now):
            self._next(conn, now)

    def _refuse_now(self, conn: Connection, reason: Refusal) -> None:
        """Best-effort refusal for a client we will not even track (too many connections)."""
        self.count_refusal(reason)
        try:
            conn.sock.send(self.RequestHandlerClass.refusal(reason), socket.MSG_DONTWAIT)
        except OSError:
            pass
        conn.sock.close()

    def _watch(self, conn: Connection, events: int) -> None:
        """Have the selector report `events` for conn (0: nothing)."""
        if conn.watching == events:
            return
        if not conn.watching:
            self._selector.register(conn.fd, events, conn)
        elif not events:
            self._selector.unregister(conn.fd)
        else:
            self._selector.modify(conn.fd, events, conn)
        conn.watching = events

    def _close(self, conn: Connection) -> None:
        if self._conns.get(conn.fd) is not conn:
            return
        del self._conns[conn.fd]
        try:
            if conn.watching:
                conn.watching = 0
                self._selector.unregister(conn.fd)
        except (KeyError, ValueError, OSError):
            pass                    # not registered after all: nothing to undo
        finally:
            self.limiter.release(conn.peer)
            conn.sock.close()

    def _sweep(self, now: float) -> None:
        """Enforce the deadlines: a client whose request has not arrived gets the timeout
        reply; an idle persistent connection is closed; a handler past busy_timeout gets
        its client an internal-error reply."""
        if self._resume_at is not None and now >= self._resume_at and not self._stopping:
            self._listen(True)
        self.limiter.prune()
        for conn in [c for c in self._conns.values() if c.deadline <= now]:
            try:
                if conn.state is State.READING:
                    if conn.inbuf or not conn.served:
                        conn.inbuf = b""
                        self._refuse(conn, Refusal.TIMEOUT, After.CLOSE, now)
                    else:
                        self._close(conn)                  # an idle persistent connection
                elif conn.state is State.BUSY:
                    log.warning("%s: no reply for %s after %.0f s", self.label,
                                describe_peer(conn.peer), self.busy_timeout)
                    conn.state = State.READING
                    self._refuse(conn, Refusal.ERROR, After.CLOSE, now)
                else:
                    self._close(conn)
            except Exception:
                self._contain(conn)

    def _close_idle(self) -> None:
        """At shutdown: clients that have not sent anything yet are not kept waiting."""
        for conn in list(self._conns.values()):
            if conn.state is State.READING and not conn.inbuf:
                self._close(conn)

    # Control ----------------------------------------------------------------------------

    def request_shutdown(self) -> None:
        """Stop accepting and start draining; returns at once (see shutdown())."""
        self._stopping = True
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass

    def shutdown(self) -> None:
        """Stop serving_forever() and wait until it has returned."""
        self.request_shutdown()
        self._stopped.wait()

    def server_close(self) -> None:
        """Close the listening socket, the wake-up pipe and the worker pool.  Workers still
        running finish their call (backends have their own time limits); queued calls are
        dropped."""
        self.socket.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass


# -- Privacy: what every surface publishes ------------------------------------------------

# RFC 1288 §3.2.5 lets the administrator choose which atoms of information are released.
ATOMS = ("status", "name", "office", "set-time", "project", "pgpkey")
_DETAIL_ATOMS = {"Name": "name", "Office": "office", "Office Phone": "office",
                 "Home Phone": "office", "Project": "project", "PGP key": "pgpkey"}
LISTING_OFF = "The user list is not published on this server"


def host_key(host: str) -> str:
    """A host name as compared: lower case, no port, no trailing dot, IDNA (punycode) for
    a Unicode name; '' for what is not a host name or address."""
    import ipaddress
    host = host.strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if ":" in host:                                 # an IPv6 address, written as in URLs
        try:
            return "[%s]" % ipaddress.IPv6Address(host)
        except ValueError:
            return ""
    host = host.rstrip(".")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except (UnicodeError, LookupError):
            return ""
    return host if _HOST_NAME.fullmatch(host) else ""


_HOST_NAME = LazyPattern(r"(?=.{1,253}\Z)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
                         r"(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")


class Privacy:
    """The privacy policy, asked by every surface (finger, pages, JSON, XML-RPC, Atom,
    WebFinger, IRC) so that an administrator's choice holds on all of them.

    listing: False for --no-list: no surface enumerates users (may_list()).
    show: the atoms released (--show), a subset of ATOMS; release() applies it to a status.
    domains: the host names WebFinger answers for besides the one it is reached by
    (--webfinger-domain; the --public-url host replaces the request's).
    public_url: --public-url ('' when not given): the canonical base and name."""

    def __init__(self, listing: bool = True, show: Iterable[str] = ATOMS,
                 domains: Iterable[str] = (), public_url: str = "") -> None:
        self.listing = listing
        self.show = frozenset(show)
        self.public_url = public_url.rstrip("/")
        self.public_host = self.public_path = ""
        if self.public_url:
            import urllib.parse
            parts = urllib.parse.urlsplit(self.public_url)
            self.public_host = host_key(parts.netloc)
            self.public_path = parts.path.rstrip("/")
        self.domains = frozenset(d for d in map(host_key, domains) if d)
        self._canonical = ""

    def may_list(self) -> bool:
        """True when users may be enumerated: the finger list, GET /, /users.json,
        getUsers(), the Atom feed, the links that lead to them."""
        return self.listing

    @property
    def feed(self) -> bool:
        """The Atom feed is a timeline of who changed what when: published only while users
        may be listed and set times are released."""
        return self.listing and "set-time" in self.show

    def release(self, status: Optional[Status]) -> Optional[Status]:
        """The status as this server publishes it: atoms not in `show` removed (the text for
        'status', the details for 'name', 'office', 'project', 'pgpkey', the set and expiry
        times for 'set-time')."""
        if status is None or len(self.show) == len(ATOMS):
            return status
        show = self.show
        return Status(status.text if "status" in show else "",
                      status.set_at if "set-time" in show else 0.0,
                      tuple((label, text) for label, text in status.details
                            if _DETAIL_ATOMS.get(label, "name") in show),
                      status.expires_at if "set-time" in show else 0.0)

    def webfinger_hosts(self, request_host: str) -> FrozenSet[str]:
        """The host names WebFinger is authoritative for, answering a request that reached
        it as `request_host` ('' when the client sent no Host)."""
        own = self.public_host or host_key(request_host) or self.canonical_name()
        return self.domains | {host_key(own)}

    def canonical_name(self) -> str:
        """This server's name where one must not depend on the request (Atom ids, RFC 4287
        §4.2.6): the --public-url host, else the machine's fully qualified name."""
        if not self._canonical:
            name = self.public_host or host_key(socket.getfqdn())
            if name in ("", "localhost", "localhost.localdomain"):   # /etc/hosts said so
                name = host_key(socket.gethostname()) or "localhost"
            self._canonical = name
        return self._canonical


PUBLIC = Privacy()      # every atom, listing on: the default, and what tests start from


def domain_arg(spec: str) -> str:
    """--webfinger-domain: a host name."""
    host = host_key(spec)
    if not host:
        raise argparse.ArgumentTypeError("not a host name: %r" % spec)
    return host


def privacy_of(args: argparse.Namespace) -> Privacy:
    """The one Privacy of a command line: --no-list, --show, --webfinger-domain,
    --public-url."""
    return Privacy(listing=not args.no_list, show=args.show,
                   domains=args.webfinger_domain, public_url=args.public_url or "")


def show_arg(spec: str) -> FrozenSet[str]:
    """--show: a comma list of ATOMS ('all' for every one)."""
    atoms = {atom.strip().lower() for atom in spec.split(",") if atom.strip()}
    if atoms == {"all"}:
        return frozenset(ATOMS)
    unknown = atoms - set(ATOMS)
    if unknown or not atoms:
        raise argparse.ArgumentTypeError("expected a comma list of %s, got %r"
                                         % (",".join(ATOMS), spec))
    return frozenset(atoms)


# -- Finger (RFC 1288) --------------------------------------------------------------------

class FingerQuery(namedtuple("FingerQuery", "verbose names forwarding")):
    """A parsed finger query: /W given, the names asked for, whether it asks to forward."""
    __slots__ = ()


# RFC 854/855: IAC (255) starts a Telnet command: WILL/WONT/DO/DONT and an option byte,
# SB ... IAC SE, or a single byte (NOP, AYT, GA, ...); IAC IAC is the data byte 255, and a
# Telnet client sends a bare CR as CR NUL.
_TELNET = LazyPattern(rb"\xff(?:\xfa.*?(?:\xff\xf0|\Z)|[\xfb-\xfe].?|[\xec-\xf9\xff]?)|\r\x00",
                      re.S)


def strip_telnet(data: bytes) -> bytes:
    """The bytes a Telnet client meant (RFC 742 asks finger servers to filter Telnet
    commands): option negotiation, subnegotiation and the one-byte commands (RFC 854, 885,
    1184: EOR, ABORT, SUSP, EOF too) removed, IAC IAC read as 255, CR NUL (Return in
    character mode) as CRLF.  `telnet host 79` then gets the answer nc gets."""
    if b"\xff" not in data and b"\r\x00" not in data:
        return data
    return _TELNET.sub(lambda m: {b"\xff\xff": b"\xff", b"\r\x00": b"\r\n"}.get(m.group(), b""),
                       data)


def query_text(data: bytes) -> str:
    """A finger query line's bytes as text: Telnet commands removed, then decode_peer()."""
    return decode_peer(strip_telnet(data))


def parse_query(line: str) -> FingerQuery:
    """RFC 1288 §2.3: [/W] [user ...] [@host...]; CRLF or a bare LF, any whitespace."""
    words = line.split()
    verbose = bool(words) and words[0].upper() == "/W"
    if verbose:
        words = words[1:]
    return FingerQuery(verbose, tuple(words), any("@" in w for w in words))


def user_block(name: str, status: Optional[Status], verbose: bool, several: bool,
               now: Optional[float] = None) -> List[str]:
    """The lines answering one name."""
    if status is None:
        return ["%s: %s" % (shown_name(name), NO_SUCH_USER)] if several else [NO_SUCH_USER]
    lines = clean_lines(status.text)
    if verbose:
        head = ["Login: %s" % name]
        for label, text in status.details:
            text_lines = clean_lines(text)
            head.append("%s: %s" % (clean_line(label), text_lines[0]))
            head.extend("  " + line for line in text_lines[1:])
        if status.set_at:
            head.append("Set: %s" % format_time(status.set_at, now))
        if status.expires_at:
            head.append("Expires: %s" % format_time(status.expires_at, now))
        return head + lines
    if several:
        return ["%s: %s" % (name, lines[0])] + ["  " + line for line in lines[1:]]
    return lines


def list_lines(items: Sequence[Tuple[str, Status]]) -> List[str]:
    """The user list: 'name: first line of status' per user, ' ...' when it has more lines
    (ASCII, like all of fingerd's own words on finger: RFC 1288 §3.3 clients escape the
    rest)."""
    if not items:
        return [NO_USERS]
    lines = []
    for name, status in items:
        first, _, rest = status.text.partition("\n")
        lines.append("%s: %s%s" % (name, clean_line(first), " ..." if rest else ""))
    return lines


def finger_reply(store: Store, query: FingerQuery, privacy: Privacy = PUBLIC) -> str:
    """The whole answer to one query, lines ending in CRLF (RFC 1288 §2.2), as `privacy`
    allows."""
    if query.forwarding:
        lines = [FORWARDING_DENIED]
    elif not query.names:
        lines = (list_lines([(name, privacy.release(status)) for name, status in store.items()])
                 if privacy.may_list() else [LIST_DENIED])
    else:
        several = len(query.names) > 1
        lines = []
        for name in query.names[:MAX_NAMES_PER_QUERY]:
            if lines and query.verbose:
                lines.append("")
            lines.extend(user_block(name, privacy.release(store.get(name, query.verbose)),
                                    query.verbose, several))
    return "\r\n".join(lines) + "\r\n"


def answer_finger(store: Store, line: str, privacy: Privacy = PUBLIC) -> bytes:
    """The bytes answering one query line, for the listener and for --inetd alike."""
    try:
        return finger_reply(store, parse_query(line), privacy).encode("utf-8")
    except StoreUnavailable as e:
        log.debug("finger: %s", e)       # the outage itself is logged once
        return (UNAVAILABLE + "\r\n").encode()


class FingerHandler(BufferedRequestHandler):
    """Answers one finger query line, then the connection closes (RFC 1288 §2.1)."""

    recv_size = MAX_QUERY + 2

    @classmethod
    def request_length(cls, buf, eof):
        end = buf.find(b"\n")
        telnet_return = buf.find(b"\r\x00", 0, end if end >= 0 else len(buf))
        if telnet_return >= 0:                   # a Telnet client in character mode
            end = telnet_return + 1
        if end >= 0:
            if end > MAX_QUERY + 1:              # the line's text, not counting its CR
                raise RequestTooLarge()
            return end + 1
        if len(buf) > MAX_QUERY + 1:
            raise RequestTooLarge()
        return len(buf) if eof and buf else None    # a query ended by half-close

    REFUSALS = {Refusal.TOO_LONG: QUERY_TOO_LONG, Refusal.TIMEOUT: TIMED_OUT,
                Refusal.BUSY: SERVER_BUSY, Refusal.TOO_MANY: TOO_MANY,
                Refusal.DENIED: "Access denied", Refusal.ERROR: INTERNAL_ERROR}

    @classmethod
    def refusal(cls, reason):
        """One line in the finger reply's own words; HTTP's finer size limits read as
        'Query too long'."""
        return cls.REFUSALS.get(reason, QUERY_TOO_LONG).encode() + b"\r\n"

    def handle(self) -> None:
        line = query_text(self.rfile.read())
        if self.server.log_queries:        # RFC 1288 §3.2.7: only when the admin asks
            log.info("finger query from %s: %r", describe_peer(self.client_address),
                     line.strip())
        self.server.metrics.add(FINGER_REQUEST)
        self.wfile.write(self.server.answer(line))


class FingerServer(PooledTCPServer):
    """The finger listener: a PooledTCPServer holding the store and the privacy policy."""

    label = "finger"

    def __init__(self, address, store: Store, privacy: Privacy = PUBLIC, **options) -> None:
        """`options`: PooledTCPServer's (sock, metrics, limiter, log_queries)."""
        super().__init__(address, FingerHandler, store, **options)
        self.privacy = privacy
        self._answers = VersionCache(1024)         # query line -> reply

    def answer(self, line: str) -> bytes:
        """The reply to one query line.  While the store is unchanged, replies that do not
        depend on the time (all but /W, which says how long ago a status was set) are
        kept: the user list of 1,000 users, or a popular user, is not rendered per query."""
        verbose = line.split(None, 1)[:1] in (["/W"], ["/w"])
        return self._answers.answer(
            self.store, line, lambda: answer_finger(self.store, line, self.privacy),
            lambda reply: not verbose and not reply.startswith(UNAVAILABLE.encode()))


# -- Setter -------------------------------------------------------------------------------

class SetterRequest(namedtuple("SetterRequest", "user text expires_at", defaults=(0.0,))):
    """A parsed setter request: whose status, the text (None: clear it), its expiry."""
    __slots__ = ()


def parse_setter_request(data: bytes, caller: Optional[str] = None,
                         is_user_line: Callable[[str], bool] = lambda line: True
                         ) -> SetterRequest:
    """'user\\n[expires: 2h\\n]status line(s)\\n' -> SetterRequest.

    The user line is required unless `caller` is given (the Unix setter): then the first line
    names a user only when is_user_line(it) says so, else the status is the caller's.  After
    it, header lines: 'expires: DURATION' sets an expiry, 'clear: yes' (and no status) clears
    the user's status; clearing is never implied, so a garbled request wipes nothing.
    Raises BadName or BadStatus."""
    try:
        text = decode_utf8(data).lstrip("\ufeff")
    except UnicodeDecodeError as e:
        raise BadStatus("not UTF-8 text (byte %d); convert it first, e.g. iconv -f latin1 "
                        "-t utf-8" % e.start)
    lines = text.replace("\r\n", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if caller is not None and not (lines and is_user_line(lines[0].strip())):
        user = caller
    else:
        user = lines.pop(0).strip() if lines else ""
    if not valid_name(user):
        raise BadName(BAD_NAME)
    expires_at, clear = 0.0, False
    while lines and lines[0].split(":", 1)[0].strip().lower() in ("expires", "clear") \
            and ":" in lines[0]:
        key, _, value = lines.pop(0).partition(":")
        if key.strip().lower() == "expires":
            expires_at = parse_duration(value.strip())
        else:
            clear = value.strip().lower() in ("yes", "true", "1")
    if len(lines) > MAX_STATUS_LINES:       # refused before the write is queued
        raise BadStatus("status has too many lines (at most %d)" % MAX_STATUS_LINES)
    status = "\n".join(lines)
    if clear:
        if status.strip() or expires_at:
            raise BadStatus("'clear: yes' takes no status and no expiry")
        return SetterRequest(user, None)
    if not status.strip():
        raise BadStatus("empty status (to clear it, send a 'clear: yes' line)")
    return SetterRequest(user, status, expires_at)


class SetterHandler(BufferedRequestHandler):
    """The tutorial's setter: a user line, status line(s), then the client half-closes."""

    recv_size = 65536

    @classmethod
    def request_length(cls, buf, eof):
        if len(buf) > MAX_SETTER_REQUEST:
            raise RequestTooLarge()
        return len(buf) if eof else None

    REFUSALS = {
        Refusal.TOO_LONG: "status too long (at most %d bytes)" % MAX_STATUS_BYTES,
        Refusal.TIMEOUT: "timed out: send the user line, the status, then close your "
                         "sending side (nc -N)",
        Refusal.BUSY: SERVER_BUSY.lower(), Refusal.TOO_MANY: TOO_MANY.lower(),
        Refusal.DENIED: "not allowed from this address",
        Refusal.ERROR: INTERNAL_ERROR.lower()}

    @classmethod
    def refusal(cls, reason):
        """'ERROR <reason>', the setter's one-line failure answer."""
        text = cls.REFUSALS.get(reason, cls.REFUSALS[Refusal.TOO_LONG])
        return b"ERROR " + text.encode() + b"\r\n"

    def handle(self) -> None:
        try:
            request = self.parse(strip_telnet(self.rfile.read()))
        except FingerdError as e:
            # Nothing sent at all (a liveness probe, a scanner) is not a refused write.
            self.wfile.write(self.server.outcome(user="?", peer=self.client_address, error=e,
                                                 attempted=bool(self.request.request)))
            return
        conn, server, peer = self.request, self.server, self.client_address

        def finished(error: Optional[FingerdError]) -> None:
            """The write's outcome, on whichever thread finished it."""
            try:
                reply = server.outcome(request.user, peer, error)
            except Exception:
                FAULTS.report(server.label, "answering %s", describe_peer(peer))
                reply = self.refusal(Refusal.ERROR)
            server.complete(conn, reply)
        self.after = After.PENDING   # answered once the write is durable
        # On the loop's own thread, the write joins the turn's group commit.
        server.store.set_async(request.user, request.text, finished, request.expires_at,
                               batch=server.turn_writes if server.inline else None)

    def parse(self, data: bytes) -> SetterRequest:
        return parse_setter_request(data)


class SetterServer(PooledTCPServer):
    """The setter listener, limited to the --setter-allow networks when any are given."""

    label = "setter"

    def __init__(self, address, store: Store, allow: Sequence = (), **options) -> None:
        """`allow`: the networks writes are accepted from (--setter-allow; none: any);
        `options`: PooledTCPServer's (sock, metrics, limiter, log_queries)."""
        self.allow = list(allow)
        super().__init__(address, self.handler_class, store, **options)

    handler_class = SetterHandler

    def outcome(self, user: str, peer, error: Optional[FingerdError],
                attempted: bool = True) -> bytes:
        """The setter's one-line answer for a finished write, logged and counted unless
        nothing was `attempted` (an empty request)."""
        if not attempted:
            log.debug("setter: %s sent nothing", describe_peer(peer))
            return b"ERROR " + str(error).encode("utf-8") + b"\r\n"
        self.metrics.add(WRITE_OK if error is None else WRITE_ERROR)
        if error is None:
            if self.log_queries:
                log.info("setter: %s set from %s", user, describe_peer(peer))
            return b"OK\r\n"
        log.info("setter: refused a write for %r from %s: %s", user, describe_peer(peer),
                 error)
        return b"ERROR " + str(error).encode("utf-8") + b"\r\n"

    def verify_request(self, request, client_address) -> bool:
        return not self.allow or in_networks(client_address[0], self.allow)


def peer_credentials(sock: socket.socket) -> Tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket (SO_PEERCRED)."""
    import struct
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)


_system_names: Optional[NameService] = None


def system_names() -> NameService:
    """The system's name service, with its deadline, made once (the setter socket's)."""
    global _system_names
    if _system_names is None:
        _system_names = NameService()
    return _system_names


def account_name(uid: int) -> Optional[str]:
    """The login name of `uid`, or None; StoreUnavailable when the directory is out."""
    pw = system_names().getpwuid(uid)
    return None if pw is None else pw.pw_name


def account_exists(name: str) -> bool:
    """True when `name` is an account; StoreUnavailable when the directory is out."""
    return system_names().getpwnam(name) is not None


class UnixSetterHandler(SetterHandler):
    """The setter on a Unix socket: the kernel says who is calling (SO_PEERCRED), and a user
    may set only their own status; root may set anyone's.  The user line is optional: the
    first line names a user only when it is the caller's own name, or (for root) an account."""

    def parse(self, data: bytes) -> SetterRequest:
        _, uid, _ = peer_credentials(self.connection)
        caller = self.server.name_of(uid)
        self.client_address = "uid %d (%s)" % (uid, caller or "no account")
        if caller is None:
            raise BadName("uid %d has no account name" % uid)
        if uid == 0:
            request = parse_setter_request(data, caller, lambda line: valid_name(line) and (
                line == caller or self.server.account_exists(line)))
        else:
            def is_user_line(line: str) -> bool:
                if line != caller and valid_name(line) and self.server.account_exists(line):
                    raise BadName("%s may only set their own status" % caller)
                return line == caller
            request = parse_setter_request(data, caller, is_user_line)
        return request


class UnixSetterServer(SetterServer):
    """--setter-socket: the setter on a Unix stream socket, mode 0666 so every local user
    can reach it; who they are comes from the kernel, not from the network."""

    label = "setter-socket"
    handler_class = UnixSetterHandler
    inline = False      # who is calling is an account lookup: a directory may wait
    name_of = staticmethod(account_name)            # uid -> login name (a seam for tests)
    account_exists = staticmethod(account_exists)

    def __init__(self, path: Optional[str], store: Store, owns_path: Optional[bool] = None,
                 **options) -> None:
        """Listen at `path` (listen_socket(): mode 0666, a stale socket file replaced), or
        serve options' `sock`; `owns_path` (default: when fingerd made the socket) removes
        the file at server_close() (systemd's socket file is systemd's)."""
        self.owns_path = options.get("sock") is None if owns_path is None else owns_path
        super().__init__(path, store, **options)
        self._inode = None              # the socket file made here, removed only if unchanged
        if self.owns_path:
            try:
                self._inode = os.lstat(self.server_address)[:2]     # (mode, ino)
            except (OSError, TypeError):
                pass

    def server_close(self) -> None:
        path = self.server_address
        super().server_close()
        try:
            if self.owns_path and self._inode == os.lstat(path)[:2]:
                os.unlink(path)             # not another fingerd's, made since at this path
        except OSError:
            pass


# -- Web: pages, JSON, WebFinger, Atom, /metrics, XML-RPC ---------------------------------

MAX_REQUEST_LINE = 8 * 1024           # longer: 414 (http.server allows 64 KiB)
MAX_HEAD = 64 * 1024                  # request line and header fields: 431 beyond
MAX_HEADERS = 100                     # header fields: 431 beyond
MAX_RPC_BODY = 64 * 1024              # an XML-RPC call is small: 413 beyond
HTTP_IDLE_TIMEOUT = 15.0              # keep-alive connections idle this long are closed

_HEAD_END = LazyPattern(rb"\r?\n\r?\n")
_BAD_HEAD = LazyPattern(rb"\x00|\r(?!\n)")     # NUL, or a CR that does not end a line
_CONTENT_LENGTH = LazyPattern(rb"(?im)^content-length[ \t]*:[ \t]*([0-9]{1,18})[ \t]*\r?$")
_FRAMING_FIELD = LazyPattern(rb"(?im)^(?:content-length|transfer-encoding)[ \t]*:")
# A request line as RFC 9112 §3 has it; any other line is refused as it stands, at once,
# since no header block may follow it (HTTP/0.9, TLS sent to the plain port, garbage).
_REQUEST_LINE = LazyPattern(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+ [^ \x00-\x1f\x7f]+ "
                            rb"HTTP/[0-9]\.[0-9]\r?\n\Z")
_METHOD_START = LazyPattern(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]*(?: |\Z)")
_RFC850_YEAR = LazyPattern(r"-([0-9]{2}) ")
_ASCTIME = LazyPattern(r"[A-Z][a-z]{2} [A-Z][a-z]{2} [ 0-9][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2} "
                       r"[0-9]{4}\Z")
# RFC 9110 §9: the methods HTTP defines; any other is 501, one a resource does not take 405.
KNOWN_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS",
                           "TRACE", "PATCH"))
_EXPECT_CONTINUE = LazyPattern(rb"(?im)^expect[ \t]*:[ \t]*100-continue[ \t]*\r?$")
_TOKEN = LazyPattern(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")

PAGE_STYLE = (
    ":root{color-scheme:light dark;--fg:#1d1d1f;--bg:#fbfbfa;--muted:#6b6b70;--line:#e4e4e0;"
    "--link:#0b57d0}"
    "@media (prefers-color-scheme:dark){:root{--fg:#e8e8e6;--bg:#151517;--muted:#9a9aa0;"
    "--line:#2c2c30;--link:#8ab4f8}}"
    "*{box-sizing:border-box}"
    "body{margin:0;background:var(--bg);color:var(--fg);"
    "font:16px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif}"
    "main{max-width:44rem;margin:0 auto;padding:1.5rem 1rem 3rem}"
    "h1{font-size:1.5rem;margin:0 0 1rem;overflow-wrap:anywhere}"
    "a{color:var(--link)}"
    "ul{list-style:none;margin:0;padding:0}"
    "li{padding:.6rem 0;border-bottom:1px solid var(--line);display:flex;flex-wrap:wrap;"
    "gap:.25rem 1rem}"
    "li a{font-weight:600;min-width:8rem}"
    ".status{white-space:pre-wrap;overflow-wrap:anywhere;flex:1 1 16rem}"
    "p.status{font-size:1.1rem;margin:0 0 1rem}"
    ".meta,footer{color:var(--muted);font-size:.9rem}"
    "footer{margin-top:2rem}"
    "code{font-family:ui-monospace,monospace}")
# base64(SHA-256(PAGE_STYLE)), a constant so that start-up need not load OpenSSL's hashlib;
# tests/test_web.py recomputes it and says the new value when the stylesheet changes.
PAGE_STYLE_SHA256 = "OrCJm7roSNK9ZKPS9JPyxFgeGQviKu0RFa+k71bSVdo="
# No scripts, no external anything; the one inline stylesheet is allowed by its hash.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'sha256-%s'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'" % PAGE_STYLE_SHA256)
SECURITY_HEADERS = (
    "Content-Security-Policy: %s\r\nX-Content-Type-Options: nosniff\r\n"
    "Referrer-Policy: no-referrer\r\nX-Frame-Options: DENY\r\n" % CONTENT_SECURITY_POLICY)


FEED_LINK = ('<link rel="alternate" type="application/atom+xml" title="Status changes" '
             'href="/feed.atom">\n')


def html_page(title: str, body: str, feed: bool = True) -> str:
    """A complete HTML5 document; title and body must already be escaped.  `feed`: link the
    Atom feed (not when Privacy.feed is off)."""
    return ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            "<title>%s</title>\n<style>%s</style>\n%s</head>\n<body>\n<main>\n%s\n"
            '<footer>fingerd %s &middot; also by <code>finger</code> and XML-RPC at '
            "<code>/RPC2</code></footer>\n</main>\n</body>\n</html>\n"
            % (title, PAGE_STYLE, FEED_LINK if feed else "", body, __version__))


def user_link(name: str) -> str:
    """A link to a user's page, relative so the pages also work under a path prefix."""
    import html
    import urllib.parse
    return '<a href="./%s">%s</a>' % (urllib.parse.quote(name, safe=""),
                                      html.escape(name))


def status_html(text: str) -> str:
    """A status as HTML text: every line filtered, then escaped, and the lines joined by
    <br> (not only kept by CSS, so that text browsers and readers without CSS keep them)."""
    import html
    return "<br>".join(html.escape(line) for line in clean_lines(text))


def iso_time(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def render_user_list(items: Sequence[Tuple[str, Status]], feed: bool = True) -> str:
    """The front page: every user, linked to their page, with their status."""
    rows = ['<li>%s <span class="status">%s</span></li>' % (user_link(name),
                                                            status_html(status.text))
            for name, status in items]
    body = ("<h1>Who is doing what</h1>\n<ul>\n%s\n</ul>" % "\n".join(rows) if rows
            else "<h1>Who is doing what</h1>\n<p>Nobody has set a status yet.</p>")
    return html_page("fingerd: %d user%s" % (len(rows), "" if len(rows) == 1 else "s"), body,
                     feed)


def render_user(name: str, status: Status, privacy: Optional[Privacy] = None) -> str:
    """One user's page: the status (lines kept) and when it was set; links to the list and
    the feed only where `privacy` publishes them."""
    import html
    privacy = privacy or PUBLIC
    when = ('<p class="meta">Set <time datetime="%s">%s</time></p>\n'
            % (iso_time(status.set_at), html.escape(format_time(status.set_at).split(" (")[0]))
            if status.set_at else "")
    if status.expires_at:
        when += ('<p class="meta">Until <time datetime="%s">%s</time></p>\n'
                 % (iso_time(status.expires_at),
                    html.escape(format_time(status.expires_at).split(" (")[0])))
    details = "".join("<dt>%s</dt><dd>%s</dd>" % (html.escape(clean_line(label)),
                                                 status_html(text))
                      for label, text in status.details)
    body = ('<h1>%s</h1>\n<p class="status">%s</p>\n%s%s%s'
            % (html.escape(name), status_html(status.text),
               '<dl class="meta">%s</dl>\n' % details if details else "", when,
               ALL_USERS_LINK % "./" if privacy.may_list() else ""))
    return html_page("%s - fingerd" % html.escape(name), body, privacy.feed)


ALL_USERS_LINK = '<p><a href="%s">All users</a></p>'


def render_error(code: int, reason: str, detail: str, listing: bool = True,
                 feed: bool = True) -> str:
    """A friendly error page; detail must already be escaped.  `listing`: link the user
    list (not with --no-list); `feed`: link the feed (Privacy.feed)."""
    import html
    return html_page("%d %s" % (code, html.escape(reason)),
                     "<h1>%s</h1>\n<p>%s</p>\n%s"
                     % (html.escape(reason), detail, ALL_USERS_LINK % "/" if listing else ""),
                     feed=listing and feed)


def error_body(code: int, detail: str = "", listing: bool = True, feed: bool = True) -> bytes:
    """The HTML page of an error answer (render_error()): `detail`, or words for the
    status."""
    import html
    reason = reason_phrase(code)
    text = detail or ERROR_DETAILS.get(code, reason + ".")
    return render_error(code, reason, html.escape(text), listing, feed).encode("utf-8")


def status_json(name: str, status: Status, base: str = "") -> Dict[str, object]:
    """One user in the documented JSON shape (README: JSON)."""
    import urllib.parse
    lines = clean_lines(status.text)
    return {"name": name, "status": "\n".join(lines), "lines": lines,
            "set_at": iso_time(status.set_at) if status.set_at else None,
            "expires_at": iso_time(status.expires_at) if status.expires_at else None,
            "url": base + "/" + urllib.parse.quote(name, safe="")}


def render_json(value: object) -> str:
    import json
    return json.dumps(value, ensure_ascii=False, indent=1) + "\n"


def render_webfinger(name: str, host: str, base: str, feed: bool = True) -> Dict[str, object]:
    """An RFC 7033 JRD for acct:NAME@HOST, linking the user's page, its JSON and (`feed`)
    the Atom feed."""
    import urllib.parse
    page = base + "/" + urllib.parse.quote(name, safe="")
    links = [{"rel": "http://webfinger.net/rel/profile-page", "type": "text/html",
              "href": page},
             {"rel": "describedby", "type": "application/json", "href": page + ".json"}]
    if feed:
        links.append({"rel": "alternate", "type": "application/atom+xml",
                      "href": base + "/feed.atom"})
    return {"subject": "acct:%s@%s" % (name, host), "aliases": [page], "links": links}


_PAGE_PATH = LazyPattern(r"/(?:@|~|users/)?([^/]+)/?")


def webfinger_account(resource: str, base_path: str = "") -> Optional[Tuple[str, str]]:
    """(user, host) that a WebFinger resource names, else None.  acct:USER@HOST as RFC 7565
    has it (the scheme in any case, split at the last '@', the userpart percent-decoded), and
    the spellings other servers send: no 'acct:' (Pleroma), a leading '@' (@user@host), the
    user's page URL (http(s)://HOST/USER, /@USER, /~USER, /users/USER, under `base_path`,
    the path of --public-url).  The host is as written (compare it with host_key())."""
    import urllib.parse
    text = resource.strip()
    lower = text.lower()
    if lower.startswith(("http://", "https://")):
        try:
            parts = urllib.parse.urlsplit(text)
            host = parts.hostname
        except ValueError:                 # "http://[::1/x": not a URL
            return None
        path = urllib.parse.unquote(parts.path)
        if base_path:
            if not path.startswith(base_path + "/"):
                return None
            path = path[len(base_path):]
        page = _PAGE_PATH.fullmatch(path)
        if page is None or not host:
            return None
        return page.group(1), "[%s]" % host if ":" in host else host
    if lower.startswith("acct:"):
        text = text[5:]
    user, at, host = text.lstrip("@").rpartition("@")
    if not at or not user or not host:
        return None
    return urllib.parse.unquote(user), urllib.parse.unquote(host)


def xml_text(text: str) -> str:
    """Text for XML 1.0: filtered (no control characters, which XML forbids), escaped."""
    import html
    return html.escape("\n".join(clean_lines(text)), quote=True)


def render_feed(changes: Sequence[Tuple[str, Optional[Status], float]], base: str,
                host: str) -> str:
    """An Atom (RFC 4287) feed of recent status changes, newest first."""
    import urllib.parse
    updated = max((when for _, _, when in changes), default=0.0)
    entries = []
    for name, status, when in reversed(changes):
        title = ("%s: %s" % (name, status.text.split("\n")[0]) if status is not None
                 else "%s cleared their status" % name)
        content = status.text if status is not None else ""
        page = base + "/" + urllib.parse.quote(name, safe="")
        entries.append(
            "<entry><title>%s</title><id>tag:%s,2026:%s/%s</id><updated>%s</updated>"
            "<author><name>%s</name></author><link href=\"%s\"/>"
            "<content type=\"text\">%s</content></entry>"
            % (xml_text(title), xml_text(host), xml_text(name), "%.6f" % when,
               iso_time(when), xml_text(name), xml_text(page), xml_text(content)))
    return xml_safe(
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<feed xmlns="http://www.w3.org/2005/Atom"><title>fingerd: status changes</title>'
        '<id>tag:%s,2026:fingerd</id><updated>%s</updated>'
        '<link rel="self" href="%s/feed.atom"/><link href="%s/"/>'
        "<generator>fingerd %s</generator>%s</feed>\n"
        % (xml_text(host), iso_time(updated), xml_text(base), xml_text(base),
           __version__, "".join(entries)))


def prometheus_label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(monitor: Monitor) -> str:
    """/metrics: what `monitor` sees, in the Prometheus text exposition format, version
    0.0.4 (prometheus.io/docs/instrumenting/exposition_formats)."""
    out: List[str] = []
    metrics, store, bot = monitor.metrics, monitor.store, monitor.bot

    def family(name, kind, help_text, samples):
        out.append("# HELP %s %s" % (name, help_text))
        out.append("# TYPE %s %s" % (name, kind))
        for labels, value in samples:
            label_text = ",".join('%s="%s"' % (k, prometheus_label(v)) for k, v in labels)
            out.append("%s%s %s" % (name, "{%s}" % label_text if label_text else "",
                                    repr(float(value))))

    def counted(name):
        with metrics.lock:
            return sorted((labels, value) for (n, labels), value in metrics.counters.items()
                          if n == name)
    backend = getattr(store, "name", "none")
    family("fingerd_info", "gauge", "This fingerd: its version and backend.",
           [((("backend", backend), ("version", __version__)), 1)])
    family("fingerd_requests_total", "counter", "Requests answered, by protocol.",
           counted("fingerd_requests_total"))
    family("fingerd_refusals_total", "counter",
           "Connections or requests refused, by listener and reason.",
           counted("fingerd_refusals_total"))
    with FAULTS.lock:
        faults = sorted(((("where", where),), n) for where, n in FAULTS.counts.items())
    family("fingerd_internal_errors_total", "counter",
           "Internal errors contained (the unit of work failed, the loop went on), by "
           "where they happened.", faults)
    family("fingerd_setter_writes_total", "counter", "Setter writes, by result.",
           counted("fingerd_setter_writes_total"))
    family("fingerd_irc_connected", "gauge", "1 while the IRC bot is registered.",
           [((), 1 if bot is not None and bot.connected.is_set() else 0)])
    family("fingerd_irc_reconnects_total", "counter", "Registrations after the first.",
           [((), max(0, bot.connects - 1) if bot is not None else 0)])
    out.append("# HELP fingerd_backend_seconds Time to read from the backend.")
    out.append("# TYPE fingerd_backend_seconds histogram")
    counts, total = store.read_seconds.snapshot() if store is not None else \
        ([0] * (len(Histogram.BUCKETS) + 1), 0.0)
    running = 0
    for bound, count in zip(list(Histogram.BUCKETS) + ["+Inf"], counts):
        running += count
        out.append('fingerd_backend_seconds_bucket{le="%s"} %s' % (bound, float(running)))
    out.append("fingerd_backend_seconds_sum %r" % float(total))
    out.append("fingerd_backend_seconds_count %r" % float(running))
    upstreams = store.upstreams() if store is not None else []
    for name, kind, value, help_text in (
            ("up", "gauge", lambda u: 0 if u.down else 1, "1 while what the backend asks (the "
             "name service, a remote authority) answers, 0 during an outage."),
            ("outages_total", "counter", lambda u: u.outages,
             "Outages begun (first failure after an answer), by upstream."),
            ("failures_total", "counter", lambda u: u.failures,
             "Calls that failed or missed their deadline, by upstream."),
            ("shed_total", "counter", lambda u: u.shed, "Calls answered without asking it (as "
             "last known, or temporarily unavailable): during an outage, or with too many "
             "already waiting."),
            ("slowdowns_total", "counter", lambda u: u.slowdowns,
             "Answers asking to slow down (429, 503 with Retry-After), by upstream.")):
        family("fingerd_upstream_" + name, kind, help_text,
               [((("upstream", u.label),), value(u)) for u in upstreams])
    for name, attribute, help_text in (
            ("open_connections", "open_connections", "Connections open"),
            ("worker_threads", "worker_threads", "Worker threads started"),
            ("worker_threads_busy", "workers_busy", "Worker threads busy")):
        family("fingerd_" + name, "gauge", help_text + ", by listener.",
               [((("listener", s.label),), getattr(s, attribute)) for s in monitor.servers])
    return "\n".join(out) + "\n"


GZIP_MIN = 1024      # bytes: smaller bodies gain less from gzip than its header costs
WEBFINGER_CORS = "Access-Control-Allow-Origin: *\r\n"     # RFC 7033 §5
LISTING_PATHS = ("/", "/users.json", "/feed.atom")    # what enumerates users (Privacy)
SHARED_BODY = 65536  # bytes: larger cached bodies are sent without copying them


class Page(namedtuple("Page", "body etag last_modified content_type validators gzipped "
                              "gzip_etag gzip_validators",
                      defaults=("text/html; charset=utf-8", "", b"", "", ""))):
    """A rendered response body with the validators that make 304 answers possible;
    `validators` is their header lines, formatted once (RFC 9110 §8.8).  Bodies of GZIP_MIN
    bytes or more also have a gzip variant (`gzipped`, with its own ETag in
    `gzip_validators`), and both variants say `Vary: Accept-Encoding`."""
    __slots__ = ()


def make_page(text: str, last_modified: float,
              content_type: str = "text/html; charset=utf-8") -> Page:
    import zlib
    body = text.encode("utf-8")
    # A strong validator from the content: equal bodies, equal tags, across restarts too.
    etag = '"%x-%08x"' % (len(body), zlib.crc32(body))
    # No set time known or published (--show without set-time): no Last-Modified at all.
    common = ("Last-Modified: %s\r\n" % http_date(last_modified) if last_modified else ""
              ) + "Cache-Control: no-cache\r\n"
    if len(body) < GZIP_MIN:
        return Page(body, etag, last_modified, content_type, "ETag: %s\r\n%s" % (etag, common))
    import gzip                     # only pages this large need it
    gzipped = gzip.compress(body, 6, mtime=0)      # mtime 0: the same bytes every time
    gzip_etag = etag[:-1] + '-gzip"'                # another representation, another tag
    vary = "Vary: Accept-Encoding\r\n"
    return Page(body, etag, last_modified, content_type,
                "ETag: %s\r\n%s%s" % (etag, common, vary), gzipped, gzip_etag,
                "ETag: %s\r\nContent-Encoding: gzip\r\n%s%s" % (gzip_etag, common, vary))


def accepts_gzip(accept_encoding: str) -> bool:
    """True when an Accept-Encoding value allows gzip (RFC 9110 §12.5.3): 'gzip', 'x-gzip'
    or '*' with a q-value above 0, unless gzip itself is refused with q=0."""
    allowed = {}
    for element in accept_encoding.lower().split(","):
        coding, _, params = element.partition(";")
        coding, q = coding.strip(" \t"), 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip(" \t") == "q":
                try:
                    q = float(value.strip(" \t"))
                except ValueError:
                    q = 0.0
        if coding:
            allowed[coding] = q
    for coding in ("gzip", "x-gzip"):
        if coding in allowed:
            return allowed[coding] > 0
    return allowed.get("*", 0.0) > 0


# Fault codes of the XML-RPC fault code interoperability convention (specs.xmlrpc.com);
# 1 stays the code of what a fingerd itself says (unavailable, loop, list not published).
RPC_NOT_XMLRPC = -32700         # not well-formed, or not a methodCall
RPC_INVALID = -32600            # a methodCall without a method name, a malformed multicall
RPC_NO_METHOD = -32601
RPC_BAD_PARAMS = -32602
RPC_INTERNAL = -32603
RPC_PARAMS = {"getUser": (1, "getUser(user): one string, the user name; returns the user's "
                              "status, or 'No such user'"),
              "getUsers": (0, "getUsers(): no parameters; returns the user names"),
              "system.listMethods": (0, "system.listMethods(): no parameters"),
              "system.methodHelp": (1, "system.methodHelp(name): one string"),
              "system.methodSignature": (1, "system.methodSignature(name): one string"),
              "system.multicall": (1, "system.multicall(calls): one array of "
                                      "{methodName, params} structs")}


def rpc_dispatcher(store: Store, privacy: Privacy = PUBLIC):
    """getUser, getUsers and the system.* introspection and multicall methods, as `privacy`
    allows: a SimpleXMLRPCDispatcher whose answer(body, via) gives the response to one
    call's body, never raising.  `via` is the request's Via chain, passed to the store
    (loop detection).  Every fault says in words what was wrong (RPC_* codes), never
    Python's own (no type or function names, no traceback).

    xmlrpc.server is imported here, at the first call, not at start-up: it brings pydoc."""
    from xml.parsers.expat import ExpatError
    from xmlrpc.client import Error, Fault, dumps, loads
    from xmlrpc.server import SimpleXMLRPCDispatcher

    class Dispatcher(SimpleXMLRPCDispatcher):
        def answer(self, data: bytes, via: str = "") -> bytes:
            try:
                try:
                    params, method = loads(data, use_builtin_types=True)
                except (ValueError, TypeError, LookupError, ExpatError, Error):
                    raise Fault(RPC_NOT_XMLRPC, "The body is not an XML-RPC call "
                                                "(well-formed XML, a methodCall).")
                if not isinstance(method, str) or not method:
                    raise Fault(RPC_INVALID, "The call names no method.")
                response = dumps((self._dispatch(method, params, via),),
                                 methodresponse=True, encoding="utf-8")
            except Fault as fault:
                response = dumps(fault, methodresponse=True, encoding="utf-8")
            except Exception:
                FAULTS.report("xmlrpc", "answering a call")
                response = dumps(Fault(RPC_INTERNAL, INTERNAL_ERROR), methodresponse=True,
                                 encoding="utf-8")
            return response.encode("utf-8", "xmlcharrefreplace")

        def _dispatch(self, method, params, via=""):
            function = self.funcs.get(method)
            if function is None:
                raise Fault(RPC_NO_METHOD, "There is no method %r here; there are getUser, "
                            "getUsers and system.*." % clean_line(str(method))[:64])
            count, usage = RPC_PARAMS[method]
            if len(params) != count or (count and method != "system.multicall"
                                        and not isinstance(params[0], str)):
                raise Fault(RPC_BAD_PARAMS, "Wrong parameters; " + usage)
            if method in ("getUser", "getUsers", "system.multicall"):
                return function(*params, via=via)
            return function(*params)

        def system_methodHelp(self, method_name):
            """Our own words for our methods (not Python's docstrings)."""
            if method_name not in RPC_PARAMS:
                raise Fault(RPC_NO_METHOD, "There is no method %r here."
                            % clean_line(str(method_name))[:64])
            return RPC_PARAMS[method_name][1]

        def system_methodSignature(self, method_name):
            if method_name not in RPC_PARAMS:
                raise Fault(RPC_NO_METHOD, "There is no method %r here."
                            % clean_line(str(method_name))[:64])
            return "signatures not supported"

        def system_multicall(self, calls, via=""):
            if not isinstance(calls, list):
                raise Fault(RPC_BAD_PARAMS, "Wrong parameters; "
                            + RPC_PARAMS["system.multicall"][1])
            results = []
            for call in calls:
                try:
                    if not (isinstance(call, dict) and isinstance(call.get("methodName"), str)
                            and isinstance(call.get("params"), list)):
                        raise Fault(RPC_INVALID, "Each call is a struct {methodName: string, "
                                                 "params: array}.")
                    if call["methodName"] == "system.multicall":
                        raise Fault(RPC_INVALID, "system.multicall does not nest.")
                    results.append([self._dispatch(call["methodName"], call["params"], via)])
                except Fault as fault:
                    results.append({"faultCode": fault.faultCode,
                                    "faultString": fault.faultString})
            return results

    dispatcher = Dispatcher(allow_none=False, encoding="utf-8", use_builtin_types=True)

    def contained(method):
        """A backend that cannot answer is a Fault saying so; a bug is a Fault saying only
        'internal error' (counted and logged), never the exception's text."""
        @functools.wraps(method)
        def call(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            except Fault:
                raise
            except RequestLoop as e:        # passed back, to the server it loops through
                raise Fault(1, loop_fault(e.instance))
            except StoreUnavailable as e:
                log.debug("xmlrpc: %s", e)
                raise Fault(1, UNAVAILABLE)
            except Exception:
                FAULTS.report("xmlrpc", "in %s", method.__name__)
                raise Fault(RPC_INTERNAL, INTERNAL_ERROR)
        return call

    @contained
    def get_user(user, via=""):
        """getUser(user) -> the user's status, or the finger server's unknown-user text."""
        status = privacy.release(store.get(user, via=via))
        return NO_SUCH_USER if status is None else "\n".join(clean_lines(status.text))

    @contained
    def get_users(via=""):
        """getUsers() -> the sorted list of user names (a fault with --no-list)."""
        if not privacy.may_list():
            raise Fault(1, LISTING_OFF + " (getUser still answers for one user).")
        return store.users(via)

    dispatcher.register_function(get_user, "getUser")
    dispatcher.register_function(get_users, "getUsers")
    dispatcher.register_introspection_functions()
    dispatcher.register_multicall_functions()
    return dispatcher


def http_date(epoch: Optional[float] = None) -> str:
    """An IMF-fixdate (RFC 9110 §5.6.7) of `epoch`, or of now: formatted once a second.
    wsgiref's formatter, not email.utils's: the same text, without loading the email
    package (5 ms and 1 MiB) into every server with HTTP on."""
    return _http_date_of(int(epoch if epoch is not None else time.time()))


@functools.lru_cache(maxsize=16)         # now, and the Last-Modified of the pages served
def _http_date_of(second: int) -> str:
    import wsgiref.handlers
    return wsgiref.handlers.format_date_time(second)


def http_date_seconds(text: str) -> Optional[float]:
    """An HTTP date as epoch seconds, or None when it is not one (RFC 9110 §5.6.7: the
    IMF-fixdate, RFC 850 and asctime forms, all GMT whatever the host's TZ; a date with
    another zone is not an HTTP date)."""
    import datetime
    import email.utils
    text = text.strip(" \t")
    if not (text.endswith(" GMT") or _ASCTIME.match(text)) or text.count(",") > 1:
        return None                      # another zone, or a list of dates
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:              # asctime, or '-0000': GMT by definition
        when = when.replace(tzinfo=datetime.timezone.utc)
    short = _RFC850_YEAR.search(text)
    if short:                            # a two-digit year: at most 50 years ahead (§5.6.7)
        this_year = datetime.datetime.now(datetime.timezone.utc).year
        year = this_year - this_year % 100 + int(short.group(1))
        if year > this_year + 50:
            year -= 100
        try:
            when = when.replace(year=year)
        except ValueError:               # 29 February of a year that has none
            return None
    try:
        return when.timestamp()
    except (OverflowError, OSError, ValueError):
        return None


_SANE_HOST = LazyPattern(r"[A-Za-z0-9.\-_:\[\]]+")
# RFC 9110 §7.2 / RFC 3986 §3.2.2: reg-name or IP-literal, then an optional port.
_HOST_FIELD = LazyPattern(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%!$&'()*+,;=-]*)(?::([0-9]{0,5}))?")


def valid_host(value: str) -> bool:
    """True when a Host (or X-Forwarded-Host) value is uri-host [":" port], port ≤ 65535."""
    match = _HOST_FIELD.fullmatch(value)
    return bool(match) and not (match.group(1) and int(match.group(1)) > 65535)


class HeaderFields(dict):
    """A request's header fields: lower-case name -> [values, in order].  get() and
    get_all() answer as email.message.Message's do (any case; the first value; all of
    them), without its cost per field, which was most of a small request's parsing."""

    __slots__ = ()
    _EMPTY: List[str] = []

    def values_of(self, lower_name: str) -> List[str]:
        """Every value of a field named in lower case ([] when absent)."""
        return dict.get(self, lower_name, self._EMPTY)

    def get(self, name: str, default=None):
        values = dict.get(self, name.lower())
        return values[0] if values else default

    def get_all(self, name: str, default=None):
        return dict.get(self, name.lower(), default)

    def __contains__(self, name) -> bool:
        return dict.__contains__(self, name.lower())


def in_networks(address: str, networks: Sequence) -> bool:
    """True when the IP address (normalise_ip()) is in any of networks."""
    ip = normalise_ip(address)
    return ip is not None and any(ip in net for net in networks)


def bare_address(hop: str) -> Optional[str]:
    """The IP address in one proxy hop ('192.0.2.1', '192.0.2.1:4711', '[2001:db8::1]:80',
    '"[2001:db8::1]"'), or None when it is not one ('unknown', '_hidden')."""
    import ipaddress
    hop = hop.strip(' \t"')
    if hop.startswith("["):
        hop = hop[1:].partition("]")[0]
    elif hop.count(":") == 1:
        hop = hop.partition(":")[0]
    try:
        return str(ipaddress.ip_address(hop))
    except ValueError:
        return None


def forwarded_fields(values: Sequence[str]) -> Tuple[List[str], str, str]:
    """RFC 7239 Forwarded: (the for= hops in order, the last proto=, the last host=)."""
    hops, proto, host = [], "", ""
    for element in ",".join(values).split(","):
        for pair in element.split(";"):
            key, _, value = pair.partition("=")
            key, value = key.strip(" \t").lower(), value.strip(' \t"')
            if key == "for":
                hops.append(value)
            elif key == "proto":
                proto = value.lower()
            elif key == "host":
                host = value
    return hops, proto, host


class HTTPError(FingerdError):
    """An error answer a route raises and WebHandler.handle() sends, once (bottle's
    HTTPError): the status `code`, `detail` in words for the page (default: the status's own
    words), `extra` header lines (each ending in CRLF), `close` to close the connection
    after it (a framing error always does: CLOSING_CODES), and `as_json` for a JSON body
    {"error": detail} where the resource is JSON."""

    def __init__(self, code: int, detail: str = "", extra: str = "", close: bool = False,
                 as_json: bool = False) -> None:
        super().__init__("%d %s" % (code, detail))
        self.code, self.detail, self.extra = code, detail, extra
        self.close, self.as_json = close, as_json


@functools.lru_cache(maxsize=64)
def reason_phrase(code: int) -> str:
    """The status's reason phrase (RFC 9110 §15), as http.server gives it."""
    import http
    try:
        return http.HTTPStatus(code).phrase
    except ValueError:
        return "Error"


ERROR_DETAILS = {404: "There is no such user here.",
                 408: "The request took too long to arrive."}
CLOSING_CODES = (400, 411, 413, 414, 431, 505)    # the request's framing cannot be trusted
PAGE_METHODS = ("GET", "HEAD", "OPTIONS")
RPC_METHODS = ("POST", "OPTIONS")


class WebHandler(BufferedRequestHandler):
    """HTTP/1.1 with keep-alive: the pages, and XML-RPC at /RPC2 (POST only).

    The loop frames each request (head, then a Content-Length body) within the limits
    above, so parse_request() here reads only complete, bounded input.  ROUTES is every path
    served; a route answers with reply() or raises HTTPError, which handle() answers.
    Replies are built as bytes with the security headers on every one; access lines go to
    logging, never to stderr.  It keeps http.server's names for what it parses (command,
    path, request_version, headers, close_connection) but not its code: that parser goes
    through the email package and cost more than the rest of a request."""

    recv_size = 65536
    server_version = "fingerd/" + __version__

    # What parse_request() made of a request head that came alone (no body), by its bytes:
    # a client sends the same head again and again (keep-alive, polling, a benchmark), and
    # parsing it is a pure function of those bytes.  Bounded: emptied when full.
    PARSED: Dict[bytes, tuple] = {}
    PARSED_MAX = 128                      # heads remembered
    PARSED_HEAD = 2048                    # bytes: a longer head is parsed every time
    # Whole responses built by response_bytes() this second (their Date is in the key), by
    # what made them; emptied each second, or when full.  At most 128 x 8 KiB.
    BUILT: Dict[tuple, bytes] = {}
    BUILT_MAX = 128
    BUILT_SIZE = 8192
    built_date = ""

    # Every path served: path -> (the do_* method answering it, the methods it takes).
    # Any other path is a user: /USER or /USER.json (do_user).
    ROUTES = {
        "/": ("listing", PAGE_METHODS),
        "/users.json": ("listing", PAGE_METHODS),
        "/feed.atom": ("listing", PAGE_METHODS),
        "/healthz": ("healthz", PAGE_METHODS),
        "/metrics": ("metrics", PAGE_METHODS),
        "/RPC2": ("xmlrpc", RPC_METHODS),
        "/.well-known/webfinger": ("webfinger", PAGE_METHODS),
    }
    USER_ROUTE = ("user", PAGE_METHODS)

    @classmethod
    def request_length(cls, buf, eof):
        if len(buf) <= cls.PARSED_HEAD and buf in cls.PARSED:
            return len(buf)          # a head parsed before, whole, with no body
        start = len(buf) - len(buf.lstrip(b"\r\n"))     # stray CRLFs between requests
        if start > 8 or not _METHOD_START.match(buf, start):
            return len(buf)          # a flood of empty lines, or bytes no request starts with
        line_end = buf.find(b"\n", start)
        if (line_end < 0 and len(buf) - start > MAX_REQUEST_LINE + 1) \
                or line_end - start > MAX_REQUEST_LINE + 1:
            raise RequestTooLarge(Refusal.URI)
        if line_end >= 0 and not _REQUEST_LINE.match(buf, start, line_end + 1):
            return line_end + 1      # not a request line: refused without waiting for more
        match = _HEAD_END.search(buf, max(start, line_end - 1)) if line_end >= 0 else None
        if match is None:
            if len(buf) - start > MAX_HEAD:
                raise RequestTooLarge(Refusal.HEADERS)
            return None
        head_end = match.end()
        head = buf[start:head_end]
        if len(head) > MAX_HEAD or head.count(b"\n") > MAX_HEADERS + 2:
            raise RequestTooLarge(Refusal.HEADERS)
        lengths = _CONTENT_LENGTH.findall(head)
        if len(lengths) != 1 or int(lengths[0]) > MAX_RPC_BODY \
                or len(_FRAMING_FIELD.findall(head)) != 1:
            # No body, or framing the handler refuses (Transfer-Encoding, several or invalid
            # lengths, too long): it answers and closes, and what follows is never parsed.
            return head_end
        end = head_end + int(lengths[0])
        return end if len(buf) >= end else None

    @classmethod
    def interim(cls, buf):
        """Tell a client that waits for it (curl, for bodies over 1 KiB) to send the body."""
        match = _HEAD_END.search(buf)
        if match and _EXPECT_CONTINUE.search(buf, 0, match.end()):
            return b"HTTP/1.1 100 Continue\r\n\r\n"
        return b""

    REFUSALS = {Refusal.URI: 414, Refusal.HEADERS: 431, Refusal.BODY: 413,
                Refusal.TOO_LONG: 413, Refusal.TIMEOUT: 408, Refusal.BUSY: 503,
                Refusal.TOO_MANY: 429, Refusal.DENIED: 403, Refusal.ERROR: 500}

    @classmethod
    def refusal(cls, reason):
        """An error page that closes the connection; 429 and 503 say when to retry."""
        code = cls.REFUSALS[reason]
        body = error_body(code, "", True, True)
        return cls.response_bytes(code, body, "text/html; charset=utf-8", close=True,
                                  extra="Cache-Control: no-store\r\n" + (
                                      "Retry-After: 5\r\n" if code in (429, 503) else ""))

    @classmethod
    def response_bytes(cls, code: int, body: bytes, content_type: str, close: bool = False,
                       head_only: bool = False, extra: str = "") -> bytes:
        """One whole response (RFC 9112 §4, §6): status line, Date, Server, the security
        headers, `extra`, Content-Type and Content-Length, Connection; the body unless
        `head_only` or 304 (RFC 9110 §15.4.5), and no Content-Length for 204 (§8.6)."""
        date = http_date()
        key = (code, body, content_type, close, head_only, extra, date)
        built = cls.BUILT.get(key)
        if built is not None:
            return built
        framing = "" if code == 204 else "Content-Type: %s\r\nContent-Length: %d\r\n" % (
            content_type, len(body))
        head = ("HTTP/1.1 %d %s\r\nDate: %s\r\nServer: %s\r\n%s%s%sConnection: %s\r\n\r\n"
                % (code, reason_phrase(code), date, cls.server_version,
                   SECURITY_HEADERS, extra, framing, "close" if close else "keep-alive"))
        built = head.encode("latin-1") + (b"" if head_only or code == 304 else body)
        if len(built) <= cls.BUILT_SIZE:
            if len(cls.BUILT) >= cls.BUILT_MAX or date != cls.built_date:
                cls.BUILT.clear()             # a new second: every Date is old
                WebHandler.built_date = date
            cls.BUILT[key] = built
        return built

    # Request parsing -----------------------------------------------------------------------

    def handle(self) -> None:
        self.close_connection = True
        self.command = self.path = self.requestline = ""
        self.via = ""
        try:
            self.parse_request()
            self.proxied_client()
            self.route()
        except HTTPError as e:
            self.reply_error(e)
        except StoreUnavailable as e:
            log.debug("http: %s", e)
            self.reply_error(HTTPError(503, "The status service is unavailable right now; "
                                            "try again later.", "Retry-After: 30\r\n"))
        self.after = After.CLOSE if self.close_connection else After.KEEP

    def parse_request(self) -> None:
        """The request line and header fields, strictly; HTTPError when they are not HTTP.

        RFC 9112: a request whose framing could be read two ways is refused and the
        connection closed (every 400 closes): Transfer-Encoding (a chunked body is 411,
        another coding 501, either with Content-Length 400), several or invalid
        Content-Length values, whitespace before a colon, obsolete line folding, NUL or a
        bare CR (§2.2, §5.1, §5.2, §6.1, §6.3); a missing (HTTP/1.1) or repeated Host
        (RFC 9112 §3.2).  Persistence follows §9.3: HTTP/1.1 unless 'close', HTTP/1.0 only
        with 'keep-alive'; every response says which (Connection: keep-alive or close)."""
        data = self.request.request
        parsed = self.PARSED.get(data) if len(data) <= self.PARSED_HEAD else None
        if parsed is not None:
            (self.requestline, self.command, self.path, self.request_version, self.headers,
             close, self.body_length, self.via) = parsed
            self.close_connection = close or self.final
            return
        raw = self.rfile.readline(MAX_REQUEST_LINE + 3)
        while raw in (b"\r\n", b"\n"):
            raw = self.rfile.readline(MAX_REQUEST_LINE + 3)
        line = raw.decode("latin-1").rstrip("\r\n")
        self.requestline = line
        end = _HEAD_END.search(data)
        if _BAD_HEAD.search(data, 0, end.end() if end else len(data)):
            raise HTTPError(400, "The request holds a NUL or a bare CR.")
        words = line.split(" ")
        if len(words) != 3 or not words[0] or not words[1]:
            raise HTTPError(400, "The request line is not METHOD TARGET HTTP/1.x.")
        self.command, self.path, self.request_version = words
        version = self.request_version
        if not version.startswith("HTTP/1.") or version not in ("HTTP/1.0", "HTTP/1.1"):
            if re.match(r"HTTP/\d+\.\d+\Z", version):
                raise HTTPError(505, "Only HTTP/1.0 and HTTP/1.1 are spoken here.")
            raise HTTPError(400, "Bad protocol version.")
        if not _TOKEN.match(self.command):
            raise HTTPError(400, "Bad method.")
        headers = self.headers = HeaderFields()
        add = headers.setdefault
        while True:
            raw = self.rfile.readline(MAX_HEAD + 1)
            if raw in (b"\r\n", b"\n", b""):
                break
            name, colon, value = raw.decode("latin-1").partition(":")
            if not colon or not _TOKEN.match(name):     # also refuses obsolete line folding
                raise HTTPError(400, "Bad header field.")
            add(name.lower(), []).append(value.strip(" \t\r\n"))
        field = headers.values_of
        connection = field("connection")
        tokens = {t.strip(" \t").lower() for t in ",".join(connection).split(",")} \
            if connection else ()
        if version == "HTTP/1.1":
            close = "close" in tokens
        else:
            close = "keep-alive" not in tokens or "close" in tokens
        # the connection's last request (max_requests) closes it
        self.close_connection = close or self.final
        hosts = field("host")
        if len(hosts) > 1:
            raise HTTPError(400, "A request has one Host header.")
        if hosts and not valid_host(hosts[0]):
            raise HTTPError(400, "The Host header is not a host name or address.")
        if version == "HTTP/1.1" and not hosts:
            raise HTTPError(400, "HTTP/1.1 requests need a Host header.")
        codings, lengths = field("transfer-encoding"), field("content-length")
        if codings:
            if lengths:
                raise HTTPError(400, "Transfer-Encoding and Content-Length together.")
            # Only SP and HTAB are whitespace here (gunicorn #3364: str.strip() also took
            # \x0b, \x1c or \xa0 and so read "\x0bchunked" as chunked); empty elements
            # are ignored (RFC 9110 §5.6.1).
            items = [c.strip(" \t").lower() for c in ",".join(codings).split(",")]
            items = [c for c in items if c]
            if not items or items[-1] != "chunked":
                raise HTTPError(501, "Transfer codings other than chunked are not "
                                     "implemented.", close=True)
            raise HTTPError(411, "Chunked bodies are not accepted: send a Content-Length.",
                            close=True)
        if lengths and (len(lengths) != 1 or not lengths[0].isdigit()
                        or not lengths[0].isascii()):
            raise HTTPError(400, "Bad Content-Length.")
        self.body_length = int(lengths[0]) if lengths else None
        if self.body_length is not None and self.body_length > MAX_RPC_BODY:
            raise HTTPError(413, "Request bodies are limited to %d bytes." % MAX_RPC_BODY)
        # The Via chain travels on with any remote call this request makes (via_chain()).
        self.via = ", ".join(field("via"))[:4096]
        if self.body_length is None and len(data) <= self.PARSED_HEAD and end is not None \
                and end.end() == len(data):
            if len(self.PARSED) >= self.PARSED_MAX:
                self.PARSED.clear()
            self.PARSED[data] = (line, self.command, self.path, version, headers, close,
                                 None, self.via)

    forwarded_scheme = ""
    forwarded_host = ""

    def proxied_client(self) -> None:
        """From a --trusted-proxy peer: take the client's address from Forwarded (RFC 7239)
        or X-Forwarded-For (the rightmost hop that is not itself a trusted proxy), and the
        scheme and host it used from Forwarded or X-Forwarded-Proto/-Host; then apply the
        rate limit to that client (HTTPError 429).  From anyone else these headers are
        ignored."""
        trusted = self.server.trusted_proxies
        peer = self.client_address
        if not trusted or not isinstance(peer, tuple) or not in_networks(peer[0], trusted):
            return
        headers = self.headers
        # One family of headers, never a mix: X-Forwarded-* when the proxy sent
        # X-Forwarded-For (nginx, Caddy, HAProxy and Apache set it), else Forwarded.  A proxy
        # passes the other family through from the client untouched, so it proves nothing.
        forwarded_for = headers.get_all("X-Forwarded-For")
        if forwarded_for:
            hops = [h.strip(" \t") for h in ",".join(forwarded_for).split(",")
                    if h.strip(" \t")]
            scheme = (headers.get("X-Forwarded-Proto") or "").strip(" \t").lower()
            host = (headers.get("X-Forwarded-Host") or "").split(",")[0].strip(" \t")
        else:
            hops, scheme, host = forwarded_fields(headers.get_all("Forwarded") or ())
        client = None
        for hop in reversed(hops):
            address = bare_address(hop)
            if address is None:
                break                        # "unknown", an obfuscated id: stop believing
            client = address
            if not in_networks(address, trusted):
                break
        if scheme in ("http", "https"):
            self.forwarded_scheme = scheme
        if host and len(host) <= 255 and valid_host(host) and _SANE_HOST.fullmatch(host):
            self.forwarded_host = host
        if client is None:
            return
        self.client_address = (client, 0)
        refused = self.server.limiter.admit_request(client)
        if refused is not None:
            self.server.count_refusal(refused)
            raise HTTPError(429, TOO_MANY + ".", "Retry-After: 5\r\n")

    def host(self) -> str:
        """The Host the client asked for (through a trusted proxy: the one it asked the
        proxy for), if it is a sane one, else this server's address."""
        host = self.forwarded_host or (self.headers.get("Host") or "").strip()
        if not host or len(host) > 255 or not _SANE_HOST.fullmatch(host):
            host = self.server.address
        return host

    def base_url(self) -> str:
        """Where absolute links point: --public-url when given, else what the client (or
        the trusted proxy it came through) asked for."""
        if self.server.public_url:
            return self.server.public_url
        return (self.forwarded_scheme or "http") + "://" + self.host()

    # Replies -----------------------------------------------------------------------------

    def reply(self, code: int, body, content_type: str = "", extra: str = "") -> None:
        """Queue one response: `body` is bytes of `content_type`, or a Page: then the
        variant the client accepts (gzip or not, RFC 9110 §12.5.3) with its validators, or
        304 when the client's copy is current (§13.1).  HEAD, 204 and 304 get the head
        alone; Connection: close or keep-alive as the request asked (RFC 9112 §9.3).  A
        large body goes out as itself, not a copy joined to its head: a cached page sent
        slowly to many clients is held in memory once.  Counted and logged."""
        if isinstance(body, Page):
            page = body
            accept = self.headers.values_of("accept-encoding")
            if page.gzipped and accept and accepts_gzip(",".join(accept)):
                body, etag, validators = page.gzipped, page.gzip_etag, page.gzip_validators
            else:
                body, etag, validators = page.body, page.etag, page.validators
            if code == 200 and self.not_modified(page, etag):
                code = 304
            content_type, extra = page.content_type, validators + extra
        head_only = self.command == "HEAD" or code in (204, 304)
        shared = len(body) >= SHARED_BODY and not head_only
        data = self.response_bytes(code, body, content_type, self.close_connection,
                                   head_only or shared, extra)
        self.wfile.write(data)
        if shared:
            self.wfile.write(body)
        self.server.metrics.add(RPC_REQUEST if self.path == "/RPC2" else HTTP_REQUEST)
        self.log_request(code, len(data) + (len(body) if shared else 0))

    def reply_error(self, error: HTTPError) -> None:
        """The answer to an HTTPError: an HTML page (or JSON) saying what was wrong, never
        cached; a framing error also closes the connection."""
        if error.close or error.code in CLOSING_CODES:
            self.close_connection = True
        if error.as_json:
            body = render_json({"error": error.detail}).encode()
            content_type = "application/json; charset=utf-8"
        else:
            privacy = self.server.privacy
            body = error_body(error.code, error.detail, privacy.may_list(), privacy.feed)
            content_type = "text/html; charset=utf-8"
        self.reply(error.code, body, content_type, "Cache-Control: no-store\r\n" + error.extra)

    def not_modified(self, page: Page, etag: str) -> bool:
        match = self.headers.get("If-None-Match")
        if match is not None:
            tags = [t.strip() for t in match.split(",")]
            return "*" in tags or etag in tags or "W/" + etag in tags
        dates = self.headers.values_of("if-modified-since")
        since = dates[0] if len(dates) == 1 else None      # two of them: neither holds
        if since and page.last_modified and self.command in ("GET", "HEAD"):
            when = http_date_seconds(since)
            return when is not None and int(page.last_modified) <= when
        return False

    def log_request(self, code: int, size: int) -> None:
        # Who asked for what is logged only when the admin asks (RFC 1288 §3.2.7): at debug
        # level without --log-queries, the request is logged without the client.
        if self.server.log_queries:
            log.info("http %s %r %s %s", describe_peer(self.client_address),
                     self.requestline[:200], code, size)
        elif log.isEnabledFor(LOG_DEBUG):
            log.debug("http %r %s %s", self.requestline[:200], code, size)

    # Routing -----------------------------------------------------------------------------

    def route(self) -> None:
        """Answer the request through ROUTES; HTTPError for a target that is no path here,
        or a method the resource does not take."""
        target = self.path
        if target == "*":                                 # OPTIONS * (RFC 9110 §9.3.7)
            if self.command != "OPTIONS":
                raise HTTPError(400, "Only OPTIONS takes the target *.")
            self.allowed(("GET", "HEAD", "POST", "OPTIONS"))
            return
        if target.startswith(("http://", "https://")):     # absolute-form (RFC 9112 §3.2.2)
            import urllib.parse
            target = urllib.parse.urlsplit(target).path or "/"
        path = target.partition("?")[0].partition("#")[0]
        if not path.startswith("/"):
            raise HTTPError(400, "The request target must be a path.")
        if "%" in path or not path.isascii():       # else unquoting gives it back as it is
            import urllib.parse
            try:
                path = urllib.parse.unquote_to_bytes(path).decode("utf-8")
            except UnicodeDecodeError:
                raise HTTPError(400, "The path is not UTF-8.")
        if not path.isprintable():          # NUL, other controls, invisible characters
            raise HTTPError(400, "The path has control characters.")
        name, methods = self.ROUTES.get(path, self.USER_ROUTE)
        if self.allowed(methods, WEBFINGER_CORS if name == "webfinger" else ""):
            getattr(self, "do_" + name)(path)

    def allowed(self, methods: Tuple[str, ...], cors: str = "") -> bool:
        """True when the method is one of `methods`; OPTIONS is answered here (204 with
        Allow) and False; else HTTPError 405 with Allow (RFC 9110 §15.5.6), or 501 for a
        method HTTP does not define (§15.6.2)."""
        method = self.command
        if method in methods and method != "OPTIONS":
            return True
        allow = ", ".join(methods)
        if method == "OPTIONS":      # with CORS, this also answers a browser's preflight
            self.reply(204, b"", "text/plain; charset=utf-8", "Allow: %s\r\n%s" % (
                allow, cors and cors + "Access-Control-Allow-Methods: %s\r\n" % allow))
            return False
        if method in KNOWN_METHODS:
            raise HTTPError(405, "This resource takes %s." % allow, "Allow: %s\r\n" % allow)
        raise HTTPError(501, "The method %s is not implemented here." % method,
                        "Allow: %s\r\n" % allow)

    def listing_off(self, path: str) -> HTTPError:
        """403 for a resource that enumerates users while Privacy says they are not listed
        (--no-list; the feed also without set-time in --show)."""
        if path == "/users.json":
            return HTTPError(403, LISTING_OFF, as_json=True)
        if path == "/feed.atom" and self.server.privacy.may_list():
            return HTTPError(403, "This server does not publish when statuses change.")
        return HTTPError(403, LISTING_OFF + "; ask for one user at /NAME.")

    def do_listing(self, path: str) -> None:
        """/ (HTML) and /users.json: everyone, unless --no-list; /feed.atom: the recent
        changes (RFC 4287), unless --no-list or set-time is not shown."""
        server = self.server
        if not (server.privacy.feed if path == "/feed.atom" else server.privacy.may_list()):
            raise self.listing_off(path)
        render = server.render_feed if path == "/feed.atom" else server.render_user_list
        self.reply(200, server.page(path, self.base_url(), self.via, render))

    def do_user(self, path: str) -> None:
        """/USER (HTML) and /USER.json; 404 for no such user."""
        page = self.server.page(path, self.base_url(), self.via, self.server.render_user)
        if page is None:
            raise HTTPError(404, NO_SUCH_USER, as_json=True) if path.endswith(".json") \
                else HTTPError(404)
        self.reply(200, page)

    def do_healthz(self, path: str) -> None:
        """200 'ok' or 503 with the reason (Monitor.health()): for load balancers."""
        ok, reason = self.server.monitor.health()
        self.reply(200 if ok else 503, (reason + "\n").encode(), "text/plain; charset=utf-8",
                   "Cache-Control: no-store\r\n")

    def do_metrics(self, path: str) -> None:
        """The Prometheus text format (render_metrics())."""
        self.reply(200, render_metrics(self.server.monitor).encode(),
                   "text/plain; version=0.0.4; charset=utf-8", "Cache-Control: no-store\r\n")

    def do_webfinger(self, path: str) -> None:
        """RFC 7033: ?resource=acct:USER@HOST (rel= filters the links), answered only for
        this server's host names (Privacy.webfinger_hosts); webfinger_account() reads the
        spellings."""
        import urllib.parse
        cors = WEBFINGER_CORS           # errors add their own Cache-Control: no-store
        try:
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query,
                                          keep_blank_values=True, max_num_fields=20)
        except ValueError:                          # more than 20 fields
            raise HTTPError(400, "Too many query parameters.", cors)
        resources = query.get("resource", [])
        if len(resources) != 1 or not resources[0]:
            raise HTTPError(400, "webfinger needs one resource parameter, like "
                                 "acct:alice@host.", cors)
        privacy, store = self.server.privacy, self.server.store
        account = webfinger_account(resources[0], privacy.public_path)
        name, status, host = "", None, ""
        if account is not None:
            host = host_key(account[1])
            request_host = self.forwarded_host or (self.headers.get("Host") or "")
            if host and host in privacy.webfinger_hosts(request_host):
                for name in dict.fromkeys((account[0], account[0].lower())):
                    status = store.get(name, via=self.via)
                    if status is not None:
                        break
        if status is None:     # unknown, hidden, or not this server's domain: one answer
            raise HTTPError(404, "No such account here.", cors)
        document = render_webfinger(name, host, self.base_url(), privacy.feed)
        rels = query.get("rel")
        if rels:
            document["links"] = [link for link in document["links"] if link["rel"] in rels]
        self.reply(200, render_json(document).encode("utf-8"), "application/jrd+json",
                   cors + "Cache-Control: no-cache\r\n")

    def do_xmlrpc(self, path: str) -> None:
        """POST /RPC2: the body (framed and checked by parse_request) to the dispatcher; a
        call that has come through this server already is refused (loop_fault())."""
        length = self.body_length
        if length is None:
            raise HTTPError(411, "POST needs a Content-Length.")
        encoding = self.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding != "identity":
            raise HTTPError(415, "Compressed bodies are not accepted.")
        body = self.rfile.read(length)
        if len(body) != length:
            raise HTTPError(400, "The body is shorter than its Content-Length.")
        refusal = None
        if re.search(rb"<!(?:DOCTYPE|ENTITY)", body, re.I):
            # DTDs bring entity expansion ("billion laughs") and external entities.
            refusal = "DTDs and entities are not accepted"
        elif loops_through(self.via, self.server.instance_id):
            refusal = loop_fault(self.server.instance_id)
        if refusal:
            import xmlrpc.client       # with xmlrpc.server, loaded on the first call only
            data = xmlrpc.client.dumps(xmlrpc.client.Fault(1, refusal),
                                       methodresponse=True).encode("utf-8")
        else:
            data = self.server.rpc_answer(body, self.via)
        self.reply(200, data, "text/xml; charset=utf-8")


class WebServer(PooledTCPServer):
    """The HTTP listener: pages rendered once per store change, XML-RPC at /RPC2."""

    label = "http"
    nodelay = True
    idle_timeout = HTTP_IDLE_TIMEOUT
    max_cached_pages = 4096

    def __init__(self, address, store: Store, trusted_proxies: Sequence = (),
                 privacy: Privacy = PUBLIC, monitor: Optional[Monitor] = None,
                 instance_id: str = INSTANCE_ID, **options) -> None:
        """trusted_proxies: networks whose Forwarded/X-Forwarded-* headers are believed;
        privacy: what is published, and privacy.public_url, the canonical base of absolute
        links ('' for the request's own); monitor: what /healthz and /metrics report (by
        default this listener and its store); instance_id: who it is in Via chains (another
        id for a second server embedded in one process); `options`: PooledTCPServer's (sock,
        metrics, limiter, log_queries)."""
        super().__init__(address, WebHandler, store, **options)
        self.instance_id = instance_id
        self.trusted_proxies = list(trusted_proxies)
        self.privacy = privacy
        self.public_url = privacy.public_url
        self.monitor = monitor if monitor is not None else Monitor(store, self.metrics, [self])
        self._rpc_answers = VersionCache(1024)     # call body -> response, inline only
        self._rpc = None
        self._pages = VersionCache(self.max_cached_pages)    # (path, base) -> Page
        self._rpc_lock = threading.Lock()

    def rpc_answer(self, body: bytes, via: str = "") -> bytes:
        """The XML-RPC response to a call.  Every method only reads, so while the store is
        unchanged the same call has the same answer: a federated front-end asking for
        the same users again is answered from here, as pages are (faults are not kept).
        Nothing XML forbids goes out, whatever a method returned (xml_chars_only())."""
        if len(body) > 4096:
            return xml_chars_only(self.rpc().answer(body, via))
        return self._rpc_answers.answer(
            self.store, body, lambda: xml_chars_only(self.rpc().answer(body, via)),
            lambda data: b"<fault>" not in data)

    def rpc(self):
        """The XML-RPC dispatcher (rpc_dispatcher()), made on first use."""
        if self._rpc is None:
            with self._rpc_lock:
                if self._rpc is None:
                    self._rpc = rpc_dispatcher(self.store, self.privacy)
        return self._rpc

    def page(self, path: str, base: str, via: str,
             render: Callable[[str, str, str], Optional[Page]]) -> Optional[Page]:
        """render(path, base, via), kept while the store is unchanged (VersionCache)."""
        return self._pages.answer(self.store, (path, base), lambda: render(path, base, via))

    def render_user_list(self, path: str, base: str, via: str) -> Page:
        """/ (the page) or /users.json ({"count": N, "users": [status_json(), ...]})."""
        items = [(name, self.privacy.release(status)) for name, status in
                 self.store.items(via)]
        newest = max((status.set_at for _, status in items), default=0.0)
        if path == "/":
            return make_page(render_user_list(items, self.privacy.feed), newest)
        return make_page(render_json({"count": len(items), "users": [
            status_json(name, status, base) for name, status in items]}), newest,
            "application/json; charset=utf-8")

    def render_feed(self, path: str, base: str, via: str) -> Page:
        """/feed.atom: the store's recent changes (Store.changes)."""
        changes = [(name, self.privacy.release(status), when)
                   for name, status, when in self.store.changes]
        return make_page(render_feed(changes, base, self.privacy.canonical_name()),
                         max((when for _, _, when in changes), default=0.0),
                         "application/atom+xml; charset=utf-8")

    def render_user(self, path: str, base: str, via: str) -> Optional[Page]:
        """/USER or /USER.json; None for no such user."""
        name = path[1:]
        as_json = name.endswith(".json")
        if as_json:
            name = name[:-5]
        status = self.privacy.release(self.store.get(name, True, via))
        if status is None:
            return None
        if as_json:
            return make_page(render_json(status_json(name, status, base)), status.set_at,
                             "application/json; charset=utf-8")
        return make_page(render_user(name, status, self.privacy), status.set_at)


# -- IRC ----------------------------------------------------------------------------------

IRC_PORT = 6667
IRC_TLS_PORT = 6697
IRC_MAX_LINE = 512                    # RFC 1459 §2.3, CRLF included
IRC_MAX_INCOMING = 8192               # IRCv3 tags can be long; longer lines are dropped
IRC_RELAY_PREFIX = 80                 # ":nick!user@host " the server adds when relaying
IRC_REPLY_LINES = 4                   # lines in one answer, wrapping included; then "…"
IRC_PING_AFTER = 120.0                # silence before we PING the server ourselves
IRC_PING_TIMEOUT = 60.0               # no answer to our PING in this long: the link is dead
IRC_REGISTER_TIMEOUT = 60.0           # no welcome (001) in this long: try again
IRC_QUEUE_LIMIT = 64                  # lines waiting for the token bucket; more are dropped
IRC_NICK_RE = LazyPattern(r"[A-Za-z\[\]\\`_^{|}][A-Za-z0-9\[\]\\`_^{|}-]{0,29}\Z")
IRC_CHANNEL_RE = LazyPattern(r"[#&+!][^\x00\x07\r\n ,:]{1,49}\Z")


class SendQueue:
    """A bounded line queue drained by a token bucket: `burst` lines at once, then `rate`
    lines a second, as IRC servers expect of clients that do not want to be kicked."""

    def __init__(self, rate: float = 1.0, burst: int = 4, limit: int = IRC_QUEUE_LIMIT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.limit, self.clock = rate, burst, limit, clock
        self.tokens = float(burst)
        self.stamp = clock()
        self.lines: deque = deque()
        self.dropped = 0

    def put(self, line: str) -> bool:
        if len(self.lines) >= self.limit:
            self.dropped += 1
            return False
        self.lines.append(line)
        return True

    def _refill(self, now: float) -> None:
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def ready(self) -> List[str]:
        """The lines that may be sent now."""
        self._refill(self.clock())
        out = []
        while self.lines and self.tokens >= 1.0:
            self.tokens -= 1.0
            out.append(self.lines.popleft())
        return out

    def wait_time(self) -> Optional[float]:
        """Seconds until the next queued line may go, None when nothing waits."""
        if not self.lines:
            return None
        self._refill(self.clock())
        return max(0.0, (1.0 - self.tokens) / self.rate)


class IRCMessage(namedtuple("IRCMessage", "nick command params")):
    """One parsed line: prefix nick (or ''), command (upper case), parameters (list of str)."""
    __slots__ = ()


def parse_irc_line(line: str) -> Optional[IRCMessage]:
    """RFC 1459 / IRCv3 message syntax: [@tags] [:prefix] COMMAND params [:trailing]."""
    if line.startswith("@"):
        line = line.partition(" ")[2]
    nick = ""
    if line.startswith(":"):
        prefix, _, line = line[1:].partition(" ")
        nick = prefix.split("!", 1)[0].split("@", 1)[0]
    line = line.lstrip(" ")
    if not line:
        return None
    head, colon, trailing = line.partition(" :")
    params = head.split()
    if not params:
        return None
    command = params.pop(0).upper()
    if colon:
        params.append(trailing)
    return IRCMessage(nick, command, params)


def irc_param(text: str) -> str:
    """A parameter that cannot break out of its line: CR, LF and NUL removed."""
    return text.replace("\r", "").replace("\n", "").replace("\0", "")


def irc_bytes(text: str) -> bytes:
    """IRC text as sent: UTF-8, and the bytes of a nick or channel that arrived in another
    encoding (kept as lone surrogates, see IRCBot._session) exactly as they came."""
    return text.encode("utf-8", "surrogateescape")


def utf8_chunks(text: str, limit: int, words: bool = False) -> List[str]:
    """text cut into pieces of at most `limit` (> 3) UTF-8 bytes, never inside a character;
    `words`: after a space when there is one in the last quarter of the piece."""
    data = irc_bytes(text)
    chunks = []
    while len(data) > limit:
        cut = limit
        while cut > limit - 4 and data[cut] & 0xC0 == 0x80:    # a continuation byte: back
            cut -= 1
        space = data.rfind(b" ", limit - limit // 4, cut) if words else -1
        if space > 0:
            cut = space + 1
        chunks.append(data[:cut].decode("utf-8", "surrogateescape"))
        data = data[cut:]
    chunks.append(data.decode("utf-8", "surrogateescape"))
    return chunks


def irc_room(command: str, target: str) -> int:
    """UTF-8 bytes of text that fit in one COMMAND to TARGET, even as relayed with the
    server's prefix (IRC_RELAY_PREFIX) within 512 bytes."""
    head = "%s %s :" % (command, irc_param(target))
    return max(64, IRC_MAX_LINE - 2 - len(irc_bytes(head)) - IRC_RELAY_PREFIX)


def irc_reply(user: str, status: Optional[Status], room: int, page: str = "") -> List[str]:
    """The seeds' answer, 'Status of USER: STATUS', as at most IRC_REPLY_LINES lines of at
    most `room` bytes each, long lines wrapped; what does not fit is cut, and the last line
    ends in '…' and then `page` (the user's page, with --public-url)."""
    lines = [NO_SUCH_USER] if status is None else clean_lines(status.text)
    lines[0] = "Status of %s: %s" % (user, lines[0])
    out: List[str] = []
    for line in lines:
        if line.strip():                 # an empty PRIVMSG is an error (412)
            out.extend(chunk.rstrip(" ") for chunk in utf8_chunks(line, room, words=True))
        if len(out) > IRC_REPLY_LINES:
            break
    if len(out) <= IRC_REPLY_LINES:
        return out
    tail = " \u2026 " + page if page and len(irc_bytes(page)) < room // 2 else " \u2026"
    last = utf8_chunks(out[IRC_REPLY_LINES - 1], room - len(irc_bytes(tail)), words=True)[0]
    return out[:IRC_REPLY_LINES - 1] + [last.rstrip() + tail]


def read_secret(path: Optional[str]) -> Optional[str]:
    """The IRC password: the first line of --irc-password-file, else $FINGERD_IRC_PASSWORD.
    Never a command-line argument, where every local user could read it in ps."""
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                secret = f.readline().rstrip("\r\n")
            if os.stat(path).st_mode & 0o077:
                log.warning("%s can be read by other users; chmod 600 it", path)
        except (OSError, UnicodeDecodeError) as e:
            raise StartupError("cannot read IRC password file %s: %s"
                               % (path, getattr(e, "strerror", None) or e))
        return secret
    return os.environ.get("FINGERD_IRC_PASSWORD") or None


class IRCBot:
    """An IRC client thread answering 'who is doing what' from the store.

    A private message that is a user name gets 'Status of USER: STATUS'; '!finger USER' in a
    joined channel is answered in the channel.  It registers (PASS or SASL PLAIN, NICK, USER),
    takes nick_, nick__, ... when its nick is taken, answers PING at once and PINGs a silent
    server itself, joins its channels after every welcome, and reconnects when the link drops,
    with back-off (Backoff, among the helpers: Twisted's ReconnectingClientFactory schedule,
    shared with Remote).  Outgoing lines go through a token bucket; NOTICEs, its own messages and
    CTCP other than VERSION and FINGER are never answered.  start() and stop() (QUIT, then the
    thread ends at once, even in a back-off wait)."""

    def __init__(self, store: Store, host: str, port: int, nick: str = "fingerbot",
                 channels: Sequence[str] = (), tls: bool = False,
                 password: Optional[str] = None, sasl: bool = False,
                 backoff: Optional[Backoff] = None, ssl_context=None,
                 clock: Callable[[], float] = time.monotonic,
                 wait: Optional[Callable[[float], bool]] = None,
                 ping_after: float = IRC_PING_AFTER, ping_timeout: float = IRC_PING_TIMEOUT,
                 register_timeout: float = IRC_REGISTER_TIMEOUT,
                 send_rate: float = 1.0, send_burst: int = 4,
                 privacy: Privacy = PUBLIC, metrics: Optional[Metrics] = None) -> None:
        import queue
        self.store = store
        self.privacy = privacy
        self.host, self.port, self.tls = host, port, tls
        self.wanted_nick = self.nick = nick
        self.channels = list(channels)
        self.password, self.sasl = password, sasl
        self.backoff = backoff or Backoff()
        self.ssl_context = ssl_context
        self.clock = clock
        self._stop = threading.Event()
        self.wait = wait or self._stop.wait
        self.ping_after, self.ping_timeout = ping_after, ping_timeout
        self.register_timeout = register_timeout
        self.send_rate, self.send_burst = send_rate, send_burst
        self.connected = threading.Event()      # registered (001 seen) right now
        self.connects = 0                       # successful registrations so far
        self.metrics = metrics                  # the daemon's, for /metrics
        self._sock = None
        self._send_lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._lookups = None                    # the lookup threads, for blocking stores
        self._answered: "queue.SimpleQueue" = queue.SimpleQueue()
        self._pending = 0                       # lookups submitted, not yet said
        self._session_id = 0

    @property
    def server(self) -> str:
        return format_address(self.host, self.port)

    @property
    def running(self) -> bool:
        """The bot's thread is alive, or it was stopped on purpose (or never started)."""
        thread = self._thread
        return thread is None or thread.is_alive() or self._stop.is_set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="irc", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        try:
            self._run()
        except Exception:       # a bug in the reconnect logic: the daemon restarts the bot
            FAULTS.report("irc", "the bot's thread stopped")

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._lookups is not None:
            self._lookups.shutdown(wait=False, cancel_futures=True)

    # The connection loop -----------------------------------------------------------------

    def _run(self) -> None:
        """Sessions until stop(): any end of one (the link, the server, a bug) is followed
        by a back-off wait and a new connection, never by the end of the thread."""
        while not self._stop.is_set():
            reason = None
            try:
                self._session()
            except (OSError, FingerdError) as e:
                reason = str(e) or type(e).__name__
            except Exception as e:
                FAULTS.report("irc", "the session with %s ended", self.server)
                reason = "internal error (%s)" % type(e).__name__
            finally:
                self.connected.clear()
                try:
                    self._close()
                except Exception:
                    FAULTS.report("irc", "closing the connection to %s", self.server)
            if self._stop.is_set():
                break
            delay = self.backoff.next()
            log.warning("irc: %s: %s; next attempt in %.1f s, at %s", self.server,
                        reason or "link closed", delay,
                        time.strftime("%H:%M:%S", time.localtime(time.time() + delay)))
            if self.wait(delay):
                break

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=15)
        # The token bucket paces lines; Nagle would only hold an answer's second line back
        # until the server's delayed ACK (40 ms).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls:
            import ssl           # only IRC over TLS needs it
            context = self.ssl_context or ssl.create_default_context()
            try:
                sock = context.wrap_socket(sock, server_hostname=self.host)   # verified, SNI
            except (ssl.SSLError, OSError):
                sock.close()
                raise
        return sock

    def _session(self) -> None:
        self._sock = self._connect()
        log.info("irc: connected to %s%s", self.server, " (TLS)" if self.tls else "")
        self.nick = self.wanted_nick
        self._nick_tries, self._nick_limit = 0, 30
        self.queue = SendQueue(self.send_rate, self.send_burst, clock=self.clock)
        self._session_id += 1
        registered = False
        started = last_heard = self.clock()
        pinged_at = None
        self._register()
        buf = b""
        discarding = False
        while True:
            if self._stop.is_set():
                self._send_now("QUIT", "fingerd shutting down")
                return
            self._say_answered()
            for line in self.queue.ready():
                self._send_raw(line)
            wait = self.queue.wait_time()
            self._sock.settimeout(0.2 if wait is None else min(0.2, max(0.01, wait)))
            try:
                data = self._sock.recv(4096)
            except socket.timeout:
                data = None
            if data == b"":
                raise FingerdError("the server closed the connection")
            now = self.clock()
            if data:
                last_heard, pinged_at = now, None
                buf += data
                while True:
                    end = buf.find(b"\n")
                    if end < 0:
                        if len(buf) > IRC_MAX_INCOMING:         # no end in sight: drop it
                            buf, discarding = b"", True
                        break
                    line, buf = buf[:end], buf[end + 1:]
                    if discarding or len(line) > IRC_MAX_INCOMING:
                        discarding = False
                        continue
                    # Bytes that are not UTF-8 (a Latin-1 or CP1251 nick or channel) are
                    # kept as lone surrogates, so an answer goes back to exactly the bytes
                    # that asked (irc_bytes()); clean_line() removes them from any text.
                    line = line.rstrip(b"\r").decode("utf-8", "surrogateescape")
                    if self._handle_contained(line):
                        registered = True
            if not registered and now - started > self.register_timeout:
                raise FingerdError("no welcome from the server in %.0f s" % self.register_timeout)
            if pinged_at is None and now - last_heard > self.ping_after:
                self._send_now("PING", "fingerd")
                pinged_at = now
            elif pinged_at is not None and now - pinged_at > self.ping_timeout:
                raise FingerdError("no answer to PING in %.0f s" % self.ping_timeout)

    def _register(self) -> None:
        if self.password and self.sasl:
            self._send_now("CAP", "REQ", "sasl")
        elif self.password:
            self._send_now("PASS", self.password)
        self._send_now("NICK", self.nick)
        self._send_now("USER", "fingerd", "0", "*", "fingerd %s status bot" % __version__)

    # Messages ----------------------------------------------------------------------------

    def _handle_contained(self, line: str) -> bool:
        """_handle(line), except that a bug in handling one message is counted and logged,
        and the session goes on (the link's own failures still end it)."""
        try:
            return self._handle(line)
        except (OSError, FingerdError):
            raise
        except (Exception, SystemExit):
            FAULTS.report("irc", "while handling %r", line[:200])
            return False

    def _handle(self, line: str) -> bool:
        """Act on one line from the server; True when it is the welcome (001)."""
        import base64
        msg = parse_irc_line(line)
        if msg is None:
            return False
        command, params = msg.command, msg.params
        if command == "PING":
            self._send_now("PONG", *(params[:1] or ["fingerd"]))
        elif command == "001":
            if params and params[0].strip():
                self.nick = params[0].strip()
            self.backoff.reset()             # only a registration proves the server is good
            self.connects += 1
            self.connected.set()
            log.info("irc: registered on %s as %s", self.server, clean_line(self.nick))
            if self.channels:
                self._send_now("JOIN", ",".join(self.channels))
            return True
        elif command in ("432", "433", "436", "437") and not self.connected.is_set():
            self._next_nick(command)
        elif command == "NICK" and msg.nick.lower() == self.nick.lower() and params \
                and params[0].strip():
            self.nick = params[0].strip()
        elif command == "CAP" and len(params) >= 3 and self.sasl:
            if params[1].upper() == "ACK" and "sasl" in params[2].lower().split():
                self._send_now("AUTHENTICATE", "PLAIN")
            elif params[1].upper() == "NAK":
                log.error("irc: %s does not offer SASL", self.server)
                self._send_now("CAP", "END")
        elif command == "AUTHENTICATE" and params[:1] == ["+"] and self.sasl:
            token = "%s\0%s\0%s" % (self.wanted_nick, self.wanted_nick, self.password)
            self._send_now("AUTHENTICATE", base64.b64encode(token.encode()).decode())
        elif command in ("903", "904", "905", "906", "907"):
            if command != "903":
                log.error("irc: SASL authentication failed (%s)", command)
            self._send_now("CAP", "END")
        elif command == "ERROR":
            raise FingerdError("server error: %s" % clean_line(" ".join(params))[:200])
        elif command == "PRIVMSG" and len(params) >= 2:
            self._privmsg(msg.nick, params[0], params[1])
        return False

    def _next_nick(self, code: str) -> None:
        """nick_, nick__, ...; a nick refused as erroneous (432) after we lengthened it was
        too long for this server (RFC 1459 allows 9), so the base is shortened instead."""
        if code == "432":
            if self.nick == self.wanted_nick:
                raise FingerdError("the server refuses the nick %s" % self.nick)
            self._nick_limit = len(self.nick) - 1
        else:
            self._nick_tries += 1
        tries, limit = self._nick_tries, self._nick_limit
        if tries > 9 or limit - tries < 1:
            raise FingerdError("no usable nick (last tried %s)" % self.nick)
        self.nick = self.wanted_nick[:limit - tries] + "_" * tries
        log.info("irc: nick refused (%s); trying %s", code, self.nick)
        self._send_now("NICK", self.nick)

    def _privmsg(self, sender: str, target: str, text: str) -> None:
        if not sender or sender.lower() == self.nick.lower():
            return                                        # never answer ourselves
        if text.startswith("\x01"):                      # CTCP: only VERSION and FINGER
            ctcp = text.strip("\x01").split(" ", 1)[0].upper()
            if target.lower() == self.nick.lower() and ctcp in ("VERSION", "FINGER"):
                answer = ("fingerd %s" % __version__ if ctcp == "VERSION"
                          else "fingerd: send me a user name for their status")
                self._say("NOTICE", sender, "\x01%s %s\x01" % (ctcp, answer))
            return
        # Only a valid user name is answered: chatter and other bots' lines are not, so two
        # bots can never keep each other talking.
        words = text.split()
        if target.lower() == self.nick.lower():          # a private message
            if len(words) == 1 and valid_name(words[0]):
                self._answer(sender, words[0])
        elif target[:1] in "#&+!" and len(words) == 2 and words[0].lower() == "!finger" \
                and valid_name(words[1]):
            self._answer(target, words[1])

    max_lookups = 16      # lookups waiting for a blocking backend; more are answered 'busy'

    def _answer(self, to: str, user: str) -> None:
        """Status of USER to `to`.  A backend that fails is a failed answer, said as such;
        it never touches the IRC connection.  A backend that may block (process, pwd,
        xmlrpc) is asked on a lookup thread, so that this thread keeps answering PINGs;
        the lines come back through _answered."""
        if self.metrics is not None:
            self.metrics.inc("fingerd_requests_total", protocol="irc")
        if not self.store.blocking:
            for line in self._lookup(to, user):
                self._say("PRIVMSG", to, line)
            return
        if self._lookups is None:
            import concurrent.futures
            self._lookups = concurrent.futures.ThreadPoolExecutor(
                2, thread_name_prefix="irc-lookup")
        if self._pending >= self.max_lookups:
            self._say("PRIVMSG", to, SERVER_BUSY)
            return
        self._pending += 1
        session = self._session_id
        self._lookups.submit(lambda: self._answered.put((session, to,
                                                         self._lookup(to, user))))

    def _lookup(self, to: str, user: str) -> List[str]:
        """The answer's lines (irc_reply()) for `to`; on any thread."""
        try:
            base = self.privacy.public_url
            page = base + "/" + user if base else ""
            return irc_reply(user, self.privacy.release(self.store.get(user)),
                             irc_room("PRIVMSG", to), page)
        except StoreUnavailable as e:
            log.debug("irc: %s", e)
            return [UNAVAILABLE]
        except Exception:
            FAULTS.report("irc", "answering for %r", user)
            return [INTERNAL_ERROR]

    def _say_answered(self) -> None:
        """Queue the answers lookup threads have finished (in this session)."""
        import queue
        while True:
            try:
                session, to, lines = self._answered.get_nowait()
            except queue.Empty:
                return
            self._pending -= 1
            if session == self._session_id:
                for line in lines:
                    self._say("PRIVMSG", to, line)

    # Sending -----------------------------------------------------------------------------

    def _say(self, command: str, target: str, text: str) -> None:
        """Queue a message, cut so that even as relayed (with the server's prefix) each line
        fits in 512 bytes (irc_room())."""
        head = "%s %s :" % (command, irc_param(target))
        for chunk in utf8_chunks(irc_param(text), irc_room(command, target)):
            if not self.queue.put(head + chunk):
                log.warning("irc: send queue full, answer to %s dropped", clean_line(target))
                return

    def _send_now(self, *params: str) -> None:
        """Send at once, around the queue: registration, PONG, QUIT."""
        parts = [irc_param(p) for p in params]
        if len(parts) > 1 and (" " in parts[-1] or parts[-1].startswith(":") or not parts[-1]):
            parts[-1] = ":" + parts[-1]
        self._send_raw(" ".join(parts))

    def _send_raw(self, line: str) -> None:
        data = irc_bytes(utf8_chunks(irc_param(line), IRC_MAX_LINE - 2)[0])
        with self._send_lock:
            if self._sock is not None:
                self._sock.settimeout(10)
                self._sock.sendall(data + b"\r\n")

    def _close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass


def parse_irc_server(spec: str, tls: bool) -> Optional[Tuple[str, int]]:
    """--irc HOST[:PORT]|off (parse_endpoint()); the port defaults to 6667, or 6697 with
    TLS.  ValueError when it is not one."""
    return parse_endpoint(spec, default_port=IRC_TLS_PORT if tls else IRC_PORT)


# -- Daemon -------------------------------------------------------------------------------

def raise_fd_limit() -> None:
    """Lift the soft open-files limit to the hard one: every client is a descriptor."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = hard if hard != resource.RLIM_INFINITY else 65536
        if soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ImportError, ValueError, OSError):
        pass


def systemd_listeners() -> Dict[str, List[socket.socket]]:
    """Listening sockets systemd passed us (socket activation), by protocol name.

    LISTEN_PID must be this process; fds 3.. are matched to finger/setter/http/setter-unix
    by LISTEN_FDNAMES (FileDescriptorName=); every socket with a protocol's name is served as
    that protocol (a unit may listen on IPv4 and IPv6 apart).  Sockets with other names are
    given by order to finger, setter, http, and only to a protocol no socket is named for:
    a second finger socket never becomes a setter.  The variables are removed so that no
    child believes the sockets are its own."""
    env = os.environ
    pid, count = env.get("LISTEN_PID", ""), env.get("LISTEN_FDS", "")
    names = env.get("LISTEN_FDNAMES", "").split(":")
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(key, None)
    if not (pid.isdigit() and count.isdigit() and int(pid) == os.getpid()):
        return {}
    order = ["finger", "setter", "http"]
    found: Dict[str, List[socket.socket]] = {}
    unnamed = []
    for index in range(int(count)):
        sock = socket.socket(fileno=3 + index)       # family and type from the descriptor
        sock.set_inheritable(False)
        name = names[index] if index < len(names) else ""
        if name in order + ["setter-unix"]:
            found.setdefault(name, []).append(sock)
        else:
            unnamed.append(sock)
    for name in order:
        if name not in found and unnamed:
            found[name] = [unnamed.pop(0)]
    for sock in unnamed:
        log.warning("ignoring a socket from systemd with no protocol's name: %s", sock)
        sock.close()
    return found


def bind_listener(label: str, endpoint) -> socket.socket:
    """listen_socket() for the --LABEL option's (host, port) (host '': every address, IPv6
    and IPv4, or IPv4 alone where there is no IPv6) or Unix socket path; a failure is a
    StartupError naming the address, with a hint for a privileged port."""
    if isinstance(endpoint, str):
        try:
            return listen_socket(endpoint)
        except OSError as e:
            raise StartupError("cannot listen for %s on %s: %s" % (label, endpoint,
                                                                   e.strerror or e))
    host, port = endpoint
    if not host:
        host = "::" if socket.has_ipv6 else "0.0.0.0"
    try:
        return listen_socket((host, port))
    except OSError as e:
        if host == "::" and e.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
            return bind_listener(label, ("0.0.0.0", port))
        hint = ""
        if e.errno == errno.EACCES and port < 1024:
            hint = " (ports below 1024 need root or CAP_NET_BIND_SERVICE; try --%s %d)" % (
                label, port + 7900 if port < 100 else port + 7000)
        # create_server() adds "(while attempting to bind on address ...)" to strerror; a
        # resolver's error (socket.gaierror) has a negative errno and its own words.
        words = os.strerror(e.errno) if isinstance(e.errno, int) and e.errno > 0 else \
            (e.strerror or e)
        raise StartupError("cannot listen for %s on %s: %s%s" % (
            label, format_address(host, port), words, hint))


def close_sockets(sockets: Iterable[Tuple[str, socket.socket, bool]]) -> None:
    """Close (label, socket, made here) listeners never served; a Unix socket made here
    goes with its file."""
    for _, sock, owned in sockets:
        path = sock.getsockname() if owned and sock.family == socket.AF_UNIX else None
        sock.close()
        if path:
            try:
                os.unlink(path)
            except OSError:
                pass


def socket_address(sock: socket.socket) -> str:
    """Where a listening socket listens, as the logs and STATUS= say it."""
    name = sock.getsockname()
    if isinstance(name, (str, bytes)):
        return os.fsdecode(name)
    return format_address(name[0], name[1])


def lazy_modules(args: argparse.Namespace, serving: bool = True) -> List[str]:
    """The modules this configuration imports after start-up (names for importlib): what
    the backend, each listener that is on, IRC and TLS import where they first run.
    `serving`: False for --inetd (one finger query, no listeners).  Module-level imports
    are not listed: those are loaded before main() runs."""
    # client addresses, account names, Daemon.run's signals, the setter socket's SO_PEERCRED;
    # logging, which --inetd imports at its first message (to syslog when stderr is the
    # client: logging.handlers)
    modules = ["ipaddress", "logging", "pwd", "signal", "struct"]
    if not serving:
        modules.append("logging.handlers")
    pool = "concurrent.futures.thread"    # ThreadPoolExecutor: workers of blocking stores
    web = ["_strptime", "datetime", "email.utils", "gzip", "html", "http", "json",
           "urllib.parse", "wsgiref.handlers", "xml.parsers.expat", "xmlrpc.client",
           "xmlrpc.server", "zlib"]
    backend = {"sqlite": ["queue", "sqlite3"],
               "pwd": [pool, "ctypes", "glob", "shutil", "subprocess"],
               "process": [pool, "ctypes", "shutil", "subprocess"],
               "xmlrpc": [pool, "_strptime", "http.client", "queue", "random", "urllib.parse",
                          "xml.parsers.expat", "xmlrpc.client"]}
    modules += backend.get(args.backend, [])
    if serving:
        if args.http and args.http != "off":
            modules += web
        if args.irc and args.irc != "off":
            modules += ["base64", "queue", "random"]
    if args.irc_tls and serving or any(url.startswith("https:") for url in args.remote or ()):
        modules.append("ssl")
    return sorted(set(modules))


def preload(args: argparse.Namespace, serving: bool = True) -> None:
    """Import now what this configuration imports lazily later (lazy_modules()), and look up
    the codecs that decode_text() and host_key() use: after --user, the interpreter's own
    files may be out of reach (a Python under a 0700 /root, a venv in a private home), and a
    module that cannot load then would fail requests, not start-up."""
    for name in lazy_modules(args, serving):
        __import__(name)                   # a dotted name imports its package too
    for codec in ("cp1252", "utf-16", "utf-16-le", "idna", "punycode"):
        codecs.lookup(codec)
    if args.backend in ("pwd", "process"):
        libc_passwd()                      # loads the C library through ctypes


def drop_privileges(user: str) -> None:
    """Become `user` for good: supplementary groups cleared, gid then uid set, and checked
    that root cannot be regained.  Called after binding, before anything else is opened."""
    import pwd
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        raise StartupError("--user %s: no such user" % user)
    if os.geteuid() != 0:
        if account.pw_uid == os.getuid():
            return
        raise StartupError("--user %s: fingerd must start as root to change user" % user)
    os.setgroups([])
    os.setgid(account.pw_gid)
    os.setuid(account.pw_uid)
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise StartupError("could not drop root privileges (setuid(0) still works)")
    if os.getuid() != account.pw_uid or os.getgid() != account.pw_gid or os.getgroups():
        raise StartupError("could not become %s" % user)
    log.info("running as %s (uid %d, gid %d)", user, account.pw_uid, account.pw_gid)


class Notifier:
    """sd_notify(3) without libsystemd: datagrams to $NOTIFY_SOCKET (READY=1, STATUS=...,
    STOPPING=1, WATCHDOG=1); silent where there is no such socket.  `watchdog` is the
    interval at which WATCHDOG=1 is due (half of WATCHDOG_USEC), or None."""

    def __init__(self) -> None:
        address = os.environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):                     # the abstract namespace
            address = "\0" + address[1:]
        self.address = address
        self.sock = None
        if address:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            except OSError:
                self.sock = None
        usec, pid = os.environ.get("WATCHDOG_USEC", ""), os.environ.get("WATCHDOG_PID", "")
        self.watchdog = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog = int(usec) / 2e6

    def send(self, *states: str) -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendto("\n".join(states).encode("utf-8"), self.address)
        except OSError as e:
            log.debug("sd_notify failed: %s", e)


def stderr_is_journal() -> bool:
    """True when stderr is connected to journald ($JOURNAL_STREAM names its device:inode)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return stream == "%d:%d" % (st.st_dev, st.st_ino)


class JournalFormatter:
    """A logging formatter for '<N>message' lines: journald reads the priority N (syslog's,
    from the record's level) and stamps the time itself.  Lines of a traceback are joined
    with ' | ', so that one record is one journal entry."""

    PRIORITIES = {10: 7, 20: 6, 30: 4, 40: 3, 50: 2}   # logging's DEBUG ... CRITICAL

    def __init__(self, fmt: str) -> None:
        import logging
        self.formatter = logging.Formatter(fmt)

    def format(self, record: logging.LogRecord) -> str:
        text = self.formatter.format(record).replace("\n", " | ")
        return "<%d>%s" % (self.PRIORITIES.get(record.levelno, 6), text)


def say_fatal(message: str) -> None:
    """The one line saying why fingerd cannot go on, on stderr: at err priority (<3>) when
    stderr is the journal, so that `journalctl -p err -u fingerd` shows it."""
    print("%sfingerd: %s" % ("<3>" if stderr_is_journal() else "", message), file=sys.stderr)


def configure_logging(level: str, inetd: bool = False, deferred: bool = False) -> None:
    """One handler on stderr, in journald's form under systemd.  With --inetd, stderr may be
    the client's socket: then messages go to syslog (or nowhere), never to the client.
    `deferred`: done at the first message (LazyLogger.setup), not now, so that a run that
    logs nothing (--inetd answering a query) never imports logging."""
    def setup(logger: logging.Logger) -> None:
        import logging
        if inetd and stderr_is_client():
            handler: logging.Handler = logging.NullHandler()
            if os.path.exists("/dev/log"):
                from logging.handlers import SysLogHandler
                try:
                    handler = SysLogHandler("/dev/log", SysLogHandler.LOG_DAEMON)
                    handler.setFormatter(
                        logging.Formatter("fingerd[%(process)d]: %(message)s"))
                except OSError:
                    handler = logging.NullHandler()
        else:
            handler = logging.StreamHandler(sys.stderr)
            if stderr_is_journal():
                handler.setFormatter(JournalFormatter("%(message)s"))
            else:
                handler.setFormatter(logging.Formatter(
                    "%(asctime)s fingerd %(levelname)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False

    if deferred and isinstance(log, LazyLogger):
        log.setup = setup
    else:
        import logging
        setup(logging.getLogger("fingerd"))


def stderr_is_client() -> bool:
    """True when fd 2 is the same open socket as fd 0 (inetd gives one socket as all three)."""
    try:
        err, inp = os.fstat(2), os.fstat(0)
    except OSError:
        return False
    return stat.S_ISSOCK(err.st_mode) and (err.st_dev, err.st_ino) == (inp.st_dev, inp.st_ino)


def serve_inetd(store: Store, privacy: Privacy, log_queries: bool = False,
                deadline: float = CONNECTION_DEADLINE, infd: int = 0, outfd: int = 1) -> int:
    """One finger query on stdin, its answer on stdout, as inetd or systemd Accept=yes run us:
    the same framing, limits, deadline and filtering as the finger listener."""
    end = time.monotonic() + deadline
    buf, eof = b"", False
    reply = b""
    while True:
        try:
            length = FingerHandler.request_length(buf, eof)
        except RequestTooLarge:
            reply = FingerHandler.refusal(Refusal.TOO_LONG)
            break
        if length is not None:
            line = query_text(buf[:length])
            if log_queries:
                log.info("finger query from %s (inetd): %r", inetd_peer(infd), line.strip())
            reply = answer_finger(store, line, privacy)
            break
        if eof:
            return 0                        # connected and left without asking
        left = end - time.monotonic()
        if left <= 0 or not select.select([infd], [], [], left)[0]:
            reply = FingerHandler.refusal(Refusal.TIMEOUT)
            break
        data = os.read(infd, FingerHandler.recv_size)
        buf += data
        eof = not data
    end = max(end, time.monotonic() + LINGER_SECONDS)     # the answer gets its own moment
    while reply:
        left = end - time.monotonic()
        if left <= 0 or not select.select([], [outfd], [], left)[1]:
            return 1                        # the client does not read: give up
        try:
            reply = reply[os.write(outfd, reply):]
        except OSError:
            return 1
    return 0


def inetd_peer(fd: int) -> str:
    try:
        peer = socket.socket(fileno=os.dup(fd))
        try:
            return format_address(*peer.getpeername()[:2])
        finally:
            peer.close()
    except (OSError, TypeError, ValueError):
        return "stdin"


class Daemon:
    """The running program: the store, the listeners, the IRC bot and the signal loop.

    start() binds every listener (or adopts systemd's sockets) first, so a busy port fails
    before anything is opened; then drops privileges (--user), opens the store, and builds
    each server once with everything it needs, then starts one serving thread per listener
    and the IRC bot.  run() is the main thread's loop until a signal: SIGHUP is reload(),
    SIGTERM and SIGINT stop(), which drains the listeners together (at most DRAIN_SECONDS)
    and closes the store.  It pings systemd's watchdog while every loop turns."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.store: Optional[Store] = None
        self.servers: List[PooledTCPServer] = []
        self.threads: List[threading.Thread] = []
        self.bot: Optional[IRCBot] = None
        self.metrics = Metrics()
        self.missing: List[str] = []         # listeners that could not bind (activated)
        self.monitor: Optional[Monitor] = None
        self._restarts: Dict[str, List[float]] = {}     # label -> monotonic restart times
        self._reloading: Optional[threading.Thread] = None

    def start(self) -> None:
        """Bind, drop privileges, open the store, build and start everything; StartupError
        (with nothing left open) when any of it fails."""
        args = self.args
        irc = parse_irc_server(args.irc, args.irc_tls)
        secret = read_secret(args.irc_password_file) if irc else None
        raise_fd_limit()
        sockets = self.listen()
        try:
            if not sockets and not irc:
                raise StartupError("nothing to serve: every listener is off and systemd "
                                   "passed no socket")
            if args.user:
                preload(args)
                drop_privileges(args.user)
            elif os.geteuid() == 0:
                log.warning("running as root; --user NAME would drop to NAME after binding")
            try:
                store = self.store = open_store(args)
            except StartupError as e:
                if args.user:
                    raise StartupError("%s (as user %s)" % (e, args.user))
                raise
        except FingerdError:
            close_sockets(sockets)
            raise
        privacy = privacy_of(args)
        if irc:
            self.bot = IRCBot(store, *irc, nick=args.irc_nick, channels=args.irc_channel,
                              tls=args.irc_tls, password=secret, sasl=args.irc_sasl,
                              privacy=privacy, metrics=self.metrics)
        self.monitor = Monitor(store, self.metrics, self.servers, self.bot, self.missing)
        common = dict(sock=None, metrics=self.metrics, log_queries=args.log_queries)

        def limiter(exempt=()) -> ClientLimiter:
            return ClientLimiter(args.max_conns_per_ip, args.rate, args.limit_loopback,
                                 exempt=exempt)
        for label, sock, owned in sockets:
            common["sock"] = sock
            if label == "finger":
                server: PooledTCPServer = FingerServer(None, store, privacy,
                                                       limiter=limiter(), **common)
            elif label == "setter":
                server = SetterServer(None, store, args.setter_allow, limiter=limiter(),
                                      **common)
            elif label == "http":
                server = WebServer(None, store, args.trusted_proxy, privacy, self.monitor,
                                   limiter=limiter(args.trusted_proxy), **common)
            else:
                server = UnixSetterServer(None, store, owned, limiter=limiter(), **common)
            self.servers.append(server)
            self.threads.append(self._start_loop(server))
        if self.bot is not None:
            self.bot.start()
        log.info("fingerd %s serving with the %s backend", __version__, store.name)

    def listen(self) -> List[Tuple[str, socket.socket, bool]]:
        """(label, listening socket, made here) for every listener: systemd's sockets
        first, then the ones the options name, bound here.  Under socket activation a
        listener fingerd binds itself that cannot bind is left out (logged at error, in
        /healthz and STATUS=): the sockets systemd gave, port 79 among them, keep being
        served.  Run by hand, it is a StartupError."""
        args = self.args
        adopted = systemd_listeners()
        activated = bool(adopted)
        sockets: List[Tuple[str, socket.socket, bool]] = []
        endpoints = [("finger", args.finger), ("setter", args.setter), ("http", args.http),
                     ("setter-socket", None if args.setter_socket in (None, "off")
                      else args.setter_socket)]
        try:
            for label, endpoint in endpoints:
                given = adopted.pop("setter-unix" if label == "setter-socket" else label, [])
                for sock in given:
                    log.info("%s listening on %s (from systemd)", label, socket_address(sock))
                    sockets.append((label, sock, False))
                if given and endpoint and label != "setter-socket":
                    log.warning("%s: systemd passed the socket, so --%s %s is not used "
                                "(edit the socket unit instead)", label, label,
                                format_address(*endpoint))
                elif endpoint and not given:
                    try:
                        sock = bind_listener(label, endpoint)
                    except StartupError as e:
                        if not activated:
                            raise
                        log.error("%s; serving the other listeners", e)
                        self.missing.append(str(e))
                        continue
                    log.info("%s listening on %s", label, socket_address(sock))
                    sockets.append((label, sock, True))
        except FingerdError:
            close_sockets(sockets)
            raise
        return sockets

    @staticmethod
    def _start_loop(server: PooledTCPServer) -> threading.Thread:
        thread = threading.Thread(target=server.serve_forever, args=(0.25,),
                                  name=server.label + "-loop", daemon=True)
        thread.start()
        return thread

    RESTARTS = 3              # a loop that dies this often within RESTART_WINDOW is given up
    RESTART_WINDOW = 60.0     # seconds

    def supervise(self) -> Optional[str]:
        """Called about once a second: restart any listener loop that died (from its
        still-open listening socket) and the IRC bot's thread if it ended.  Returns why
        the daemon must exit instead (a loop that keeps dying, a store that cannot write),
        else None.  A restart is logged at error priority and counted in FAULTS."""
        now = time.monotonic()
        for i, (server, thread) in enumerate(zip(self.servers, self.threads)):
            if thread.is_alive() or server.loop_error is None:
                continue
            times = [t for t in self._restarts.get(server.label, ())
                     if now - t < self.RESTART_WINDOW]
            if len(times) >= self.RESTARTS:
                return "the %s loop died %d times within %.0f s (last: %s)" % (
                    server.label, len(times) + 1, self.RESTART_WINDOW, server.loop_error)
            self._restarts[server.label] = times + [now]
            log.error("restarting the %s loop, which died: %s", server.label, server.loop_error)
            self.threads[i] = self._start_loop(server)
        bot = self.bot
        if bot is not None and not bot.running:
            log.error("restarting the IRC bot, whose thread ended")
            bot.start()
        return self.store.problem() if self.store is not None else None

    @property
    def healthy(self) -> bool:
        """Every listener's loop still turns (what the watchdog vouches for)."""
        now = time.monotonic()
        return all(not server.loop_problem(now, Monitor.STALL) for server in self.servers)

    def status_line(self) -> str:
        missing = self.missing
        return "serving %s with the %s backend%s" % (
            ", ".join("%s on %s" % (s.label, s.address) for s in self.servers),
            self.store.name if self.store else "no",
            "; NOT listening: " + "; ".join(missing) if missing else "")

    def reload(self) -> None:
        """SIGHUP: re-read the backend's source now and forget rendered pages.  A backend
        whose reads may wait (a directory, remotes) is re-read on a thread of its own, one
        at a time, so that this loop (signals, the watchdog) never waits on it."""
        log.info("SIGHUP: re-reading the %s backend", self.store.name)
        store = self.store

        def refresh() -> None:
            try:
                store.refresh()
            except FingerdError as e:
                log.warning("reload: %s", e)
            except Exception:
                FAULTS.report("reload", "while re-reading the %s backend", store.name)
            store.invalidate()             # caches keyed on the version start afresh
        if not store.blocking:
            refresh()
        elif self._reloading is None or not self._reloading.is_alive():
            self._reloading = threading.Thread(target=refresh, name="reload", daemon=True)
            self._reloading.start()

    def stop(self) -> None:
        if self.bot is not None:
            self.bot.stop()
        for server in self.servers:
            server.request_shutdown()
        for thread in self.threads:
            thread.join(DRAIN_SECONDS + 1)
        self.close()

    def close(self) -> None:
        for server in self.servers:
            server.server_close()
        if self.store is not None:
            self.store.close()
            self.store = None

    def warm_up(self) -> None:
        """Once serving, import what this configuration will import at first use (preload;
        with --user it already has): a first request then pays no import, and a Python
        upgraded on disk while the daemon runs (unattended-upgrades) cannot hand it a newer
        module that does not fit the ones loaded (CPython issue 124170).  Start-up, to the
        first answer, does not wait for it.  A module that cannot load is a warning here
        and fails only what uses it."""
        try:
            preload(self.args)
        except Exception as e:
            log.warning("could not import everything at start-up: %s: %s",
                        type(e).__name__, e)

    def run(self, notifier: "Notifier") -> int:
        """start(), then wait for signals, reload() on SIGHUP and supervise() every second
        (WATCHDOG=1 while healthy), until SIGTERM or SIGINT (a second SIGINT exits at
        once) or a fatal problem; then stop().  0, or 1 when it could not start or had
        to exit."""
        import signal
        # Signals wake this loop through a pipe that the interpreter itself writes to
        # (signal.set_wakeup_fd); the Python handler only sets flags.  A handler that took
        # a lock (threading.Event.set) deadlocked when a second signal arrived inside the
        # first one.
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        pending = {"stop": 0, "reload": False, "interrupts": 0}

        def on_signal(signum, _frame):
            if signum == signal.SIGHUP:
                pending["reload"] = True
                return
            if signum == signal.SIGINT:
                pending["interrupts"] += 1
                if pending["interrupts"] > 1:
                    os._exit(1)           # a second Ctrl-C: no more waiting
            if not pending["stop"]:
                pending["stop"] = signum

        # Before anything is served: SIGHUP's default would kill us, SIGINT's would raise.
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, on_signal)
        try:
            self.start()
        except FingerdError as e:
            notifier.send("STATUS=cannot start: %s" % e)
            say_fatal(str(e))
            return 1
        notifier.send("READY=1", "STATUS=" + self.status_line())
        self.warm_up()
        tick = min(notifier.watchdog or 1.0, 1.0)
        fatal = None
        while True:
            try:
                select.select([wake_r], [], [], tick)
                while os.read(wake_r, 4096):
                    pass
            except (BlockingIOError, InterruptedError):
                pass
            if pending["stop"]:
                break
            try:
                if pending["reload"]:
                    pending["reload"] = False      # many SIGHUPs at once are one reload
                    self.reload()
                    notifier.send("STATUS=reloaded; " + self.status_line())
                fatal = self.supervise()
            except Exception:
                FAULTS.report("daemon", "while supervising")
            if fatal:
                break
            if notifier.watchdog and self.healthy:     # a hung loop stops the pings
                notifier.send("WATCHDOG=1")
        signal.set_wakeup_fd(-1)
        for fd in (wake_r, wake_w):
            os.close(fd)
        if fatal:
            log.critical("exiting: %s", fatal)
            notifier.send("STATUS=exiting: " + fatal)
        else:
            log.info("stopping (%s)", signal.Signals(pending["stop"]).name)
        notifier.send("STOPPING=1", "STATUS=stopping: finishing replies in flight")
        self.stop()
        log.info("stopped")
        return 1 if fatal else 0


# -- Command line -------------------------------------------------------------------------

def public_url_arg(spec: str) -> str:
    """--public-url: an absolute http or https URL with a host and no query or fragment; a
    Unicode host name becomes its IDNA (punycode) form."""
    import urllib.parse
    parts = urllib.parse.urlsplit(spec)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query \
            or parts.fragment or "@" in parts.netloc or not clean_line(spec) == spec:
        raise argparse.ArgumentTypeError("not an http(s) URL like https://finger.example.org/:"
                                         " %r" % spec)
    host = parts.hostname or ""
    if not host.isascii():         # links, ids and WebFinger carry the ASCII (IDNA) name
        ascii_host = host_key(host)
        if not ascii_host:
            raise argparse.ArgumentTypeError("not a host name in %r" % spec)
        netloc = ascii_host + (":%d" % parts.port if parts.port else "")
        spec = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return spec.rstrip("/")


def endpoint_arg(spec: str) -> Optional[Tuple[str, int]]:
    """--finger, --setter, --http: parse_endpoint()."""
    try:
        return parse_endpoint(spec)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


def irc_server_arg(spec: str) -> str:
    """--irc: checked now (parse_endpoint()), resolved at start-up, when --irc-tls says
    which port is the default."""
    try:
        parse_endpoint(spec, default_port=IRC_PORT)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))
    return spec


def network_arg(spec: str):
    import ipaddress
    try:
        return ipaddress.ip_network(spec, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError("not an address or network: %r" % spec)


def non_negative_int(spec: str) -> int:
    if not spec.isdigit():
        raise argparse.ArgumentTypeError("expected a whole number, 0 or more, got %r" % spec)
    return int(spec)


def uid_range_arg(spec: str) -> Tuple[int, int]:
    low, dash, high = spec.partition("-")
    if not (dash and low.isdigit() and high.isdigit() and int(low) <= int(high) < 2 ** 32):
        raise argparse.ArgumentTypeError("expected MIN-MAX, two uids, e.g. 1000-60000; got %r"
                                         % spec)
    return int(low), int(high)


def non_negative_float(spec: str) -> float:
    """A finite number, 0 or more (a rate)."""
    return _number(spec, 0.0, float("inf"), "expected a number, 0 or more, got %r")


def positive_float(spec: str) -> float:
    """Seconds, more than 0 and less than 1e9: no thread can wait forever."""
    return _number(spec, 5e-324, 1e9, "expected a positive number of seconds, got %r")


def _number(spec: str, low: float, high: float, message: str) -> float:
    try:
        value = float(spec)
    except ValueError:
        value = float("nan")
    if not low <= value < high:          # nan compares false: refused too
        raise argparse.ArgumentTypeError(message % spec)
    return value


HELP_EPILOG = """\
addresses:
  [HOST:]PORT, [IPV6]:PORT or 'off'; a bare PORT listens on every address (IPv4 and IPv6),
  port 0 lets the system choose. Each listener logs "NAME listening on HOST:PORT".

examples:
  fingerd --finger 7979                  an ordinary user: finger on 7979, setter on 1079
  printf 'alice\\nGone fishing\\n' | nc -N 127.0.0.1 1079      set alice's status
  printf 'alice\\r\\n' | nc localhost 7979                       finger her
  curl http://localhost:8000/alice                         her web page (/ lists everyone)
  python3 -c "import xmlrpc.client as x; print(x.ServerProxy('http://localhost:8000/RPC2').getUser('alice'))"
  fingerd --backend file --users-file /etc/users --no-list   the admin's file, no list
  sudo fingerd --backend pwd --user fingerd                 ~/.plan files, on port 79
  fingerd --set "At lunch" --expires 1h                      your own status, as yourself
  curl localhost:8000/alice.json; curl localhost:8000/metrics      JSON, Prometheus
  fingerd @/etc/fingerd.conf                                 arguments from a file
  printf 'alice\\r\\n' | fingerd --inetd --backend pwd       one query (inetd)

signals: SIGHUP re-reads the backend; SIGTERM, SIGINT finish replies in flight and exit.
under systemd: socket activation (LISTEN_FDS, by FileDescriptorName=), Type=notify, watchdog.

exit status: 0 after SIGTERM/SIGINT, 1 when it cannot start, 2 for a usage error.
"""


def irc_nick_arg(spec: str) -> str:
    if not IRC_NICK_RE.match(spec):
        raise argparse.ArgumentTypeError("not an IRC nick: %r" % spec)
    return spec


def irc_channel_arg(spec: str) -> str:
    if not IRC_CHANNEL_RE.match(spec):
        raise argparse.ArgumentTypeError("not an IRC channel (like '#name'): %r" % spec)
    return spec


MAX_ARG_FILE = 1024 * 1024     # bytes of one @FILE
ARG_FILE_DEPTH = 8             # @FILEs naming @FILEs, at most this deep


class ArgumentParser(argparse.ArgumentParser):
    """argparse reading @FILE arguments the way a config file is written: shell-like words,
    several per line ('--finger 79'), '#' comments and blank lines ignored.  The file is
    read as argv is (UTF-8 without its BOM; other bytes kept as they are, so a path in
    Latin-1 still names its file), lines end in LF or CRLF only, @FILEs may name @FILEs, and
    the value of --set is never a file ('--set @home' is a status)."""

    def format_usage(self) -> str:
        self.formatter_class = self.terminal_formatter()
        return super().format_usage()

    def format_help(self) -> str:
        self.formatter_class = self.terminal_formatter()
        return super().format_help()

    @staticmethod
    def terminal_formatter() -> Callable[..., argparse.HelpFormatter]:
        """The formatter for help and usage, as wide as the terminal (argparse's own rule).
        Until they are printed the formatter has a fixed width: argparse builds one for
        every add_argument(), only to check its metavar, and looking the width up each time
        imports shutil, 1.4 ms of every --inetd query."""
        import shutil
        return functools.partial(argparse.RawDescriptionHelpFormatter,
                                 width=shutil.get_terminal_size().columns - 2)

    def error(self, message: str):
        """A usage error (exit 2): under systemd, one line at err priority."""
        if stderr_is_journal():
            sys.stderr.write("<3>fingerd: error: %s (see fingerd --help)\n" % message)
            sys.exit(2)
        super().error(message)

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args(self.expand_arg_files(args), namespace)

    def expand_arg_files(self, args: Sequence[str], depth: int = 0) -> List[str]:
        out: List[str] = []
        rest = iter(args)
        for arg in rest:
            if arg == "--":
                out.append(arg)
                out.extend(rest)
            elif arg == "--set":
                out.append(arg)
                out.extend(itertools.islice(rest, 1))
            elif arg.startswith("@") and len(arg) > 1:
                if depth >= ARG_FILE_DEPTH:
                    self.error("%s: @FILEs nested more than %d deep" % (arg, ARG_FILE_DEPTH))
                out.extend(self.expand_arg_files(self.read_arg_file(arg[1:]), depth + 1))
            else:
                out.append(arg)
        return out

    def read_arg_file(self, path: str) -> List[str]:
        """The arguments written in one @FILE."""
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_ARG_FILE + 1)
        except OSError as e:
            self.error("cannot read @%s: %s" % (path, e.strerror or e))
        if len(data) > MAX_ARG_FILE:
            self.error("@%s is over %d bytes; it is not a configuration file"
                       % (path, MAX_ARG_FILE))
        # Arguments, read as Python reads argv: UTF-8, and bytes that are not UTF-8 kept
        # exactly (surrogateescape), so that a Latin-1 path names the very file.
        if data[:3] == b"\xef\xbb\xbf":
            data = data[3:]
        args: List[str] = []
        for line in split_lines(data.decode("utf-8", "surrogateescape")):
            args.extend(self.convert_arg_line_to_args(line))
        return args

    def convert_arg_line_to_args(self, arg_line: str) -> List[str]:
        import shlex
        try:
            return shlex.split(arg_line, comments=True)
        except ValueError as e:
            self.error("in an @FILE line %r: %s" % (arg_line.strip(), e))
            return []


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="fingerd",
        formatter_class=functools.partial(argparse.RawDescriptionHelpFormatter, width=78),
        description="A finger daemon (RFC 1288) with a status setter, web pages, XML-RPC "
                    "and an IRC bot, over one store of statuses: sqlite (durable), memory, "
                    "an admin's users file, users' ~/.plan, the local finger program, or "
                    "other servers.",
        epilog=HELP_EPILOG)
    store = parser.add_argument_group("store")
    store.add_argument("--backend", choices=sorted(BACKENDS), default="sqlite",
                       help="where statuses live (default: sqlite)")
    store.add_argument("--db", metavar="PATH",
                       help="sqlite database (default: fingerd.db in $STATE_DIRECTORY, else in "
                            "the current directory)")
    store.add_argument("--users-file", metavar="PATH",
                       help="'user: status' lines: the file backend's data, or the memory "
                            "backend's initial statuses")
    store.add_argument("--finger-program", metavar="PATH", default="finger",
                       help="the process backend's program, run as PATH -- USER "
                            "(default: finger)")
    store.add_argument("--remote", metavar="URL", action="append", default=[],
                       help="the xmlrpc backend's authorities, e.g. "
                            "http://host:8000/RPC2 (repeatable: the lists are merged; a user's "
                            "answers come from the authority that last answered for them, "
                            "stale while it is down)")
    store.add_argument("--refresh", metavar="SECONDS", type=positive_float,
                       default=DEFAULT_REFRESH,
                       help="how often the file backend checks its file, the pwd backend "
                            "re-lists accounts, and the process and xmlrpc backends' answers "
                            "are kept (default: %g)" % DEFAULT_REFRESH)
    store.add_argument("--homes", metavar="GLOB",
                       help="pwd: the home directories whose .plan owners the list also "
                            "holds, for directories (SSSD, LDAP) that do not enumerate their "
                            "accounts; '' for none (default: HOME of /etc/default/useradd "
                            "+ '/*': %s)" % default_homes())
    store.add_argument("--uid-range", metavar="MIN-MAX", type=uid_range_arg,
                       help="pwd, process: the uids of people's accounts, shown with or "
                            "without a plan; others only with one (default: UID_MIN-UID_MAX "
                            "of /etc/login.defs: %d-%d; FreeIPA, AD: e.g. 1000-2000200000)"
                            % uid_range())
    store.add_argument("--lookup-timeout", metavar="SECONDS", type=positive_float,
                       default=LOOKUP_TIMEOUT,
                       help="pwd, process: the deadline of one account lookup in the name "
                            "service (LDAP, SSSD); then 'temporarily unavailable' "
                            "(default: %g)" % LOOKUP_TIMEOUT)
    net = parser.add_argument_group("listeners")
    net.add_argument("--finger", metavar="[HOST:]PORT|off", type=endpoint_arg,
                     default=parse_endpoint(DEFAULT_FINGER),
                     help="finger service (default: %s)" % DEFAULT_FINGER)
    net.add_argument("--setter", metavar="[HOST:]PORT|off", type=endpoint_arg,
                     default=parse_endpoint(DEFAULT_SETTER),
                     help="status setter: 'user' line, status lines, half-close; answers OK "
                          "or ERROR (default: %s)" % DEFAULT_SETTER)
    net.add_argument("--http", metavar="[HOST:]PORT|off", type=endpoint_arg,
                     default=parse_endpoint(DEFAULT_HTTP),
                     help="web pages (GET /, GET /USER) and XML-RPC at /RPC2: getUser(user), "
                          "getUsers(), system.* (default: %s)" % DEFAULT_HTTP)
    net.add_argument("--setter-socket", metavar="PATH|off",
                     help="the setter on a Unix socket (mode 0666) where every local user may "
                          "set their own status, identified by the kernel (SO_PEERCRED); root "
                          "may set anyone's (default: off; systemd: %s)" % DEFAULT_SETTER_SOCKET)
    net.add_argument("--setter-allow", metavar="CIDR", type=network_arg, action="append",
                     default=[],
                     help="only these addresses or networks may use the setter (repeatable; "
                          "default: anyone who can reach it)")
    net.add_argument("--max-conns-per-ip", metavar="N", type=non_negative_int,
                     default=MAX_CONNS_PER_IP,
                     help="open connections one address may hold per listener (IPv6: per /64; "
                          "0: no limit; default: %d)" % MAX_CONNS_PER_IP)
    net.add_argument("--rate", metavar="PER_SECOND", type=non_negative_float,
                     default=RATE_PER_IP,
                     help="new connections a second one address may open per listener, in "
                          "bursts of twice that (0: no limit; default: %g)" % RATE_PER_IP)
    net.add_argument("--limit-loopback", action="store_true",
                     help="apply those limits to loopback clients too (they are exempt, as "
                          "local tools and reverse proxies come from there)")
    net.add_argument("--trusted-proxy", metavar="CIDR", type=network_arg, action="append",
                     default=[],
                     help="HTTP: reverse proxies (nginx, Caddy) whose Forwarded or "
                          "X-Forwarded-For/-Proto/-Host headers are believed: the client's "
                          "address (for limits and logs), scheme and host come from them; "
                          "from anyone else those headers are ignored (repeatable; default: "
                          "none)")
    net.add_argument("--public-url", metavar="URL", type=public_url_arg,
                     help="HTTP: the canonical base of absolute links (WebFinger, Atom, "
                          "JSON), e.g. https://finger.example.org/ (default: the URL the "
                          "client asked for)")
    privacy = parser.add_argument_group("privacy (README: Privacy)")
    privacy.add_argument("--no-list", action="store_true",
                         help="publish no list of users anywhere: the empty finger query, "
                              "GET /, /users.json, getUsers() and the Atom feed are refused; "
                              "single users still answer")
    privacy.add_argument("--show", metavar="FIELDS", type=show_arg, default=frozenset(ATOMS),
                         help="the atoms released on every surface, a comma list of %s "
                              "(default: all)" % ",".join(ATOMS))
    privacy.add_argument("--webfinger-domain", metavar="NAME", action="append", default=[],
                         type=domain_arg,
                         help="WebFinger also answers acct:USER@NAME (repeatable; it always "
                              "answers for the --public-url host, else the Host it is "
                              "reached by)")
    irc = parser.add_argument_group("IRC bot")
    irc.add_argument("--irc", metavar="HOST[:PORT]|off", default="off", type=irc_server_arg,
                     help="connect a bot to this IRC server (default: off; port 6667, 6697 "
                          "with --irc-tls); a private message naming a user, or '!finger USER' "
                          "in a channel, is answered 'Status of USER: STATUS'")
    irc.add_argument("--irc-nick", metavar="NICK", type=irc_nick_arg, default="fingerbot",
                     help="the bot's nick; nick_, nick__, ... when taken (default: fingerbot)")
    irc.add_argument("--irc-channel", metavar="CHAN", type=irc_channel_arg, action="append",
                     default=[], help="join this channel, e.g. '#tilde' (repeatable)")
    irc.add_argument("--irc-tls", action="store_true",
                     help="TLS with the server's certificate and host name verified")
    irc.add_argument("--irc-password-file", metavar="PATH",
                     help="the server password (or SASL password) on the file's first line; "
                          "default: $FINGERD_IRC_PASSWORD, never a command-line argument")
    irc.add_argument("--irc-sasl", action="store_true",
                     help="log in with SASL PLAIN as the nick, using the password")
    client = parser.add_argument_group(
        "client", "set your own status through the server's --setter-socket, then exit")
    client.add_argument("--set", metavar="TEXT",
                        help="set your status to TEXT ('-': read it from standard input)")
    client.add_argument("--clear", action="store_true", help="clear your status")
    client.add_argument("--expires", metavar="DURATION",
                        help="with --set: the status lasts this long (90s, 15m, 2h, 1d, 1h30m), "
                             "then your previous status shows again")
    daemon = parser.add_argument_group("daemon")
    daemon.add_argument("--user", metavar="NAME",
                        help="started as root: bind the listeners, then become NAME (and its "
                             "group, supplementary groups cleared) before opening anything")
    daemon.add_argument("--inetd", action="store_true",
                        help="answer one finger query on stdin/stdout and exit (inetd, systemd "
                             "Accept=yes)")
    daemon.add_argument("--log-queries", action="store_true",
                        help="log every finger query, HTTP request and setter write with the "
                             "peer's address (RFC 1288 3.2.7: off by default)")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"],
                        help="how much to log on stderr (default: info; debug adds one line "
                             "per HTTP request and setter write)")
    parser.add_argument("--version", action="version", version="fingerd " + __version__)
    return parser


def run_inetd(args: argparse.Namespace) -> int:
    """--inetd: one query on stdin/stdout, then exit (inetd, systemd Accept=yes)."""
    try:
        if args.user:
            preload(args, serving=False)
            drop_privileges(args.user)
        store = open_store(args)
    except FingerdError as e:
        log.error("%s", e)
        if not stderr_is_client():
            print("fingerd: %s" % e, file=sys.stderr)
        return 1
    try:
        return serve_inetd(store, privacy_of(args), args.log_queries)
    finally:
        store.close()


def run_client(args: argparse.Namespace) -> int:
    """--set / --clear: talk to the server's setter socket as the calling user, print its
    answer; 0 for OK, 1 otherwise."""
    name = account_name(os.getuid())
    if name is None or not valid_name(name):
        print("fingerd: your account (uid %d) has no name fingerd can use" % os.getuid(),
              file=sys.stderr)
        return 1
    lines = [name]
    if args.clear:
        lines.append("clear: yes")
    if args.expires:
        lines.append("expires: " + args.expires)
    if args.set is not None:
        # Typed or piped text in whatever encoding the terminal used: read as a file is.
        text = (decode_text(sys.stdin.buffer.read(MAX_SETTER_REQUEST + 1), "standard input")
                if args.set == "-" else os_text(args.set, "--set"))
        lines.append(text.rstrip("\r\n"))
    path = args.setter_socket if args.setter_socket not in (None, "off") else \
        os.environ.get("FINGERD_SETTER_SOCKET", DEFAULT_SETTER_SOCKET)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(CONNECTION_DEADLINE)
            sock.connect(path)
            sock.sendall(("\n".join(lines) + "\n").encode("utf-8", "replace"))
            sock.shutdown(socket.SHUT_WR)
            answer = b"".join(iter(lambda: sock.recv(4096), b""))[:4096]
    except OSError as e:
        print("fingerd: cannot reach the setter socket %s: %s (is fingerd running with "
              "--setter-socket?)" % (path, e.strerror or e), file=sys.stderr)
        return 1
    text = clean_line(decode_peer(answer).strip())
    print(text if text else "fingerd: no answer from the server",
          file=sys.stdout if text == "OK" else sys.stderr)
    return 0 if text == "OK" else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line: 0 on success, 1 when fingerd cannot start or go on (one line on
    stderr saying why), 2 for a bad command line (argparse)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.set is not None and args.clear:
        parser.error("--set and --clear exclude each other")
    if args.expires and args.set is None:
        parser.error("--expires goes with --set")
    if args.set is not None or args.clear:
        return run_client(args)
    configure_logging(args.log_level, inetd=args.inetd, deferred=args.inetd)
    if args.inetd:
        return run_inetd(args)
    # A thread ready to run (the sqlite writer after its fsync, a worker) waits for the GIL
    # up to the switch interval while a loop is busy; 5 ms would be the floor of every
    # acknowledged write's latency, 1 ms costs nothing measurable.
    sys.setswitchinterval(0.001)
    return Daemon(args).run(Notifier())


if __name__ == "__main__":
    sys.exit(main())
