#!/usr/bin/env node
// zfaas runtime bootstrap for Node.js "module.function" handlers.
//
// The zfaas worker runs this file as the function's main process. It loads
// the handler named by _HANDLER from LAMBDA_TASK_ROOT and then loops over the
// AWS Lambda Runtime API at AWS_LAMBDA_RUNTIME_API: fetch an event, call the
// handler, post the JSON-encoded result or the error.
//
// Handlers may be async functions, return a promise, take a callback as
// their third parameter, or return a value synchronously. "dir/mod.fn"
// loads <root>/dir/mod.js, .mjs or .cjs; "mod.a.b" calls the nested export
// a.b. Only the standard library is used.
'use strict';

const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const { pathToFileURL } = require('node:url');

const API_VERSION = '2018-06-01';
const ERROR_TYPE_HEADER = 'Lambda-Runtime-Function-Error-Type';

// RuntimeAPIError: the Runtime API refused a request (fatal = false) or could
// not be used at all (fatal = true).
class RuntimeAPIError extends Error {
  constructor(message, fatal) {
    super(message);
    this.name = 'RuntimeAPIError';
    this.fatal = fatal;
  }
}

// InitFailure carries the Runtime API error body of a handler that could not
// be loaded.
class InitFailure extends Error {
  constructor(report) {
    super(report.errorMessage);
    this.report = report;
  }
}

function parseAddress(addr) {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(addr) || /^([^:[\]]+):(\d+)$/.exec(addr);
  if (!m) {
    throw new Error(`AWS_LAMBDA_RUNTIME_API ${JSON.stringify(addr)} is not host:port`);
  }
  return { host: m[1], port: Number(m[2]) };
}

class RuntimeClient {
  constructor(address) {
    const { host, port } = parseAddress(address);
    this.host = host;
    this.port = port;
    this.agent = new http.Agent({ keepAlive: true });
  }

  // request resolves to {status, headers, body} or rejects with a non-fatal
  // RuntimeAPIError. A request on a reused keep-alive connection the server
  // already closed is retried once.
  request(method, p, body, headers, retried = false) {
    return new Promise((resolve, reject) => {
      const req = http.request({
        host: this.host,
        port: this.port,
        method,
        path: `/${API_VERSION}/runtime/${p}`,
        headers: { ...headers, 'Content-Length': body ? body.length : 0 },
        agent: this.agent,
      }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
        res.on('error', (e) => reject(new RuntimeAPIError(`${method} ${p}: ${e.message}`, false)));
      });
      req.on('error', (e) => {
        if (req.reusedSocket && !retried) {
          resolve(this.request(method, p, body, headers, true));
          return;
        }
        reject(new RuntimeAPIError(`${method} ${p}: ${e.message}`, false));
      });
      req.end(body);
    });
  }

  async next() {
    let res;
    try {
      res = await this.request('GET', 'invocation/next');
    } catch (e) {
      throw new RuntimeAPIError(e.message, true);
    }
    if (res.status !== 200) {
      throw new RuntimeAPIError(`GET next: status ${res.status}: ${res.body.toString().slice(0, 512)}`, true);
    }
    return res;
  }

  // post sends an answer. Its failure is never fatal: the next GET next
  // tells whether the Runtime API is still there.
  async post(p, payload, errorType) {
    const headers = { 'Content-Type': 'application/json' };
    if (errorType) {
      headers[ERROR_TYPE_HEADER] = errorType;
    }
    const res = await this.request('POST', p, payload, headers);
    if (res.status !== 202) {
      throw new RuntimeAPIError(`POST ${p}: status ${res.status}: ${res.body.toString().slice(0, 512)}`, false);
    }
  }

  postResponse(id, payload) {
    return this.post(`invocation/${encodeURIComponent(id)}/response`, payload);
  }

  postError(id, report) {
    return this.post(`invocation/${encodeURIComponent(id)}/error`, Buffer.from(JSON.stringify(report)), report.errorType);
  }

  postInitError(report) {
    return this.post('init/error', Buffer.from(JSON.stringify(report)), report.errorType);
  }
}

function stackLines(stack) {
  if (typeof stack !== 'string') {
    return [];
  }
  const lines = stack.split('\n');
  const first = lines.findIndex((l) => /^\s+at /.test(l));
  return (first < 0 ? [] : lines.slice(first)).map((l) => l.trim()).filter((l) => l !== '');
}

function errorName(err) {
  if (typeof err.name === 'string' && err.name !== '' && err.name !== 'Error') {
    return err.name;
  }
  const ctor = err.constructor && err.constructor.name;
  return ctor && ctor !== 'Object' ? ctor : 'Error';
}

// errorReport returns the Runtime API error body for anything thrown.
function errorReport(err, type) {
  if (err !== null && typeof err === 'object') {
    return {
      errorType: type || errorName(err),
      errorMessage: String(err.message ?? ''),
      stackTrace: stackLines(err.stack),
    };
  }
  let message;
  try {
    message = typeof err === 'string' ? err : JSON.stringify(err) ?? String(err);
  } catch {
    message = String(err);
  }
  return { errorType: type || typeof err, errorMessage: message, stackTrace: [] };
}

function logReport(report) {
  console.error(JSON.stringify(report));
}

// importFile loads a CommonJS or ES module file.
async function importFile(file) {
  if (file.endsWith('.mjs')) {
    return import(pathToFileURL(file).href);
  }
  try {
    return require(file);
  } catch (e) {
    // A .js file in a "type": "module" package.
    if (e && e.code === 'ERR_REQUIRE_ESM') {
      return import(pathToFileURL(file).href);
    }
    throw e;
  }
}

async function loadHandler(root, spec) {
  const slash = spec.lastIndexOf('/');
  const dir = spec.slice(0, slash + 1);
  const base = spec.slice(slash + 1);
  const dot = base.indexOf('.');
  const fnPath = base.slice(dot + 1).split('.');
  if (dot <= 0 || fnPath.some((k) => k === '')) {
    throw new InitFailure({
      errorType: 'Runtime.MalformedHandlerName',
      errorMessage: `Bad handler '${spec}': want module.function`,
      stackTrace: [],
    });
  }
  const modName = dir + base.slice(0, dot);
  const modPath = path.resolve(root, modName);
  const rel = path.relative(root, modPath);
  if (rel.startsWith('..') || path.isAbsolute(rel)) {
    throw new InitFailure({
      errorType: 'Runtime.MalformedHandlerName',
      errorMessage: `Bad handler '${spec}': the module must be inside ${root}`,
      stackTrace: [],
    });
  }
  const file = ['.js', '.mjs', '.cjs'].map((ext) => modPath + ext).find((f) => fs.existsSync(f));
  if (!file) {
    throw new InitFailure({
      errorType: 'Runtime.ImportModuleError',
      errorMessage: `Error: Cannot find module '${modName}' (looked for ${modName}.js, .mjs and .cjs in ${root})`,
      stackTrace: [],
    });
  }
  let mod;
  try {
    mod = await importFile(file);
  } catch (e) {
    let type;
    if (e instanceof SyntaxError) {
      type = 'Runtime.UserCodeSyntaxError';
    } else if (e && (e.code === 'MODULE_NOT_FOUND' || e.code === 'ERR_MODULE_NOT_FOUND')) {
      type = 'Runtime.ImportModuleError';
    }
    const report = errorReport(e, type);
    if (type) {
      report.errorMessage = `${errorName(e)}: ${report.errorMessage}`;
    }
    throw new InitFailure(report);
  }
  let fn = mod;
  for (const k of fnPath) {
    fn = fn == null ? undefined : fn[k];
  }
  // An ES module importing CommonJS exposes module.exports as default.
  if (typeof fn !== 'function' && mod && mod.default) {
    fn = mod.default;
    for (const k of fnPath) {
      fn = fn == null ? undefined : fn[k];
    }
  }
  if (typeof fn !== 'function') {
    throw new InitFailure({
      errorType: 'Runtime.HandlerNotFound',
      errorMessage: `${modName}.${fnPath.join('.')} is undefined or not a function`,
      stackTrace: [],
    });
  }
  return fn;
}

function parseJSONHeader(v) {
  if (!v) {
    return undefined;
  }
  try {
    return JSON.parse(v);
  } catch {
    return undefined;
  }
}

function makeContext(headers) {
  const deadline = Number(headers['lambda-runtime-deadline-ms']) || 0;
  const env = process.env;
  return {
    awsRequestId: headers['lambda-runtime-aws-request-id'] || '',
    invokedFunctionArn: headers['lambda-runtime-invoked-function-arn'] || '',
    functionName: env.AWS_LAMBDA_FUNCTION_NAME || '',
    functionVersion: env.AWS_LAMBDA_FUNCTION_VERSION || '$LATEST',
    memoryLimitInMB: env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE || '',
    logGroupName: env.AWS_LAMBDA_LOG_GROUP_NAME,
    logStreamName: env.AWS_LAMBDA_LOG_STREAM_NAME,
    clientContext: parseJSONHeader(headers['lambda-runtime-client-context']),
    identity: parseJSONHeader(headers['lambda-runtime-cognito-identity']),
    // Accepted for compatibility; the bootstrap answers as soon as the
    // handler's result is known.
    callbackWaitsForEmptyEventLoop: true,
    getRemainingTimeInMillis() {
      return Math.max(0, deadline - Date.now());
    },
  };
}

// callHandler resolves with the handler's result or rejects with its error,
// whichever style the handler uses.
function callHandler(handler, event, context) {
  return new Promise((resolve, reject) => {
    let settled = false;
    const settle = (err, result) => {
      if (settled) {
        return;
      }
      settled = true;
      if (err != null) {
        reject(err);
      } else {
        resolve(result);
      }
    };
    const callback = (err, result) => settle(err, result);
    context.done = callback;
    context.succeed = (result) => settle(null, result);
    context.fail = (err) => settle(err ?? new Error('context.fail called'));
    let ret;
    try {
      ret = handler(event, context, callback);
    } catch (e) {
      settle(e ?? new Error('the handler threw ' + String(e)));
      return;
    }
    if (ret !== null && (typeof ret === 'object' || typeof ret === 'function') && typeof ret.then === 'function') {
      ret.then((r) => settle(null, r), (e) => settle(e ?? new Error('the handler\'s promise was rejected without a reason')));
    } else if (handler.length < 3) {
      settle(null, ret); // a synchronous handler
    }
    // Otherwise the handler answers through the callback.
  });
}

let client;
let initialized = false;
let currentID = null;

async function handleOne(handler, res) {
  const id = res.headers['lambda-runtime-aws-request-id'] || '';
  const trace = res.headers['lambda-runtime-trace-id'];
  if (trace) {
    process.env._X_AMZN_TRACE_ID = trace;
  } else {
    delete process.env._X_AMZN_TRACE_ID;
  }
  currentID = id;
  try {
    let event;
    try {
      event = res.body.length ? JSON.parse(res.body.toString('utf8')) : null;
    } catch (e) {
      const report = errorReport(e, 'Runtime.UnmarshalError');
      logReport(report);
      await client.postError(id, report);
      return;
    }
    let result;
    try {
      result = await callHandler(handler, event, makeContext(res.headers));
    } catch (e) {
      const report = errorReport(e);
      logReport(report);
      await client.postError(id, report);
      return;
    }
    let payload;
    try {
      payload = Buffer.from(JSON.stringify(result === undefined ? null : result) ?? 'null');
    } catch (e) {
      const report = errorReport(e, 'Runtime.MarshalError');
      logReport(report);
      await client.postError(id, report);
      return;
    }
    await client.postResponse(id, payload);
  } finally {
    currentID = null;
  }
}

// fatal reports an error that escaped the handler and exits: the process
// state is unknown.
async function fatal(err, type) {
  const report = errorReport(err);
  if (type) {
    report.errorMessage = `${report.errorType}: ${report.errorMessage}`;
    report.errorType = type;
  }
  logReport(report);
  try {
    if (currentID !== null) {
      await client.postError(currentID, report);
    } else if (!initialized && client) {
      await client.postInitError(report);
    }
  } catch (e) {
    console.error(`bootstrap: ${e.message}`);
  }
  process.exit(1);
}

process.on('uncaughtException', (err) => fatal(err));
process.on('unhandledRejection', (reason) => fatal(reason, 'Runtime.UnhandledPromiseRejection'));

async function main() {
  const address = process.env.AWS_LAMBDA_RUNTIME_API;
  if (!address) {
    console.error('bootstrap: AWS_LAMBDA_RUNTIME_API is not set');
    process.exit(1);
  }
  client = new RuntimeClient(address);
  const root = process.env.LAMBDA_TASK_ROOT || process.cwd();
  let handler;
  try {
    handler = await loadHandler(root, process.env._HANDLER || '');
  } catch (e) {
    const report = e instanceof InitFailure ? e.report : errorReport(e);
    logReport(report);
    try {
      await client.postInitError(report);
    } catch (pe) {
      console.error(`bootstrap: report init error: ${pe.message}`);
    }
    process.exit(1);
  }
  initialized = true;
  for (;;) {
    try {
      const res = await client.next();
      await handleOne(handler, res);
    } catch (e) {
      // A refused answer (e.g. a response over the size limit) leaves the
      // instance usable; a lost API does not.
      console.error(`bootstrap: ${e.message}`);
      if (!(e instanceof RuntimeAPIError) || e.fatal) {
        process.exit(1);
      }
    }
  }
}

main();
