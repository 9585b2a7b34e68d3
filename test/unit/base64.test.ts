/** The sidecar's strict base64 check: the same verdicts as the RFC 4648 regex it replaced. */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decodeBase64Strict } from '../../src/sidecar/api.js';

const RFC4648 = /^[A-Za-z0-9+/]*={0,2}$/;
const reference = (v: string): boolean => v.length % 4 === 0 && RFC4648.test(v);

describe('decodeBase64Strict', () => {
  it('accepts exactly what the RFC 4648 regex accepts, and decodes it as Buffer does', () => {
    // An alphabet dense in the characters that Node's lenient decoder skips or accepts.
    const ch = fc.constantFrom(...'AQgw+/=-_! \n\t.*'.split(''));
    fc.assert(
      fc.property(
        fc.array(ch, { maxLength: 24 }).map((a) => a.join('')),
        (v) => {
          const got = decodeBase64Strict(v);
          expect(got !== undefined).toBe(reference(v));
          if (got) expect(got.equals(Buffer.from(v, 'base64'))).toBe(true);
        },
      ),
      { numRuns: 20_000 },
    );
  });

  it('round-trips any bytes', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
        expect(decodeBase64Strict(Buffer.from(bytes).toString('base64'))).toEqual(Buffer.from(bytes));
      }),
    );
  });

  it.each(['Q===', '====', 'QU=D', 'QUJ-', 'QUJ_', 'QUJD\n', 'QU JD', 'QUI=QUI=', 'QUJ'])(
    'refuses %j',
    (v) => {
      expect(decodeBase64Strict(v)).toBeUndefined();
    },
  );
});
