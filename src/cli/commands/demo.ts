import { defineCommand } from '../command.ts';
import { runDemo } from '../demo.ts';

export default defineCommand({
  name: 'demo',
  summary: 'build a lab of its own, prove connectivity, print a matrix, clean up',
  needsCtx: false,
  globalOptions: false,
  async run() {
    return runDemo();
  },
});
