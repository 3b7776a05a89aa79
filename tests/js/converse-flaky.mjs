// Measurement for issue 18 (bench/findings.md, "Issue 18: BOSH overactivity"), not a test:
// converse.js 14 (tests/browser/node_modules) in headless Chromium, logged in over BOSH with
// `keepalive` (a reload restores the BOSH session with the next rid) through whatever proxy
// --url points at, while a strophe.js client B sends it a chat message every 1-6 s. The page
// reloads 0.3-1.5 s after some of the responses that carried B's messages (every --reload-every
// th message), as a user does right after a message arrived. Counts what happened on the wire.
//
//   node converse-flaky.mjs --url U --domain localhost --a alice:alicepass --b bob:bobpass \
//        --seconds 90 [--reload-every 2]
//
// Prints {"ok":…, "reloads", "sids" (BOSH sessions the page used: 1 = every reload restored
// it), "terminates" (terminate responses the page got, by condition), "http" (responses by
// status), "delivered"/"sent" (B's messages seen in responses to the page)}; ok when the run
// finished (the counts are the result, whatever they are).
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from '../browser/node_modules/playwright-core/index.mjs';
import { CHROMIUM_ARGS } from '../browser/chromium.mjs';
import { parseArgs, usage, account, run, sleep, log } from './lib.mjs';
import { stropheLogging } from './strophe-env.mjs';
import { StropheClient } from './strophe-client.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const DIST = path.join(HERE, '..', 'browser', 'node_modules', 'converse.js', 'dist');
const args = parseArgs();
const url = typeof args.url === 'string' ? args.url : usage('--url is required');
const domain = typeof args.domain === 'string' ? args.domain : 'localhost';
const accA = account(args.a ?? 'alice:alicepass', '--a');
const accB = account(args.b ?? 'bob:bobpass', '--b');
const seconds = Number.parseInt(args.seconds ?? '90', 10);
const reloadEvery = Number.parseInt(args['reload-every'] ?? '2', 10);
stropheLogging(false);

// The page: converse.js with auto_login and keepalive, nothing else on it.
const PAGE = `<!doctype html><meta charset="utf-8"><title>converse flaky</title>
<link rel="stylesheet" href="/dist/converse.min.css"><script type="module" src="/dist/converse.min.js"></script>
<script type="module">converse.initialize(${JSON.stringify({
  assets_path: '/dist/', view_mode: 'overlayed', i18n: 'en', locales: ['en'], loglevel: 'warn',
  authentication: 'login', auto_login: true, keepalive: true, auto_reconnect: true,
  jid: `${accA.user}@${domain}`, password: accA.pass, bosh_service_url: url,
  persistent_store: 'sessionStorage', allow_registration: false, xmpp_providers_url: '',
  omemo_default: false, play_sounds: false, show_desktop_notifications: false,
  blacklisted_plugins: ['converse-omemo', 'converse-omemo-views', 'converse-push', 'converse-register'],
  discover_connection_methods: false,
})});</script>`;

function serve(req, res) {
  const p = new URL(req.url, 'http://x').pathname;
  if (p === '/') return res.writeHead(200, { 'content-type': 'text/html' }).end(PAGE);
  const file = path.normalize(path.join(DIST, decodeURIComponent(p.replace(/^\/dist\//, ''))));
  if (!p.startsWith('/dist/') || !file.startsWith(DIST + path.sep) || !fs.existsSync(file)) return res.writeHead(404).end();
  const type = { '.js': 'text/javascript', '.css': 'text/css', '.json': 'application/json', '.svg': 'image/svg+xml' }[path.extname(file)];
  res.writeHead(200, { 'content-type': type || 'application/octet-stream' });
  fs.createReadStream(file).pipe(res);
}

const state = { seconds, reloads: 0, sids: [], terminates: {}, http: {}, sent: 0, delivered: 0 };
run(async () => {
  const server = http.createServer(serve);
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const page_url = `http://127.0.0.1:${server.address().port}/`;
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: CHROMIUM_ARGS, headless: true });
  const page = await (await browser.newContext()).newPage();
  const bodies = new Set();
  let deliveredSince = 0;
  page.on('pageerror', (e) => log(`pageerror: ${e.message}`));
  page.on('console', (m) => m.type() === 'error' && log(`console.error: ${m.text()}`));
  page.on('request', (r) => {
    const sid = /sid=["']([^"']+)/.exec(r.postData() || '')?.[1];
    if (r.method() === 'POST' && sid && !state.sids.includes(sid)) state.sids.push(sid);
  });
  page.on('response', async (r) => {
    if (r.request().method() !== 'POST') return;
    state.http[r.status()] = (state.http[r.status()] ?? 0) + 1;
    const text = await r.text().catch(() => '');
    const tag = /<body[^>]*type=["']terminate["'][^>]*>/.exec(text)?.[0];
    if (tag) {
      const cond = /condition=["']([^"']+)/.exec(tag)?.[1] ?? 'none';
      state.terminates[cond] = (state.terminates[cond] ?? 0) + 1;
    }
    for (const b of bodies) {
      if (text.includes(b)) {
        bodies.delete(b);
        state.delivered++;
        deliveredSince++;
      }
    }
  });
  await page.goto(page_url);

  const B = new StropheClient('b', url, accB, { domain, stepMs: 20000 });
  await B.login();
  await B.presence();
  const end = Date.now() + seconds * 1000;
  while (Date.now() < end) {
    await sleep(1000 + Math.random() * 5000);
    const body = `b2a-${state.sent++}-${Math.random().toString(36).slice(2, 8)}`;
    bodies.add(body);
    B.send(`${accA.user}@${domain}`, body);
    if (deliveredSince >= reloadEvery) {
      deliveredSince = 0;
      await sleep(300 + Math.random() * 1200);
      state.reloads++;
      await page.reload().catch((e) => log(`reload: ${e.message}`));
    }
  }
  await sleep(3000);
  state.sessions = state.sids.length;
  await B.disconnect().catch(() => {});
  await browser.close();
  server.close();
  return {};
}, { deadlineMs: seconds * 1000 + 60000, partial: state });
