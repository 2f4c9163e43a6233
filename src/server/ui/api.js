/**
 * The UI's API client: every request carries the token kept in localStorage (set on the sign-in
 * page) as `Authorization: Bearer`; a 401 sends the person to sign in. Run events are read with
 * fetch streaming (so the header is sent, never a token in a URL) and reconnect with
 * `Last-Event-ID` after a dropped connection, continuing exactly after the last event seen.
 */
const KEY = 'booth.token';

/** The stored token, or ''. */
export const token = () => localStorage.getItem(KEY) ?? '';
/** Store (or clear) the token. */
export const setToken = (t) => (t ? localStorage.setItem(KEY, t) : localStorage.removeItem(KEY));

/** Thrown for any non-2xx answer, with the API's code and message. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function headers(extra = {}) {
  const t = token();
  return t ? { ...extra, authorization: `Bearer ${t}` } : extra;
}

/** JSON request; `body` objects are sent as JSON. */
export async function api(method, path, body) {
  const init = { method, headers: headers(body !== undefined ? { 'content-type': 'application/json' } : {}) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const res = await fetch(path, init);
  return answer(res);
}

async function answer(res) {
  const text = await res.text();
  let data;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!res.ok) {
    if (res.status === 401 && !location.hash.startsWith('#/login')) location.hash = `#/login?next=${encodeURIComponent(location.hash)}`;
    throw new ApiError(res.status, data?.error?.code ?? 'HTTP', data?.error?.message ?? `${res.status} ${res.statusText}`);
  }
  return data;
}

/**
 * Upload one file with progress (XMLHttpRequest: fetch has no upload progress).
 * @returns the per-file result
 */
export function uploadFile(session, file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', `/api/sessions/${encodeURIComponent(session)}/photos`);
    const t = token();
    if (t) xhr.setRequestHeader('authorization', `Bearer ${t}`);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    xhr.onerror = () => reject(new ApiError(0, 'NETWORK', 'the upload was interrupted'));
    xhr.onload = () => {
      let data;
      try {
        data = JSON.parse(xhr.responseText);
      } catch {
        data = null;
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(data.results[0]);
      else reject(new ApiError(xhr.status, data?.error?.code ?? 'HTTP', data?.error?.message ?? `HTTP ${xhr.status}`));
    };
    const form = new FormData();
    form.append('photos', file, file.name);
    xhr.send(form);
  });
}

/**
 * Follow a run's events. `onEvent(type, data)` for each; reconnects with Last-Event-ID until the
 * `end` event or `stop()`.
 * @returns { stop }
 */
export function followRun(session, run, onEvent, onConnection = () => {}) {
  let lastId = null;
  let stopped = false;
  let controller = null;
  const loop = async () => {
    let delay = 500;
    while (!stopped) {
      controller = new AbortController();
      try {
        const h = headers({ accept: 'text/event-stream' });
        if (lastId) h['last-event-id'] = lastId;
        const res = await fetch(`/api/sessions/${encodeURIComponent(session)}/runs/${run}/events${lastId ? '' : '?backlog=all'}`, { headers: h, signal: controller.signal });
        if (!res.ok) await answer(res);
        onConnection(true);
        delay = 500;
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value;
          let i;
          while ((i = buf.indexOf('\n\n')) >= 0) {
            const block = buf.slice(0, i);
            buf = buf.slice(i + 2);
            let type = 'message';
            let data = '';
            for (const line of block.split('\n')) {
              if (line.startsWith('id: ')) lastId = line.slice(4);
              else if (line.startsWith('event: ')) type = line.slice(7);
              else if (line.startsWith('data: ')) data += line.slice(6);
            }
            if (!data) continue;
            const parsed = JSON.parse(data);
            onEvent(type, parsed);
            if (type === 'end') stopped = true;
          }
        }
      } catch (err) {
        if (stopped || err.name === 'AbortError') return;
        if (err instanceof ApiError && err.status < 500) {
          onEvent('error', { message: err.message });
          return;
        }
      }
      if (stopped) return;
      onConnection(false);
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 10000);
    }
  };
  void loop();
  return {
    stop() {
      stopped = true;
      controller?.abort();
    },
  };
}
