// The node's page: reads the node's JSON endpoints every few seconds and draws them. No library, nothing fetched
// from anywhere but this node. Values from the node are put in the page as text, never as HTML.
'use strict';

const REFRESH_MS = 5000;
const SOURCES = ['local', 'peer', 'seed'];
const SVG = 'http://www.w3.org/2000/svg';

const $ = (id) => document.getElementById(id);

function bytes(n) {
  if (n === undefined || n === null || Number.isNaN(n)) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = Number(n);
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? Math.round(v) : v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0)} ${units[i]}`;
}

function ago(ms) {
  if (!ms) return '–';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

function duration(s) {
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  return d > 0 ? `${d}d ${h}h` : h > 0 ? `${h}h ${m}m` : `${m}m`;
}

/** `/ip4/10.0.0.5/tcp/4001/p2p/...` -> `10.0.0.5:4001`; other addresses as they are. */
function hostPort(addr) {
  if (!addr) return '';
  const m = /^\/ip([46])\/([^/]+)\/tcp\/(\d+)/.exec(addr);
  if (!m) return addr.replace(/\/p2p\/.*$/, '');
  return m[1] === '6' ? `[${m[2]}]:${m[3]}` : `${m[2]}:${m[3]}`;
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== undefined && c !== null) e.append(c);
  return e;
}

function cell(label, content, cls) {
  const td = el('td', { 'data-label': label, class: cls });
  if (content instanceof Node) td.append(content);
  else td.textContent = content === undefined || content === null || content === '' ? '–' : String(content);
  return td;
}

function fill(tableId, rows, columns, emptyText) {
  const body = $(tableId).tBodies[0];
  const fresh = document.createElement('tbody');
  if (rows.length === 0) fresh.append(el('tr', {}, el('td', { colspan: String(columns), class: 'empty', text: emptyText })));
  for (const r of rows) fresh.append(r);
  body.replaceWith(fresh);
}

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function getJson(path) {
  const res = await fetch(path, { headers: { accept: 'application/json' }, cache: 'no-store' });
  if (!res.ok) {
    let message = `${res.status} ${res.statusText}`;
    try {
      const body = await res.json();
      if (body.errors && body.errors[0]) message = `${body.errors[0].code}: ${body.errors[0].message}`;
    } catch {
      // not JSON
    }
    throw new HttpError(res.status, message);
  }
  return res.json();
}

function meter(id, fraction, warnAt, badAt) {
  const bar = $(id);
  const f = Math.max(0, Math.min(1, fraction || 0));
  bar.style.width = `${(f * 100).toFixed(1)}%`;
  bar.className = f >= badAt ? 'bad' : f >= warnAt ? 'warn' : '';
}

function drawStatus(s) {
  const q = s.quota || {};
  const stored = s.store ? s.store.bytes : q.storedBytes;
  $('node').textContent = `version ${s.version} · up ${duration(s.uptimeSeconds)} · ${s.dataDir}`;
  $('disk-used').textContent = bytes(stored);
  if (q.maxStore > 0) {
    $('disk-quota').textContent = `of a ${bytes(q.maxStore)} quota (${Math.round((stored / q.maxStore) * 100)}%) · ${s.store.blobs} blobs`;
    meter('disk-meter', stored / q.maxStore, 0.8, 0.95);
  } else {
    $('disk-quota').textContent = `no quota · ${s.store ? s.store.blobs : 0} blobs`;
    meter('disk-meter', 0, 1, 1);
  }
  if (q.totalBytes) {
    $('disk-free').textContent = `${bytes(q.freeBytes)} free`;
    const marks = [`of ${bytes(q.totalBytes)}`];
    if (q.minFreeBytes !== undefined) marks.push(`keeps ${bytes(q.minFreeBytes)} free`);
    $('disk-marks').textContent = marks.join(' · ');
    const used = 1 - q.freeBytes / q.totalBytes;
    const badAt = q.minFreeBytes !== undefined ? 1 - q.minFreeBytes / q.totalBytes : 0.95;
    meter('free-meter', used, Math.min(0.85, badAt), badAt);
  } else {
    $('disk-free').textContent = 'unknown';
    $('disk-marks').textContent = '–';
  }
  $('pin-count').textContent = `${s.pins} pinned, holding ${bytes(q.pinnedBytes)}${q.pinsOverQuota ? ' — more than the quota!' : ''}`;
}

function drawPeers(p) {
  if (!p.enabled) {
    $('peer-count').textContent = 'off';
    $('peer-sub').textContent = 'this node runs without peers';
    fill('peers', [], 9, 'this node runs without peers (start it with --p2p-listen and --cluster-key)');
    return;
  }
  const connected = p.peers.filter((x) => x.connected);
  const banned = p.peers.filter((x) => x.bannedUntil);
  $('peer-count').textContent = String(connected.length);
  $('peer-sub').textContent = `connected${banned.length ? ` · ${banned.length} banned` : ''} · self …${(p.self || '').slice(-8)}`;
  const rows = p.peers.map((x) => {
    const state = x.bannedUntil
      ? el('span', { class: 'pill banned', title: x.ban ? x.ban.detail : '', text: `banned: ${x.ban ? x.ban.reason : 'ban'} until ${new Date(x.bannedUntil).toLocaleTimeString()}` })
      : x.dataPortUnreachableUntil
        ? el('span', { class: 'pill ok', title: 'its data port cannot be reached from this node: chunks come over the peer connection', text: `ok · data port unreachable until ${new Date(x.dataPortUnreachableUntil).toLocaleTimeString()}` })
        : el('span', { class: 'pill ok', text: 'ok' });
    return el(
      'tr',
      {},
      cell('Peer', el('span', { class: 'mono', title: x.id, text: `…${x.id.slice(-12)}` })),
      cell('Address', hostPort(x.addresses[0])),
      cell('Zone', x.zone),
      cell('RTT', x.rttMs === undefined ? '–' : `${x.rttMs} ms`, 'num'),
      cell('Throughput', x.throughput === undefined ? '–' : `${bytes(x.throughput)}/s`, 'num'),
      cell('Received', bytes(x.bytesIn), 'num'),
      cell('Sent', bytes(x.bytesOut), 'num'),
      cell('Blobs', String(x.blobs), 'num'),
      cell('State', state),
    );
  });
  fill('peers', rows, 9, 'no peers connected yet');
}

let lastImages = [];

async function setPin(image, pin, button) {
  button.disabled = true;
  const path = `/shoal/pins/${image.repository}@${image.digest}` + (pin ? `?reason=${encodeURIComponent("pinned on the node's page")}` : '');
  try {
    const res = await fetch(path, { method: pin ? 'PUT' : 'DELETE' });
    if (!res.ok) {
      let message = `${res.status}`;
      try {
        const body = await res.json();
        if (body.errors && body.errors[0]) message = body.errors[0].message;
      } catch {
        // not JSON
      }
      notice(`${pin ? 'pin' : 'unpin'} of ${image.repository} failed: ${message}`);
    }
  } finally {
    await refresh();
  }
}

function drawImages() {
  const filter = $('filter').value.trim().toLowerCase();
  const shown = lastImages.filter((i) => !filter || i.repository.toLowerCase().includes(filter) || i.tags.some((t) => t.toLowerCase().includes(filter)));
  const rows = shown.map((i) => {
    const tags = el('span');
    if (i.tags.length === 0) tags.textContent = '–';
    for (const t of i.tags) tags.append(el('span', { class: 'tag', text: t }));
    const pin = el('span');
    if (i.pinned) pin.append(el('span', { class: 'pill pinned', title: i.pinReason || '', text: 'pinned' }));
    else pin.textContent = '–';
    if (i.missingBlobs > 0) pin.append(' ', el('span', { class: 'pill missing', text: `${i.missingBlobs} missing` }));
    const actions = el('td', { class: 'actions', 'data-label': '' });
    if (i.canPin) {
      const b = el('button', { class: 'pin', type: 'button', text: i.pinned ? 'Unpin' : 'Pin', 'data-digest': i.digest });
      b.addEventListener('click', () => void setPin(i, !i.pinned, b));
      actions.append(b);
    }
    return el(
      'tr',
      {},
      cell('Repository', i.repository),
      cell('Tags', tags),
      cell('Digest', el('span', { class: 'mono', title: i.digest, text: i.digest.replace(/^sha256:/, '').slice(0, 12) })),
      cell('Size', bytes(i.size), 'num'),
      cell('Platforms', i.platforms.join(', ')),
      cell('Pin', pin),
      cell('Last pulled', ago(i.lastPulled)),
      actions,
    );
  });
  fill('images', rows, 8, lastImages.length === 0 ? 'no images on this node yet' : 'no image matches the filter');
  $('image-count').textContent = String(lastImages.length);
}

let lastTraffic;

function drawChart(t) {
  lastTraffic = t;
  const box = $('chart');
  // Drawn at the box's own size in pixels, so that the labels keep their shape on any screen.
  const width = Math.max(240, Math.round(box.clientWidth || 600));
  const height = width < 500 ? 150 : 190;
  const pad = { left: 62, right: 8, top: 10, bottom: 22 };
  const minutes = t.minutes;
  const totals = minutes.map((m) => m.local + m.peer + m.seed);
  const max = Math.max(1, ...totals);
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('width', String(width));
  svg.setAttribute('height', String(height));
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const slot = plotW / minutes.length;
  const line = (x1, y1, x2, y2) => {
    const l = document.createElementNS(SVG, 'line');
    l.setAttribute('x1', x1);
    l.setAttribute('y1', y1);
    l.setAttribute('x2', x2);
    l.setAttribute('y2', y2);
    l.setAttribute('class', 'axis');
    return l;
  };
  const text = (x, y, s, anchor) => {
    const e = document.createElementNS(SVG, 'text');
    e.setAttribute('x', x);
    e.setAttribute('y', y);
    e.setAttribute('class', 'tick');
    e.setAttribute('text-anchor', anchor);
    e.textContent = s;
    return e;
  };
  const empty = totals.every((n) => n === 0);
  for (const f of empty ? [0] : [0, 0.5, 1]) {
    const y = pad.top + plotH * (1 - f);
    svg.append(line(pad.left, y, width - pad.right, y));
    svg.append(text(pad.left - 4, y + 3, bytes(max * f), 'end'));
  }
  if (empty) svg.append(text(pad.left + plotW / 2, pad.top + plotH / 2, 'no blob bytes served in the last hour', 'middle'));
  minutes.forEach((m, i) => {
    let y = pad.top + plotH;
    for (const s of SOURCES) {
      if (!m[s]) continue;
      const h = Math.max(1, (m[s] / max) * plotH);
      y -= h;
      const r = document.createElementNS(SVG, 'rect');
      r.setAttribute('x', (pad.left + i * slot + slot * 0.1).toFixed(2));
      r.setAttribute('y', y.toFixed(2));
      r.setAttribute('width', (slot * 0.8).toFixed(2));
      r.setAttribute('height', h.toFixed(2));
      r.setAttribute('class', `bar ${s}`);
      const title = document.createElementNS(SVG, 'title');
      title.textContent = `${new Date(m.start).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })}: ${bytes(m[s])} from ${s}`;
      r.append(title);
      svg.append(r);
    }
  });
  const labelAt = (i, anchor) => svg.append(text(pad.left + i * slot + slot / 2, height - 5, new Date(minutes[i].start).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }), anchor));
  if (minutes.length > 0) {
    labelAt(0, 'start');
    labelAt(Math.floor(minutes.length / 2), 'middle');
    labelAt(minutes.length - 1, 'end');
  }
  box.replaceChildren(svg);
  for (const s of SOURCES) $(`total-${s}`).textContent = bytes(t.totals[s]);
}

function drawPulls(t) {
  const rows = t.recentPulls.map((p) =>
    el(
      'tr',
      {},
      cell('When', ago(p.at)),
      cell('Repository', p.repository),
      cell('Blob', el('span', { class: 'mono', title: p.digest, text: p.digest.replace(/^sha256:/, '').slice(0, 12) })),
      cell('Bytes', bytes(p.bytes) + (p.complete ? '' : ' (cut)'), 'num'),
      cell('Source', el('span', { class: `pill ${p.source.replace('+', '-')}`, text: p.source === 'peer+seed' ? 'peers + seed' : p.source === 'peer' ? 'peers' : p.source })),
    ),
  );
  fill('pulls', rows, 5, 'no pulls since the node started');
}

function notice(message) {
  const n = $('notice');
  if (!message) {
    n.hidden = true;
    n.textContent = '';
    return;
  }
  n.hidden = false;
  n.textContent = message;
}

let running = false;

async function refresh() {
  if (running) return;
  running = true;
  try {
    const [status, peers, images, traffic] = await Promise.all([getJson('/shoal/status'), getJson('/shoal/peers'), getJson('/shoal/images'), getJson('/shoal/traffic')]);
    drawStatus(status);
    drawPeers(peers);
    lastImages = images.images;
    drawImages();
    drawChart(traffic);
    drawPulls(traffic);
    notice('');
    $('updated').textContent = `updated ${new Date().toLocaleTimeString()}`;
    $('updated').classList.remove('stale');
  } catch (err) {
    if (err instanceof HttpError && (err.status === 401 || err.status === 403)) notice(`This page needs a user with the admin role on this node (${err.message}).`);
    else notice(`Cannot read the node: ${err.message}`);
    $('updated').classList.add('stale');
  } finally {
    running = false;
  }
}

document.addEventListener('DOMContentLoaded', () => {
  $('filter').addEventListener('input', drawImages);
  let resizing;
  window.addEventListener('resize', () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => lastTraffic && drawChart(lastTraffic), 150);
  });
  void refresh();
  setInterval(() => {
    if (!document.hidden) void refresh();
  }, REFRESH_MS);
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden) void refresh();
  });
});
