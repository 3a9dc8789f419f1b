// Names users give to networks and sandboxes, and interface names. Parsed once at the boundary so
// nothing unsafe ever reaches an `ip`/`nft` argument or a file name.
import { invalid } from '../errors.ts';

export const NAME_MAX = 48;
const NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;

/** A network or sandbox name: letters, digits, '_', '.', '-'; starts with a letter or digit. */
export function parseName(what: string, value: string): string {
  if (value === '') throw invalid(`${what} name is empty`, `give a name such as "web1"`);
  if (value.length > NAME_MAX) {
    throw invalid(`${what} name "${value.slice(0, 20)}…" is ${value.length} characters long; the limit is ${NAME_MAX}`);
  }
  if (!NAME.test(value)) {
    throw invalid(`${what} name ${JSON.stringify(value)} has characters that are not allowed`,
      `use letters, digits, "_", "." and "-", starting with a letter or digit`);
  }
  return value;
}

export const IFNAME_MAX = 15;
const IFNAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;

/** A Linux interface name: at most 15 characters, none of '/', ':', whitespace. */
export function parseIfname(what: string, value: string): string {
  if (value === '' || value.length > IFNAME_MAX || !IFNAME.test(value)) {
    throw invalid(`${what} ${JSON.stringify(value)} is not a valid interface name`,
      `use 1 to ${IFNAME_MAX} letters, digits, "_", "." or "-", starting with a letter or digit`);
  }
  return value;
}

const DNS_LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

/**
 * A DNS label (RFC 1123 host name label): 1 to 63 letters, digits and '-', not starting or ending
 * with '-'. Stored lower-case: DNS names compare without case.
 */
export function parseDnsLabel(what: string, value: string): string {
  const v = value.toLowerCase();
  if (!DNS_LABEL.test(v)) {
    throw invalid(`${what} ${JSON.stringify(value)} is not a valid DNS label`,
      'use 1 to 63 letters, digits and "-", starting and ending with a letter or digit');
  }
  return v;
}
