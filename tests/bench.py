#!/usr/bin/env python3
"""fingerd's benchmark (not a test; CI does not run it).

    python3 tests/bench.py [compare.py options]    fingerd vs the Twisted peer vs the C limit,
                                                   through ../shared/bench/compare.py
    python3 tests/bench.py --own [--duration S]    fingerd alone, with this file's stdlib load

    python3 tests/bench.py --memory                what the daemon's memory is: RSS by
                                                   mapping, and tracemalloc by module

--own prints: start-up time to the first finger answer, finger q/s at 1 and 32 clients with
p50/p99, server CPU per query, RSS after the load, setter writes/s at 32 clients on sqlite
(durable), with 500 idle connections open: RSS, thread count and one query's answer time, and
1,000 HTTP requests pipelined in one write: how long they take, and the latency of other
clients' requests meanwhile (fairness between connections); RSS after the finger loads with
HTTP off; `fingerd --inetd` per query, wall and CPU (the median of 50 runs, beside this
interpreter's `-c pass` as the floor, and `python3 fingerd.py` run as a script); and the
`fingerd --set` round trip through the setter socket (median of 50).
fingerd runs as installed: through the ./fingerd wrapper (byte-compiled, -S), with this
interpreter first on PATH.  Everything runs on 127.0.0.1 and stops by itself (bounded by
--duration per load).
"""
import argparse
import collections
import multiprocessing
import os
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WRAPPER = os.path.join(ROOT, "fingerd")
# The wrapper's `python3` is this interpreter.
ENV = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
COMPARE = os.path.join(os.path.dirname(ROOT), "shared", "bench", "compare.py")
STATUS = b"Happy and well"


def proc_value(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def finger_once(port, user=b"alice", timeout=5.0):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(user + b"\r\n")
        return b"".join(iter(lambda: s.recv(65536), b""))


def load_worker(port, proto, conns, duration, out):
    """One process: keep `conns` queries in flight for `duration` seconds (epoll)."""
    ep = select.epoll()
    live = {}
    latencies = []
    errors = 0
    seq = os.getpid() * 1000
    end = time.monotonic() + duration

    def start():
        nonlocal seq
        seq += 1
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        if proto == "finger":
            request = b"alice\r\n"
        else:
            request = b"user%d\nstatus %d\n" % (seq % 1000, seq)
        live[s.fileno()] = [s, time.monotonic(), b"", request]
        ep.register(s.fileno(), select.EPOLLOUT)

    for _ in range(conns):
        start()
    while time.monotonic() < end:
        for fd, ev in ep.poll(0.1):
            entry = live.get(fd)
            if entry is None:
                continue
            s = entry[0]
            try:
                if entry[3]:
                    s.send(entry[3])
                    if proto == "setter":
                        s.shutdown(socket.SHUT_WR)
                    entry[3] = b""
                    ep.modify(fd, select.EPOLLIN)
                    continue
                data = s.recv(65536)
            except OSError:
                data, entry[2] = b"", b"ERROR"
            if data:
                entry[2] += data
                continue
            ep.unregister(fd)
            del live[fd]
            s.close()
            ok = STATUS in entry[2] if proto == "finger" else entry[2].startswith(b"OK")
            if ok:
                latencies.append(time.monotonic() - entry[1])
            else:
                errors += 1
            start()
    for entry in live.values():
        entry[0].close()
    out.put((latencies, errors))


def run_load(port, proto, concurrency, duration):
    procs = 1 if concurrency == 1 else 2
    out = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=load_worker,
                                       args=(port, proto, concurrency // procs, duration, out))
               for _ in range(procs)]
    for w in workers:
        w.start()
    latencies, errors = [], 0
    for _ in workers:
        lat, err = out.get(timeout=duration + 30)
        latencies += lat
        errors += err
    for w in workers:
        w.join(10)
    latencies.sort()

    def pct(p):
        return latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1e3 \
            if latencies else float("nan")
    return {"qps": len(latencies) / duration, "n": len(latencies), "errors": errors,
            "p50_ms": pct(0.50), "p99_ms": pct(0.99)}


def pipelined(http_port, count=1000):
    """One client sends `count` GET /alice in one write and reads them all while another
    client sends single requests: (seconds for the burst, the other's p50 and max ms)."""
    request = b"GET /alice HTTP/1.1\r\nHost: bench\r\n\r\n"
    burst = socket.create_connection(("127.0.0.1", http_port), timeout=30)
    t0 = time.perf_counter()
    burst.sendall(request * count)
    others = []
    burst.setblocking(False)
    received = b""
    while received.count(b"HTTP/1.1 200") < count and time.perf_counter() - t0 < 30:
        s0 = time.perf_counter()
        with socket.create_connection(("127.0.0.1", http_port), timeout=10) as other:
            other.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            while other.recv(65536):
                pass
        others.append((time.perf_counter() - s0) * 1e3)
        try:
            while True:
                data = burst.recv(1 << 20)
                if not data:
                    break
                received += data
        except BlockingIOError:
            pass
    elapsed = time.perf_counter() - t0
    burst.close()
    others.sort()
    return elapsed, others[len(others) // 2], others[-1], received.count(b"HTTP/1.1 200")


def start_fingerd(workdir, *args, http_port=None, program=(WRAPPER,), env=None):
    fport, sport = free_port(), free_port()
    argv = [*program, *args,
            "--finger", "127.0.0.1:%d" % fport, "--setter", "127.0.0.1:%d" % sport,
            "--http", "127.0.0.1:%d" % http_port if http_port else "off",
            "--log-level", "warning"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=workdir, stdin=subprocess.DEVNULL, env=env or ENV)
    while time.perf_counter() - t0 < 20:
        try:
            if finger_once(fport, timeout=2):
                return proc, fport, sport, time.perf_counter() - t0
        except OSError:
            time.sleep(0.002)
    proc.kill()
    raise SystemExit("bench: fingerd did not answer within 20 s")


def timed_runs(commands, runs=50, env=None):
    """Median wall and CPU milliseconds of each (argv, stdin bytes) in `commands`, run
    `runs` times in turn (interleaved, so that a change in the machine's load falls on all
    alike; CPU: the child's user and system time, from RUSAGE_CHILDREN)."""
    walls = [[] for _ in commands]
    cpus = [[] for _ in commands]
    for _ in range(runs):
        for i, (argv, data) in enumerate(commands):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            subprocess.run(argv, input=data, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env=env or ENV, check=False)
            walls[i].append(time.perf_counter() - t0)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus[i].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return [(statistics.median(w) * 1e3, statistics.median(c) * 1e3)
            for w, c in zip(walls, cpus)]


def inetd_rows(users):
    """--inetd per query through the wrapper (which runs python3 -S) and as a script,
    beside `-c pass` with and without -S: one user's users file, and the 1,001 users'."""
    small = os.path.join(os.path.dirname(users), "one-user.txt")
    with open(small, "w") as f:
        f.write("alice: Happy and well\n")
    query = b"alice\r\n"
    inetd = ["--inetd", "--backend", "file", "--users-file"]
    floor, floor_s, one, many = timed_runs([
        ([sys.executable, "-c", "pass"], b""), ([sys.executable, "-S", "-c", "pass"], b""),
        ([WRAPPER, *inetd, small], query), ([WRAPPER, *inetd, users], query)])
    script, = timed_runs([([sys.executable, os.path.join(ROOT, "fingerd.py"), *inetd, small],
                           query)], runs=10)
    return [
        ("python3 -c pass (the floor) / python3 -S -c pass: wall ms",
         "%.1f / %.1f" % (floor[0], floor_s[0])),
        ("fingerd --inetd, one query (./fingerd), 1 user: wall / CPU ms, x floor",
         "%.1f / %.1f, %.2fx" % (one[0], one[1], one[0] / floor[0])),
        ("the same, 1,001 users in the file: wall / CPU ms, x floor",
         "%.1f / %.1f, %.2fx" % (many[0], many[1], many[0] / floor[0])),
        ("python3 fingerd.py --inetd (compiled every run): wall / CPU ms",
         "%.1f / %.1f" % script)]


def set_round_trip(workdir):
    """fingerd --set through the setter socket of a running sqlite daemon: median ms."""
    path = os.path.join(workdir, "setter.sock")
    proc, _, _, _ = start_fingerd(workdir, "--backend", "sqlite", "--db",
                                  os.path.join(workdir, "set.db"), "--setter-socket", path)
    try:
        (wall, cpu), = timed_runs([([WRAPPER, "--setter-socket", path, "--set", "In the bench"],
                                    b"")])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    return [("fingerd --set round trip (durable): wall / client CPU ms", "%.1f / %.1f"
             % (wall, cpu))]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def users_file(workdir):
    users = os.path.join(workdir, "users.txt")
    with open(users, "w") as f:
        f.write("alice: Happy and well\n")
        for i in range(1000):
            f.write("user%d: status of user %d\n" % (i, i))
    return users


def own(args):
    workdir = tempfile.mkdtemp(prefix="fingerd-bench-")
    users = users_file(workdir)
    # As installed: the compiled module exists before the first start (py3compile).
    subprocess.run([WRAPPER, "--version"], env=ENV, stdout=subprocess.DEVNULL, check=True)
    rows = []
    http_port = free_port()
    proc, fport, _, startup = start_fingerd(workdir, "--backend", "file", "--users-file", users,
                                            http_port=http_port)
    try:
        rows.append(("start-up to first finger answer, ms", "%.0f" % (startup * 1e3)))
        for conc in (1, 32):
            c0 = cpu_seconds(proc.pid)
            res = run_load(fport, "finger", conc, args.duration)
            cpu = cpu_seconds(proc.pid) - c0
            rows.append(("finger q/s, c=%d (p50 / p99 ms)" % conc, "%.0f (%.3f / %.2f)%s" % (
                res["qps"], res["p50_ms"], res["p99_ms"],
                "  errors %d" % res["errors"] if res["errors"] else "")))
            if conc == 32:
                rows.append(("server CPU us per finger query, c=32",
                             "%.1f" % (cpu / max(1, res["n"]) * 1e6)))
        rows.append(("RSS after the loads, MiB", "%.1f" % (proc_value(proc.pid, "VmRSS") / 1024)))
        idle = [socket.create_connection(("127.0.0.1", fport)) for _ in range(500)]
        time.sleep(1.0)
        t0 = time.perf_counter()
        ok = STATUS in finger_once(fport)
        answer_ms = (time.perf_counter() - t0) * 1e3
        rows.append(("500 idle conns: answer ms / threads / RSS MiB", "%s / %d / %.1f" % (
            "%.2f" % answer_ms if ok else "WRONG", proc_value(proc.pid, "Threads"),
            proc_value(proc.pid, "VmRSS") / 1024)))
        for s in idle:
            s.close()
        elapsed, p50, worst, answered = pipelined(http_port)
        rows.append(("1,000 pipelined HTTP requests: ms (answered) / others p50, max ms",
                     "%.0f (%d) / %.2f, %.2f" % (elapsed * 1e3, answered, p50, worst)))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    proc, fport, _, _ = start_fingerd(workdir, "--backend", "file", "--users-file", users)
    try:
        for conc in (1, 32):
            run_load(fport, "finger", conc, args.duration)
        rows.append(("RSS after the finger loads, HTTP off, MiB",
                     "%.1f" % (proc_value(proc.pid, "VmRSS") / 1024)))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    rows += inetd_rows(users)
    rows += set_round_trip(workdir)
    proc, _, sport, _ = start_fingerd(workdir, "--backend", "sqlite", "--db",
                                      os.path.join(workdir, "bench.db"))
    try:
        c0 = cpu_seconds(proc.pid)
        res = run_load(sport, "setter", 32, args.duration)
        cpu = cpu_seconds(proc.pid) - c0
        rows.append(("setter writes/s, c=32, sqlite durable (p99 ms)", "%.0f (%.2f)%s" % (
            res["qps"], res["p99_ms"], "  errors %d" % res["errors"] if res["errors"] else "")))
        rows.append(("server CPU us per setter write", "%.1f" % (cpu / max(1, res["n"]) * 1e6)))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    shutil.rmtree(workdir, ignore_errors=True)
    width = max(len(name) for name, _ in rows)
    print("| %-*s | value |\n|%s|---:|" % (width, "metric", "-" * (width + 2)))
    for name, value in rows:
        print("| %-*s | %s |" % (width, name, value))


# Runs fingerd.main() as the wrapper does; SIGUSR2 writes a tracemalloc snapshot to $SNAPSHOT
# (tracemalloc itself is started by PYTHONTRACEMALLOC, before the first import).
MEMORY_DRIVER = """
import os, signal, sys, tracemalloc
sys.path[0] = os.path.dirname(sys.argv.pop(1))
sys.dont_write_bytecode = True     # reads the compiled code the wrapper wrote; writes none
def snapshot(signum, frame):
    if tracemalloc.is_tracing():
        with open(os.environ["SNAPSHOT"] + ".modules", "w") as f:
            f.write("\\n".join(sorted(sys.modules)))
        tracemalloc.take_snapshot().dump(os.environ["SNAPSHOT"] + ".part")
        os.rename(os.environ["SNAPSHOT"] + ".part", os.environ["SNAPSHOT"])
signal.signal(signal.SIGUSR2, snapshot)
import fingerd
sys.exit(fingerd.main())
"""


def rss_by_mapping(pid):
    """kB of RSS by what is mapped: each file (the interpreter, libraries), [heap], [stack],
    and anonymous memory (pymalloc arenas, thread stacks, malloc's per-thread arenas)."""
    sizes = collections.Counter()
    name = "?"
    with open("/proc/%d/smaps" % pid) as f:
        for line in f:
            fields = line.split()
            if fields and "-" in fields[0] and not fields[0].endswith(":"):
                name = os.path.basename(fields[5]) if len(fields) >= 6 else "anonymous"
                if len(fields) >= 6 and fields[5].startswith("["):
                    name = fields[5]
            elif fields and fields[0] == "Rss:":
                sizes[name] += int(fields[1])
    return sizes


def memory(args):
    """What the memory of a daemon with every listener on is, after the loads: RSS by
    mapping, then (in a second daemon, with tracemalloc) Python's allocations by module."""
    import tracemalloc
    import xmlrpc.client
    workdir = tempfile.mkdtemp(prefix="fingerd-bench-")
    users = users_file(workdir)
    subprocess.run([WRAPPER, "--version"], env=ENV, stdout=subprocess.DEVNULL, check=True)
    snapshot_path = os.path.join(workdir, "snapshot")
    results = {}
    for traced in (False, True):
        env = dict(ENV, SNAPSHOT=snapshot_path)
        if traced:
            env["PYTHONTRACEMALLOC"] = "1"
        http_port = free_port()
        proc, fport, _, _ = start_fingerd(
            workdir, "--backend", "file", "--users-file", users, http_port=http_port,
            program=(sys.executable, "-S", "-c", MEMORY_DRIVER,
                     os.path.join(ROOT, "fingerd.py")), env=env)
        try:
            run_load(fport, "finger", 32, args.duration)
            pipelined(http_port)
            with xmlrpc.client.ServerProxy("http://127.0.0.1:%d/RPC2" % http_port) as rpc:
                rpc.getUsers()
                for _ in range(200):
                    rpc.getUser("alice")
            time.sleep(0.5)
            results[traced] = (proc_value(proc.pid, "VmRSS"), rss_by_mapping(proc.pid),
                               proc_value(proc.pid, "Threads"))
            if traced:
                proc.send_signal(signal.SIGUSR2)
                for _ in range(200):
                    if os.path.exists(snapshot_path):
                        break
                    time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
    rss, mappings, threads = results[False]
    print("RSS after the loads (finger c=32, 1,000 pipelined GET /alice, XML-RPC): "
          "%.1f MiB, %d threads\n" % (rss / 1024, threads))
    print("| mapped | MiB |\n|---|---:|")
    for name, kb in mappings.most_common(12):
        print("| %s | %.2f |" % (name, kb / 1024))
    rest = sum(kb for _, kb in mappings.most_common()[12:])
    print("| (everything else) | %.2f |" % (rest / 1024))
    snapshot = tracemalloc.Snapshot.load(snapshot_path)
    stats = snapshot.statistics("filename")
    total = sum(s.size for s in stats)
    with open(snapshot_path + ".modules") as f:
        modules = len(f.read().split())
    print("\nPython's own allocations (tracemalloc, in a second daemon under the same loads; "
          "RSS there %.1f MiB, tracing included): %.2f MiB, %d modules loaded\n"
          % (results[True][0] / 1024, total / 2**20, modules))
    importing = {"<frozen importlib._bootstrap_external>": "loading modules: their compiled "
                 "code (.pyc unmarshalled)", "<frozen importlib._bootstrap>": "loading "
                 "modules: module objects, specs"}
    print("| allocated by | MiB | blocks |\n|---|---:|---:|")
    for stat in stats[:20]:
        name = stat.traceback[0].filename
        name = importing.get(name) or name.replace(sys.prefix, "<prefix>").replace(
            ROOT, "<root>")
        print("| %s | %.2f | %d |" % (name, stat.size / 2**20, stat.count))
    print("| (everything else) | %.2f | |" % (sum(s.size for s in stats[20:]) / 2**20))
    shutil.rmtree(workdir, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--own", action="store_true", help="fingerd alone, stdlib load")
    parser.add_argument("--memory", action="store_true",
                        help="where the memory goes: RSS by mapping, tracemalloc by module")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per load (--own)")
    args, rest = parser.parse_known_args()
    if args.memory:
        memory(args)
        return
    if not args.own and os.path.exists(COMPARE):
        os.chdir(ROOT)
        os.execv(sys.executable, [sys.executable, COMPARE, *rest])
    if not args.own:
        print("bench: %s not found; using --own" % COMPARE, file=sys.stderr)
    own(args)


if __name__ == "__main__":
    main()
