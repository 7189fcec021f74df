'use strict';
/**
 * Ignition's Node.js runtime: a client of the AWS Lambda Runtime API.
 *
 * It loads the handler named by _HANDLER (`FILE.EXPORT`, the file relative to LAMBDA_TASK_ROOT:
 * `FILE.js`, `FILE.mjs` or `FILE.cjs`, CommonJS or an ES module), then loops: fetch the next
 * event, call the handler as Lambda's Node.js runtime does (an async handler's promise, or a
 * callback handler's callback), post the result or the error. `console.*` lines carry the
 * request id; output goes to stdout, which the agent keeps as the invocation's log.
 *
 * A VM restored from a snapshot inherits this process whole, random generators included: V8's
 * `Math.random` state and OpenSSL's, behind `crypto.randomBytes`, `randomUUID` and the rest. So
 * those draw from the kernel's generator (`/dev/urandom`), which the agent reseeds with host
 * entropy on every restore, and what was drawn ahead is dropped when the VM changes.
 */

const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const nodeModule = require('module');
const path = require('path');
const { pathToFileURL } = require('url');
const util = require('util');

const BASE = '/2018-06-01/runtime';
const TASK_ROOT = process.env.LAMBDA_TASK_ROOT || '/var/task';

// ---------------------------------------------------------------------------------------------
// Random numbers from the kernel.

const urandom = fs.openSync('/dev/urandom', 'r');

/** Fills `bytes` (any ArrayBufferView) with bytes from /dev/urandom. */
function fillFromKernel(view) {
  const bytes = Buffer.from(view.buffer, view.byteOffset, view.byteLength);
  let done = 0;
  while (done < bytes.length) {
    done += fs.readSync(urandom, bytes, done, bytes.length - done, null);
  }
  return view;
}

/** Drawn ahead for Math.random; dropped when the VM changes. */
const mathPool = Buffer.alloc(8 * 512);
let mathAt = mathPool.length;

function mathRandom() {
  if (mathAt + 7 > mathPool.length) {
    fillFromKernel(mathPool);
    mathAt = 0;
  }
  // 53 random bits of 7 bytes: 32 from the first four, 21 from the next three.
  const lo = mathPool.readUInt32LE(mathAt);
  const hi = mathPool.readUIntLE(mathAt + 4, 3) >>> 3;
  mathAt += 7;
  return (hi * 4294967296 + lo) / 9007199254740992;
}

/** Replaces every random source a function reaches with one drawn from the kernel. */
function installKernelRandomness() {
  Math.random = mathRandom;

  const original = {
    randomFillSync: crypto.randomFillSync,
    randomInt: crypto.randomInt,
    getRandomValues: crypto.webcrypto.getRandomValues.bind(crypto.webcrypto),
  };

  crypto.randomFillSync = function randomFillSync(buf, offset, size) {
    // The original checks the arguments (and throws Node's own errors); its bytes are then
    // overwritten with the kernel's.
    original.randomFillSync(buf, offset, size);
    const view = ArrayBuffer.isView(buf) ? buf : new Uint8Array(buf);
    const unit = view.BYTES_PER_ELEMENT || 1;
    const start = (offset || 0) * unit;
    const length = size === undefined ? view.byteLength - start : size * unit;
    fillFromKernel(new Uint8Array(view.buffer, view.byteOffset + start, length));
    return buf;
  };

  crypto.randomBytes = function randomBytes(size, callback) {
    if (!Number.isSafeInteger(size) || size < 0 || size > 0x7fffffff) {
      // Node's own error for a bad size.
      return original.randomFillSync(Buffer.alloc(0), 0, size);
    }
    const buf = fillFromKernel(Buffer.allocUnsafe(size));
    if (typeof callback === 'function') {
      process.nextTick(callback, null, buf);
      return undefined;
    }
    return buf;
  };

  crypto.randomFill = function randomFill(buf, ...rest) {
    const callback = rest.pop();
    if (typeof callback !== 'function') {
      throw new TypeError('The "callback" argument must be of type function');
    }
    crypto.randomFillSync(buf, ...rest);
    process.nextTick(callback, null, buf);
  };

  crypto.randomUUID = function randomUUID() {
    const b = fillFromKernel(Buffer.alloc(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = b.toString('hex');
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  };

  crypto.randomInt = function randomInt(...args) {
    const callback = typeof args[args.length - 1] === 'function' ? args.pop() : undefined;
    const [min, max] = args.length === 1 ? [0, args[0]] : args;
    // Checks the range as Node does (throwing its errors); its draw is discarded.
    original.randomInt(min, max);
    const range = max - min;
    // Rejection sampling over 48 bits keeps every value equally likely.
    const limit = 2 ** 48 - (2 ** 48 % range);
    const six = Buffer.alloc(6);
    let x;
    do {
      x = fillFromKernel(six).readUIntBE(0, 6);
    } while (x >= limit);
    const value = min + (x % range);
    if (callback) {
      process.nextTick(callback, null, value);
      return undefined;
    }
    return value;
  };

  const getRandomValues = function getRandomValues(array) {
    original.getRandomValues(array);
    return fillFromKernel(array);
  };
  // `crypto.getRandomValues` is a fixed getter of a function that calls the method on
  // `crypto.webcrypto` (as `globalThis.crypto` is that object where Node has it): replacing the
  // method on that one object covers all three.
  crypto.webcrypto.getRandomValues = getRandomValues;
  // `import { randomBytes } from 'node:crypto'` sees the replacements too.
  nodeModule.syncBuiltinESMExports();
}

let lastVmId;

/** Drops what was drawn ahead in another VM (the one the snapshot was taken in). */
function reseedAfterRestore(vmId) {
  if (vmId !== lastVmId) {
    mathAt = mathPool.length;
    lastVmId = vmId;
  }
}

// ---------------------------------------------------------------------------------------------
// The Runtime API.

const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });

function target() {
  // The same API on a Unix socket: far less kernel code than TCP over loopback to run cold in a
  // VM just restored from a snapshot.
  if (process.env.IGNITION_RUNTIME_API_SOCKET) {
    return { socketPath: process.env.IGNITION_RUNTIME_API_SOCKET };
  }
  const address = process.env.AWS_LAMBDA_RUNTIME_API || '127.0.0.1:9001';
  const colon = address.lastIndexOf(':');
  return { host: address.slice(0, colon), port: Number(address.slice(colon + 1)) };
}

function requestOnce(method, apiPath, body, headers) {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? Buffer.alloc(0) : Buffer.from(body);
    const req = http.request(
      {
        ...target(),
        method,
        path: BASE + apiPath,
        agent,
        headers: { ...headers, 'Content-Length': payload.length },
      },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

async function request(method, apiPath, body, headers) {
  try {
    return await requestOnce(method, apiPath, body, headers);
  } catch (err) {
    // A kept-alive connection the agent closed: once more on a new one.
    return requestOnce(method, apiPath, body, headers);
  }
}

/** Lambda's error document for whatever was thrown or rejected. */
function errorDoc(err) {
  if (err instanceof Error) {
    return {
      errorType: err.name || 'Error',
      errorMessage: err.message,
      trace: typeof err.stack === 'string' ? err.stack.split('\n') : [],
    };
  }
  return { errorType: typeof err, errorMessage: String(err), trace: [] };
}

function postError(apiPath, doc) {
  return request('POST', apiPath, JSON.stringify(doc), {
    'Content-Type': 'application/json',
    // The error's name is the function's to choose: only what a header value may hold.
    'Lambda-Runtime-Function-Error-Type': String(doc.errorType).replace(/[^\x20-\x7e]/g, '').slice(0, 256),
  });
}

// ---------------------------------------------------------------------------------------------
// Logs.

/** The invocation in flight: its id goes on every console line, its errors to the platform. */
let current;

/** `console.*` as Lambda's runtime writes it: time, request id, level, message. */
function installConsole() {
  const levels = { log: 'INFO', info: 'INFO', warn: 'WARN', error: 'ERROR', debug: 'DEBUG', trace: 'TRACE' };
  for (const [method, level] of Object.entries(levels)) {
    console[method] = (...args) => {
      let message = util.format(...args);
      if (method === 'trace') {
        const stack = new Error().stack.split('\n').slice(2).join('\n');
        message = `Trace: ${message}\n${stack}`;
      }
      const id = current ? current.requestId : 'undefined';
      // Writes to a pipe are synchronous on Linux: the line is out before the answer is.
      process.stdout.write(`${new Date().toISOString()}\t${id}\t${level}\t${message}\n`);
    };
  }
}

// ---------------------------------------------------------------------------------------------
// The handler.

function initError(type, message) {
  const err = new Error(message);
  err.name = type;
  return err;
}

/** Loads `FILE.EXPORT` as Lambda does: the module ends at the first dot after the last slash. */
async function loadHandler() {
  const spec = process.env._HANDLER || '';
  const base = spec.lastIndexOf('/') + 1;
  const dot = spec.indexOf('.', base);
  if (dot <= base || dot === spec.length - 1) {
    throw initError('Runtime.MalformedHandlerName', `Bad handler ${spec}`);
  }
  const moduleName = spec.slice(0, dot);
  const exportPath = spec.slice(dot + 1);
  const root = path.resolve(TASK_ROOT, moduleName);
  const file = ['.js', '.mjs', '.cjs'].map((ext) => root + ext).find((f) => fs.existsSync(f));
  if (!file) {
    throw initError('Runtime.ImportModuleError', `Error: Cannot find module '${moduleName}'`);
  }
  let loaded;
  const asModule = () => import(pathToFileURL(file).href);
  try {
    if (file.endsWith('.mjs')) {
      loaded = await asModule();
    } else {
      try {
        loaded = require(file);
      } catch (err) {
        // A `.js` file under `"type": "module"` is an ES module.
        if (err && err.code === 'ERR_REQUIRE_ESM') {
          loaded = await asModule();
        } else {
          throw err;
        }
      }
    }
  } catch (err) {
    if (err instanceof SyntaxError) {
      throw initError('Runtime.UserCodeSyntaxError', `${err.name}: ${err.message}`);
    }
    if (err && (err.code === 'MODULE_NOT_FOUND' || err.code === 'ERR_MODULE_NOT_FOUND')) {
      throw initError('Runtime.ImportModuleError', `Error: ${err.message}`);
    }
    throw err;
  }
  let handler = loaded;
  for (const part of exportPath.split('.')) {
    handler = handler == null ? undefined : handler[part];
  }
  if (typeof handler !== 'function') {
    throw initError('Runtime.HandlerNotFound', `${path.basename(file)}.${exportPath} is undefined or not exported`);
  }
  return handler;
}

/** Lambda's `context` for one invocation. */
function makeContext(headers, settle) {
  const deadline = Number(headers['lambda-runtime-deadline-ms'] || 0);
  let clientContext;
  try {
    const raw = headers['lambda-runtime-client-context'];
    clientContext = raw ? JSON.parse(raw) : undefined;
  } catch (err) {
    clientContext = undefined;
  }
  const env = process.env;
  return {
    awsRequestId: headers['lambda-runtime-aws-request-id'] || '',
    invokedFunctionArn: headers['lambda-runtime-invoked-function-arn'] || '',
    functionName: env.AWS_LAMBDA_FUNCTION_NAME || '',
    functionVersion: env.AWS_LAMBDA_FUNCTION_VERSION || '$LATEST',
    memoryLimitInMB: env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE || '',
    logGroupName: env.AWS_LAMBDA_LOG_GROUP_NAME || '',
    logStreamName: env.AWS_LAMBDA_LOG_STREAM_NAME || '',
    identity: undefined,
    clientContext,
    // The answer goes when the handler settles; work it leaves running carries on in the VM.
    callbackWaitsForEmptyEventLoop: true,
    getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
    // The callbacks of Lambda's oldest Node.js runtimes.
    done: (err, value) => settle(err, value),
    succeed: (value) => settle(null, value),
    fail: (err) => settle(err === undefined || err === null ? 'handled' : err),
  };
}

/**
 * Calls the handler as Lambda does: a promise it returns is awaited; a handler that takes three
 * arguments answers through its callback; any other returns its value.
 */
function runHandler(handler, event, headers) {
  return new Promise((resolve, reject) => {
    let settled = false;
    const settle = (err, value) => {
      if (settled) return;
      settled = true;
      if (err === undefined || err === null) resolve(value);
      else reject(err);
    };
    const fail = (err) => {
      if (settled) return;
      settled = true;
      reject(err === undefined || err === null ? new Error(String(err)) : err);
    };
    const context = makeContext(headers, settle);
    let returned;
    try {
      returned = handler(event, context, settle);
    } catch (err) {
      fail(err);
      return;
    }
    if (returned && typeof returned.then === 'function') {
      returned.then((value) => settle(null, value), fail);
    } else if (handler.length < 3) {
      settle(null, returned);
    }
  });
}

/** An error nobody caught: reported for the invocation in flight; then the runtime ends. */
async function fatal(doc) {
  console.error(`${doc.errorType}: ${doc.errorMessage}`);
  const inFlight = current;
  current = undefined;
  try {
    if (inFlight) {
      await postError(`/invocation/${inFlight.requestId}/error`, doc);
    }
  } finally {
    process.exit(1);
  }
}

function installProcessHandlers() {
  process.on('uncaughtException', (err) => {
    fatal(errorDoc(err));
  });
  process.on('unhandledRejection', (reason) => {
    const inner = errorDoc(reason);
    const message = reason instanceof Error ? `${reason.name}: ${reason.message}` : String(reason);
    fatal({
      errorType: 'Runtime.UnhandledPromiseRejection',
      errorMessage: message,
      trace: [`Runtime.UnhandledPromiseRejection: ${message}`, ...inner.trace.slice(1)],
    });
  });
}

async function main() {
  installKernelRandomness();
  installConsole();
  installProcessHandlers();
  let handler;
  try {
    handler = await loadHandler();
  } catch (err) {
    const doc = errorDoc(err);
    console.error(`${doc.errorType}: ${doc.errorMessage}`);
    try {
      await postError('/init/error', doc);
    } finally {
      process.exit(1);
    }
  }
  for (;;) {
    const next = await request('GET', '/invocation/next');
    const headers = next.headers;
    const requestId = headers['lambda-runtime-aws-request-id'] || '';
    if (headers['ignition-warmup'] === '1') {
      // The platform warming a fresh VM: run the loop's own path, never the handler.
      JSON.stringify(next.body.length ? JSON.parse(next.body.toString('utf8')) : null);
      makeContext(headers, () => {}).getRemainingTimeInMillis();
      await request('POST', `/invocation/${requestId}/response`, 'null', { 'Content-Type': 'application/json' });
      continue;
    }
    reseedAfterRestore(headers['ignition-vm-id']);
    const invocation = { requestId };
    current = invocation;
    let body;
    let failure;
    try {
      const event = next.body.length ? JSON.parse(next.body.toString('utf8')) : null;
      const result = await runHandler(handler, event, headers);
      body = JSON.stringify(result === undefined ? null : result);
      if (body === undefined) body = 'null';
    } catch (err) {
      failure = errorDoc(err);
      console.error(`Invoke Error \t${JSON.stringify(failure)}`);
    }
    // An uncaught error may have answered for this invocation already.
    if (current !== invocation) continue;
    current = undefined;
    if (failure) {
      await postError(`/invocation/${requestId}/error`, failure);
    } else {
      await request('POST', `/invocation/${requestId}/response`, body, { 'Content-Type': 'application/json' });
    }
  }
}

// The runtime's own failure (the Runtime API gone): nothing to report it to but the log.
main().catch((err) => {
  process.stderr.write(`ignition runtime: ${(err && err.stack) || err}\n`);
  process.exit(1);
});
