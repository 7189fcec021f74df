// The console's only script: what a page does without a reload. It calls the node's own API
// with the session cookie, and sends the session's CSRF token on every request that changes
// state. Nothing a function returns or logs is ever parsed as HTML: text goes in with
// textContent, and refreshed parts of a page come from the node's own escaped rendering.

const csrf = document.querySelector('meta[name="csrf"]')?.content;
const REFRESH_MS = 4000;
const LOG_POLL_MS = 2000;
const TIMEOUT_MS = 5000;

const $ = (id) => document.getElementById(id);

/** Whether the node answered the last request: the banner says when it did not. */
function reachable(ok) {
  const banner = $('offline');
  if (banner) banner.hidden = ok;
}

/** fetch with a deadline, the session cookie and, for writes, the CSRF token. */
async function call(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const method = (options.method || 'GET').toUpperCase();
  if (csrf && !['GET', 'HEAD', 'OPTIONS'].includes(method)) headers.set('x-ignition-csrf', csrf);
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), options.timeout || TIMEOUT_MS);
  try {
    const resp = await fetch(path, {
      ...options, method, headers, credentials: 'same-origin', signal: abort.signal,
    });
    reachable(true);
    if (resp.status === 403 && csrf) {
      // A session that expired or was signed out elsewhere: back to sign-in.
      const body = await resp.clone().json().catch(() => ({}));
      if (body.errorType === 'UnrecognizedClientException') {
        location.assign('/ui/sign-in?expired=1');
      }
    }
    return resp;
  } catch (e) {
    reachable(false);
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

// Live parts of a page: every [data-live] element is replaced by its newer rendering.
function followPage() {
  if (!document.querySelector('[data-live]')) return;
  const tick = async () => {
    try {
      const resp = await call(location.pathname + location.search);
      if (new URL(resp.url).pathname === '/ui/sign-in') {
        location.assign(resp.url);
        return;
      }
      const doc = new DOMParser().parseFromString(await resp.text(), 'text/html');
      for (const el of document.querySelectorAll('[data-live][id]')) {
        const fresh = doc.getElementById(el.id);
        if (fresh) el.replaceWith(document.importNode(fresh, true));
        else if (resp.status === 404) location.reload();
      }
    } catch (e) {
      // Unreachable: the banner is up; the next tick tries again.
    }
    setTimeout(tick, REFRESH_MS);
  };
  setTimeout(tick, REFRESH_MS);
}

function decodeBase64(b64) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

function show(id, text) {
  const el = $(id);
  if (el) el.textContent = text;
}

// The invoke form: the event is checked as JSON here, then sent to Lambda's Invoke.
function invokeForm() {
  const form = $('invoke-form');
  if (!form) return;
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const payload = $('payload').value;
    const err = $('payload-error');
    err.hidden = true;
    try {
      JSON.parse(payload);
    } catch (e) {
      err.textContent = `The event is not JSON: ${e.message}`;
      err.hidden = false;
      $('payload').setAttribute('aria-invalid', 'true');
      return;
    }
    $('payload').removeAttribute('aria-invalid');
    const button = form.querySelector('button');
    button.disabled = true;
    const name = encodeURIComponent(form.dataset.function);
    const started = performance.now();
    try {
      const resp = await call(`/2015-03-31/functions/${name}/invocations`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'X-Amz-Log-Type': 'Tail' },
        body: payload,
        timeout: 15 * 60 * 1000,
      });
      const text = await resp.text();
      const failed = resp.headers.get('X-Amz-Function-Error');
      let body = text;
      try { body = JSON.stringify(JSON.parse(text), null, 2); } catch (e) { /* not JSON */ }
      let status = `${resp.status}`;
      if (failed) status += ` · function error (${failed})`;
      else if (!resp.ok) status += ' · refused';
      else status += ' · succeeded';
      show('result-status', status);
      const timing = /total;dur=(\d+)/.exec(resp.headers.get('Server-Timing') || '');
      show('result-duration', timing ? `${timing[1]} ms on the node, ${Math.round(performance.now() - started)} ms here`
        : `${Math.round(performance.now() - started)} ms here`);
      const start = resp.headers.get('x-ignition-start');
      const startText = {
        boot: 'booted for it', restore: 'restored from a snapshot', pool: 'a warm pool slot', warm: 'a kept VM (reused)',
      }[start] || start || '–';
      show('result-start', startText);
      show('result-node', resp.headers.get('x-ignition-node') || '–');
      show('result-request', resp.headers.get('x-amzn-RequestId') || '–');
      show('result-body', body);
      const log = resp.headers.get('X-Amz-Log-Result');
      show('result-log', log ? decodeBase64(log) : '(no log)');
      $('invoke-result').hidden = false;
    } catch (e) {
      show('result-status', `The node did not answer: ${e.message}`);
      $('invoke-result').hidden = false;
    } finally {
      button.disabled = false;
    }
  });
}

// Logs, followed: new entries are appended as text.
function followLogs() {
  const pre = $('logs');
  if (!pre) return;
  const name = encodeURIComponent(pre.dataset.function);
  let since = 0;
  const tick = async () => {
    try {
      const resp = await call(`/v1/functions/${name}/logs?since=${since}&limit=1000`);
      if (resp.status === 404) {
        show('logs-state', 'the function is gone');
        return;
      }
      if (resp.ok) {
        const page = await resp.json();
        for (const entry of page.logs) {
          pre.append(document.createTextNode(entry.log.endsWith('\n') ? entry.log : `${entry.log}\n`));
        }
        if (page.logs.length) pre.scrollTop = pre.scrollHeight;
        since = page.next;
        show('logs-state', 'following');
      }
    } catch (e) {
      show('logs-state', 'paused: the node is not answering');
    }
    setTimeout(tick, LOG_POLL_MS);
  };
  tick();
}

// Which field an API validation message is about.
const FIELD_OF = [
  [/^FunctionName:|^invalid name/, 'name'],
  [/runtime/i, 'runtime'],
  [/^invalid memory|memory_mib/, 'memory'],
  [/^invalid timeout|timeout_s/, 'timeout'],
  [/^invalid env|environment|^env/, 'env'],
  [/^egress/, 'egress'],
  [/^invalid handler|^handler|handler is required/, 'handler'],
  [/code|bootstrap|archive|zip/i, 'code'],
];

function fieldOf(message) {
  for (const [re, field] of FIELD_OF) if (re.test(message)) return field;
  return null;
}

function clearErrors(form) {
  for (const el of form.querySelectorAll('.field-error, #form-error')) { el.hidden = true; el.textContent = ''; }
  for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
}

function fieldError(field, message) {
  const el = field && $(`${field}-error`);
  if (!el) {
    show('form-error', message);
    $('form-error').hidden = false;
    return;
  }
  el.textContent = message;
  el.hidden = false;
  $(field).setAttribute('aria-invalid', 'true');
}

function readBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).replace(/^data:[^,]*,/, ''));
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function lines(text) {
  return text.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
}

// The deploy form: checked here for what needs no node, then PUT /v1/functions/{name}; the
// API's validation message is shown next to the field it is about.
function deployForm() {
  const form = $('deploy-form');
  if (!form) return;
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    const name = $('name').value.trim();
    if (!name) return fieldError('name', 'A function needs a name.');
    const file = $('code').files[0];
    if (!file) return fieldError('code', 'Choose a .zip or .tar.gz of the code.');
    const env = {};
    for (const line of lines($('env').value)) {
      const eq = line.indexOf('=');
      if (eq < 1) return fieldError('env', `"${line}" is not KEY=VALUE.`);
      env[line.slice(0, eq)] = line.slice(eq + 1);
    }
    const number = (id) => {
      const v = $(id).value.trim();
      return /^\d+$/.test(v) ? Number(v) : null;
    };
    const memory = number('memory');
    if (memory === null) return fieldError('memory', 'Memory is a whole number of MiB.');
    const timeout = number('timeout');
    if (timeout === null) return fieldError('timeout', 'The timeout is a whole number of seconds.');
    const button = form.querySelector('button');
    button.disabled = true;
    show('deploy-state', 'Uploading…');
    try {
      const body = {
        runtime: $('runtime').value,
        handler: $('handler').value.trim(),
        memory_mib: memory,
        timeout_s: timeout,
        env,
        egress: lines($('egress').value),
        code: await readBase64(file),
      };
      const resp = await call(`/v1/functions/${encodeURIComponent(name)}`, {
        method: 'PUT',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(body),
        timeout: 120000,
      });
      if (resp.ok) {
        show('deploy-state', 'Deployed.');
        location.assign(`/ui/functions/${encodeURIComponent(name)}`);
        return;
      }
      const err = await resp.json().catch(() => ({ errorMessage: `HTTP ${resp.status}` }));
      show('deploy-state', '');
      fieldError(fieldOf(err.errorMessage || ''), err.errorMessage || `HTTP ${resp.status}`);
    } catch (e) {
      show('deploy-state', '');
      fieldError(null, `The node did not answer: ${e.message}`);
    } finally {
      button.disabled = false;
    }
  });
}

followPage();
invokeForm();
followLogs();
deployForm();
