// Preloaded into a node under benchmark (NODE_OPTIONS=--import=<this>) when BENCH_PROFILE_DIR is set: a V8 CPU
// profile of the whole run, written at exit (NODE_OPTIONS does not allow --cpu-prof itself).
import { Session } from 'node:inspector';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

const dir = process.env.BENCH_PROFILE_DIR;
if (dir) {
  const session = new Session();
  session.connect();
  session.post('Profiler.enable');
  session.post('Profiler.setSamplingInterval', { interval: 500 });
  session.post('Profiler.start');
  process.on('exit', () => {
    // An in-thread session answers synchronously.
    session.post('Profiler.stop', (err, res) => {
      if (!err) writeFileSync(join(dir, `node-${process.pid}.cpuprofile`), JSON.stringify(res.profile));
    });
  });
}
