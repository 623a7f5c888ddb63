#!/usr/bin/env node
// Entry point of `labhost` (npm run labhost, and the bundled single executable).
import { main } from './main.ts'

main(process.argv.slice(2)).then((code) => {
  process.exitCode = code
})
