// The network drivers ctnet knows, by the name a network records. A new driver goes here.
import { CtnetError } from '../errors.ts';
import { bridgeDriver } from './bridge/bridge.ts';
import type { NetworkDriver } from './driver.ts';
import { ipvlanDriver, macvlanDriver } from './lower/lower.ts';
import { vxlanDriver } from './vxlan/vxlan.ts';

const DRIVERS: ReadonlyMap<string, NetworkDriver> = new Map([bridgeDriver, vxlanDriver, macvlanDriver, ipvlanDriver].map((d) => [d.name, d]));

export function driverFor(name: string): NetworkDriver {
  const d = DRIVERS.get(name);
  if (!d) throw new CtnetError('STATE', `network driver ${name} is not known to this ctnet`, 'upgrade ctnet to the version that made this network');
  return d;
}
