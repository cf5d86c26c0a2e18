// chart.js: response time against allocation, one curve per setting of the
// other parameters: measured points filled, interpolated ones hollow, the
// interpolator's uncertainty as a band, and the SLA as a dashed red line.

import { el, fmt, short, ticks, paramValue } from './svg.js';
import { unit } from './heatmap.js';

const COLOURS = ['#2457c5', '#1f9d55', '#b45309', '#7c3aed', '#be185d', '#0e7490'];

// chooseAxis picks the allocation axis: cpu if numeric, else the first
// numeric parameter; -1 when there is none.
function chooseAxis(space) {
  const numeric = (p) => !(p.labels && p.labels.length);
  const cpu = space.parameters.findIndex(p => p.name === 'cpu' && numeric(p));
  return cpu >= 0 ? cpu : space.parameters.findIndex(numeric);
}

// chooseMetric picks the SLA's metric, else a response-time metric.
// slaLevel is an SLA's bound: its floor (min, throughput>=X) or its
// ceiling (max, rt_p95<=X).
export function slaLevel(sla) { return sla.min ? sla.min : sla.max; }

// slaText shows an SLA as "rt_p95 ≤ 50" or "throughput ≥ 900".
export function slaText(sla) { return `${sla.metric} ${sla.min ? '≥' : '≤'} ${short(slaLevel(sla))}`; }

export function chooseMetric(m, sla) {
  if (sla && m.metrics.includes(sla.metric)) return sla.metric;
  return ['rt_p95', 'rt_mean', 'rt_p99', 'rt_p50'].find(x => m.metrics.includes(x)) || m.metrics[0];
}

export function curves(m, sla, metric) {
  const axis = chooseAxis(m.space);
  const j = m.metrics.indexOf(metric);
  if (axis < 0 || j < 0) return null;
  const par = m.space.parameters[axis];
  // Group rows by the other coordinates.
  const groups = new Map();
  for (const r of m.rows) {
    const key = r.point.map((v, d) => d === axis ? '' : m.space.parameters[d].name + '=' + paramValue(m.space.parameters[d], v)).filter(Boolean).join(' ');
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push({ x: r.point[axis], c: r.cells[j] });
  }
  const series = [...groups.entries()].slice(0, COLOURS.length);
  const pts = series.flatMap(([, s]) => s).filter(p => p.c.prov !== '.' && isFinite(p.c.value));
  const W = 560, H = 320, L = 58, R = 16, T = 16, B = 44;
  const svg = el('svg', { width: W, height: H, viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-label': metric + ' against ' + par.name });
  if (!pts.length) {
    svg.append(el('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle', fill: '#6b7280' }, 'nothing measured yet'));
    return svg;
  }
  const xs = par.values, xlo = Math.min(...xs), xhi = Math.max(...xs);
  // Scale to the values, not to their uncertainty: an extrapolated cell's
  // band can be far wider than the curve, and is clipped to the plot.
  let ylo = 0, yhi = Math.max(...pts.map(p => p.c.value));
  if (sla && sla.metric === metric) yhi = Math.max(yhi, slaLevel(sla) * 1.15);
  yhi = yhi > 0 ? yhi * 1.05 : 1;
  const sx = (x) => L + (xhi > xlo ? (x - xlo) / (xhi - xlo) : 0.5) * (W - L - R);
  const sy = (y) => H - B - (y - ylo) / (yhi - ylo) * (H - T - B);
  // Axes and grid.
  for (const t of ticks(ylo, yhi, 5)) {
    svg.append(el('line', { x1: L, x2: W - R, y1: sy(t), y2: sy(t), stroke: '#eceff3' }));
    svg.append(el('text', { x: L - 6, y: sy(t) + 4, 'text-anchor': 'end', 'font-size': 10, fill: '#6b7280' }, short(t)));
  }
  for (const x of xs) {
    svg.append(el('text', { x: sx(x), y: H - B + 16, 'text-anchor': 'middle', 'font-size': 10, fill: '#6b7280' }, short(x)));
  }
  svg.append(el('line', { x1: L, x2: W - R, y1: H - B, y2: H - B, stroke: '#9ca3af' }));
  svg.append(el('line', { x1: L, x2: L, y1: T, y2: H - B, stroke: '#9ca3af' }));
  svg.append(el('text', { x: (L + W - R) / 2, y: H - 8, 'text-anchor': 'middle', 'font-size': 12 }, `${par.name} (${par.unit || ''})`));
  svg.append(el('text', { x: 14, y: (T + H - B) / 2, 'text-anchor': 'middle', 'font-size': 12, transform: `rotate(-90 14 ${(T + H - B) / 2})` }, `${metric} (${unit(metric)})`));

  const clipID = 'plot-' + Math.random().toString(36).slice(2);
  svg.append(el('defs', {}, el('clipPath', { id: clipID }, el('rect', { x: L, y: T, width: W - L - R, height: H - T - B }))));
  const plot = el('g', { 'clip-path': `url(#${clipID})` });
  svg.append(plot);
  series.forEach(([name, s], k) => {
    const col = COLOURS[k];
    const ok = s.filter(p => p.c.prov !== '.' && isFinite(p.c.value)).sort((a, b) => a.x - b.x);
    if (!ok.length) return;
    // Band: value ± uncertainty (0 at measured points).
    const up = ok.map(p => `${sx(p.x)},${sy(p.c.value + (p.c.uncertainty || 0))}`);
    const dn = ok.slice().reverse().map(p => `${sx(p.x)},${sy(Math.max(ylo, p.c.value - (p.c.uncertainty || 0)))}`);
    plot.append(el('polygon', { points: up.concat(dn).join(' '), fill: col, 'fill-opacity': 0.12, stroke: 'none', class: 'band' }));
    plot.append(el('polyline', { points: ok.map(p => `${sx(p.x)},${sy(p.c.value)}`).join(' '), fill: 'none', stroke: col, 'stroke-width': 1.8 }));
    for (const p of ok) {
      const measured = p.c.prov === 'X' || p.c.prov === 'V';
      const attrs = { cx: sx(p.x), cy: sy(p.c.value), r: measured ? 4.5 : 4, class: 'pt', 'data-prov': p.c.prov,
        fill: measured ? col : '#fff', stroke: p.c.prov === 'T' ? '#d9822b' : col, 'stroke-width': p.c.prov === 'T' ? 2.5 : 1.8 };
      svg.append(el('circle', attrs, el('title', {}, `${par.name}=${short(p.x)}: ${fmt(p.c.value)} ${unit(metric)} (${p.c.prov})`)));
    }
    if (series.length > 1 || name) {
      svg.append(el('text', { x: W - R - 4, y: T + 12 + 14 * k, 'text-anchor': 'end', 'font-size': 11, fill: col }, name || 'all'));
    }
  });
  if (sla && sla.metric === metric) {
    const y = sy(slaLevel(sla));
    svg.append(el('line', { x1: L, x2: W - R, y1: y, y2: y, stroke: '#c62828', 'stroke-width': 1.5, 'stroke-dasharray': '6 4', class: 'sla' }));
    svg.append(el('text', { x: L + 6, y: y - 5, 'font-size': 11, fill: '#c62828' }, `SLA ${slaText(sla)} ${unit(metric)}`));
  }
  return svg;
}
