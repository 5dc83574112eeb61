// hydromesh dashboard: plain JavaScript, no library, no network beyond this node's own API
// (/api/v1/…, the same JSON as the CLI's --json). Text from the mesh (node names, block
// reasons) is only ever set with textContent, never parsed as HTML.
'use strict';

const REFRESH_MS = 5000;
const FETCH_TIMEOUT_MS = 8000;
const SVG_NS = 'http://www.w3.org/2000/svg';
const MAX_CHART_POINTS = 1500;
const LATEST_ROWS = 15;

// ---------------------------------------------------------------- small helpers

function setAttrs(node, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null && value !== false) node.setAttribute(name, String(value));
  }
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function fill(id, ...children) {
  const node = document.getElementById(id);
  node.replaceChildren();
  append(node, children);
}

function text(id, value) {
  document.getElementById(id).textContent = value;
}

/** Litres as m³ with exactly three decimals (1 L = 0.001 m³), computed on integers. */
function m3(litres) {
  const l = Math.max(0, Math.round(Number(litres) || 0));
  const whole = Math.floor(l / 1000).toLocaleString('en-US');
  return `${whole}.${String(l % 1000).padStart(3, '0')}`;
}

/** An age in ms as the CLI writes it: "2 s", "3 min", "1 h", "2 d". */
function age(ms) {
  const s = Math.floor(Math.max(0, ms) / 1000);
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.floor(s / 60)} min`;
  if (s < 172800) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86400)} d`;
}

/** Time of an answer's timestamp (RFC 3339, or integer ms after year 9999). */
function toMs(ts) {
  return /^\d+$/.test(String(ts)) ? Number(ts) : Date.parse(ts);
}

const dateTime = new Intl.DateTimeFormat(undefined, {
  year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit',
});
const shortTime = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
const dateOnly = new Intl.DateTimeFormat(undefined, { year: 'numeric', month: 'short', day: 'numeric' });

function when(ts) {
  const ms = toMs(ts);
  return Number.isFinite(ms) ? dateTime.format(ms) : String(ts);
}

function timeEl(ts, short) {
  const ms = toMs(ts);
  const shown = short && Number.isFinite(ms) ? shortTime.format(ms) : when(ts);
  return el('time', { datetime: ts, title: when(ts) }, shown);
}

/** A peer id by its end: every ed25519 peer id starts with the same "12D3KooW". */
function shortPeer(id) {
  return id && id.length > 12 ? `…${id.slice(-8)}` : id || '';
}

/** Peer id → node name, from the latest /peers answer. */
const names = new Map();

function nodeName(peer) {
  const name = names.get(peer);
  return el('span', { title: peer }, name ? name : shortPeer(peer));
}

function table(headers, rows) {
  return el('table', {},
    el('thead', {}, el('tr', {}, headers.map(([label, numeric]) => el('th', { scope: 'col', class: numeric ? 'num' : null }, label)))),
    el('tbody', {}, rows.map(cells => el('tr', {}, cells.map((cell, i) => el('td', { class: headers[i][1] ? 'num' : null }, cell))))));
}

function badge(label, kind) {
  return el('span', { class: `badge ${kind}` }, label);
}

function meterLink(meter) {
  return el('a', { href: `#/meter/${meter}` }, `#${meter}`);
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), FETCH_TIMEOUT_MS);
  try {
    const response = await fetch(path, { signal: controller.signal, headers: { Accept: 'application/json' } });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new ApiError(response.status, body.error || `${response.status} ${response.statusText}`);
    return body;
  } catch (error) {
    if (error instanceof ApiError) throw error;
    throw new ApiError(0, error.name === 'AbortError' ? 'the node did not answer in time' : 'cannot reach the node');
  } finally {
    clearTimeout(timer);
  }
}

function describe(error) {
  if (error.status === 503) return 'the node is busy; retrying';
  return error.message || String(error);
}

function coverageLine(answer) {
  const nodes = answer.nodes;
  let line = `${nodes} fog node${nodes === 1 ? '' : 's'}, ${answer.stale_nodes} stale, data as of ${age(answer.data_age_ms)} ago`;
  if (answer.stale && answer.stale.length) line += ` · stale: ${answer.stale.map(p => names.get(p) || shortPeer(p)).join(', ')}`;
  if (answer.missing && answer.missing.length) line += ` · not included (did not answer): ${answer.missing.map(p => names.get(p) || shortPeer(p)).join(', ')}`;
  return line;
}

function setStatus(message, isError) {
  const status = document.getElementById('status');
  status.textContent = message;
  status.classList.toggle('bad', Boolean(isError));
}

// ---------------------------------------------------------------- overview

/** Width of a chart's container in CSS pixels: charts are drawn 1:1, so text keeps its size. */
function widthOf(id, fallback) {
  const width = document.getElementById(id).clientWidth;
  return Math.max(320, Math.round(width || fallback));
}

/** Meter → why its supply is cut, from the latest /blocked answer. */
const cut = new Map();

function topChart(entries) {
  const width = widthOf('top', 720);
  const row = 30;
  const labelWidth = 76;
  const valueWidth = 112;
  const height = entries.length * row + 6;
  const max = Math.max(1, ...entries.map(e => e.consumption_l));
  const plot = width - labelWidth - valueWidth;
  const chart = svg('svg', {
    id: 'top-chart', class: 'chart bars', viewBox: `0 0 ${width} ${height}`, role: 'img',
    'aria-labelledby': 'top-title top-chart-desc', 'data-entries': entries.length,
  }, svg('desc', { id: 'top-chart-desc' },
    entries.map((e, i) => `${i + 1}. meter ${e.meter}: ${m3(e.consumption_l)} m³`).join('; ')));
  entries.forEach((entry, i) => {
    const y = 3 + i * row;
    const barWidth = Math.max(2, plot * entry.consumption_l / max);
    const reason = cut.get(entry.meter);
    const state = reason ? `, supply cut: ${reason.replace('_', ' ')}` : '';
    chart.append(svg('a', { href: `#/meter/${entry.meter}`, class: reason ? 'bar cut' : 'bar', 'aria-label': `meter ${entry.meter}${state}` },
      svg('title', {}, `meter ${entry.meter}: ${m3(entry.consumption_l)} m³ (home ${names.get(entry.home) || entry.home}${state})`),
      svg('text', { x: labelWidth - 10, y: y + row / 2, class: 'bar-label', 'text-anchor': 'end', 'dominant-baseline': 'central' }, `#${entry.meter}`),
      svg('rect', { class: 'track', x: labelWidth, y: y + 5, width: plot, height: row - 10, rx: 4 }),
      svg('rect', {
        class: 'fill', x: labelWidth, y: y + 5, width: barWidth.toFixed(1), height: row - 10, rx: 4,
        'data-meter': entry.meter, 'data-rank': i + 1, 'data-consumption-l': entry.consumption_l,
      }),
      svg('text', { x: labelWidth + plot + 10, y: y + row / 2, class: 'bar-value', 'dominant-baseline': 'central' }, `${m3(entry.consumption_l)} m³`)));
  });
  return chart;
}

function renderStats(stats) {
  text('stat-meters', stats.meters.toLocaleString('en-US'));
  text('stat-total', m3(stats.total_consumption_l));
  text('stat-average', m3(stats.average_consumption_l));
  text('stat-nodes', String(stats.nodes));
  text('stat-stale', stats.stale_nodes ? `(${stats.stale_nodes} stale)` : '(none stale)');
  const coverage = document.getElementById('coverage');
  coverage.textContent = coverageLine(stats);
  coverage.classList.toggle('warn', stats.stale_nodes > 0 || (stats.missing || []).length > 0);
}

let lastTop = null;

function renderTop(top) {
  lastTop = top;
  if (!top.entries.length) {
    fill('top', el('p', { class: 'empty' }, 'No consumption in this window.'));
  } else {
    const legend = top.entries.some(e => cut.has(e.meter))
      ? el('p', { class: 'legend small muted' }, el('span', { class: 'swatch cut', 'aria-hidden': 'true' }), 'supply cut')
      : null;
    fill('top', topChart(top.entries), legend);
  }
  // A windowed ranking asks every node: say which answered. The all-data one is the stats'.
  const windowed = document.getElementById('top-window').value !== '';
  text('top-coverage', windowed || top.stale_nodes || top.missing.length ? coverageLine(top) : '');
}

function learnNames(peers) {
  names.clear();
  for (const peer of peers.peers) names.set(peer.peer, peer.name);
  const self = peers.peers.find(p => p.self);
  if (self) text('node-name', `node ${self.name}`);
}

function renderPeers(peers) {
  learnNames(peers);
  const self = peers.peers.find(p => p.self);
  if (self) document.title = `hydromesh · ${self.name}`;
  const rows = peers.peers.map(p => [
    el('span', { class: 'name' }, p.name || '(unnamed)'),
    el('code', { title: p.peer }, shortPeer(p.peer)),
    p.meters.toLocaleString('en-US'),
    p.last_heard_ms_ago === null ? 'never' : `${age(p.last_heard_ms_ago)} ago`,
    p.self ? badge('this node', 'info') : p.stale ? badge('stale', 'warn') : p.connected ? badge('live', 'ok') : badge('live, relayed', 'ok'),
  ]);
  const meters = peers.peers.reduce((sum, p) => sum + p.meters, 0);
  const stale = peers.peers.filter(p => p.stale).length;
  fill('mesh',
    table([['Name'], ['Peer'], ['Meters', true], ['Last heard', true], ['State']], rows),
    el('p', { class: 'small muted' }, `${peers.peers.length} fog nodes · ${meters.toLocaleString('en-US')} meters · ${stale} stale`));
}

function renderAlerts(alerts) {
  if (!alerts.alerts.length) return fill('alerts', el('p', { class: 'empty' }, 'No active alert.'));
  fill('alerts', table([['Meter'], ['Alert'], ['Since'], ['Home']],
    alerts.alerts.map(a => [meterLink(a.meter), badge(a.kind, a.kind === 'leak' || a.kind === 'burst' ? 'bad' : 'warn'), timeEl(a.since, true), nodeName(a.home)])));
}

function renderBlocked(blocked) {
  cut.clear();
  for (const b of blocked.blocked) cut.set(b.meter, b.reason);
  if (!blocked.blocked.length) return fill('blocked', el('p', { class: 'empty' }, 'No meter is blocked.'));
  // The detail (an admin's words, or the figures behind an automatic cut) goes under the reason.
  fill('blocked', table([['Meter'], ['Reason'], ['Since']],
    blocked.blocked.map(b => [meterLink(b.meter),
      [badge(b.reason.replace('_', ' '), 'bad'), b.detail ? el('div', { class: 'detail' }, b.detail) : null],
      timeEl(b.since, true)])));
}

async function refreshOverview() {
  const since = document.getElementById('top-window').value;
  const topPath = `/api/v1/top?n=10${since ? `&since=${encodeURIComponent(since)}` : ''}`;
  // Peers first: the other sections name nodes by their names.
  const peers = await api('/api/v1/peers').catch(error => error);
  const [stats, top, alerts, blocked] = await Promise.all(
    ['/api/v1/stats', topPath, '/api/v1/alerts', '/api/v1/blocked'].map(path => api(path).catch(error => error)));
  // Blocked before top: the chart marks the meters whose supply is cut.
  const sections = [[peers, renderPeers, 'mesh'], [stats, renderStats, null], [blocked, renderBlocked, 'blocked'],
    [top, renderTop, 'top'], [alerts, renderAlerts, 'alerts']];
  const failures = [];
  for (const [answer, render, id] of sections) {
    if (answer instanceof Error) {
      failures.push(answer);
      if (id && !document.querySelector(`#${id} table, #${id} svg`)) fill(id, el('p', { class: 'error' }, describe(answer)));
    } else {
      render(answer);
    }
  }
  if (failures.length) setStatus(`Not updated: ${describe(failures[0])}`, true);
  else setStatus(`Updated ${new Date().toLocaleTimeString()}`, false);
}

// ---------------------------------------------------------------- meter page

const meterPage = {
  meter: null,
  range: 86400000,
  readings: [], // [{t: ms, litres}], by time
  latestRows: [], // newest first, as the API writes them
  source: null,
  redraw: null,
};

function historyChart(points, meter) {
  const width = widthOf('history', 760);
  const height = 300;
  const margin = { left: 72, right: 18, top: 28, bottom: 34 };
  const plotWidth = width - margin.left - margin.right;
  const plotHeight = height - margin.top - margin.bottom;
  const t0 = points[0].t;
  const t1 = Math.max(points[points.length - 1].t, t0 + 1);
  let low = Math.min(...points.map(p => p.litres));
  let high = Math.max(...points.map(p => p.litres));
  if (high === low) { high += 1; low = Math.max(0, low - 1); }
  const x = t => margin.left + (t - t0) / (t1 - t0) * plotWidth;
  const y = l => margin.top + (1 - (l - low) / (high - low)) * plotHeight;
  // Down-sample long histories: every k-th point, always the last.
  const step = Math.ceil(points.length / MAX_CHART_POINTS);
  const shown = points.filter((_, i) => i % step === 0 || i === points.length - 1);
  const line = shown.map(p => `${x(p.t).toFixed(1)},${y(p.litres).toFixed(1)}`).join(' ');
  const last = points[points.length - 1];
  const chart = svg('svg', {
    id: 'history-chart', class: 'chart line', viewBox: `0 0 ${width} ${height}`, role: 'img',
    'aria-labelledby': 'history-title history-desc', 'data-meter': meter,
  }, svg('desc', { id: 'history-desc' },
    `Register of meter ${meter} from ${when(t0)} to ${when(last.t)}: ${m3(points[0].litres)} to ${m3(last.litres)} m³`));
  for (let i = 0; i <= 4; i++) {
    const value = low + (high - low) * i / 4;
    chart.append(svg('line', { class: 'grid', x1: margin.left, x2: width - margin.right, y1: y(value), y2: y(value) }),
      svg('text', { class: 'axis', x: margin.left - 8, y: y(value), 'text-anchor': 'end', 'dominant-baseline': 'central' }, m3(value)));
  }
  for (let i = 0; i <= 3; i++) {
    const t = t0 + (t1 - t0) * i / 3;
    chart.append(svg('text', { class: 'axis', x: x(t), y: height - 10, 'text-anchor': i === 0 ? 'start' : i === 3 ? 'end' : 'middle' }, shortTime.format(t)));
  }
  chart.append(
    svg('text', { class: 'axis unit', x: margin.left - 8, y: 4, 'text-anchor': 'end', 'dominant-baseline': 'hanging' }, 'm³'),
    svg('polygon', { class: 'area', points: `${x(shown[0].t).toFixed(1)},${y(low)} ${line} ${x(last.t).toFixed(1)},${y(low)}` }),
    svg('polyline', { id: 'history-line', class: 'series', points: line, 'data-points': points.length }),
    svg('circle', { class: 'last', cx: x(last.t), cy: y(last.litres), r: 4 }, svg('title', {}, `${m3(last.litres)} m³ at ${when(last.t)}`)));
  return chart;
}

function drawHistory() {
  const points = meterPage.readings;
  if (!points.length) {
    fill('history', el('p', { class: 'empty' }, 'No reading in this window.'));
    text('history-note', '');
    return;
  }
  fill('history', historyChart(points, meterPage.meter));
  const used = points[points.length - 1].litres - points[0].litres;
  text('history-note', `${points.length.toLocaleString('en-US')} readings · ${m3(used)} m³ between the first and the last shown`);
}

function scheduleRedraw() {
  // Live readings can come fast: redraw at most once a second.
  if (meterPage.redraw) return;
  meterPage.redraw = setTimeout(() => {
    meterPage.redraw = null;
    drawHistory();
    drawLatest();
  }, 1000);
}

function drawLatest() {
  if (!meterPage.latestRows.length) return fill('latest', el('p', { class: 'empty' }, 'No reading yet.'));
  fill('latest', table([['Time'], ['Register m³', true], ['Flow L/h', true], ['Alarms']],
    meterPage.latestRows.map(r => [timeEl(r.ts), m3(r.litres), r.flow_lph === undefined ? '' : String(r.flow_lph),
      (r.alarms || []).map(a => badge(a, 'warn'))])));
  const newest = meterPage.latestRows[0];
  text('meter-register', m3(newest.litres));
  fill('meter-register-at', 'at ', timeEl(newest.ts));
}

function renderSummary(summary) {
  document.getElementById('meter-error').hidden = true;
  const badges = [];
  if (summary.blocked) {
    badges.push(badge(`supply cut: ${summary.blocked.reason.replace('_', ' ')}`, 'bad'));
    if (summary.blocked.detail) badges.push(el('span', { class: 'muted small' }, summary.blocked.detail));
  } else {
    badges.push(badge('supply open', 'ok'));
  }
  for (const alert of summary.alerts) badges.push(badge(`${alert.kind} since ${when(alert.since)}`, 'warn'));
  // Status words of the meter hydromesh does not know (the `other` alarm), as it sent them.
  if (summary.unknown_status && summary.unknown_status.length) {
    badges.push(el('span', { class: 'muted small', id: 'meter-unknown-status' }, `meter says: ${summary.unknown_status.join(' ')}`));
  }
  fill('meter-badges', badges);
  fill('meter-home', nodeName(summary.home));
  if (summary.bill) {
    const bill = summary.bill;
    text('meter-period', m3(bill.consumption_l));
    // Periods are whole days in practice: dates say it best (the end is exclusive).
    const [start, end] = [toMs(bill.period_start), toMs(bill.period_end)];
    text('meter-period-range', Number.isFinite(start) && Number.isFinite(end)
      ? `${dateOnly.format(start)} – ${dateOnly.format(end - 1)}` : `${bill.period_start} – ${bill.period_end}`);
    text('meter-bill', `${bill.amount.toFixed(2)} ${bill.currency}`);
    fill('meter-bill-state', bill.paid ? badge('paid', 'ok') : badge('not paid', 'info'));
  }
  // Merge the summary's latest readings with those already shown (live ones may be newer).
  const byTs = new Map(meterPage.latestRows.map(r => [toMs(r.ts), r]));
  for (const r of summary.readings) byTs.set(toMs(r.ts), r);
  meterPage.latestRows = [...byTs.entries()].sort((a, b) => b[0] - a[0]).slice(0, LATEST_ROWS).map(([, r]) => r);
  drawLatest();
}

function meterError(error) {
  const box = document.getElementById('meter-error');
  box.textContent = error.status === 404 ? `Meter ${meterPage.meter}: ${error.message}` : `Cannot load meter ${meterPage.meter}: ${describe(error)}`;
  box.hidden = false;
}

async function loadHistory() {
  const meter = meterPage.meter;
  const newest = meterPage.latestRows.length ? toMs(meterPage.latestRows[0].ts) : Date.now();
  const from = meterPage.range ? `?from=${Math.max(0, newest - meterPage.range)}` : '';
  try {
    const answer = await api(`/api/v1/meters/${meter}/readings${from}`);
    if (meter !== meterPage.meter) return;
    meterPage.readings = answer.readings.map(r => ({ t: toMs(r.ts), litres: r.litres }));
    drawHistory();
    if (answer.truncated) text('history-note', `${document.getElementById('history-note').textContent} (only the latest are shown)`);
  } catch (error) {
    if (meter === meterPage.meter) fill('history', el('p', { class: 'error' }, describe(error)));
  }
}

function onLiveReading(event) {
  let reading;
  try {
    reading = JSON.parse(event.data);
  } catch (_) {
    return;
  }
  if (reading.meter !== meterPage.meter) return;
  const t = toMs(reading.ts);
  const points = meterPage.readings;
  if (!points.length || t > points[points.length - 1].t) points.push({ t, litres: reading.litres });
  if (!meterPage.latestRows.some(r => toMs(r.ts) === t)) {
    meterPage.latestRows.unshift(reading);
    meterPage.latestRows.sort((a, b) => toMs(b.ts) - toMs(a.ts));
    meterPage.latestRows.length = Math.min(meterPage.latestRows.length, LATEST_ROWS);
  }
  scheduleRedraw();
}

function openLive(meter) {
  closeLive();
  if (!('EventSource' in window)) return;
  const source = new EventSource(`/api/v1/meters/${meter}/live`);
  meterPage.source = source;
  const state = document.getElementById('live-state');
  source.onopen = () => { state.textContent = '● live'; state.className = 'live on'; };
  source.onmessage = onLiveReading;
  source.addEventListener('error', () => {
    // The browser reconnects by itself (resuming after the last reading) unless the node said
    // the meter is unknown.
    state.textContent = source.readyState === EventSource.CLOSED ? 'live updates stopped' : 'reconnecting…';
    state.className = 'live off';
  });
}

function closeLive() {
  if (meterPage.source) meterPage.source.close();
  meterPage.source = null;
  const state = document.getElementById('live-state');
  state.textContent = '';
  state.className = 'live';
}

async function refreshMeter(first) {
  const meter = meterPage.meter;
  if (first || !names.size) {
    // Names of the nodes, to show the meter's home by name (not needed for the rest).
    await api('/api/v1/peers').then(learnNames, () => {});
  }
  try {
    const summary = await api(`/api/v1/meters/${meter}`);
    if (meter !== meterPage.meter) return;
    renderSummary(summary);
    setStatus(`Updated ${new Date().toLocaleTimeString()}`, false);
    if (first) {
      await loadHistory();
      openLive(meter);
    }
    return true;
  } catch (error) {
    if (meter !== meterPage.meter) return false;
    meterError(error);
    if (first) fill('history', el('p', { class: 'empty' }, '—'));
    setStatus(`Not updated: ${describe(error)}`, error.status !== 404);
    return error.status !== 404;
  }
}

function showMeter(meter) {
  Object.assign(meterPage, { meter, readings: [], latestRows: [] });
  document.getElementById('overview').hidden = true;
  document.getElementById('meter-page').hidden = false;
  text('meter-title', `Meter ${meter}`);
  document.title = `hydromesh · meter ${meter}`;
  for (const id of ['meter-register', 'meter-period', 'meter-bill', 'meter-home']) text(id, '–');
  for (const id of ['meter-register-at', 'meter-period-range', 'meter-bill-state', 'history-note']) text(id, '');
  fill('meter-badges');
  fill('history', el('p', { class: 'empty' }, 'Loading…'));
  fill('latest', el('p', { class: 'empty' }, 'Loading…'));
  return refreshMeter(true);
}

// ---------------------------------------------------------------- routing and timers

let timer = null;

/** Runs `work` every REFRESH_MS, skipping a turn while the previous one is still running. */
function every(work) {
  clearInterval(timer);
  let running = false;
  timer = setInterval(async () => {
    if (running) return;
    running = true;
    try {
      await work();
    } finally {
      running = false;
    }
  }, REFRESH_MS);
}

let routes = 0;

// A meter id as printed on the meter: 1 to 12 letters, digits, `-` or `_`.
const METER_ID = /^[0-9A-Za-z_-]{1,12}$/;
const METER_ROUTE = /^#\/meter\/([0-9A-Za-z_-]{1,12})$/;

async function route() {
  // For tools (screenshots, tests): "ready" once the page shows its first data (or an error).
  const mine = ++routes;
  document.documentElement.dataset.state = 'loading';
  const match = METER_ROUTE.exec(location.hash);
  if (match) {
    // Ids compare case-insensitively and are shown in lower case.
    const meter = match[1].toLowerCase();
    every(() => refreshMeter(false));
    await showMeter(meter);
  } else {
    closeLive();
    meterPage.meter = null;
    document.getElementById('meter-page').hidden = true;
    document.getElementById('overview').hidden = false;
    document.title = 'hydromesh';
    every(refreshOverview);
    await refreshOverview();
  }
  if (mine === routes) document.documentElement.dataset.state = 'ready';
}

function start() {
  document.getElementById('lookup').addEventListener('submit', event => {
    event.preventDefault();
    const value = document.getElementById('lookup-meter').value.trim();
    if (METER_ID.test(value)) location.hash = `#/meter/${value.toLowerCase()}`;
  });
  document.getElementById('top-window').addEventListener('change', refreshOverview);
  for (const button of document.querySelectorAll('#history-range button')) {
    button.addEventListener('click', () => {
      for (const other of document.querySelectorAll('#history-range button')) other.setAttribute('aria-pressed', String(other === button));
      meterPage.range = Number(button.dataset.range);
      loadHistory();
    });
  }
  window.addEventListener('hashchange', route);
  let resizing = null;
  window.addEventListener('resize', () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => {
      if (meterPage.meter !== null) drawHistory();
      else if (lastTop) renderTop(lastTop);
    }, 150);
  });
  route();
}

start();
