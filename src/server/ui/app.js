/**
 * Booth's web UI: a hash-routed single page in plain ES modules, no framework. Pages: sign in,
 * sessions (list + new), a session's photos (drag-and-drop upload with per-file progress, prepare,
 * the review grid with face boxes and crops over each photo, flags, captions, include/exclude and
 * a draggable crop), train (preset, advanced overrides, estimate), a run (live chart, ETA,
 * samples, log, stop/resume/extend) and exports (download with size and SHA-256). Every element is
 * built with the DOM API (never innerHTML from data), so names and captions cannot inject markup.
 */
import { api, ApiError, followRun, setToken, token, uploadFile } from './api.js';

const main = document.getElementById('main');
let cleanup = () => {};

/** Element builder: h('button', { onclick }, 'text', child…). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'style') Object.assign(el.style, v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c instanceof Node ? c : String(c));
  return el;
}

function toast(text, isError = false) {
  const t = document.getElementById('toast');
  t.textContent = text;
  t.classList.toggle('error', isError);
  t.classList.add('show');
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.remove('show'), 4000);
}

function fail(err) {
  if (err instanceof ApiError && err.status === 401) return;
  toast(err.message ?? String(err), true);
}

function render(...nodes) {
  main.replaceChildren(...nodes);
  main.focus({ preventScroll: true });
}

const badge = (state) => h('span', { class: `badge s-${state}` }, state);
const bytes = (n) => (n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(2)} GiB` : n >= 2 ** 20 ? `${(n / 2 ** 20).toFixed(1)} MiB` : `${(n / 1024).toFixed(0)} KiB`);
const duration = (s) => (s === null || s === undefined ? '–' : s >= 3600 ? `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m` : s >= 60 ? `${Math.floor(s / 60)}m ${Math.round(s % 60)}s` : `${Math.round(s)}s`);
const enc = encodeURIComponent;

function sessionTabs(name, current) {
  const tab = (id, label, href) => h('a', { href, 'aria-current': current === id ? 'page' : null }, label);
  return h('nav', { class: 'tabs', 'aria-label': 'Session' }, tab('photos', 'Photos', `#/s/${enc(name)}`), tab('train', 'Train', `#/s/${enc(name)}/train`), tab('runs', 'Runs', `#/s/${enc(name)}/runs`), tab('exports', 'Exports', `#/s/${enc(name)}/exports`));
}

// ---- sign in ----------------------------------------------------------------------------

function loginPage(next) {
  const input = h('input', { type: 'password', id: 'token', autocomplete: 'current-password', required: true });
  const form = h(
    'form',
    {
      class: 'card',
      onsubmit: async (e) => {
        e.preventDefault();
        setToken(input.value.trim());
        try {
          await api('GET', '/api/sessions');
          location.hash = next || '#/';
        } catch (err) {
          setToken('');
          toast(err.message, true);
        }
      },
    },
    h('label', { for: 'token' }, 'API token (the one `booth serve` was started with)'),
    input,
    h('p', { class: 'muted' }, 'It is kept in this browser (localStorage) and sent as an Authorization header.'),
    h('button', { type: 'submit' }, 'Sign in'),
  );
  render(h('h1', {}, 'Sign in'), form);
  input.focus();
}

// ---- sessions ---------------------------------------------------------------------------

async function sessionsPage() {
  const [{ sessions }, { baseModels }] = await Promise.all([api('GET', '/api/sessions'), api('GET', '/api/base-models')]);
  const resolutionSelect = h('select', { name: 'resolution' });
  // The resolutions the chosen base trains at (FLUX.1 and SD 3.5 offer 512, 768 and 1024 px).
  const showResolutions = (base) => {
    const info = baseModels.find((b) => b.name === base) ?? baseModels[0];
    resolutionSelect.replaceChildren(...info.resolutions.map((r) => h('option', { value: String(r), ...(r === info.resolution ? { selected: true } : {}) }, `${r} px`)));
  };
  showResolutions('sd15');
  const rows = sessions.map((s) =>
    h('tr', {}, h('td', {}, h('a', { href: `#/s/${enc(s.name)}` }, s.name)), h('td', {}, s.error ? h('span', { class: 'error' }, s.error) : `${s.subject.trigger} ${s.subject.classNoun}`), h('td', {}, s.state ? badge(s.state) : ''), h('td', {}, s.photos ? `${s.photos.accepted}/${s.photos.total} accepted` : ''), h('td', {}, s.base ?? '')),
  );
  const form = h(
    'form',
    {
      class: 'card grid-form',
      'aria-label': 'New session',
      onsubmit: async (e) => {
        e.preventDefault();
        const f = new FormData(e.target);
        try {
          const s = await api('POST', '/api/sessions', { name: f.get('name'), trigger: f.get('trigger'), classNoun: f.get('classNoun'), kind: f.get('kind'), base: f.get('base'), resolution: Number(f.get('resolution')) });
          location.hash = `#/s/${enc(s.name)}`;
        } catch (err) {
          fail(err);
        }
      },
    },
    h('label', {}, 'Name', h('input', { name: 'name', required: true, pattern: '[A-Za-z0-9][A-Za-z0-9._\\-]{0,63}', title: 'letters, digits, dot, underscore or hyphen; up to 64', placeholder: 'alice' })),
    h('label', {}, 'Trigger phrase', h('input', { name: 'trigger', required: true, value: 'ohwx' })),
    h('label', {}, 'Class noun', h('input', { name: 'classNoun', required: true, placeholder: 'woman' })),
    h('label', {}, 'Kind', h('select', { name: 'kind' }, h('option', { value: 'person' }, 'person'), h('option', { value: 'object' }, 'object'), h('option', { value: 'style' }, 'style'))),
    h('label', {}, 'Base model', h('select', { name: 'base', onchange: (e) => showResolutions(e.target.value) }, ...baseModels.map((b) => h('option', { value: b.name }, `${b.label} (${b.resolutions.join('/')} px)`)))),
    h('label', {}, 'Resolution', resolutionSelect),
    h('button', { type: 'submit' }, 'Create session'),
  );
  render(
    h('h1', {}, 'Sessions'),
    sessions.length ? h('div', { class: 'card' }, h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'Subject'), h('th', {}, 'State'), h('th', {}, 'Photos'), h('th', {}, 'Base'))), h('tbody', {}, rows))) : h('p', { class: 'muted' }, 'No sessions yet.'),
    h('h2', {}, 'New session'),
    form,
  );
}

// ---- photos and review ------------------------------------------------------------------

async function photosPage(name) {
  const data = await api('GET', `/api/sessions/${enc(name)}/photos`);
  const s = data.session;
  const status = h('p', { class: 'muted', id: 'prep-status' });
  const prepBar = h('progress', { max: 1, value: 0, hidden: true, 'aria-label': 'Preparation progress' });
  const prepare = h('button', { type: 'button', id: 'prepare', onclick: () => runPrepare() }, s.state === 'prepared' ? 'Prepare again' : 'Prepare');
  const fileInput = h('input', { type: 'file', multiple: true, accept: 'image/*', id: 'files', hidden: true, onchange: (e) => upload([...e.target.files]) });
  const list = h('ul', { class: 'uploads', 'aria-label': 'Uploads' });
  const drop = h(
    'div',
    {
      class: 'drop',
      tabindex: 0,
      role: 'button',
      'aria-label': 'Add photos: drop files here or press Enter to choose',
      onclick: () => fileInput.click(),
      onkeydown: (e) => (e.key === 'Enter' || e.key === ' ') && (e.preventDefault(), fileInput.click()),
      ondragover: (e) => (e.preventDefault(), drop.classList.add('over')),
      ondragleave: () => drop.classList.remove('over'),
      ondrop: (e) => {
        e.preventDefault();
        drop.classList.remove('over');
        upload([...e.dataTransfer.files]);
      },
    },
    h('strong', {}, 'Drop photos here'),
    h('div', { class: 'muted' }, 'or click to choose — JPEG, PNG, WebP, HEIC; duplicates are skipped'),
  );

  async function upload(files) {
    const queue = files.map((file) => {
      const bar = h('progress', { max: 1, value: 0, 'aria-label': `Upload of ${file.name}` });
      const result = h('span', { class: 'muted' }, 'waiting');
      list.append(h('li', {}, h('span', {}, file.name), bar, result));
      return { file, bar, result };
    });
    let next = 0;
    const worker = async () => {
      while (next < queue.length) {
        const q = queue[next++];
        q.result.textContent = 'uploading';
        try {
          const r = await uploadFile(name, q.file, (f) => (q.bar.value = f));
          q.bar.value = 1;
          q.result.replaceChildren(badge(r.outcome === 'added' ? 'accepted' : r.outcome === 'duplicate' ? 'pending' : 'rejected'), ` ${r.outcome}${r.reason ? `: ${r.reason}` : ''}`);
        } catch (err) {
          q.result.replaceChildren(h('span', { class: 'error' }, err.message));
        }
      }
    };
    await Promise.all([worker(), worker()]);
    toast('Upload finished. Prepare to see crops.');
    await refreshGrid();
  }

  async function runPrepare() {
    prepare.disabled = true;
    prepBar.hidden = false;
    try {
      let job = await api('POST', `/api/sessions/${enc(name)}/prepare`);
      while (job.state === 'running') {
        const p = job.progress;
        status.textContent = p ? `${p.phase}: ${p.done}/${p.total} ${p.item}` : 'starting…';
        prepBar.value = p && p.total ? p.done / p.total : 0;
        await new Promise((r) => setTimeout(r, 500));
        job = await api('GET', `/api/jobs/${job.id}`);
      }
      if (job.state === 'failed') throw new Error(job.error.message);
      status.textContent = `Prepared: ${job.result.counts.accepted} accepted, ${job.result.counts.excluded} excluded, ${job.result.counts.rejected} rejected.`;
      await refreshGrid();
    } catch (err) {
      fail(err);
      status.textContent = '';
    } finally {
      prepare.disabled = false;
      prepBar.hidden = true;
    }
  }

  const grid = h('div', { class: 'photos', id: 'grid' });
  async function refreshGrid() {
    const d = await api('GET', `/api/sessions/${enc(name)}/photos`);
    grid.replaceChildren(...d.photos.map((p) => photoCard(name, p, d.session)));
    state.replaceChildren(badge(d.session.state), d.session.state === 'prepared' ? ' ready to train' : ' prepare to apply changes');
  }
  const state = h('span', {});
  render(
    h('h1', {}, name),
    h('p', { class: 'muted' }, `${s.subject.trigger} ${s.subject.classNoun} · ${s.subject.kind} · ${s.base} · `, state),
    sessionTabs(name, 'photos'),
    drop,
    fileInput,
    list,
    h('div', { class: 'row', style: { marginTop: '16px' } }, prepare, prepBar, status),
    grid,
  );
  await refreshGrid();
}

/** A review card: the photo with its boxes, the crop (draggable, arrow keys), flags, caption, decision. */
function photoCard(session, p, s) {
  const src = p.source;
  const pct = (r) => ({ left: `${(100 * r.x) / src.width}%`, top: `${(100 * r.y) / src.height}%`, width: `${(100 * r.width) / src.width}%`, height: `${(100 * r.height) / src.height}%` });
  const frame = h('div', { class: 'frame' });
  if (p.urls.preview) frame.append(h('img', { src: p.urls.preview, alt: `${p.name}${p.face ? ', face outlined in yellow' : ''}${p.crop ? ', training crop in green' : ''}`, loading: 'lazy' }));
  if (src) {
    for (const f of p.faces) if (!f.subject) frame.append(h('div', { class: 'box other', style: pct(f.box), title: 'another face' }));
    if (p.face) frame.append(h('div', { class: 'box face', style: pct(p.face), title: 'subject face' }));
  }
  let crop = p.crop ? { ...p.crop } : null;
  if (crop && src && p.status !== 'rejected') {
    const box = h('div', { class: 'box crop', style: pct(crop), tabindex: 0, role: 'slider', 'aria-label': `Crop of ${p.name}: drag or use arrow keys, Enter to save`, 'aria-valuetext': `x ${crop.x}, y ${crop.y}, side ${crop.width}` });
    const move = (dx, dy) => {
      crop.x = Math.max(0, Math.min(src.width - crop.width, Math.round(crop.x + dx)));
      crop.y = Math.max(0, Math.min(src.height - crop.height, Math.round(crop.y + dy)));
      Object.assign(box.style, pct(crop));
      box.setAttribute('aria-valuetext', `x ${crop.x}, y ${crop.y}, side ${crop.width}`);
    };
    const save = async () => {
      try {
        const updated = await api('PUT', `/api/sessions/${enc(session)}/photos/${p.sha256}/crop`, crop);
        card.replaceWith(photoCard(session, updated, s));
        toast(`Crop of ${p.name} saved and re-rendered.`);
      } catch (err) {
        fail(err);
      }
    };
    let drag = null;
    box.addEventListener('pointerdown', (e) => {
      drag = { x: e.clientX, y: e.clientY, scale: src.width / frame.clientWidth };
      box.setPointerCapture(e.pointerId);
    });
    box.addEventListener('pointermove', (e) => {
      if (!drag) return;
      move((e.clientX - drag.x) * drag.scale, (e.clientY - drag.y) * drag.scale);
      drag.x = e.clientX;
      drag.y = e.clientY;
    });
    box.addEventListener('pointerup', () => {
      if (drag) void save();
      drag = null;
    });
    box.addEventListener('keydown', (e) => {
      const step = Math.max(1, Math.round(crop.width / 20)) * (e.shiftKey ? 4 : 1);
      const d = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] }[e.key];
      if (d) {
        e.preventDefault();
        move(d[0], d[1]);
      } else if (e.key === 'Enter') {
        e.preventDefault();
        void save();
      }
    });
    frame.append(box);
  }
  const caption = h('textarea', { rows: 2, 'aria-label': `Caption of ${p.name}`, disabled: p.status !== 'accepted' }, p.caption ?? '');
  const saveCaption = h(
    'button',
    {
      type: 'button',
      class: 'secondary',
      disabled: p.status !== 'accepted',
      onclick: async () => {
        try {
          const r = await api('PATCH', `/api/sessions/${enc(session)}/photos/${p.sha256}`, { caption: caption.value });
          toast(r.captionWarning ?? 'Caption saved.');
        } catch (err) {
          fail(err);
        }
      },
    },
    'Save caption',
  );
  const decide = (decision) => async () => {
    try {
      const r = await api('PATCH', `/api/sessions/${enc(session)}/photos/${p.sha256}`, { decision });
      card.replaceWith(photoCard(session, r, s));
      toast(`${p.name}: ${decision}. Prepare again to apply.`);
    } catch (err) {
      fail(err);
    }
  };
  const card = h(
    'article',
    { class: `photo ${p.status}`, 'aria-label': p.name },
    frame,
    h(
      'div',
      { class: 'body' },
      h('div', { class: 'row' }, h('span', { class: 'name' }, p.name), badge(p.status), p.override ? h('span', { class: 'flag' }, `by hand: ${p.override}`) : null),
      p.reason ? h('div', { class: 'muted' }, p.reason) : null,
      p.checks.length ? h('div', { class: 'flags' }, p.checks.map((c) => h('span', { class: 'flag', title: c.detail }, c.value !== null ? `${c.flag} ${c.value}` : c.flag))) : null,
      p.urls.crop ? h('div', { class: 'row' }, h('img', { class: 'thumb', src: p.urls.crop, alt: `Training image of ${p.name}` }), h('span', { class: 'muted' }, p.cropOverride ? 'crop set by hand' : `crop: ${p.cropStrategy ?? '–'}`, p.upscale > 1 ? ` · upscaled ${p.upscale}×` : '')) : null,
      caption,
      h('div', { class: 'row' }, saveCaption, p.status !== 'rejected' ? h('button', { type: 'button', class: 'secondary', onclick: decide(p.status === 'excluded' || p.override === 'exclude' ? 'include' : 'exclude') }, p.status === 'excluded' || p.override === 'exclude' ? 'Include' : 'Exclude') : null, p.override ? h('button', { type: 'button', class: 'link', onclick: decide('auto') }, 'Automatic') : null),
    ),
  );
  return card;
}

// ---- train ------------------------------------------------------------------------------

async function trainPage(name) {
  const [{ presets }, session] = await Promise.all([api('GET', '/api/presets'), api('GET', `/api/sessions/${enc(name)}`)]);
  // Only the presets made for this session's base model (a FLUX.1 session is not offered face-sd15).
  const fitting = presets.filter((p) => !p.bases || p.bases.includes(session.base));
  const preset = h('select', { id: 'preset', name: 'preset' }, h('option', { value: '' }, 'default for this session'), fitting.map((p) => h('option', { value: p.name, title: p.description }, p.name)));
  const steps = h('input', { id: 'steps', type: 'number', min: 1, placeholder: 'preset default' });
  const advanced = h('textarea', { id: 'advanced', rows: 6, placeholder: 'One override per line, e.g.\nschedule.unet.steps=2000\noptimizer.type=adamw\n— or a whole job spec as JSON' });
  const out = h('div', { id: 'estimate', class: 'card', hidden: true });
  const request = () => {
    const body = {};
    if (preset.value) body.preset = preset.value;
    if (steps.value) body.steps = Number(steps.value);
    const adv = advanced.value.trim();
    if (adv.startsWith('{')) {
      body.spec = JSON.parse(adv);
      delete body.preset;
    } else if (adv) body.set = adv.split('\n').map((l) => l.trim()).filter(Boolean);
    return body;
  };
  const estimate = async () => {
    try {
      const e = await api('POST', `/api/sessions/${enc(name)}/runs/estimate`, request());
      out.hidden = false;
      out.replaceChildren(
        h('div', { class: 'stats' }, h('div', { class: 'stat' }, h('b', {}, `${e.estimatedVramGb} GiB`), 'GPU memory (estimate)'), h('div', { class: 'stat' }, h('b', {}, e.totalSteps), 'steps'), h('div', { class: 'stat' }, h('b', {}, e.preset ?? 'custom'), 'preset'), h('div', { class: 'stat' }, h('b', {}, `${e.spec.resolution} px`), e.spec.mode.type)),
        h('p', { class: 'muted' }, e.stages.map((st) => `${st.name}: ${st.steps} steps`).join(' · '), ' — ', e.note),
        h('details', {}, h('summary', {}, 'Job spec'), h('pre', { class: 'log' }, JSON.stringify(e.spec, null, 2))),
      );
    } catch (err) {
      fail(err);
    }
  };
  const launch = async () => {
    try {
      const r = await api('POST', `/api/sessions/${enc(name)}/runs`, request());
      location.hash = `#/s/${enc(name)}/runs/${r.run}`;
    } catch (err) {
      fail(err);
    }
  };
  render(
    h('h1', {}, name),
    h('p', { class: 'muted' }, session.state === 'prepared' ? `${session.photos.accepted} accepted photos ready.` : 'Prepare the session before training.'),
    sessionTabs(name, 'train'),
    h('div', { class: 'card grid-form' }, h('label', { for: 'preset' }, 'Preset', preset), h('label', { for: 'steps' }, 'Total steps', steps)),
    h('h2', {}, 'Advanced'),
    h('label', { for: 'advanced' }, 'Overrides or full spec', advanced),
    h('div', { class: 'row', style: { margin: '12px 0' } }, h('button', { type: 'button', class: 'secondary', id: 'estimate-btn', onclick: estimate }, 'Estimate'), h('button', { type: 'button', id: 'launch', onclick: launch, disabled: session.state !== 'prepared' }, 'Start training')),
    out,
  );
}

// ---- runs -------------------------------------------------------------------------------

async function runsPage(name) {
  const { runs } = await api('GET', `/api/sessions/${enc(name)}/runs`);
  render(
    h('h1', {}, name),
    sessionTabs(name, 'runs'),
    runs.length
      ? h('div', { class: 'card' }, h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Run'), h('th', {}, 'State'), h('th', {}, 'Step'), h('th', {}, 'Preset'))), h('tbody', {}, runs.map((r) => h('tr', {}, h('td', {}, h('a', { href: `#/s/${enc(name)}/runs/${r.run}` }, r.run)), h('td', {}, r.state ? badge(r.state) : h('span', { class: 'error' }, r.error)), h('td', {}, `${r.step ?? 0}/${r.total ?? '?'}`), h('td', {}, r.preset ?? 'custom'))))))
      : h('p', { class: 'muted' }, 'No runs yet. ', h('a', { href: `#/s/${enc(name)}/train` }, 'Start one')),
  );
}

function drawChart(canvas, points, total) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth;
  const hgt = canvas.clientHeight;
  canvas.width = w * dpr;
  canvas.height = hgt * dpr;
  const g = canvas.getContext('2d');
  g.scale(dpr, dpr);
  g.clearRect(0, 0, w, hgt);
  const styles = getComputedStyle(document.documentElement);
  g.strokeStyle = styles.getPropertyValue('--line');
  g.fillStyle = styles.getPropertyValue('--muted');
  g.font = '12px system-ui';
  const pad = { l: 44, r: 10, t: 10, b: 22 };
  g.strokeRect(pad.l, pad.t, w - pad.l - pad.r, hgt - pad.t - pad.b);
  if (points.length < 1) {
    g.fillText('waiting for the first step…', pad.l + 8, pad.t + 20);
    return;
  }
  const losses = points.map((p) => p[1]);
  const lo = Math.min(...losses);
  const hi = Math.max(...losses);
  const span = hi - lo || 1;
  const x = (s) => pad.l + ((w - pad.l - pad.r) * s) / Math.max(1, total);
  const y = (l) => pad.t + (hgt - pad.t - pad.b) * (1 - (l - lo) / span);
  g.fillText(hi.toFixed(3), 4, pad.t + 10);
  g.fillText(lo.toFixed(3), 4, hgt - pad.b);
  g.fillText(`step ${total}`, w - pad.r - 60, hgt - 6);
  g.strokeStyle = styles.getPropertyValue('--accent');
  g.lineWidth = 1.5;
  g.beginPath();
  points.forEach(([s, l], i) => (i ? g.lineTo(x(s), y(l)) : g.moveTo(x(s), y(l))));
  g.stroke();
}

async function runPage(name, run) {
  const view = await api('GET', `/api/sessions/${enc(name)}/runs/${run}`);
  const points = new Map(view.lossHistory.map(([s, l]) => [s, l]));
  let total = view.total;
  const stateEl = h('span', { id: 'run-state' }, badge(view.state));
  const bar = h('div', {});
  const barWrap = h('div', { class: 'bar', role: 'progressbar', 'aria-label': 'Training progress', 'aria-valuemin': 0, 'aria-valuemax': total, 'aria-valuenow': view.step }, bar);
  const stat = (id, label) => {
    const b = h('b', { id }, '–');
    return [h('div', { class: 'stat' }, b, label), b];
  };
  const [stepCard, stepEl] = stat('stat-step', 'step');
  const [lossCard, lossEl] = stat('stat-loss', 'loss');
  const [etaCard, etaEl] = stat('stat-eta', 'ETA');
  const [speedCard, speedEl] = stat('stat-speed', 'it/s');
  const canvas = h('canvas', { class: 'chart', role: 'img', 'aria-label': 'Loss by step' });
  const samples = h('div', { class: 'samples', id: 'samples' });
  const log = h('pre', { class: 'log', id: 'log', 'aria-label': 'Log', tabindex: 0 });
  const message = h('p', { class: 'muted', id: 'run-message' });
  const conn = h('span', { class: 'muted', id: 'conn' }, 'connecting…');
  const seenSamples = new Set();
  const stopBtn = h('button', { type: 'button', class: 'danger', id: 'stop', onclick: () => act('stop') }, 'Stop');
  const resumeBtn = h('button', { type: 'button', class: 'secondary', id: 'resume', onclick: () => act('resume') }, 'Resume');
  const extendSteps = h('input', { type: 'number', min: 1, id: 'extend-steps', 'aria-label': 'New total steps', style: { width: '110px' } });
  const extendBtn = h('button', { type: 'button', class: 'secondary', id: 'extend', onclick: () => act('extend') }, 'Extend to');
  let follower = null;

  function update(v) {
    total = v.total || total;
    stateEl.replaceChildren(badge(v.state));
    stepEl.textContent = `${v.step}/${total}`;
    lossEl.textContent = v.loss !== null ? v.loss.toFixed(4) : '–';
    etaEl.textContent = ['running', 'starting'].includes(v.state) ? duration(v.etaS) : '–';
    speedEl.textContent = v.itPerS !== null ? v.itPerS.toFixed(2) : '–';
    bar.style.width = `${(100 * v.step) / Math.max(1, total)}%`;
    barWrap.setAttribute('aria-valuenow', v.step);
    barWrap.setAttribute('aria-valuemax', total);
    message.textContent = v.error ? `Error: ${v.error.message}` : (v.message ?? '');
    const active = ['launched', 'starting', 'running', 'stopping'].includes(v.state);
    stopBtn.disabled = !active;
    resumeBtn.disabled = !['stopped', 'preempted', 'failed', 'lost'].includes(v.state);
    extendBtn.disabled = active;
    extendSteps.placeholder = String(total + 500);
    for (const [s, l] of v.lossHistory) points.set(s, l);
    for (const sm of v.samples) addSample(sm);
    drawChart(canvas, [...points].sort((a, b) => a[0] - b[0]), total);
  }
  function addSample(sm) {
    const key = `${sm.step}/${sm.index}`;
    if (seenSamples.has(key)) return;
    seenSamples.add(key);
    samples.prepend(h('figure', {}, h('img', { src: sm.url, alt: `Sample at step ${sm.step}: ${sm.prompt}` }), h('figcaption', {}, `step ${sm.step}: ${sm.prompt}`)));
  }
  function appendLog(text) {
    const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
    log.append(`${text}\n`);
    if (log.childNodes.length > 1000) log.firstChild.remove();
    if (atEnd) log.scrollTop = log.scrollHeight;
  }
  function follow() {
    follower?.stop();
    follower = followRun(
      name,
      run,
      (type, data) => {
        if (type === 'status') update(data);
        else if (type === 'step') {
          points.set(data.step, data.loss);
          stepEl.textContent = `${data.step}/${data.total}`;
          lossEl.textContent = data.loss.toFixed(4);
          bar.style.width = `${(100 * data.step) / Math.max(1, data.total)}%`;
          if (data.step % 10 === 0 || data.step === data.total) appendLog(`step ${data.step}/${data.total} loss ${data.loss.toFixed(4)}`);
          drawChart(canvas, [...points].sort((a, b) => a[0] - b[0]), data.total);
        } else if (type === 'sample') addSample(data);
        else if (type === 'log') appendLog(data.text);
        else if (type === 'state') toast(`Run ${data.to}`);
        else if (type === 'end') conn.textContent = `finished: ${data.state}`;
        else if (type === 'error') toast(data.message, true);
      },
      (up) => (conn.textContent = up ? 'live' : 'reconnecting…'),
    );
  }
  async function act(what) {
    try {
      const body = what === 'extend' ? { steps: Number(extendSteps.value || total + 500) } : undefined;
      await api('POST', `/api/sessions/${enc(name)}/runs/${run}/${what}`, body);
      toast(what === 'stop' ? 'Stopping: the trainer saves a resume state first.' : `Run ${what === 'resume' ? 'resumed' : 'extended'}.`);
      follow();
    } catch (err) {
      fail(err);
    }
  }
  render(
    h('h1', {}, `Run ${run}`),
    h('p', { class: 'muted' }, h('a', { href: `#/s/${enc(name)}` }, name), ' · ', stateEl, ' · ', conn),
    sessionTabs(name, 'runs'),
    barWrap,
    h('div', { class: 'stats' }, stepCard, lossCard, etaCard, speedCard),
    message,
    h('div', { class: 'row' }, stopBtn, resumeBtn, extendBtn, extendSteps),
    h('h2', {}, 'Loss'),
    canvas,
    h('h2', {}, 'Samples'),
    samples,
    h('h2', {}, 'Log'),
    log,
  );
  update(view);
  follow();
  const onResize = () => drawChart(canvas, [...points].sort((a, b) => a[0] - b[0]), total);
  window.addEventListener('resize', onResize);
  cleanup = () => {
    follower?.stop();
    window.removeEventListener('resize', onResize);
  };
}

// ---- exports ----------------------------------------------------------------------------

async function exportsPage(name) {
  const { exports } = await api('GET', `/api/sessions/${enc(name)}/exports`);
  const status = h('p', { class: 'muted' });
  const create = h(
    'button',
    {
      type: 'button',
      id: 'export',
      onclick: async () => {
        create.disabled = true;
        try {
          let job = await api('POST', `/api/sessions/${enc(name)}/exports`, { dtype: 'fp16' });
          while (job.state === 'running') {
            status.textContent = job.progress ? `converting ${Math.round((100 * job.progress.done) / Math.max(1, job.progress.total))}%` : 'converting…';
            await new Promise((r) => setTimeout(r, 700));
            job = await api('GET', `/api/jobs/${job.id}`);
          }
          if (job.state === 'failed') throw new Error(job.error.message);
          await exportsPage(name);
        } catch (err) {
          fail(err);
          status.textContent = '';
        } finally {
          create.disabled = false;
        }
      },
    },
    'Export the newest finished run',
  );
  render(
    h('h1', {}, name),
    sessionTabs(name, 'exports'),
    h('div', { class: 'row' }, create, status),
    exports.length
      ? h('div', { class: 'card', style: { marginTop: '16px' } }, h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'File'), h('th', {}, 'Size'), h('th', {}, 'SHA-256'), h('th', {}, 'Kind'))), h('tbody', {}, exports.map((e) => h('tr', {}, h('td', {}, h('a', { href: e.downloadUrl, download: `${e.name}.safetensors` }, `${e.name}.safetensors`)), h('td', {}, bytes(e.size)), h('td', {}, h('code', { class: 'hash' }, e.sha256), h('div', { class: 'muted' }, `AutoV2 ${e.autov2}`)), h('td', {}, `${e.kind} · ${e.architecture} · ${e.dtype}`))))))
      : h('p', { class: 'muted' }, 'No exports yet.'),
  );
}

// ---- router -----------------------------------------------------------------------------

async function route() {
  cleanup();
  cleanup = () => {};
  const hash = location.hash || '#/';
  const [pathPart, query = ''] = hash.slice(1).split('?');
  const parts = pathPart.split('/').filter(Boolean).map(decodeURIComponent);
  document.getElementById('logout').hidden = !token();
  try {
    if (parts[0] === 'login') return loginPage(new URLSearchParams(query).get('next'));
    if (parts[0] === 's' && parts[1]) {
      const name = parts[1];
      document.title = `${name} · Booth`;
      if (parts[2] === 'train') return await trainPage(name);
      if (parts[2] === 'runs' && parts[3]) return await runPage(name, parts[3]);
      if (parts[2] === 'runs') return await runsPage(name);
      if (parts[2] === 'exports') return await exportsPage(name);
      return await photosPage(name);
    }
    document.title = 'Booth';
    return await sessionsPage();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return;
    render(h('h1', {}, 'Something went wrong'), h('p', { class: 'error' }, err.message ?? String(err)), h('a', { href: '#/' }, 'Back to sessions'));
  }
}

document.getElementById('logout').addEventListener('click', () => {
  setToken('');
  location.hash = '#/login';
});
window.addEventListener('hashchange', route);
void route();
