// svg.js: small helpers to build DOM and SVG without a framework.

const NS = 'http://www.w3.org/2000/svg';

// el makes an SVG element with attributes and children.
export function el(name, attrs = {}, ...kids) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) e.setAttribute(k, String(v));
  for (const k of kids.flat()) if (k !== null && k !== undefined) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
}

// h makes an HTML element; attrs starting with "on" are listeners.
export function h(name, attrs = {}, ...kids) {
  const e = document.createElement(name);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') e.addEventListener(k.slice(2), v);
    else if (k === 'class') e.className = v;
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const k of kids.flat()) if (k !== null && k !== undefined && k !== false) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
}

// fmt renders a number the way the CLI's matrix does.
export function fmt(v) {
  if (v === undefined || v === null || !isFinite(v)) return '–';
  const a = Math.abs(v);
  if (a === 0) return '0';
  if (a >= 100) return v.toFixed(0);
  if (a >= 1) return v.toFixed(2);
  return v.toPrecision(3);
}

// short renders a number with as few digits as it needs (axis labels,
// parameter values): 20, 0.5, 1.25.
export function short(v) {
  if (v === undefined || v === null || !isFinite(v)) return '–';
  return String(+(+v).toPrecision(6));
}

// ticks returns about n round values spanning [lo, hi].
export function ticks(lo, hi, n = 5) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / n, p = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map(m => m * p).find(s => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

// paramLabel formats a point coordinate as its parameter shows it.
export function paramValue(p, v) {
  if (p.labels && p.labels.length) return p.labels[v] ?? String(v);
  return String(+v.toPrecision(12));
}

export function pointLabel(space, point) {
  return space.parameters.map((p, d) => p.name + '=' + paramValue(p, point[d]) + (p.labels && p.labels.length ? '' : (p.unit || ''))).join(' ');
}
