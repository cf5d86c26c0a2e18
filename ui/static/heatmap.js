// heatmap.js: the matrix as a heatmap, one row per point and one column per
// metric (the paper's Figure 2). The colour is the value, scaled per
// metric; the provenance is drawn so the four kinds are told apart without
// colour: X solid with a plain border, I hatched and faded, T hatched with
// a thick orange border (a decision used it), V solid with a double blue
// border (the checker re-measured it). Every cell carries data-prov.

import { el, fmt, pointLabel } from './svg.js';

const PROV = {
  'X': 'measured', 'I': 'interpolated', 'T': 'interpolated, used by a decision',
  'V': 'used, then verified by the checker', '.': 'empty',
};

// colour maps t in [0, 1] to a light-to-dark teal-purple ramp.
function colour(t) {
  const stops = [[237, 248, 251], [158, 202, 225], [66, 146, 198], [8, 81, 156], [37, 37, 112]];
  const x = Math.min(Math.max(t, 0), 1) * (stops.length - 1), i = Math.min(Math.floor(x), stops.length - 2), f = x - i;
  const c = stops[i].map((a, k) => Math.round(a + (stops[i + 1][k] - a) * f));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

export function legend() {
  const sw = (prov) => {
    const s = el('svg', { width: 26, height: 18, viewBox: '0 0 26 18' });
    s.append(defs());
    s.append(...cellShape(prov, 1, 1, 24, 16, 'rgb(66,146,198)'));
    return s;
  };
  const item = (p) => { const d = document.createElement('span'); d.append(sw(p), ' ', p + ' ' + PROV[p]); return d; };
  const box = document.createElement('div');
  box.className = 'legend';
  box.append(...['X', 'I', 'T', 'V'].map(item));
  return box;
}

function defs() {
  return el('defs', {},
    el('pattern', { id: 'hatch', width: 6, height: 6, patternUnits: 'userSpaceOnUse', patternTransform: 'rotate(45)' },
      el('rect', { width: 6, height: 6, fill: 'white', 'fill-opacity': 0.35 }),
      el('line', { x1: 0, y1: 0, x2: 0, y2: 6, stroke: 'white', 'stroke-width': 2.5, 'stroke-opacity': 0.85 })));
}

// cellShape returns the SVG nodes of one cell of provenance prov.
function cellShape(prov, x, y, w, h, fill) {
  const out = [];
  switch (prov) {
    case 'X':
      out.push(el('rect', { x, y, width: w, height: h, fill, stroke: '#1d2330', 'stroke-width': 1 }));
      break;
    case 'I':
      out.push(el('rect', { x, y, width: w, height: h, fill, 'fill-opacity': 0.75, stroke: '#8a94a6', 'stroke-width': 1, 'stroke-dasharray': '3 2' }));
      out.push(el('rect', { x, y, width: w, height: h, fill: 'url(#hatch)' }));
      break;
    case 'T':
      out.push(el('rect', { x, y, width: w, height: h, fill, 'fill-opacity': 0.75 }));
      out.push(el('rect', { x, y, width: w, height: h, fill: 'url(#hatch)' }));
      out.push(el('rect', { x: x + 1.5, y: y + 1.5, width: w - 3, height: h - 3, fill: 'none', stroke: '#d9822b', 'stroke-width': 3 }));
      break;
    case 'V':
      out.push(el('rect', { x, y, width: w, height: h, fill, stroke: '#0f7ea8', 'stroke-width': 1 }));
      out.push(el('rect', { x: x + 3, y: y + 3, width: w - 6, height: h - 6, fill: 'none', stroke: '#0f7ea8', 'stroke-width': 1.5 }));
      break;
    default:
      out.push(el('rect', { x, y, width: w, height: h, fill: '#f3f4f6', stroke: '#d7dbe3', 'stroke-dasharray': '2 2' }));
  }
  return out;
}

// heatmap draws matrix m (as the API returns it) into an SVG element.
export function heatmap(m) {
  const metrics = m.metrics, rows = m.rows;
  const labels = rows.map(r => pointLabel(m.space, r.point));
  const cw = 118, ch = rows.length > 40 ? 16 : 24, top = 46;
  const left = Math.max(80, 16 + 7 * Math.max(...labels.map(l => l.length)));
  const W = left + cw * metrics.length + 10, H = top + ch * rows.length + 8;
  const svg = el('svg', { width: W, height: H, viewBox: `0 0 ${W} ${H}`, class: 'heatmap', role: 'img',
    'aria-label': 'matrix heatmap' });
  svg.append(defs());
  // Scale each metric over its own finite values.
  const range = metrics.map((_, j) => {
    const vs = rows.map(r => r.cells[j]).filter(c => c.prov !== '.' && isFinite(c.value)).map(c => c.value);
    return vs.length ? [Math.min(...vs), Math.max(...vs)] : [0, 1];
  });
  metrics.forEach((mt, j) => {
    svg.append(el('text', { x: left + cw * j + cw / 2, y: top - 26, 'text-anchor': 'middle', 'font-size': 12, 'font-weight': 600 }, mt));
    svg.append(el('text', { x: left + cw * j + cw / 2, y: top - 10, 'text-anchor': 'middle', 'font-size': 10, fill: '#6b7280' }, unit(mt)));
  });
  rows.forEach((r, i) => {
    const y = top + ch * i;
    svg.append(el('text', { x: left - 8, y: y + ch / 2 + 4, 'text-anchor': 'end', 'font-size': 11 }, labels[i]));
    r.cells.forEach((c, j) => {
      const [lo, hi] = range[j];
      const t = hi > lo ? (c.value - lo) / (hi - lo) : 0.5;
      const x = left + cw * j;
      const g = el('g', { class: 'cell', 'data-prov': c.prov, 'data-metric': metrics[j], 'data-row': i });
      g.append(...cellShape(c.prov, x + 1, y + 1, cw - 2, ch - 2, colour(t)));
      let label = c.prov === '.' ? (r.unmeasurable ? 'unmeasurable' : '·') : fmt(c.value) + ' ' + c.prov;
      if ((c.prov === 'I' || c.prov === 'T') && c.uncertainty > 0 && ch >= 20) label = fmt(c.value) + '±' + fmt(c.uncertainty) + ' ' + c.prov;
      const dark = t > 0.55 && c.prov !== '.';
      const hatched = c.prov === 'I' || c.prov === 'T';
      g.append(el('text', { x: x + cw / 2, y: y + ch / 2 + 4, 'text-anchor': 'middle', 'font-size': ch >= 20 ? 11 : 9,
        'font-style': c.prov === 'I' || c.prov === 'T' ? 'italic' : 'normal', 'font-weight': c.prov === 'X' || c.prov === 'V' ? 600 : 400,
        fill: dark && !hatched ? '#fff' : '#1d2330',
        // A white halo keeps dark text readable on hatched and dark cells.
        stroke: hatched ? '#fff' : 'none', 'stroke-width': hatched ? 3 : 0, 'paint-order': 'stroke' }, label));
      let tip = `${pointLabel(m.space, r.point)} ${metrics[j]}: ${fmt(c.value)} ${unit(metrics[j])} (${c.prov} ${PROV[c.prov] || ''})`;
      if (c.uncertainty > 0) tip += ` ±${fmt(c.uncertainty)}`;
      if (c.prov === 'V') tip += `; interpolated value was ${fmt(c.predicted)}`;
      const sat = r.observation && r.observation.saturated && metrics[j].startsWith('rt_');
      if (sat) {
        label = '≥' + label;
        tip += `; saturated: ${fmt(r.observation.throughput)} of ${fmt(r.observation.offered)} req/s answered, so the clients would see more`;
      }
      if (r.unmeasurable) tip = `${pointLabel(m.space, r.point)}: measured nothing: ${r.unmeasurable}`;
      if (r.unmeasurable && c.predicted) tip += `; a decision used the interpolated ${fmt(c.predicted)} ${unit(metrics[j])} here`;
      g.append(el('title', {}, tip));
      svg.append(g);
    });
  });
  return svg;
}

export function unit(m) {
  return { throughput: 'req/s', rt_mean: 'ms', rt_p50: 'ms', rt_p95: 'ms', rt_p99: 'ms', error_rate: 'fraction',
    energy_per_request: 'J/req', power: 'W' }[m] || '';
}
