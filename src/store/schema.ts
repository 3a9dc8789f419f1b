export const SCHEMA_VERSION = 25;

// Published ports belong to a sandbox and go with it. host_ip is '' (every address of both
// families), 0.0.0.0 or :: (every address of one family) or one address. The primary key stops
// exact duplicates; overlapping ranges and wildcards are checked by the engine in the same write.
export const PORTS = `
CREATE TABLE ports (
  sandbox TEXT NOT NULL REFERENCES sandboxes(name) ON DELETE CASCADE,
  proto TEXT NOT NULL CHECK (proto IN ('tcp', 'udp', 'sctp')),
  host_ip TEXT NOT NULL,
  host_port INTEGER NOT NULL CHECK (host_port BETWEEN 1 AND 65535),
  container_port INTEGER NOT NULL CHECK (container_port BETWEEN 1 AND 65535),
  count INTEGER NOT NULL CHECK (count >= 1 AND host_port + count <= 65536 AND container_port + count <= 65536),
  PRIMARY KEY (proto, host_ip, host_port)
);
CREATE INDEX ports_by_sandbox ON ports(sandbox);
`;

// Addresses are unique across all networks (subnets never overlap), and belong to an attachment:
// deleting the attachment releases them in the same transaction.
// owner: the process token (pid:starttime) of the operation that set a creating/removing state, so
// gc leaves alone what a live process is still doing.
export const SCHEMA = `
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE networks (
  name TEXT PRIMARY KEY,
  bridge TEXT NOT NULL UNIQUE,
  internal INTEGER NOT NULL,
  mtu INTEGER,
  state TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'removing')),
  owner TEXT,
  created TEXT NOT NULL
);
CREATE TABLE subnets (
  network TEXT NOT NULL REFERENCES networks(name) ON DELETE CASCADE,
  cidr TEXT NOT NULL UNIQUE,
  family INTEGER NOT NULL,
  gateway TEXT NOT NULL,
  cursor TEXT,
  PRIMARY KEY (network, cidr)
);
CREATE TABLE sandboxes (
  name TEXT PRIMARY KEY,
  netns TEXT NOT NULL,
  owned INTEGER NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'removing')),
  owner TEXT,
  created TEXT NOT NULL
);
CREATE TABLE attachments (
  sandbox TEXT NOT NULL REFERENCES sandboxes(name) ON DELETE CASCADE,
  network TEXT NOT NULL REFERENCES networks(name),
  ifname TEXT NOT NULL,
  host_veth TEXT NOT NULL UNIQUE,
  mac TEXT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'removing')),
  owner TEXT,
  PRIMARY KEY (sandbox, network),
  UNIQUE (sandbox, ifname)
);
CREATE TABLE addresses (
  ip TEXT PRIMARY KEY,
  family INTEGER NOT NULL,
  cidr TEXT NOT NULL,
  network TEXT NOT NULL,
  sandbox TEXT NOT NULL,
  FOREIGN KEY (sandbox, network) REFERENCES attachments(sandbox, network) ON DELETE CASCADE
);
CREATE INDEX addresses_by_sandbox ON addresses(sandbox);
CREATE TABLE processes (
  sandbox TEXT NOT NULL REFERENCES sandboxes(name) ON DELETE CASCADE,
  pid INTEGER NOT NULL,
  command TEXT NOT NULL
);
`;

// Policy (schema 3): labels select sandboxes; rules keep their selectors as the canonical text
// the CLI parses (src/model/policy.ts), so a rule reads back exactly as it was given.
// policy_elements mirrors what the kernel's policy sets hold, so a change sends only the difference
// (re-adding 10,000 interval elements costs the kernel seconds; a difference, milliseconds).
export const POLICY = `
ALTER TABLE networks ADD COLUMN isolate INTEGER NOT NULL DEFAULT 0;
CREATE TABLE labels (
  sandbox TEXT NOT NULL REFERENCES sandboxes(name) ON DELETE CASCADE,
  key TEXT NOT NULL,
  value TEXT NOT NULL,
  PRIMARY KEY (sandbox, key)
);
CREATE INDEX labels_by_key ON labels(key, value);
CREATE TABLE policies (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  name TEXT NOT NULL UNIQUE,
  action TEXT NOT NULL CHECK (action IN ('allow', 'deny')),
  from_sel TEXT NOT NULL,
  to_sel TEXT NOT NULL,
  port TEXT,
  created TEXT NOT NULL
);
CREATE TABLE policy_elements (
  set_name TEXT NOT NULL,
  element TEXT NOT NULL,
  PRIMARY KEY (set_name, element)
);
`;

// CNI attachments (schema 4): what a runtime's ADD made, keyed as the spec keys it (container id,
// interface name, CNI network name), so DEL and GC find everything from here, never from the
// request. Deleting the ctnet attachment (ctnet rm, network rm --force) drops the record with it.
export const CNI = `
CREATE TABLE cni_attachments (
  container_id TEXT NOT NULL,
  ifname TEXT NOT NULL,
  cni_network TEXT NOT NULL,
  sandbox TEXT NOT NULL,
  network TEXT NOT NULL,
  created TEXT NOT NULL,
  PRIMARY KEY (container_id, ifname, cni_network),
  FOREIGN KEY (sandbox, network) REFERENCES attachments(sandbox, network) ON DELETE CASCADE
);
CREATE INDEX cni_by_sandbox ON cni_attachments(sandbox);
`;

// Drivers (schema 5): a network records the driver that made it (bridge for every earlier one) and
// its device's MAC, so results and gc's rebuild use the recorded value instead of reading (or
// caching) the kernel's.
export const DRIVERS = `
ALTER TABLE networks ADD COLUMN driver TEXT NOT NULL DEFAULT 'bridge';
ALTER TABLE networks ADD COLUMN mac TEXT;
`;

// The change feed (schema 6): one row per committed change of a recorded row, appended by triggers
// in the writer's transaction (src/store/events.ts says which tables and columns, and installs the
// triggers; src/store/feed.ts reads it). AUTOINCREMENT: ids only grow, even past a pruned end, and
// writers serialise (BEGIN IMMEDIATE), so id order is commit order and a reader's cursor is one id.
export const FEED = `
CREATE TABLE events (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  at TEXT NOT NULL,
  kind TEXT NOT NULL,
  action TEXT NOT NULL CHECK (action IN ('created', 'changed', 'removed')),
  key TEXT NOT NULL,
  data TEXT NOT NULL
);
`;

// Host access (schema 7): may a network's sandboxes reach the host's own services? Networks made
// before ctnet closed the host keep the access they had; new ones say (default: closed).
export const HOST_ACCESS = `
ALTER TABLE networks ADD COLUMN host_access INTEGER NOT NULL DEFAULT 1;
`;

// Cluster membership (schema 8): at most one row, this host as a member of an etcd cluster
// (src/cluster/), so ctnetd knows to keep its etcd lease alive and what to register again after
// the lease expired. lease_id is the etcd lease last granted (renewals do not change it; it is not
// in the change feed). cluster_leases: the subnet this host leased per overlay network, kept after
// `cluster leave`, so the host takes the same subnet back (live sandboxes never change subnet).
export const CLUSTER = `
CREATE TABLE cluster_member (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  host TEXT NOT NULL,
  endpoints TEXT NOT NULL,
  underlay TEXT NOT NULL,
  vtep_mac TEXT NOT NULL,
  lease_ttl INTEGER NOT NULL CHECK (lease_ttl > 0),
  lease_id TEXT,
  state TEXT NOT NULL CHECK (state IN ('ready', 'leaving')),
  joined TEXT NOT NULL
);
CREATE TABLE cluster_leases (
  network TEXT PRIMARY KEY,
  subnet TEXT NOT NULL,
  claimed TEXT NOT NULL
);
`;

// Overlays (schema 9): an overlay (vxlan) network's side on this host: its VXLAN device and VTEP
// MAC (fixed, so peers' entries stay right across a rebuild), the overlay's whole subnet (the
// network's subnets row holds this host's lease), this host's underlay; and the peers this host
// has programmed, so gc rebuilds their entries and the tables their known VTEPs without the
// control plane (etcd may be down).
export const OVERLAY = `
CREATE TABLE overlays (
  network TEXT PRIMARY KEY REFERENCES networks(name) ON DELETE CASCADE,
  vni INTEGER NOT NULL UNIQUE CHECK (vni BETWEEN 1 AND 16777215),
  port INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
  device TEXT NOT NULL UNIQUE,
  vtep_mac TEXT NOT NULL,
  cidr TEXT NOT NULL,
  underlay_ip TEXT NOT NULL,
  underlay_dev TEXT NOT NULL
);
CREATE TABLE overlay_peers (
  network TEXT NOT NULL REFERENCES overlays(network) ON DELETE CASCADE,
  host TEXT NOT NULL,
  subnet TEXT NOT NULL,
  underlay TEXT NOT NULL,
  vtep_mac TEXT NOT NULL,
  PRIMARY KEY (network, host)
);
`;

// The sandbox directory's mirror (schema 10): the other hosts' sandboxes on overlay networks, as
// etcd's /ctnet/sandboxes/HOST/NAME holds them (addresses, labels, overlay network names; lists and
// the label object as JSON text), kept by ctnetd's directory service (services/directory.ts), so
// policy selectors and `policy check` cover them without asking etcd. Never this host's own rows.
export const DIRECTORY = `
CREATE TABLE remote_sandboxes (
  host TEXT NOT NULL,
  name TEXT NOT NULL,
  addresses TEXT NOT NULL,
  labels TEXT NOT NULL,
  networks TEXT NOT NULL,
  PRIMARY KEY (host, name)
);
CREATE INDEX remote_sandboxes_by_name ON remote_sandboxes(name);
`;

// Egress and default routes (schema 11, issue 18): the host address a network's (or one sandbox's)
// egress leaves from instead of masquerade's choice, at most one per family; and the network a
// sandbox chose to carry its default routes (else the first non-internal one, records.ts).
export const EGRESS_ROUTES = `
CREATE TABLE network_egress (
  network TEXT NOT NULL REFERENCES networks(name) ON DELETE CASCADE,
  family INTEGER NOT NULL CHECK (family IN (4, 6)),
  ip TEXT NOT NULL,
  PRIMARY KEY (network, family)
);
CREATE TABLE sandbox_egress (
  sandbox TEXT NOT NULL REFERENCES sandboxes(name) ON DELETE CASCADE,
  family INTEGER NOT NULL CHECK (family IN (4, 6)),
  ip TEXT NOT NULL,
  PRIMARY KEY (sandbox, family)
);
CREATE TABLE default_routes (
  sandbox TEXT PRIMARY KEY REFERENCES sandboxes(name) ON DELETE CASCADE,
  network TEXT NOT NULL
);
`;

// The policy index (schema 12): each element of the policy sets with its box and the rule that owns
// it, and each rule's boxes before overlaps are taken out (policy_raw), so a change to one rule or
// one sandbox's labels recomputes only the boxes it touches (model/policy-inc.ts) instead of
// reading and compiling every rule. Source and destination bounds are 32 hex digits (IPv6 fits;
// text compares as the numbers do); wide is 1 for a source range of 2^16 addresses or more: the
// index finds the others by their start (a meeting box starts at most 2^16 before), the wide ones
// are few and always read. meta policy.index = 1 says both tables are complete (written whole by
// a full compile); rows from before schema 12 have none of it, and the next change compiles all.
export const POLICY_INDEX = `
ALTER TABLE policy_elements ADD COLUMN rule INTEGER;
ALTER TABLE policy_elements ADD COLUMN s0 TEXT;
ALTER TABLE policy_elements ADD COLUMN e0 TEXT;
ALTER TABLE policy_elements ADD COLUMN s1 TEXT;
ALTER TABLE policy_elements ADD COLUMN e1 TEXT;
ALTER TABLE policy_elements ADD COLUMN s2 INTEGER;
ALTER TABLE policy_elements ADD COLUMN e2 INTEGER;
ALTER TABLE policy_elements ADD COLUMN s3 INTEGER;
ALTER TABLE policy_elements ADD COLUMN e3 INTEGER;
ALTER TABLE policy_elements ADD COLUMN wide INTEGER;
CREATE INDEX policy_elements_by_src ON policy_elements(set_name, wide, s0);
CREATE INDEX policy_elements_by_rule ON policy_elements(rule, set_name);
CREATE TABLE policy_raw (
  set_name TEXT NOT NULL,
  rule INTEGER NOT NULL,
  s0 TEXT NOT NULL, e0 TEXT NOT NULL, s1 TEXT NOT NULL, e1 TEXT NOT NULL,
  s2 INTEGER NOT NULL, e2 INTEGER NOT NULL, s3 INTEGER NOT NULL, e3 INTEGER NOT NULL,
  wide INTEGER NOT NULL
);
CREATE INDEX policy_raw_by_src ON policy_raw(set_name, wide, s0);
CREATE INDEX policy_raw_by_rule ON policy_raw(rule, set_name);
CREATE INDEX policies_by_from ON policies(from_sel);
CREATE INDEX policies_by_to ON policies(to_sel);
`;

// Topology files (schema 13): which file's `name:` owns each network, sandbox and policy rule it
// made (`ctnet apply`), so `down` and `apply --prune` touch only those and two files share a host;
// objects made by hand have no row and are never pruned. The row goes with its object (the store
// deletes it with the network, sandbox or rule). sandbox_commands: a file's sandbox `command:`,
// as argv JSON, and the process running it (pid:starttime, so a reused pid never counts as alive).
export const TOPOLOGY = `
CREATE TABLE topology_objects (
  kind TEXT NOT NULL CHECK (kind IN ('network', 'sandbox', 'policy')),
  name TEXT NOT NULL,
  topology TEXT NOT NULL,
  file TEXT NOT NULL,
  PRIMARY KEY (kind, name)
);
CREATE INDEX topology_objects_by_topology ON topology_objects(topology);
CREATE TABLE sandbox_commands (
  sandbox TEXT PRIMARY KEY REFERENCES sandboxes(name) ON DELETE CASCADE,
  argv TEXT NOT NULL,
  process TEXT
);
`;

// Shaping (schema 14): the rates, buckets, delay and loss asked for one attachment (src/model/shape.ts;
// rates in bits per second, bursts in bytes), what its host veth's qdiscs (and ifb) were made from,
// so inspect reads it back, `ctnet shape` changes it from what it was, and detach removes the ifb.
// No row: not shaped. It goes with its attachment.
export const SHAPING = `
CREATE TABLE shaping (
  sandbox TEXT NOT NULL,
  network TEXT NOT NULL,
  rate_in INTEGER,
  rate_out INTEGER,
  burst_in INTEGER,
  burst_out INTEGER,
  latency_ms INTEGER,
  loss_pct REAL,
  PRIMARY KEY (sandbox, network),
  FOREIGN KEY (sandbox, network) REFERENCES attachments(sandbox, network) ON DELETE CASCADE
);
`;

// Lower devices (schema 15): a macvlan or ipvlan network's parent interface, mode, and host shim
// (src/drivers/lower/), as JSON ({kind, parent, mode, hostShim, shimIp}); null for every other driver.
export const LOWER = `
ALTER TABLE networks ADD COLUMN lower TEXT;
`;

// The policy index by width class (schema 16): schema 12 split source ranges into narrow and wide
// (2^16 addresses) and found a narrow box by its start within 2^16 before a range; with dense /32
// rules (10.128.0.0 and up) that window held every rule, and each lookup read the whole set.
// wclass is the bit length of the source range's width (0 for one address, 8 for a /24, 32 for
// the whole of IPv4): a box of class c that meets a range starts at most 2^c before it, so the
// index on (set, class, start) finds the boxes meeting a range with one tight range scan per class
// present. The old column's values mean something else: the index is marked incomplete, and the
// next change compiles every rule and writes it again.
export const POLICY_INDEX_CLASSES = `
DROP INDEX policy_elements_by_src;
DROP INDEX policy_raw_by_src;
ALTER TABLE policy_elements RENAME COLUMN wide TO wclass;
ALTER TABLE policy_raw RENAME COLUMN wide TO wclass;
CREATE INDEX policy_elements_by_src ON policy_elements(set_name, wclass, s0);
CREATE INDEX policy_raw_by_src ON policy_raw(set_name, wclass, s0);
DELETE FROM meta WHERE key = 'policy.index';
`;

// Names (schema 17): ctnetd's DNS server (services/dns/). dns: whether it answers on the network's
// gateways (networks made before keep what they had: none); dns_forward: the upstreams for names
// that are not the network's own (comma-separated addresses; null: the host's resolvers). aliases:
// more names of a sandbox on one network (--alias), several sandboxes may share one (round robin);
// they go with the attachment.
export const NAMES = `
ALTER TABLE networks ADD COLUMN dns INTEGER NOT NULL DEFAULT 0;
ALTER TABLE networks ADD COLUMN dns_forward TEXT;
CREATE TABLE aliases (
  sandbox TEXT NOT NULL,
  network TEXT NOT NULL,
  alias TEXT NOT NULL,
  PRIMARY KEY (network, alias, sandbox),
  FOREIGN KEY (sandbox, network) REFERENCES attachments(sandbox, network) ON DELETE CASCADE
);
CREATE INDEX aliases_by_sandbox ON aliases(sandbox, network);
`;

// Services (schema 18, issue 17): a virtual address (VIP) on a network, one protocol and port,
// balanced over the sandboxes a label selects. The VIP is taken from the network's subnet like a
// sandbox's address (ipam's holder test reads this table too), so it is never handed out twice.
// backends: the addresses the kernel's service chain holds now (JSON, sorted), so a change sends
// only what differs and the connections of a backend that left can be cut.
export const SERVICES = `
CREATE TABLE services (
  name TEXT PRIMARY KEY,
  network TEXT NOT NULL REFERENCES networks(name),
  vip TEXT NOT NULL UNIQUE,
  cidr TEXT NOT NULL,
  proto TEXT NOT NULL CHECK (proto IN ('tcp', 'udp')),
  port INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
  selector_key TEXT NOT NULL,
  selector_value TEXT NOT NULL,
  target_port INTEGER NOT NULL CHECK (target_port BETWEEN 1 AND 65535),
  affinity TEXT NOT NULL CHECK (affinity IN ('none', 'client-ip')),
  backends TEXT NOT NULL DEFAULT '[]',
  created TEXT NOT NULL
);
CREATE INDEX services_by_network ON services(network);
`;

// Aliases across hosts (schema 19, issue 15): other hosts' sandboxes' aliases on overlay networks,
// from the directory (JSON: network -> aliases), so an alias answers on every host's DNS.
export const REMOTE_ALIASES = `
ALTER TABLE remote_sandboxes ADD COLUMN aliases TEXT NOT NULL DEFAULT '{}';
`;

// Published services (schema 20, issue 17): `service create --publish [HOST_IP:]HOST_PORT`, the host
// address (0.0.0.0: every IPv4 address) and port the world reaches the service on; null: not
// published. A sandbox's -p and a service's --publish never claim the same host port (engine checks).
export const SERVICE_PUBLISH = `
ALTER TABLE services ADD COLUMN publish_ip TEXT;
ALTER TABLE services ADD COLUMN publish_port INTEGER CHECK (publish_port BETWEEN 1 AND 65535);
`;

// Health checks of services (schema 21, issue 17): `--check tcp|http:PATH` and its interval, probed
// by ctnetd (services/health.ts); unready: the backend addresses the checks took out of the rule
// (JSON, sorted), so the rule, gc and `service ls` agree on them, also across a ctnetd restart.
export const SERVICE_CHECKS = `
ALTER TABLE services ADD COLUMN check_kind TEXT CHECK (check_kind IN ('tcp', 'http'));
ALTER TABLE services ADD COLUMN check_path TEXT;
ALTER TABLE services ADD COLUMN check_interval_ms INTEGER;
ALTER TABLE services ADD COLUMN unready TEXT NOT NULL DEFAULT '[]';
`;

// Services in topology files (schema 22, issue 19): topology_objects takes kind 'service'. SQLite
// cannot change a CHECK constraint, so the table is made again with its rows.
export const TOPOLOGY_SERVICES = `
CREATE TABLE topology_objects_next (
  kind TEXT NOT NULL CHECK (kind IN ('network', 'sandbox', 'policy', 'service')),
  name TEXT NOT NULL,
  topology TEXT NOT NULL,
  file TEXT NOT NULL,
  PRIMARY KEY (kind, name)
);
INSERT INTO topology_objects_next(kind, name, topology, file) SELECT kind, name, topology, file FROM topology_objects;
DROP TABLE topology_objects;
ALTER TABLE topology_objects_next RENAME TO topology_objects;
CREATE INDEX topology_objects_by_topology ON topology_objects(topology);
`;

// Services on overlay networks (schema 23, issue 17): a service another host owns, mirrored from etcd
// (/ctnet/services/NAME) so this host balances its VIP over the selected sandboxes of every host;
// owner_host: that host's name (null: this host's own service, recorded here first).
export const SERVICE_OWNER = `
ALTER TABLE services ADD COLUMN owner_host TEXT;
`;

// IPv6 VIPs (schema 24, issue 17): a service on a dual-stack network has a VIP of each family;
// vip6 null: IPv4 only. backends holds both families' addresses (IPv4 first). SQLite cannot add a
// UNIQUE column: the index makes it one (nulls are never equal).
export const SERVICE_VIP6 = `
ALTER TABLE services ADD COLUMN vip6 TEXT;
CREATE UNIQUE INDEX services_by_vip6 ON services(vip6);
`;

// A service being made or removed (schema 25, issue 17): state 'creating' from `service create`'s
// store transaction until its chain is there, 'removing' from before `service rm` deletes its chain
// until its record goes; owner: that process (its token, as for networks and sandboxes). Others
// (ctnetd's health checks, syncServices from another command) leave its rule alone meanwhile,
// ctnetd's table guard waits for that process rather than put back or take away a chain, and gc
// finishes either if the process died.
export const SERVICE_STATE = `
ALTER TABLE services ADD COLUMN state TEXT NOT NULL DEFAULT 'ready' CHECK (state IN ('creating', 'ready', 'removing'));
ALTER TABLE services ADD COLUMN owner TEXT;
`;

/** Schema N is SCHEMA plus MIGRATIONS[2..N]; a store at version V runs V+1..N on open. */
export const MIGRATIONS: Record<number, string> = {
  2: PORTS,
  3: POLICY,
  4: CNI,
  5: DRIVERS,
  6: FEED,
  7: HOST_ACCESS,
  8: CLUSTER,
  9: OVERLAY,
  10: DIRECTORY,
  11: EGRESS_ROUTES,
  12: POLICY_INDEX,
  13: TOPOLOGY,
  14: SHAPING,
  15: LOWER,
  16: POLICY_INDEX_CLASSES,
  17: NAMES,
  18: SERVICES,
  19: REMOTE_ALIASES,
  20: SERVICE_PUBLISH,
  21: SERVICE_CHECKS,
  22: TOPOLOGY_SERVICES,
  23: SERVICE_OWNER,
  24: SERVICE_VIP6,
  25: SERVICE_STATE,
};
