/** src/p2p/keys.ts: the two forms of a cluster key file, and the message for anything else. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { parseClusterKey } from '../../src/p2p/keys.ts';

const HEX = '79ca4d5b138a90fd4680c03315c57fcaf5dcd889940eaa03215f7cdc24b386a2';

describe('cluster key files', () => {
  it('reads the private-network format and the 64 hex characters alone as the same 32 bytes', () => {
    const psk = parseClusterKey(`/key/swarm/psk/1.0.0/\n/base16/\n${HEX}\n`);
    const hex = parseClusterKey(`${HEX}\n`);
    assert.ok(psk && hex);
    assert.equal(psk.length, 32);
    assert.deepEqual(Buffer.from(hex), Buffer.from(psk));
    assert.deepEqual(Buffer.from(parseClusterKey(`  ${HEX.toUpperCase()}\r\n`)!), Buffer.from(psk), 'upper case, spaces and CRLF as pasted');
  });

  it('refuses anything else', () => {
    for (const text of ['', HEX.slice(2), `${HEX}00`, `0x${HEX}`, `/key/swarm/psk/1.0.0/\n/base64/\n${HEX}\n`, `${HEX}\n${HEX}\n`, 'z'.repeat(64)]) {
      assert.equal(parseClusterKey(text), undefined, JSON.stringify(text));
    }
  });
});
