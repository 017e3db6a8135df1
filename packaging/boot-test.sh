#!/usr/bin/env bash
# The Debian package as an admin meets it: a Debian 12 root booted with systemd as PID 1
# (systemd-nspawn -b), the netkit fingerd under openbsd-inetd installed first, then this
# .deb, then the checks of docs (README: The Debian package). Runnable by hand, as root:
#
#   packaging/boot-test.sh dist/fingerd_*_all.deb
#
# Needs debootstrap and systemd-container (systemd-nspawn), and the network once: the
# minimal root is built from the mirror this machine's apt uses (never written into the
# repository) and cached in $FINGERD_BOOT_CACHE (default /var/tmp/fingerd-boot).
# Exits non-zero when a check fails; each check prints "ok" or "FAIL".
set -euo pipefail
deb=$(readlink -f "$1")
cache=${FINGERD_BOOT_CACHE:-/var/tmp/fingerd-boot}
include=systemd,systemd-sysv,dbus,python3,finger,netcat-openbsd,openbsd-inetd,update-inetd,netbase,curl,passwd,procps
base=$cache/base-bookworm-$(printf '%s' "$include" | md5sum | cut -c1-8)   # rebuilt when it changes
root=$cache/run
mkdir -p "$cache"
start=$(date +%s)

mirror=$(awk '/^URIs:/ && $2 ~ /debian$/ {print $2; exit}' /etc/apt/sources.list.d/*.sources \
         2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '/^deb / && $3 ~ /^bookworm$/ {print $2; exit}' \
                               /etc/apt/sources.list 2>/dev/null || true)
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian

if [ ! -e "$base/.complete" ]; then
  rm -rf "$base.tmp"
  debootstrap --variant=minbase --include="$include" bookworm "$base.tmp" "$mirror" > "$cache/debootstrap.log" 2>&1 \
    || { tail -20 "$cache/debootstrap.log"; exit 1; }
  touch "$base.tmp/.complete"
  rm -rf "$base"
  mv "$base.tmp" "$base"
fi
# netkit's fingerd (the upgrade path), with this machine's apt, once.
netkit=$(ls "$cache"/fingerd_0.17*.deb 2>/dev/null | head -n 1 || true)
if [ -z "$netkit" ]; then
  version=$(apt-cache show fingerd 2>/dev/null | awk '/^Version: 0\.17/ {print $2; exit}')
  (cd "$cache" && apt-get download -q "fingerd=$version" >/dev/null)
  netkit=$(ls "$cache"/fingerd_0.17*.deb | head -n 1)
fi

rm -rf "$root"
cp -a "$base" "$root"
cp "$deb" "$root/root/fingerd-new.deb"
cp "$netkit" "$root/root/fingerd-netkit.deb"

systemd-nspawn -q -D "$root" -b --register=no --keep-unit --private-network \
  --console=read-only > "$cache/boot.log" 2>&1 &
nspawn=$!
cleanup() {
  kill "$nspawn" 2>/dev/null || true
  sleep 1
  kill -9 "$nspawn" 2>/dev/null || true
  wait "$nspawn" 2>/dev/null || true
}
trap cleanup EXIT

leader=""
for _ in $(seq 100); do
  leader=$(pgrep -P "$nspawn" -x systemd || true)
  [ -n "$leader" ] && break
  sleep 0.1
done
[ -n "$leader" ] || { echo "the container did not boot"; cat "$cache/boot.log"; exit 1; }
inside() { nsenter -t "$leader" -m -u -i -n -p -- "$@"; }
in_sh() { inside /bin/sh -c "$1"; }
inside systemctl is-system-running --wait >/dev/null 2>&1 || true

failures=0
check() {      # check "what" command...
  local what=$1; shift
  if "$@" >/dev/null 2>&1; then
    echo "ok    $what"
    last_ok=1
  else
    echo "FAIL  $what"
    failures=$((failures + 1))
    last_ok=0
  fi
}
explain() { [ "$last_ok" = 1 ] || in_sh "$1" || true; }   # shown after a FAIL
finger79() { in_sh "printf '%s\r\n' '$1' | nc -q 3 127.0.0.1 79"; }
wait_for() {   # wait_for SECONDS command...
  local limit=$1; shift
  for _ in $(seq $((limit * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  return 1
}

# The netkit fingerd under inetd, as on a host being upgraded.
in_sh "dpkg -i /root/fingerd-netkit.deb" > "$cache/netkit.log" 2>&1 \
  || { echo "FAIL  netkit install"; cat "$cache/netkit.log"; exit 1; }
check "netkit fingerd is in inetd.conf" in_sh "grep -q '^finger.*in.fingerd' /etc/inetd.conf"
# Something else on port 8000: fingerd-http.socket will fail, not fingerd.
inside systemd-run -q --unit=squatter python3 -m http.server -b 127.0.0.1 8000 >/dev/null
wait_for 10 in_sh "nc -z 127.0.0.1 8000"

in_sh "dpkg -i /root/fingerd-new.deb" > "$cache/install.log" 2>&1 \
  || { echo "FAIL  install"; cat "$cache/install.log"; exit 1; }
check "the upgrade disabled the netkit line" \
  in_sh "grep -q '^#<off># finger' /etc/inetd.conf"
check "inetd no longer holds port 79" in_sh "systemctl is-active -q fingerd.socket"
explain "systemctl status --no-pager fingerd.socket | tail -5"
check "a busy port 8000 fails fingerd-http.socket" \
  in_sh "systemctl is-failed -q fingerd-http.socket || ! systemctl is-active -q fingerd-http.socket"
check "finger answers on 79 while 8000 is busy" \
  in_sh "printf '\r\n' | nc -q 3 127.0.0.1 79 | grep -q 'No users'"
inside systemctl stop squatter
wait_for 10 in_sh "! nc -z 127.0.0.1 8000"
inside systemctl reset-failed fingerd-http.socket fingerd.service >/dev/null 2>&1 || true
# A socket unit cannot start while its service runs: the service stops first (README).
check "fingerd-http.socket starts once 8000 is free" \
  in_sh "systemctl stop fingerd && systemctl start fingerd-http.socket && systemctl start fingerd"

# Local users set their own status through the setter socket; the TCP setter is off.
in_sh "useradd -m carol && useradd -m dave"
check "fingerd --set as carol, from her login shell's PATH" \
  in_sh "su - carol -c \"fingerd --set 'Hello from carol'\""
check "carol cannot set dave's status" \
  in_sh "su carol -c \"printf 'dave\\nHacked by carol\\n' | nc -NU /run/fingerd/setter.sock\" | grep -q ERROR"
check "dave's status was not set" in_sh "! printf 'dave\r\n' | nc -q 3 127.0.0.1 79 | grep -q Hacked"
check "the TCP setter is closed while fingerd serves" \
  in_sh "systemctl is-active -q fingerd && ! nc -z 127.0.0.1 1079"
check "the real finger client" in_sh "finger carol@localhost | grep -q 'Hello from carol'"
check "HTTP page" in_sh "curl -sf http://127.0.0.1:8000/carol | grep -q 'Hello from carol'"
check "XML-RPC" in_sh "python3 -c \"import xmlrpc.client as x; assert x.ServerProxy('http://127.0.0.1:8000/RPC2').getUser('carol') == 'Hello from carol'\""

inside systemctl restart fingerd
check "a restart keeps statuses" wait_for 10 in_sh "finger carol@localhost | grep -q 'Hello from carol'"
inside systemctl reload fingerd
check "systemctl reload" wait_for 10 in_sh "journalctl -u fingerd | grep -q 'SIGHUP: re-reading'"
check "still active after reload" in_sh "systemctl is-active -q fingerd"

# A unit that listens on IPv4 and IPv6 apart: both sockets are finger, never the setter.
in_sh "mkdir -p /run/systemd/system/fingerd.socket.d && printf '[Socket]\nListenStream=\nListenStream=0.0.0.0:79\nListenStream=[::]:79\nBindIPv6Only=ipv6-only\n' > /run/systemd/system/fingerd.socket.d/split.conf && systemctl daemon-reload && systemctl stop fingerd fingerd.socket && systemctl start fingerd.socket fingerd"
check "split IPv4/IPv6 finger sockets: IPv6 is finger" \
  in_sh "printf 'carol\r\n' | nc -q 3 ::1 79 | grep -q 'Hello from carol'"
check "split IPv4/IPv6 finger sockets: no setter on 79" \
  in_sh "! printf 'dave\nPWNED\n' | nc -N ::1 79 | grep -q OK"
in_sh "rm -r /run/systemd/system/fingerd.socket.d && systemctl daemon-reload && systemctl stop fingerd fingerd.socket && systemctl start fingerd.socket fingerd"

# The web side turned off stays off after a restart.
in_sh "systemctl disable -q --now fingerd-http.socket && systemctl restart fingerd"
check "disable --now fingerd-http.socket lasts" in_sh "! curl -sf -o /dev/null http://127.0.0.1:8000/"
in_sh "systemctl stop fingerd && systemctl enable -q --now fingerd-http.socket && systemctl start fingerd"

# A listener fingerd binds itself (the TCP setter turned on) on a busy port: finger stays.
inside systemd-run -q --unit=squat1079 python3 -m http.server -b 127.0.0.1 1079 >/dev/null
wait_for 10 in_sh "nc -z 127.0.0.1 1079"
in_sh "cp /etc/default/fingerd /root/default.saved && echo 'FINGERD_OPTS=\"--setter 127.0.0.1:1079\"' >> /etc/default/fingerd && systemctl restart fingerd" || true
check "a busy --setter port does not take finger down" \
  wait_for 10 in_sh "finger carol@localhost | grep -q 'Hello from carol'"
check "the missing setter is in /healthz" \
  in_sh "curl -s http://127.0.0.1:8000/healthz | grep -q 'not listening: cannot listen for setter'"
check "and at err priority" in_sh "journalctl -p err -u fingerd | grep -q 'cannot listen for setter'"
inside systemctl stop squat1079
in_sh "cp /root/default.saved /etc/default/fingerd && systemctl restart fingerd"

# The watchdog: a stopped fingerd is killed and started again.
in_sh "mkdir -p /run/systemd/system/fingerd.service.d && printf '[Service]\nWatchdogSec=3\n' > /run/systemd/system/fingerd.service.d/watchdog.conf && systemctl daemon-reload && systemctl restart fingerd"
pid=$(inside systemctl show -P MainPID fingerd)
inside kill -STOP "$pid"
check "the watchdog restarts a stopped fingerd" \
  wait_for 30 in_sh "[ \"\$(systemctl show -P MainPID fingerd)\" != $pid ] && [ \"\$(systemctl show -P MainPID fingerd)\" != 0 ]"
check "answers again after the watchdog" wait_for 15 in_sh "finger carol@localhost | grep -q 'Hello from carol'"
in_sh "rm -r /run/systemd/system/fingerd.service.d && systemctl daemon-reload"

# Why it cannot start is at err priority.
in_sh "cp /etc/default/fingerd /root/default.saved && echo 'FINGERD_OPTS=\"--backend file\"' >> /etc/default/fingerd"
inside systemctl restart fingerd >/dev/null 2>&1 || true
check "a start-up error is in journalctl -p err" \
  wait_for 15 in_sh "journalctl -p err -u fingerd | grep -q 'needs --users-file'"
in_sh "cp /root/default.saved /etc/default/fingerd"
inside systemctl reset-failed fingerd >/dev/null 2>&1 || true
inside systemctl restart fingerd
check "finger answers after the bad start" wait_for 10 in_sh "finger carol@localhost | grep -q carol"

exposure=$(in_sh "systemd-analyze security fingerd.service 2>/dev/null" \
           | sed -n 's/.*Overall exposure level for fingerd.service: \([0-9.]*\).*/\1/p')
echo "      live exposure: $exposure"
check "systemd-analyze security <= 1.5" python3 -c "import sys; sys.exit(not float('$exposure' or 9) <= 1.5)"

# Port 79 taken by something else: the web pages and fingerd --set still work.
in_sh "systemctl stop fingerd fingerd.socket"
inside systemd-run -q --unit=squat79 python3 -m http.server -b 0.0.0.0 79 >/dev/null
wait_for 10 in_sh "nc -z 127.0.0.1 79"
in_sh "systemctl start fingerd" || true
check "port 79 busy: fingerd --set still works" \
  wait_for 10 in_sh "su - carol -c \"fingerd --set 'Still here'\""
check "port 79 busy: the pages still work" \
  in_sh "curl -sf http://127.0.0.1:8000/carol | grep -q 'Still here'"
inside systemctl stop squat79
in_sh "systemctl stop fingerd && systemctl start fingerd.socket && systemctl start fingerd"
check "finger is back once 79 is free" wait_for 10 in_sh "finger carol@localhost | grep -q 'Still here'"

# Reinstalling (an upgrade) keeps the sockets listening: nothing at err priority.
errors=$(in_sh "journalctl -p err -q --no-pager | wc -l")
in_sh "dpkg -i /root/fingerd-new.deb" >/dev/null 2>&1
check "a reinstall logs nothing at err" in_sh "[ \$(journalctl -p err -q --no-pager | wc -l) -eq $errors ]"
explain "journalctl -p err -q --no-pager | tail -n +$((errors + 1))"
check "finger answers after the reinstall" wait_for 10 in_sh "finger carol@localhost | grep -q 'Still here'"

# remove keeps the data; purge removes it and the netkit line.
in_sh "dpkg -r fingerd" >/dev/null 2>&1
check "remove keeps the database" in_sh "test -e /var/lib/private/fingerd/fingerd.db"
in_sh "dpkg -P fingerd" >/dev/null 2>&1
check "purge removes /var/lib/private/fingerd" in_sh "! test -e /var/lib/private/fingerd"
check "purge removes the /var/lib/fingerd link" in_sh "! test -e /var/lib/fingerd && ! test -L /var/lib/fingerd"
check "purge removes the disabled netkit line" in_sh "! grep -q '^#<off># finger' /etc/inetd.conf"
check "purge leaves no setter socket file" in_sh "! test -e /run/fingerd/setter.sock"
in_sh "dpkg -i /root/fingerd-new.deb" >/dev/null 2>&1
check "a reinstall after purge listens on every socket" \
  in_sh "systemctl is-active -q fingerd.socket fingerd-http.socket fingerd-setter.socket"
check "and answers, with none of the old statuses" \
  wait_for 10 in_sh "printf 'carol\r\n' | nc -q 3 127.0.0.1 79 | grep -q 'No such user'"
echo "boot test: $failures failed, $(( $(date +%s) - start )) s"
[ "$failures" -eq 0 ]
