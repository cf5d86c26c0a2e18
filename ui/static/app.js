// app.js: the dashboard. Pages are routed by the URL fragment:
//   #/              studies
//   #/studies/ID    one study: settings, heatmap, RT-vs-allocation curves, checks, events
//   #/site          hosts with power state and their instances
//   #/timeline      the manager timeline (per-service response time, actions)
// Every page is drawn from the API; the event stream redraws the page when
// something is recorded.

import * as api from './api.js';
import { h, el, fmt, short, ticks, pointLabel } from './svg.js';
import { heatmap, legend, unit } from './heatmap.js';
import { curves, chooseMetric, slaText } from './chart.js';

const main = document.getElementById('main');
const banner = document.getElementById('banner');
let stopFollow = null;
let redrawTimer = null;
let drawing = 0;

function route() {
  const hash = location.hash.replace(/^#/, '') || '/';
  const parts = hash.split('/').filter(Boolean);
  if (parts[0] === 'studies' && parts[1]) {
    let id = parts[1];
    try { id = decodeURIComponent(id); } catch { /* a malformed link: the study page says it is not found */ }
    return { page: 'study', id };
  }
  if (parts[0] === 'site') return { page: 'site' };
  if (parts[0] === 'timeline') return { page: 'timeline' };
  return { page: 'studies' };
}

function setNav(page) {
  for (const a of document.querySelectorAll('[data-nav]')) {
    a.classList.toggle('active', a.dataset.nav === page || (page === 'study' && a.dataset.nav === 'studies'));
  }
}

async function draw() {
  const r = route();
  setNav(r.page);
  const seq = ++drawing;
  try {
    let view;
    switch (r.page) {
      case 'study': view = await studyPage(r.id); break;
      case 'site': view = await sitePage(); break;
      case 'timeline': view = await timelinePage(); break;
      default: view = await studiesPage();
    }
    if (seq !== drawing) return; // a newer draw started
    main.replaceChildren(...[view].flat());
    main.dataset.page = r.page;
    main.dataset.ready = String(seq);
  } catch (e) {
    if (seq !== drawing) return;
    if (e.status === 401) { login(e.message); return; }
    main.replaceChildren(h('div', { class: 'error' }, e.message));
  }
}

// redraw schedules a redraw soon, merging bursts of events.
function redraw() {
  clearTimeout(redrawTimer);
  redrawTimer = setTimeout(draw, 250);
}

function stateBadge(s) { return h('span', { class: 'state ' + s }, s); }
function when(t) { return t && !t.startsWith('0001') ? new Date(t).toLocaleString() : '–'; }

async function studiesPage() {
  const [studies, info] = await Promise.all([api.get('api/v1/studies'), api.get('api/v1/info')]);
  showBanner(info);
  const out = [h('h1', {}, 'Studies')];
  if (!studies.length) {
    out.push(h('p', { class: 'notice' }, 'No studies yet. ' + (info.runner
      ? 'Create one with POST /api/v1/studies.'
      : 'This daemon cannot run studies yet (see the note above); studies run elsewhere into the same store appear here.')));
    return out;
  }
  out.push(h('table', { id: 'studies' },
    h('thead', {}, h('tr', {}, ['ID', 'Target', 'State', 'Points', 'Experiments', 'Strategy', 'SLA', 'Created'].map(x =>
      h('th', { class: ['Points', 'Experiments'].includes(x) ? 'num' : '' }, x)))),
    h('tbody', {}, studies.map(s => h('tr', {},
      h('td', {}, h('a', { href: '#/studies/' + encodeURIComponent(s.id) }, s.id)),
      h('td', {}, s.target),
      h('td', {}, stateBadge(s.state)),
      h('td', { class: 'num' }, s.space.parameters.reduce((n, p) => n * p.values.length, 1)),
      h('td', { class: 'num' }, s.experiments),
      h('td', {}, s.strategy || '–'),
      h('td', {}, s.sla ? slaText(s.sla) : '–'),
      h('td', {}, when(s.created)))))));
  return out;
}

function showBanner(info) {
  const msgs = (info.missing || []).filter(m => !/manager/.test(m));
  banner.hidden = !msgs.length;
  banner.replaceChildren(...msgs.map(m => h('div', {}, m)));
}

async function studyPage(id) {
  const e = await api.get('api/v1/studies/' + encodeURIComponent(id) + '/export');
  const s = e.study, m = e.matrix;
  const out = [h('h1', {}, 'Study ', h('code', {}, s.id), ' ', stateBadge(s.state))];
  const kv = [
    ['Target', s.target],
    ['Space', s.space.parameters.map(p => `${p.name} ∈ {${p.values.map((v, i) => p.labels && p.labels.length ? p.labels[i] : short(v)).join(', ')}}${p.unit ? ' ' + p.unit : ''}`).join(' × ')],
    ['SLA', s.sla ? `${slaText(s.sla)} ${unit(s.sla.metric)}` : 'none'],
    ['Strategy', `${s.strategy || '–'}, interpolator ${s.interpolator || '–'}, check threshold ${short(100 * s.check_threshold)}%`],
    ['Experiments', `${s.experiments} run, each ${s.warm_up} warm-up + ${s.window} window${s.min_samples ? ` of at least ${s.min_samples} responses` : ''}; ${s.slots} slot(s); time bound ${s.time_bound}`],
    ['Started', when(s.started)], ['Finished', when(s.finished)],
  ];
  if (s.error) kv.push(['Error', s.error]);
  out.push(h('div', { class: 'card' }, h('dl', { class: 'kv' }, kv.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]))));
  if (!m) {
    out.push(h('p', { class: 'notice' }, 'No matrix yet: no experiment of this study has finished.'));
  } else {
    const counts = { X: 0, I: 0, T: 0, V: 0, '.': 0 };
    for (const r of m.rows) for (const c of r.cells) counts[c.prov]++;
    const metric = chooseMetric(m, s.sla);
    out.push(h('div', { class: 'row' },
      h('div', { class: 'card' }, h('h2', {}, 'Matrix'), legend(),
        h('div', { class: 'counts', id: 'counts' },
          `${counts.X} measured (X), ${counts.I} interpolated (I), ${counts.T} used by a decision (T), ${counts.V} verified (V), ${counts['.']} empty`),
        h('div', { id: 'heatmap' }, heatmap(m))),
      h('div', { class: 'card' }, h('h2', {}, `${metric} against allocation`),
        h('p', { class: 'muted' }, 'Filled: measured (X, V). Hollow: interpolated (I; T outlined orange). Band: interpolation uncertainty.'),
        h('div', { id: 'curve' }, curves(m, s.sla, metric) || h('p', { class: 'muted' }, 'No numeric allocation axis to plot.')))));
  }
  if (e.checks.length) {
    out.push(h('h2', {}, 'Checks'), h('table', {},
      h('thead', {}, h('tr', {}, ['Point', 'Metric', 'Interpolated', 'Measured', 'Error', 'Verdict'].map(x => h('th', {}, x)))),
      h('tbody', {}, e.checks.map(c => h('tr', {},
        h('td', {}, pointLabel(s.space, c.point)), h('td', {}, c.metric), h('td', { class: 'num' }, fmt(c.predicted)),
        h('td', { class: 'num' }, c.reason ? '' : fmt(c.measured)), h('td', { class: 'num' }, c.reason ? '' : fmt(100 * c.rel_error) + '%'),
        h('td', { class: c.passed ? '' : 'level-error' }, c.passed ? 'within threshold' : c.reason ? 'FAILED: ' + c.reason : 'EXCEEDS ' + fmt(100 * c.threshold) + '%'))))));
  }
  out.push(h('h2', {}, 'Events'), eventsTable(e.events.slice(-200).reverse()));
  return out;
}

function eventsTable(evs) {
  if (!evs.length) return h('p', { class: 'muted' }, 'No events.');
  return h('div', { class: 'events card' }, h('table', {}, h('tbody', {}, evs.map(ev => h('tr', { class: 'level-' + ev.level },
    h('td', {}, new Date(ev.time).toLocaleTimeString()), h('td', {}, ev.kind), h('td', {}, ev.message))))));
}

async function sitePage() {
  const out = [h('h1', {}, 'Site')];
  let site;
  try {
    site = await api.get('api/v1/site');
  } catch (e) {
    if (e.status === 503) { out.push(h('p', { class: 'notice', id: 'nosite' }, e.message)); return out; }
    throw e;
  }
  const byHost = new Map(site.hosts.map(x => [x.name, []]));
  for (const i of site.instances) { if (!byHost.has(i.host)) byHost.set(i.host, []); byHost.get(i.host).push(i); }
  const on = site.hosts.filter(x => x.on).length;
  out.push(h('p', { class: 'muted' }, `${site.hosts.length} hosts (${on} on), ${site.instances.length} instances, services: ${site.services.join(', ') || 'none'}`));
  out.push(h('div', { class: 'hosts' }, site.hosts.map(x => h('div', { class: 'host ' + (x.on ? 'on' : 'off') },
    h('h3', {}, x.name, h('span', { class: 'badge ' + (x.on ? 'on' : 'off') }, x.on ? 'on' : 'off'), x.sandbox ? h('span', { class: 'badge sandbox' }, 'sandbox') : null),
    h('div', { class: 'muted' }, `${x.class}, ${short(x.cores)} cores${x.memory_mib ? ', ' + x.memory_mib + ' MiB' : ''}${x.power && x.power.max_watts ? `, ${short(x.power.idle_watts)}–${short(x.power.max_watts)} W` : ''}`),
    (byHost.get(x.name) || []).length
      ? h('ul', {}, byHost.get(x.name).map(i => h('li', {}, `${i.id}`, i.service ? ` (${i.service}/${i.tier})` : '',
        i.origin ? ` clone of ${i.origin}` : '', `: cpu ${i.allocation.cpu ? short(i.allocation.cpu) + '%' : 'unlimited'}, ${i.state}`)))
      : h('div', { class: 'muted' }, 'no instances')))));
  return out;
}

async function timelinePage() {
  const out = [h('h1', {}, 'Manager timeline')];
  const [samples, actions] = await Promise.all([
    api.get('api/v1/services/samples').catch(e => { if (e.status === 503) return e; throw e; }),
    api.get('api/v1/events?kind=manager.*&newest=true&limit=1000'),
  ]);
  if (samples instanceof Error) {
    out.push(h('p', { class: 'notice', id: 'nosamples' }, samples.message + '. The chart of each service\'s response time per interval appears here once it does.'));
  } else if (!samples.length) {
    out.push(h('p', { class: 'notice', id: 'nosamples' }, 'No response-time samples recorded yet.'));
  } else {
    out.push(h('div', { class: 'card' }, timeline(samples, actions)));
  }
  out.push(h('h2', {}, 'Manager actions'));
  if (!actions.length) out.push(h('p', { class: 'notice', id: 'noactions' }, 'No manager actions recorded yet (events of kind manager.*): the manager is not built yet.'));
  else out.push(eventsTable(actions.slice().reverse()));
  return out;
}

// timeline draws each service's mean response time per interval, the SLA
// lines and the manager's actions as vertical markers (the paper's Figure 3).
function timeline(samples, actions) {
  const W = 900, H = 340, L = 58, R = 140, T = 16, B = 40;
  // Each service's SLA metric, what the monitor judges (the mean response
  // time from a daemon that does not send it).
  const val = (s) => (s.value ?? s.rt_mean_ms);
  // Not Math.min(...xs): a long run's samples overflow the call stack.
  const lo = (xs) => xs.reduce((a, b) => Math.min(a, b), Infinity);
  const hi = (xs) => xs.reduce((a, b) => Math.max(a, b), -Infinity);
  const t0 = lo(samples.map(s => Date.parse(s.start)));
  const t1 = Math.max(hi(samples.map(s => Date.parse(s.start))), hi(actions.map(a => Date.parse(a.time))));
  const yhi = Math.max(hi(samples.map(val)), hi(samples.filter(s => s.sla).map(s => s.sla.max))) * 1.15 || 1;
  const metrics = [...new Set(samples.filter(s => s.sla).map(s => s.sla.metric))];
  const ylabel = metrics.length === 1 ? `${metrics[0]}${metrics[0].startsWith('rt_') ? ' (ms)' : ''}` : 'each service\'s SLA metric';
  const sx = (t) => L + (t1 > t0 ? (t - t0) / (t1 - t0) : 0.5) * (W - L - R);
  const sy = (v) => H - B - v / yhi * (H - T - B);
  const svg = el('svg', { width: W, height: H, viewBox: `0 0 ${W} ${H}`, class: 'timeline' });
  for (const t of ticks(0, yhi, 5)) {
    svg.append(el('line', { x1: L, x2: W - R, y1: sy(t), y2: sy(t), stroke: '#eceff3' }),
      el('text', { x: L - 6, y: sy(t) + 4, 'text-anchor': 'end', 'font-size': 10, fill: '#6b7280' }, short(t)));
  }
  for (const t of ticks(0, (t1 - t0) / 60000, 8)) {
    svg.append(el('text', { x: sx(t0 + t * 60000), y: H - B + 16, 'text-anchor': 'middle', 'font-size': 10, fill: '#6b7280' }, short(t)));
  }
  svg.append(el('text', { x: (L + W - R) / 2, y: H - 6, 'text-anchor': 'middle', 'font-size': 12 }, 'minutes'),
    el('text', { x: 14, y: (H - B + T) / 2, 'text-anchor': 'middle', 'font-size': 12, transform: `rotate(-90 14 ${(H - B + T) / 2})` }, ylabel));
  const cols = ['#2457c5', '#1f9d55', '#b45309', '#7c3aed', '#be185d', '#0e7490'];
  const services = [...new Set(samples.map(s => s.service))];
  services.forEach((name, k) => {
    const ss = samples.filter(s => s.service === name);
    const col = cols[k % cols.length];
    svg.append(el('polyline', { points: ss.map(s => `${sx(Date.parse(s.start))},${sy(val(s))}`).join(' '), fill: 'none', stroke: col, 'stroke-width': 1.8 }));
    for (const s of ss) svg.append(el('circle', { cx: sx(Date.parse(s.start)), cy: sy(val(s)), r: 3, fill: col }));
    svg.append(el('text', { x: W - R + 8, y: T + 12 + 14 * k, 'font-size': 11, fill: col }, name));
    const sla = ss.find(s => s.sla);
    if (sla) {
      svg.append(el('line', { x1: L, x2: W - R, y1: sy(sla.sla.max), y2: sy(sla.sla.max), stroke: '#c62828', 'stroke-dasharray': '6 4', class: 'sla' }),
        el('text', { x: W - R + 8, y: sy(sla.sla.max) + 4, 'font-size': 11, fill: '#c62828' }, `SLA ${short(sla.sla.max)}${sla.sla.metric.startsWith('rt_') ? ' ms' : ''}`));
    }
  });
  for (const a of actions) {
    const x = sx(Date.parse(a.time));
    svg.append(el('line', { x1: x, x2: x, y1: T, y2: H - B, stroke: '#6b7280', 'stroke-dasharray': '2 3', class: 'action' }, el('title', {}, a.message)),
      el('text', { x: x + 3, y: T + 10, 'font-size': 10, fill: '#374151' }, a.kind.replace(/^manager\./, '')));
  }
  return svg;
}

function login(msg) {
  if (stopFollow) { stopFollow(); stopFollow = null; }
  document.getElementById('logout').hidden = true;
  banner.hidden = true;
  const input = h('input', { type: 'password', name: 'token', autocomplete: 'off', placeholder: 'token' });
  main.replaceChildren(h('form', { class: 'login card', onsubmit: (ev) => { ev.preventDefault(); api.setToken(input.value.trim()); start(); } },
    h('h1', {}, 'Sign in'),
    msg ? h('p', { class: 'error' }, msg) : null,
    h('p', {}, 'Paste the API token from the daemon\'s token file (justrunit serve --token-file FILE; by default token in the data directory).'),
    input, h('button', { type: 'submit' }, 'Open the dashboard')));
  main.dataset.page = 'login';
}

async function start() {
  if (!api.token()) {
    // A daemon serving without authentication answers without a token.
    try { await api.get('api/v1/info'); } catch (_) { login(); return; }
  }
  document.getElementById('logout').hidden = false;
  if (stopFollow) stopFollow();
  const live = document.getElementById('live');
  stopFollow = api.follow(() => redraw(), (up, err) => {
    live.className = 'live ' + (up ? 'on' : 'off');
    live.title = up ? 'live updates: connected' : 'live updates: reconnecting';
    if (err && err.status === 401) login('The token was refused.');
  });
  draw();
}

// A token passed once in the address (#token=...) is stored and removed
// from the address, so it does not stay in the history.
const m = location.hash.match(/^#token=([^&]+)/);
if (m) {
  api.setToken(decodeURIComponent(m[1]));
  history.replaceState(null, '', location.pathname + '#/');
}
document.getElementById('logout').addEventListener('click', () => { api.setToken(''); login(); });
window.addEventListener('hashchange', draw);
start();
