/**
 * `metricsListen` (--metrics-listen): /metrics, /healthz and /readyz on a second address, so that Prometheus
 * and probes reach a node whose registry listens on loopback only (the DaemonSet's setup). The CLI spawned.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ShoalProcesses, type ShoalProcess } from '../helpers/spawn-node.ts';

describe('shoal serve --metrics-listen', () => {
  const procs = new ShoalProcesses();
  let node: ShoalProcess | undefined;
  let ops = '';

  before(async () => {
    node = await procs.serve({ dataDir: await procs.tempDir(), args: ['--metrics-listen', '127.0.0.1:0'] });
    const line = node.logs.find((l) => l.msg === 'listening')!;
    ops = String(line.metricsUrl);
    assert.match(ops, /^http:\/\/127\.0\.0\.1:\d+$/, 'the listening line names the second address');
    assert.notEqual(ops, node.url);
  });

  after(() => procs.cleanup());

  it('serves the metrics and both health endpoints there', async () => {
    const m = await fetch(`${ops}/metrics`);
    assert.equal(m.status, 200);
    assert.match(await m.text(), /^# HELP shoal_/m);
    for (const path of ['/healthz', '/readyz']) {
      const r = await fetch(`${ops}${path}`);
      assert.equal(r.status, 200, path);
      await r.arrayBuffer();
    }
  });

  it('serves nothing else: the registry API is a 404 there, and still answers on its own address', async () => {
    for (const [method, path] of [['GET', '/v2/'], ['GET', '/v2/team/app/tags/list'], ['POST', '/metrics'], ['GET', '/shoal/status']] as const) {
      const r = await fetch(`${ops}${path}`, { method });
      assert.equal(r.status, 404, `${method} ${path}`);
      const body = (await r.json()) as { errors: Array<{ code: string; message: string }> };
      assert.match(body.errors[0]!.message, /serves only GET \/metrics/);
    }
    assert.equal((await fetch(`${node!.url}/v2/`)).status, 200);
  });

  it('a bad address is a usage error naming the setting', async () => {
    const p = procs.spawn(['serve', '--data', await procs.tempDir(), '--listen', '127.0.0.1:0', '--metrics-listen', 'nope']);
    const exit = await p.waitExit();
    assert.equal(exit.code, 2, p.stderr);
    assert.match(p.stderr, /metricsListen: "nope" is not HOST:PORT/);
  });
});
