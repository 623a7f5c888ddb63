// The version of labhost itself: what `labhost --version` prints and every report records
// (install reports, update results, status). It is package.json's version; a unit test
// (lib/test/labhost-version.unit.test.ts) fails when the two differ.
export const LABHOST_VERSION = '0.1.0'
