// The admin console: plain DOM code, no library. It talks to the admin API with the session cookie
// (HttpOnly, set by POST session) and sends the CSRF token, kept in this page's memory only, with
// every change. Data from the server is only ever put in the page as text (textContent), never as HTML.
'use strict';

const POLL_ACCOUNTS_MS = 2000;
const POLL_TRAFFIC_MS = 5000;
const TABS = ['accounts', 'keys', 'traffic', 'try'];

const state = {
  csrf: null,
  tab: 'accounts',
  timer: null,
  keys: new Map(),
};

const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// --- talking to the gateway -------------------------------------------------------------------

function requestHeaders(method, hasBody) {
  const headers = { Accept: 'application/json' };
  if (hasBody) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && state.csrf) headers['X-CSRF-Token'] = state.csrf;
  return headers;
}

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: requestHeaders(method, body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'same-origin',
    cache: 'no-store',
  });
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  if (!response.ok) {
    const message = (data && data.error && data.error.message) || `${response.status} ${response.statusText}`;
    if (response.status === 401 && path !== 'session') showSignIn('Your session has ended: sign in again.');
    throw new ApiError(response.status, message);
  }
  return data;
}

function say(id, text, isError) {
  const element = $(id);
  if (!element) return;
  element.textContent = text || '';
  element.classList.toggle('error', Boolean(isError));
}

// --- signing in and out -------------------------------------------------------------------------

function showSignIn(message) {
  state.csrf = null;
  stopPolling();
  for (const tab of TABS) $(tab).hidden = true;
  $('tabs').hidden = true;
  $('demo-banner').hidden = true;
  $('sign-in').hidden = false;
  say('sign-in-error', message || '', true);
  $('admin-key').focus();
}

function showConsole(session) {
  state.csrf = session.csrf_token;
  const select = $('try-model');
  select.replaceChildren();
  for (const model of session.models || []) {
    const option = document.createElement('option');
    option.value = model;
    option.textContent = model;
    select.append(option);
  }
  $('demo-banner').hidden = !session.demo;
  $('sign-in').hidden = true;
  $('tabs').hidden = false;
  openTab(state.tab);
}

async function signIn(event) {
  event.preventDefault();
  const field = $('admin-key');
  say('sign-in-error', '');
  try {
    const session = await api('POST', 'session', { key: field.value });
    field.value = '';
    showConsole(session);
  } catch (error) {
    field.select();
    say('sign-in-error', error.status === 401 ? 'Wrong admin key.' : error.message, true);
  }
}

async function signOut() {
  try {
    await api('DELETE', 'session');
  } catch (_) {
    // signed out either way
  }
  showSignIn('Signed out.');
  say('sign-in-error', 'Signed out.', false);
}

async function resume() {
  const session = await fetch('session', { credentials: 'same-origin', cache: 'no-store' })
    .then((response) => response.json())
    .catch(() => ({ signed_in: false }));
  if (session.signed_in) showConsole(session);
  else showSignIn('');
}

// --- tabs and polling ---------------------------------------------------------------------------

function stopPolling() {
  if (state.timer !== null) clearTimeout(state.timer);
  state.timer = null;
}

function openTab(name) {
  state.tab = name;
  for (const tab of TABS) $(tab).hidden = tab !== name;
  for (const button of document.querySelectorAll('.tab')) {
    if (button.dataset.tab === name) button.setAttribute('aria-current', 'page');
    else button.removeAttribute('aria-current');
  }
  stopPolling();
  refresh();
}

async function refresh() {
  stopPolling();
  if (state.csrf === null || document.hidden) return; // a hidden page asks nothing; it refreshes when shown
  const tab = state.tab;
  try {
    if (tab === 'accounts') await loadCredentials();
    else if (tab === 'keys') await loadKeys();
    else if (tab === 'traffic') await loadTraffic();
  } catch (error) {
    if (error.status === 401) return;
    say(`${tab}-status`, error.message, true);
  }
  if (state.csrf === null || state.tab !== tab) return;
  const every = tab === 'accounts' ? POLL_ACCOUNTS_MS : tab === 'traffic' ? POLL_TRAFFIC_MS : null;
  if (every !== null) state.timer = setTimeout(refresh, every);
}

// --- small DOM helpers --------------------------------------------------------------------------

function cell(text, className) {
  const td = document.createElement('td');
  td.textContent = text === null || text === undefined || text === '' ? '—' : String(text);
  if (className) td.className = className;
  return td;
}

function button(label, onClick, className) {
  const element = document.createElement('button');
  element.type = 'button';
  element.textContent = label;
  if (className) element.className = className;
  element.addEventListener('click', onClick);
  return element;
}

function when(iso) {
  if (!iso) return null;
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

function confirmDialog(text, okLabel) {
  const dialog = $('confirm-dialog');
  $('confirm-text').textContent = text;
  $('confirm-ok').textContent = okLabel;
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
    dialog.returnValue = 'cancel';
    dialog.showModal();
    $('confirm-cancel').focus();
  });
}

// --- accounts -----------------------------------------------------------------------------------

async function loadCredentials() {
  const list = await api('GET', 'credentials');
  const counts = Object.entries(list.counts || {}).map(([name, count]) => `${count} ${name}`);
  $('pool-counts').textContent = `${list.data.length} credential(s)` + (counts.length ? `: ${counts.join(', ')}` : '');
  syncRows($('credentials').tBodies[0], list.data, credentialActions, credentialCells);
  $('credentials-empty').hidden = list.data.length > 0;
}

// Rows are updated in place, keyed by id, and their buttons are kept: the table refreshes every
// two seconds without taking the keyboard focus away from the button a user is on.
const signatures = new WeakMap();

function syncRows(body, items, actions, cells) {
  const existing = new Map([...body.rows].map((row) => [row.dataset.id, row]));
  items.forEach((item, index) => {
    let row = existing.get(item.id);
    existing.delete(item.id);
    if (!row) {
      row = document.createElement('tr');
      row.dataset.id = item.id;
      row.append(actions(item));
    }
    const signature = JSON.stringify(item);
    if (signatures.get(row) !== signature) {
      signatures.set(row, signature);
      while (row.cells.length > 1) row.deleteCell(0);
      row.prepend(...cells(item));
    }
    if (body.rows[index] !== row) body.insertBefore(row, body.rows[index] || null);
  });
  for (const row of existing.values()) row.remove();
}

function credentialCells(credential) {
  const stateCell = document.createElement('td');
  const badge = document.createElement('span');
  badge.className = `state state-${credential.state}`;
  badge.textContent = credential.state;
  stateCell.append(badge);
  if (credential.rest_reason) stateCell.append(` (${credential.rest_reason})`);
  const failures = Object.entries(credential.failures || {}).map(([kind, n]) => `${kind}: ${n}`).join(', ');
  return [
    cell(credential.id, 'mono'),
    cell(credential.preview, 'mono'),
    stateCell,
    cell(when(credential.cooling_until)),
    cell(credential.successes, 'num'),
    cell(failures || '0'),
    cell(credential.last_error, 'error-text'),
    cell(when(credential.last_used)),
    cell(credential.in_flight, 'num'),
    cell(credential.proxy),
    cell(credential.user_agent, 'error-text'),
  ];
}

function credentialActions(credential) {
  const actions = document.createElement('td');
  actions.className = 'actions';
  const id = credential.id;
  actions.append(
    button('Probe', () => credentialAction(id, 'probe'), null),
    button('Reset', () => credentialAction(id, 'reset'), null),
    button('Remove', () => removeCredential(id), 'danger'),
  );
  for (const element of actions.children) element.setAttribute('aria-label', `${element.textContent} ${id}`);
  return actions;
}

async function credentialAction(id, action) {
  say('accounts-status', `${action === 'probe' ? 'Probing' : 'Resetting'} ${id}…`);
  try {
    const result = await api('POST', `credentials/${encodeURIComponent(id)}/${action}`);
    if (action === 'probe') {
      say('accounts-status', result.ok ? `Probe of ${id}: ok.` : `Probe of ${id} failed: ${result.error}`, !result.ok);
    } else {
      say('accounts-status', `${id} reset: ${result.state}.`);
    }
  } catch (error) {
    say('accounts-status', error.message, true);
  }
  await refresh();
}

async function removeCredential(id) {
  if (!(await confirmDialog(`Remove credential ${id} from the pool? Its cookie is forgotten.`, 'Remove'))) return;
  try {
    await api('DELETE', `credentials/${encodeURIComponent(id)}`);
    say('accounts-status', `Removed ${id}.`);
  } catch (error) {
    say('accounts-status', error.message, true);
  }
  await refresh();
}

async function addCookies(event) {
  event.preventDefault();
  const field = $('cookies');
  const cookies = field.value.split(/\r?\n/).map((line) => line.trim()).filter(Boolean);
  if (!cookies.length) {
    say('accounts-status', 'Paste at least one cookie, one per line.', true);
    return;
  }
  try {
    const result = await api('POST', 'credentials', { cookies });
    field.value = '';
    const added = result.added.map((c) => c.id);
    const existing = result.existing.map((c) => c.id);
    say(
      'accounts-status',
      [added.length ? `Added ${added.join(', ')}.` : '', existing.length ? `Already there: ${existing.join(', ')}.` : '']
        .filter(Boolean)
        .join(' '),
    );
  } catch (error) {
    say('accounts-status', error.message, true);
  }
  await refresh();
}

// --- keys ---------------------------------------------------------------------------------------

function listOrNull(text) {
  const items = text.split(',').map((s) => s.trim()).filter(Boolean);
  return items.length ? items : null;
}

function numberOrNull(text) {
  return text.trim() === '' ? null : Number(text);
}

async function loadKeys() {
  const list = await api('GET', 'keys');
  state.keys = new Map(list.data.map((key) => [key.id, key]));
  syncRows($('key-table').tBodies[0], list.data, keyActions, keyCells);
  $('keys-empty').hidden = list.data.length > 0;
}

function keyCells(key) {
  return [
    cell(key.name),
    cell(key.id, 'mono'),
    cell(key.prefix, 'mono'),
    cell(key.source),
    cell(key.rpm, 'num'),
    cell(key.max_streams, 'num'),
    cell(key.models ? key.models.join(', ') : 'all'),
    cell(when(key.expires_at)),
    cell(key.disabled ? 'yes' : 'no'),
    cell(key.usage.requests, 'num'),
    cell(when(key.last_used)),
  ];
}

function keyActions(key) {
  const actions = document.createElement('td');
  actions.className = 'actions';
  if (key.source === 'env') {
    actions.textContent = 'fixed (API_KEYS)';
    return actions;
  }
  // The handlers look the key up again: its limits may have changed since the row was made.
  const limits = button('Limits', () => editLimits(state.keys.get(key.id) || key), null);
  limits.setAttribute('aria-label', `Change limits of ${key.name}`);
  const revoke = button('Revoke', () => revokeKey(state.keys.get(key.id) || key), 'danger');
  revoke.setAttribute('aria-label', `Revoke ${key.name}`);
  actions.append(limits, revoke);
  return actions;
}

async function createKey(event) {
  event.preventDefault();
  const fields = { name: $('key-name').value.trim() };
  const rpm = numberOrNull($('key-rpm').value);
  const streams = numberOrNull($('key-streams').value);
  const models = listOrNull($('key-models').value);
  const expires = $('key-expires').value;
  if (rpm !== null) fields.rpm = rpm;
  if (streams !== null) fields.max_streams = streams;
  if (models !== null) fields.models = models;
  if (expires) fields.expires_at = new Date(expires).toISOString();
  try {
    const created = await api('POST', 'keys', fields);
    $('key-form').reset();
    $('new-key-value').value = created.key;
    $('new-key').hidden = false;
    say('copy-status', '');
    say('keys-status', `Created ${created.name} (${created.id}).`);
    $('new-key-value').select();
  } catch (error) {
    say('keys-status', error.message, true);
  }
  await refresh();
}

async function copyKey() {
  const field = $('new-key-value');
  field.select();
  try {
    await navigator.clipboard.writeText(field.value);
    say('copy-status', 'Copied.');
  } catch (_) {
    say('copy-status', 'Selected: press Ctrl+C (or ⌘C) to copy.');
  }
}

function editLimits(key) {
  const dialog = $('limits-dialog');
  $('limits-title').textContent = `Change limits of ${key.name}`;
  $('limit-rpm').value = key.rpm ?? '';
  $('limit-streams').value = key.max_streams ?? '';
  $('limit-models').value = key.models ? key.models.join(', ') : '';
  $('limit-disabled').checked = Boolean(key.disabled);
  dialog.returnValue = 'cancel';
  dialog.addEventListener(
    'close',
    async () => {
      if (dialog.returnValue !== 'ok') return;
      const changes = {
        rpm: numberOrNull($('limit-rpm').value),
        max_streams: numberOrNull($('limit-streams').value),
        models: listOrNull($('limit-models').value),
        disabled: $('limit-disabled').checked,
      };
      try {
        await api('PATCH', `keys/${encodeURIComponent(key.id)}`, changes);
        say('keys-status', `Changed ${key.name}.`);
      } catch (error) {
        say('keys-status', error.message, true);
      }
      await refresh();
    },
    { once: true },
  );
  dialog.showModal();
}

async function revokeKey(key) {
  if (!(await confirmDialog(`Revoke the key ${key.name}? Clients using it are refused at once.`, 'Revoke'))) return;
  try {
    await api('DELETE', `keys/${encodeURIComponent(key.id)}`);
    say('keys-status', `Revoked ${key.name}.`);
    $('new-key').hidden = true;
    $('new-key-value').value = '';
  } catch (error) {
    say('keys-status', error.message, true);
  }
  await refresh();
}

// --- traffic ------------------------------------------------------------------------------------

const COLORS = {
  ok: '#1a7f37',
  client_error: '#9a6700',
  upstream_error: '#cf222e',
  ttft_p50_ms: '#1f6feb',
  ttft_p99_ms: '#8250df',
  streams: '#0969da',
};

function prepareCanvas(canvas) {
  const context = canvas.getContext('2d');
  context.clearRect(0, 0, canvas.width, canvas.height);
  context.font = '11px system-ui, sans-serif';
  return context;
}

function niceMax(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

function frame(context, canvas, top, minutes) {
  const left = 48;
  const bottom = canvas.height - 20;
  const width = canvas.width - left - 10;
  context.strokeStyle = '#d1d9e0';
  context.fillStyle = '#59636e';
  context.beginPath();
  for (const fraction of [0, 0.5, 1]) {
    const y = bottom - fraction * (bottom - 10);
    context.moveTo(left, y);
    context.lineTo(left + width, y);
    const value = top * fraction;
    context.fillText(Number.isInteger(value) ? String(value) : value.toFixed(1), 4, y + 4);
  }
  context.stroke();
  const label = (minute) => new Date(minute.minute).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  context.textAlign = 'left';
  context.fillText(label(minutes[0]), left, canvas.height - 5);
  context.textAlign = 'right';
  context.fillText(label(minutes[minutes.length - 1]), left + width, canvas.height - 5);
  context.textAlign = 'left';
  return { left, bottom, width, height: bottom - 10, slot: width / minutes.length };
}

function drawBars(canvas, minutes, series) {
  const context = prepareCanvas(canvas);
  const totals = minutes.map((m) => series.reduce((sum, name) => sum + (m[name] || 0), 0));
  const top = niceMax(Math.max(0, ...totals));
  const box = frame(context, canvas, top, minutes);
  minutes.forEach((minute, index) => {
    let y = box.bottom;
    for (const name of series) {
      const value = minute[name] || 0;
      if (!value) continue;
      const h = (value / top) * box.height;
      context.fillStyle = COLORS[name];
      context.fillRect(box.left + index * box.slot + 1, y - h, Math.max(1, box.slot - 2), h);
      y -= h;
    }
  });
}

function drawLines(canvas, minutes, series) {
  const context = prepareCanvas(canvas);
  const values = minutes.flatMap((m) => series.map((name) => m[name] || 0));
  const top = niceMax(Math.max(0, ...values));
  const box = frame(context, canvas, top, minutes);
  for (const name of series) {
    context.strokeStyle = COLORS[name];
    context.fillStyle = COLORS[name];
    context.lineWidth = 2;
    context.beginPath();
    let drawing = false;
    minutes.forEach((minute, index) => {
      const value = minute[name];
      if (value === null || value === undefined) {
        drawing = false;
        return;
      }
      const x = box.left + index * box.slot + box.slot / 2;
      const y = box.bottom - (value / top) * box.height;
      if (drawing) context.lineTo(x, y);
      else context.moveTo(x, y);
      drawing = true;
      context.fillRect(x - 2, y - 2, 4, 4);
    });
    context.stroke();
    context.lineWidth = 1;
  }
}

async function loadTraffic() {
  const traffic = await api('GET', 'traffic');
  const minutes = traffic.minutes.map((m) => ({ ...m, streams: m.streams_peak }));
  drawBars($('chart-requests'), minutes, ['ok', 'client_error', 'upstream_error']);
  drawLines($('chart-ttft'), minutes, ['ttft_p50_ms', 'ttft_p99_ms']);
  drawBars($('chart-streams'), minutes, ['streams']);
  const total = minutes.reduce((sum, m) => sum + m.ok + m.client_error + m.upstream_error, 0);
  const errors = minutes.reduce((sum, m) => sum + m.upstream_error, 0);
  const last = [...minutes].reverse().find((m) => m.ttft_p50_ms !== null);
  $('traffic-summary').textContent =
    `Last hour: ${total} request(s), ${errors} upstream error(s); ${traffic.streams_in_flight} stream(s) in flight now` +
    (last ? `; latest time to first token p50 ${last.ttft_p50_ms} ms, p99 ${last.ttft_p99_ms} ms.` : '.');
}

// --- try it -------------------------------------------------------------------------------------

// Server-sent events from a fetch body: lines split on CR, LF or CRLF, one event per blank line.
function sseEvents(onData) {
  let buffer = '';
  let data = [];
  return (chunk, done) => {
    buffer += chunk;
    const lines = buffer.split(/\r\n|\r|\n/);
    buffer = done ? '' : lines.pop();
    for (const line of lines) {
      if (line === '') {
        if (data.length) onData(data.join('\n'));
        data = [];
      } else if (line.startsWith('data:')) {
        data.push(line.slice(line.startsWith('data: ') ? 6 : 5));
      }
    }
    if (done && data.length) onData(data.join('\n'));
  };
}

async function tryIt(event) {
  event.preventDefault();
  const output = $('try-output');
  const send = $('try-send');
  output.textContent = '';
  say('try-status', 'Waiting for the first token…');
  send.disabled = true;
  const started = performance.now();
  let firstToken = null;
  let failure = null;
  let usage = null;
  try {
    const response = await fetch('try', {
      method: 'POST',
      headers: requestHeaders('POST', true),
      body: JSON.stringify({ message: $('try-message').value, model: $('try-model').value || undefined }),
      credentials: 'same-origin',
      cache: 'no-store',
    });
    if (!response.ok) {
      const data = await response.json().catch(() => null);
      if (response.status === 401) showSignIn('Your session has ended: sign in again.');
      throw new Error((data && data.error && data.error.message) || `${response.status} ${response.statusText}`);
    }
    const feed = sseEvents((data) => {
      if (data === '[DONE]') return;
      const chunk = JSON.parse(data);
      if (chunk.error) {
        failure = chunk.error.message;
        return;
      }
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        const text = choice.delta && choice.delta.content;
        if (text) {
          if (firstToken === null) {
            firstToken = performance.now() - started;
            say('try-status', `Streaming… first token after ${Math.round(firstToken)} ms.`);
          }
          output.textContent += text;
        }
      }
    });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await reader.read();
      feed(value || '', done);
      if (done) break;
    }
    if (failure) throw new Error(failure);
    const took = Math.round(performance.now() - started);
    const tokens = usage ? `, ${usage.completion_tokens} token(s) (estimated)` : '';
    say('try-status', `Done in ${took} ms; first token after ${Math.round(firstToken ?? took)} ms${tokens}.`);
  } catch (error) {
    say('try-status', `Failed: ${error.message}`, true);
  } finally {
    send.disabled = false;
  }
}

// --- start --------------------------------------------------------------------------------------

document.addEventListener('DOMContentLoaded', () => {
  $('sign-in-form').addEventListener('submit', signIn);
  $('sign-out').addEventListener('click', signOut);
  $('add-form').addEventListener('submit', addCookies);
  $('key-form').addEventListener('submit', createKey);
  $('copy-key').addEventListener('click', copyKey);
  $('try-form').addEventListener('submit', tryIt);
  for (const tab of document.querySelectorAll('.tab')) {
    tab.addEventListener('click', () => openTab(tab.dataset.tab));
  }
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden) refresh();
  });
  resume();
});
