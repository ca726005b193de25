// Summarises V8 .cpuprofile files: the share of samples by function (self time) and by file/module.
//   node bench/profile-summary.mjs <file.cpuprofile>... [--top N]
import { readFileSync } from 'node:fs';

const args = process.argv.slice(2);
const topAt = args.indexOf('--top');
const top = topAt >= 0 ? Number(args[topAt + 1]) : 25;
const files = args.filter((a, i) => !a.startsWith('--') && (topAt < 0 || i !== topAt + 1));
for (const file of files) {
  const p = JSON.parse(readFileSync(file, 'utf8'));
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const counts = new Map();
  for (const s of p.samples) counts.set(s, (counts.get(s) ?? 0) + 1);
  const fn = new Map();
  const mod = new Map();
  let total = 0;
  let idle = 0;
  for (const [id, c] of counts) {
    const n = byId.get(id);
    const cf = n.callFrame;
    total += c;
    if (cf.functionName === '(idle)') idle += c;
    const url = cf.url.replace(/^file:\/\//, '').replace(/.*node_modules\//, 'nm/').replace(/.*\/wt\/[^/]+\//, '');
    const key = `${cf.functionName || '(anon)'} ${url}:${cf.lineNumber}`;
    fn.set(key, (fn.get(key) ?? 0) + c);
    const m = url.startsWith('nm/') ? url.split('/').slice(0, url.startsWith('nm/@') ? 3 : 2).join('/') : url || cf.functionName;
    mod.set(m, (mod.get(m) ?? 0) + c);
  }
  const busy = total - idle;
  const pct = (c) => ((100 * c) / busy).toFixed(1).padStart(5);
  console.log(`\n${file}: ${total} samples, ${((100 * idle) / total).toFixed(1)}% idle; shares of busy samples:`);
  console.log(' by module:');
  for (const [k, c] of [...mod].filter(([k]) => k !== '(idle)').sort((a, b) => b[1] - a[1]).slice(0, 12)) console.log(`  ${pct(c)}%  ${k}`);
  console.log(' by function (self):');
  for (const [k, c] of [...fn].filter(([k]) => !k.startsWith('(idle)')).sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`  ${pct(c)}%  ${k}`);
}
