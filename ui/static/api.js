// api.js: calls to the daemon's REST API with the bearer token, and the
// live event stream (server-sent events read through fetch, because
// EventSource cannot send an Authorization header).

const TOKEN_KEY = 'justrunit.token';

export function token() { return localStorage.getItem(TOKEN_KEY) || ''; }
export function setToken(t) { if (t) localStorage.setItem(TOKEN_KEY, t); else localStorage.removeItem(TOKEN_KEY); }

// APIError carries the daemon's error body: status, code, message, field.
export class APIError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || ('HTTP ' + status));
    this.status = status;
    this.code = e.code || '';
    this.field = e.field || '';
  }
}

export async function get(path) {
  const r = await fetch(path, { headers: { 'Authorization': 'Bearer ' + token(), 'Accept': 'application/json' } });
  let body = null;
  try { body = await r.json(); } catch (_) { /* not JSON */ }
  if (!r.ok) throw new APIError(r.status, body);
  return body;
}

// follow reads the event stream and calls onEvent for each event and
// onState(true/false) as the connection opens and drops; it reconnects
// with back-off from the last event seen. A reconnection also calls
// onEvent(null): events stored while the stream was down, before any
// event was seen, are not replayed, so the page reads its state afresh.
// It returns a function that stops it.
export function follow(onEvent, onState) {
  let stopped = false, last = 'latest', ctl = null, wait = 1000, connected = false;
  async function once() {
    ctl = new AbortController();
    const r = await fetch('api/v1/events/stream?after=' + last, {
      headers: { 'Authorization': 'Bearer ' + token(), 'Accept': 'text/event-stream' }, signal: ctl.signal });
    if (!r.ok) throw new APIError(r.status, null);
    onState(true);
    if (connected) onEvent(null);
    connected = true;
    wait = 1000;
    const rd = r.body.getReader();
    const dec = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await rd.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i); buf = buf.slice(i + 2);
        let id = null, data = '';
        for (const line of block.split('\n')) {
          if (line.startsWith('id: ')) id = line.slice(4);
          else if (line.startsWith('data: ')) data += line.slice(6);
        }
        if (id !== null) last = id;
        if (data) { try { onEvent(JSON.parse(data)); } catch (_) { /* ignore a bad event */ } }
      }
    }
  }
  (async () => {
    while (!stopped) {
      try { await once(); } catch (e) { if (e.status === 401) { onState(false, e); return; } }
      onState(false);
      if (stopped) return;
      await new Promise(res => setTimeout(res, wait));
      wait = Math.min(wait * 2, 15000);
    }
  })();
  return () => { stopped = true; if (ctl) ctl.abort(); };
}
