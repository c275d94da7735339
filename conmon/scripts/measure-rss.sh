#!/bin/bash
# Idle-monitor RSS: crius-conmon (release) vs Debian conmon, same busybox `sleep` bundle.
# Usage (root, runc, busybox-static and conmon installed): cargo build --release -p crius-conmon; conmon/scripts/measure-rss.sh
set -e
R=${TMPDIR:-/tmp}/crius-rss; rm -rf $R; mkdir -p $R/bundle/rootfs/bin $R/mon $R/logs $R/cm/exits $R/cm/sock $R/cm/persist
cp /bin/busybox $R/bundle/rootfs/bin/; ln -s busybox $R/bundle/rootfs/bin/sh; ln -s busybox $R/bundle/rootfs/bin/sleep
(cd $R/bundle && runc spec)
python3 - $R/bundle/config.json <<'PY'
import sys; p=sys.argv[1]; s=open(p).read()
s=s.replace('"terminal": true','"terminal": false').replace('"args": [\n\t\t\t"sh"\n\t\t]','"args": ["sleep","1000"]')
open(p,'w').write(s)
PY
rss() { grep -E '^(VmRSS|RssAnon|RssFile)' /proc/$1/status | tr -s ' \t' ' ' | tr '\n' ' '; echo -n " Pss:"; grep '^Pss:' /proc/$1/smaps_rollup | awk '{print $2" kB"}'; }
BIN=${BIN:-$(cd "$(dirname "$0")/../.." && pwd)/target/release/crius-conmon}
out=$($BIN run --id rss-crius --bundle $R/bundle --runtime /usr/sbin/runc --dir $R/mon --log-path $R/logs/c.log)
mp=${out#*monitor_pid=}; runc start rss-crius; sleep 1
echo "crius-conmon ($(stat -c %s $BIN) bytes): $(rss $mp)"
runc kill rss-crius KILL; sleep 0.5; runc delete --force rss-crius
conmon --api-version 1 -c rss-conmon -u rss-conmon -n rss -r /usr/sbin/runc -b $R/bundle -p $R/cm/pidfile \
  -l k8s-file:$R/logs/cm.log --exit-dir $R/cm/exits --socket-dir-path $R/cm/sock --persist-dir $R/cm/persist \
  -P $R/cm/conmon.pid --log-level error --syslog=false 2>&1 || true
sleep 0.5; cp=$(cat $R/cm/conmon.pid); runc start rss-conmon; sleep 1
echo "conmon 2.1.6: $(rss $cp)"
runc kill rss-conmon KILL; sleep 0.5; runc delete --force rss-conmon
