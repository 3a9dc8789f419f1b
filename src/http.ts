// node:http through require, not `import`: an ESM import of node:http copies every export into the
// module's namespace, and that reads the lazy WebSocket/MessageEvent getters, which load undici
// (~200 ms of every ctnet command's start, ctnetd's or not, in Node 24).
import { createRequire } from 'node:module';

export const http = createRequire(import.meta.url)('node:http') as typeof import('node:http');
