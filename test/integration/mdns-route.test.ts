/**
 * mDNS on a host without a route for multicast: the node says so, once, at start (it used to stay silent, and
 * mDNS found nobody). Two `shoal serve --mdns` processes, each in its own network namespace on one bridge; one
 * namespace has a 224.0.0.0/4 route, the other has none (a fresh namespace has no default route either).
 *
 * Needs root (ip netns, veth, bridge). When namespaces are not permitted the test fails and says so.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeClusterKey } from '../../src/p2p/keys.ts';
import { NetnsLab, type NsProcess } from '../helpers/netns.ts';
import { SHOAL_BIN } from '../helpers/spawn-node.ts';

const SUBNET = '10.233.9';

function nodeEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('SHOAL_') && k !== 'NODE_TEST_CONTEXT') env[k] = v;
  return env;
}

describe('mDNS without a multicast route', { concurrency: 1 }, () => {
  const lab = new NetnsLab('shmdns');
  let work = '';
  let key = '';

  before(async () => {
    await lab.checkPermitted();
    await lab.removeLeftovers();
    await lab.createBridge();
    work = await mkdtemp(join(tmpdir(), 'shoal-mdns-'));
    key = join(work, 'cluster.key');
    await writeClusterKey(key);
  });

  after(async () => {
    await lab.cleanup();
    if (work) await rm(work, { recursive: true, force: true });
  });

  function serve(ns: string, ip: string, name: string): NsProcess {
    return lab.spawn(
      ns,
      process.execPath,
      [SHOAL_BIN, 'serve', '--data', join(work, name), '--listen', `${ip}:5000`, '--p2p-listen', `${ip}:5001`, '--cluster-key', key, '--mdns'],
      nodeEnv(),
    );
  }

  it('warns at start, naming the missing route and what to do', async () => {
    const ns = await lab.addHost('bare', `${SUBNET}.11/24`);
    const p = serve(ns, `${SUBNET}.11`, 'bare');
    const warn = await p.waitForLog((l) => l.level === 40 && /multicast/.test(String(l.msg)), 60_000);
    assert.match(String(warn.msg), /no route for multicast/);
    assert.match(String(warn.msg), /ip route add 224\.0\.0\.0\/4/);
    assert.match(String(warn.msg), /--peer/);
    assert.equal(warn.error, 'ENETUNREACH');
    await p.waitForLog((l) => l.msg === 'listening', 60_000);
  });

  it('says nothing of the kind where multicast has a route', async () => {
    const ns = await lab.addHost('routed', `${SUBNET}.12/24`);
    await lab.exec(ns, 'ip', ['route', 'add', '224.0.0.0/4', 'dev', 'eth0']);
    const p = serve(ns, `${SUBNET}.12`, 'routed');
    // The check runs before the registry listens: once `listening` is logged, a warning would be in already.
    await p.waitForLog((l) => l.msg === 'listening', 60_000);
    assert.deepEqual(p.logs.filter((l) => /multicast/.test(String(l.msg))), []);
  });
});
