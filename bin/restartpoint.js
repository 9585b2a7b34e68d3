#!/usr/bin/env node
// Entry point of the `restartpoint` command: runs the compiled CLI.
import { main } from '../dist/src/cli/main.js';

process.exitCode = await main(process.argv.slice(2));
