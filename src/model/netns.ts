// Where a kernel operation runs: a named netns (/run/netns/NAME), any netns file (/proc/PID/ns/net,
// a runtime's bind mount), or (undefined, wherever a Netns is optional) ctnet's own namespace.
export type Netns = { readonly name: string } | { readonly path: string };

/** A netns file as a Netns: one directly in /run/netns by name (`ip -n`, one exec fewer than nsenter). */
export function netnsOf(path: string): Netns {
  const m = /^\/run\/netns\/([^/]+)$/.exec(path);
  return m ? { name: m[1]! } : { path };
}

export function netnsPath(ns: Netns): string {
  return 'name' in ns ? `/run/netns/${ns.name}` : ns.path;
}

export function sameNetns(a: Netns | undefined, b: Netns | undefined): boolean {
  if (!a || !b) return a === b;
  return netnsPath(a) === netnsPath(b);
}
