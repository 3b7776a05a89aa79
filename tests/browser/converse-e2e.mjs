// converse.js in headless Debian Chromium, driven by playwright-core, through xmpp-cm.
// Started by tests/browser_converse.rs (which starts Prosody and xmpp-cm) as
//
//   node converse-e2e.mjs '<json>'
//
// with {pagePort, artifacts, users:{a:{jid,password}, b:{…}}, scenarios:[…], chromiumArgs:[…],
// connectSrc:[…], budgetMs}. Each scenario gives A and B either {bosh}, {ws} or {discover:true}
// (then `expect` names the URLs converse.js must have found through host-meta).
//
// It serves the page and converse.js' dist/ itself on 127.0.0.1:pagePort (a different origin
// from xmpp-cm's, so CORS is exercised for real) with a Content-Security-Policy that allows only
// this origin and the loopback endpoints in connectSrc. Per scenario: two browser contexts log
// in through converse's login form, A types a message in converse's input and presses Enter, B's
// page shows it, B replies the same way, A's page shows the reply, both log out through the
// profile modal and its confirm dialog (checked on the wire: an answered BOSH terminate, or the
// WebSocket <close/> and the socket closing). Before the scenarios, a self-test proves the CSP
// blocks a fetch to an outside host without it reaching the network. Every request and WebSocket the pages open is recorded and checked: the
// transport and URL each page used, no request to a non-loopback host, no CSP violation.
//
// Prints progress and converse.js' console to stderr, one JSON line to stdout at the end
// ({"ok":true,…} or {"ok":false,"error":…,"screenshot":…}), exits 0 only on success. Every wait
// is bounded; the whole run also has a deadline (budgetMs).

import crypto from 'node:crypto';
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { CHROMIUM_ARGS } from './chromium.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const DIST = path.join(HERE, 'node_modules', 'converse.js', 'dist');
const cfg = JSON.parse(process.argv[2] || '{}');
const T0 = Date.now();
const STEP_MS = cfg.stepMs ?? 20000; // any single wait
const log = (...a) => console.error(`[e2e +${((Date.now() - T0) / 1000).toFixed(1)}s]`, ...a);

let lastScreenshot = null;
const consoleLines = [];
const problems = []; // CSP violations, non-loopback requests, page errors

// ------------------------------------------------------------------ static server
const TYPES = {
    '.html': 'text/html; charset=utf-8',
    '.js': 'text/javascript; charset=utf-8',
    '.mjs': 'text/javascript; charset=utf-8',
    '.css': 'text/css; charset=utf-8',
    '.json': 'application/json',
    '.map': 'application/json',
    '.wasm': 'application/wasm',
    '.svg': 'image/svg+xml',
    '.png': 'image/png',
    '.woff': 'font/woff',
    '.woff2': 'font/woff2',
    '.ttf': 'font/ttf',
    '.mp3': 'audio/mpeg',
    '.ogg': 'audio/ogg',
};

function csp() {
    const connect = ["'self'", ...(cfg.connectSrc || [])].join(' ');
    return [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "font-src 'self' data:",
        "media-src 'self' data: blob:",
        `connect-src ${connect}`,
        "worker-src 'self' blob:",
        "manifest-src 'self'",
        "frame-src 'none'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
    ].join('; ');
}

function serve(req, res) {
    const url = new URL(req.url, 'http://x');
    let file = null;
    if (url.pathname === '/' || url.pathname === '/index.html') file = path.join(HERE, 'index.html');
    else if (url.pathname === '/page.js') file = path.join(HERE, 'page.js');
    else if (url.pathname === '/csp-probe') {
        // An empty page under the same policy, for the CSP self-test.
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'content-security-policy': csp() });
        res.end('<!doctype html><title>csp probe</title>');
        return;
    } else if (url.pathname.startsWith('/dist/')) {
        const p = path.normalize(path.join(DIST, decodeURIComponent(url.pathname.slice('/dist/'.length))));
        if (p.startsWith(DIST + path.sep)) file = p;
    }
    if (!file || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
        return;
    }
    res.writeHead(200, {
        'content-type': TYPES[path.extname(file)] || 'application/octet-stream',
        'content-security-policy': csp(),
        'cache-control': 'no-store',
    });
    fs.createReadStream(file).pipe(res);
}

// ------------------------------------------------------------------ helpers
const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]']);
function isLoopback(u) {
    try {
        const { protocol, hostname } = new URL(u);
        if (['data:', 'blob:', 'about:'].includes(protocol)) return true;
        return LOOPBACK.has(hostname);
    } catch {
        return false;
    }
}

async function withTimeout(p, ms, what) {
    let timer;
    const t = new Promise((_, rej) => {
        timer = setTimeout(() => rej(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    });
    try {
        return await Promise.race([p, t]);
    } finally {
        clearTimeout(timer);
    }
}

async function shot(page, name) {
    const file = path.join(cfg.artifacts, `${name}.png`);
    try {
        await page.screenshot({ path: file, timeout: 5000 });
        lastScreenshot = file;
    } catch (e) {
        log(`screenshot ${name} failed: ${e.message}`);
    }
    return file;
}

/** One user in one browser context: page, and everything it sent over the network. */
class User {
    constructor(scenario, who, account, transport) {
        this.tag = `${scenario}/${who}`;
        this.account = account;
        this.transport = transport;
        this.requests = []; // {method, url}
        this.websockets = []; // urls
    }

    async open(browser) {
        this.context = await browser.newContext({ viewport: { width: 1100, height: 750 } });
        const page = (this.page = await this.context.newPage());
        page.setDefaultTimeout(STEP_MS);
        page.on('console', (m) => {
            const line = `[${this.tag}] console.${m.type()}: ${m.text()}`;
            consoleLines.push(line);
            if (m.type() === 'error' && /Content Security Policy|Refused to/.test(m.text())) problems.push(line);
        });
        page.on('pageerror', (e) => {
            const line = `[${this.tag}] pageerror: ${e.stack || e.message}`;
            consoleLines.push(line);
            // converse.js 14's pagehide handler (muc/utils.js onStatusInitialized) calls
            // api.connection.isType() after logout has destroyed the connection; it throws
            // while the test closes the page. Only errors before that count.
            if (!this.closing) problems.push(line);
        });
        page.on('response', async (r) => {
            const req = r.request();
            if (req.method() === 'POST' && /type=["']terminate["']/.test(req.postData() || '') && r.status() === 200) this.terminated = true;
        });
        page.on('request', (r) => {
            this.requests.push({ method: r.method(), url: r.url() });
            if (!isLoopback(r.url())) problems.push(`[${this.tag}] request to a non-loopback host: ${r.method()} ${r.url()}`);
        });
        page.on('requestfailed', (r) => consoleLines.push(`[${this.tag}] requestfailed: ${r.method()} ${r.url()} ${r.failure()?.errorText}`));
        page.on('websocket', (ws) => {
            this.websockets.push(ws.url());
            if (!isLoopback(ws.url())) problems.push(`[${this.tag}] WebSocket to a non-loopback host: ${ws.url()}`);
            ws.on('socketerror', (e) => consoleLines.push(`[${this.tag}] websocket error ${ws.url()}: ${e}`));
            ws.on('framesent', (f) => {
                if (/^<close[ /]/.test(String(f.payload))) this.sentClose = true;
            });
            ws.on('close', () => {
                this.wsClosed = true;
            });
        });
        await page.addInitScript((t) => {
            window.__XMPPCM_TEST__ = t;
            window.__cspViolations = [];
            document.addEventListener('securitypolicyviolation', (e) => {
                window.__cspViolations.push(`${e.violatedDirective} blocked ${e.blockedURI}`);
            });
        }, this.transport);
        await page.goto(`http://127.0.0.1:${cfg.pagePort}/index.html`, { waitUntil: 'load', timeout: STEP_MS });
    }

    /**
     * Make `target` (a selector inside the control box) visible: in the overlayed view the
     * control box (login form, profile) may be closed, behind a "Chat" button.
     */
    async inControlBox(target) {
        const page = this.page;
        await page.waitForFunction(
            (sel) => {
                const visible = (el) => !!el && el.getClientRects().length > 0;
                return visible(document.querySelector(sel)) || visible(document.querySelector('button.toggle-controlbox'));
            },
            target,
            { timeout: STEP_MS, polling: 100 },
        );
        const el = page.locator(target).first();
        if (!(await el.isVisible())) await page.locator('button.toggle-controlbox').click();
        await el.waitFor({ state: 'visible' });
        return el;
    }

    async login() {
        const page = this.page;
        const jid = await this.inControlBox('input[name="jid"]');
        await jid.fill(this.account.jid);
        await page.locator('input[name="password"]').fill(this.account.password);
        await page.locator('converse-login-form button[type="submit"]').first().click();
        await page.waitForFunction(
            () => {
                const api = window.__converse?.api;
                return api?.connection?.connected?.() && api.connection.authenticated?.() && window.__converse.session?.get('bare_jid');
            },
            null,
            { timeout: STEP_MS, polling: 100 },
        );
        // The logged-in UI: the profile in the control box shows up.
        await this.inControlBox('a.show-profile');
        const info = await page.evaluate(() => {
            const api = window.__converse.api;
            const c = api.connection.get();
            return {
                websocket: api.connection.isType('websocket'),
                bosh: api.connection.isType('bosh'),
                service: c.service,
                jid: c.jid,
                // What converse.js knows of (given, or found through host-meta).
                known: { bosh: api.settings.get('bosh_service_url') ?? null, ws: api.settings.get('websocket_url') ?? null },
            };
        });
        log(`${this.tag} logged in as ${info.jid} via ${info.websocket ? 'WebSocket' : info.bosh ? 'BOSH' : '?'} ${info.service}`);
        this.info = info;
        return info;
    }

    async openChat(peerJid) {
        // converse.js' own API for "start a chat with X" (what its "Start a new chat" modal calls).
        await withTimeout(
            this.page.evaluate((j) => window.__converse.api.chats.open(j, {}, true).then(() => true), peerJid),
            STEP_MS,
            `${this.tag} opening the chat with ${peerJid}`,
        );
        this.peer = peerJid;
        await this.chat().locator('textarea.chat-textarea').waitFor({ state: 'visible' });
    }

    chat() {
        return this.page.locator(`converse-chat[jid="${this.peer}"]`);
    }

    async say(text) {
        const box = this.chat().locator('textarea.chat-textarea');
        await box.click();
        await box.pressSequentially(text, { delay: 5 });
        await box.press('Enter');
        // Our own message shows in our history.
        await this.chat().locator('.chat-msg__text', { hasText: text }).first().waitFor({ state: 'visible' });
    }

    async sees(text) {
        await this.chat().locator('.chat-msg__text', { hasText: text }).first().waitFor({ state: 'visible' });
    }

    async logout() {
        const page = this.page;
        await (await this.inControlBox('a.show-profile')).click();
        const button = page.locator('converse-profile-modal button.btn-danger', { hasText: 'Log out' });
        await button.waitFor({ state: 'visible' });
        await button.click();
        // converse asks "Are you sure you want to log out?" in its own confirm modal.
        const ok = page.locator('.modal.show button[type="submit"]', { hasText: /OK|Confirm|Yes/ }).last();
        await ok.waitFor({ state: 'visible' });
        await ok.click();
        await page.waitForFunction(() => !window.__converse?.api?.connection?.connected?.(), null, { timeout: STEP_MS, polling: 100 });
        // (converse.js 14 then renders an empty page until reloaded, in both the overlayed and
        // the fullscreen view, so there is no login form to wait for.) The stream really ended:
        if (this.info.bosh) {
            // strophe's terminate body, answered 200 by xmpp-cm.
            const deadline = Date.now() + STEP_MS;
            while (!this.terminated && Date.now() < deadline) await page.waitForTimeout(50);
            if (!this.terminated) throw new Error(`${this.tag}: no answered BOSH terminate request after logging out`);
        } else {
            // strophe's <close/>, then the socket closed.
            const deadline = Date.now() + STEP_MS;
            while (!(this.sentClose && this.wsClosed) && Date.now() < deadline) await page.waitForTimeout(50);
            if (!(this.sentClose && this.wsClosed)) {
                throw new Error(`${this.tag}: after logging out: <close/> sent: ${!!this.sentClose}, WebSocket closed: ${!!this.wsClosed}`);
            }
        }
    }

    async cspViolations() {
        return this.page.evaluate(() => window.__cspViolations.slice()).catch(() => []);
    }

    async close() {
        this.closing = true;
        await this.context?.close().catch(() => {});
    }
}

/** Check that `u` used exactly the transport/URL it was given (or, with discovery, expected). */
function checkTransport(u, want) {
    const errs = [];
    const bosh = want.bosh;
    const ws = want.ws;
    const boshPosts = u.requests.filter((r) => r.method === 'POST' && bosh && r.url === bosh);
    const otherXmpp = u.requests.filter((r) => /\/http-bind|\/xmpp-websocket/.test(r.url) && r.url !== bosh);
    if (bosh) {
        if (!u.info.bosh || u.info.service !== bosh) errs.push(`expected BOSH ${bosh}, converse used ${JSON.stringify(u.info)}`);
        if (boshPosts.length < 3) errs.push(`only ${boshPosts.length} POSTs to ${bosh}`);
        if (u.websockets.length) errs.push(`a BOSH page opened WebSockets: ${u.websockets.join(', ')}`);
    }
    if (ws) {
        if (!u.info.websocket || u.info.service !== ws) errs.push(`expected WebSocket ${ws}, converse used ${JSON.stringify(u.info)}`);
        if (!u.websockets.includes(ws)) errs.push(`no WebSocket to ${ws} seen (saw ${JSON.stringify(u.websockets)})`);
        if (u.websockets.some((w) => w !== ws)) errs.push(`other WebSockets: ${u.websockets.join(', ')}`);
    }
    if (otherXmpp.length) errs.push(`requests to other XMPP endpoints: ${otherXmpp.map((r) => `${r.method} ${r.url}`).join(', ')}`);
    if (errs.length) throw new Error(`${u.tag}: ${errs.join('; ')}`);
    return { posts: boshPosts.length, websockets: u.websockets.length, service: u.info.service };
}

async function runScenario(browser, sc) {
    log(`--- scenario ${sc.name}`);
    const a = new User(sc.name, 'A', cfg.users.a, sc.a);
    const b = new User(sc.name, 'B', cfg.users.b, sc.b);
    try {
        await a.open(browser);
        await b.open(browser);
        await shot(a.page, `${sc.name}-A-0-login-form`);
        await Promise.all([a.login(), b.login()]);
        await a.openChat(cfg.users.b.jid);
        await b.openChat(cfg.users.a.jid);
        const hello = `hello from A over ${sc.name} ${Math.random().toString(36).slice(2, 8)}`;
        const reply = `reply from B over ${sc.name} ${Math.random().toString(36).slice(2, 8)}`;
        await a.say(hello);
        await b.sees(hello);
        log(`${sc.name}: B sees "${hello}"`);
        await b.say(reply);
        await a.sees(reply);
        log(`${sc.name}: A sees "${reply}"`);
        await shot(a.page, `${sc.name}-A-1-chat`);
        await shot(b.page, `${sc.name}-B-1-chat`);
        await a.logout();
        await b.logout();
        await shot(a.page, `${sc.name}-A-2-logged-out`);
        const result = {
            a: checkTransport(a, sc.expect?.a || sc.a),
            b: checkTransport(b, sc.expect?.b || sc.b),
        };
        if (sc.expectHostMeta) {
            for (const u of [a, b]) {
                if (JSON.stringify(u.info.known) !== JSON.stringify(sc.discovered)) {
                    throw new Error(`${u.tag}: discovered ${JSON.stringify(u.info.known)}, expected ${JSON.stringify(sc.discovered)}`);
                }
                if (!u.requests.some((r) => r.method === 'GET' && r.url === sc.expectHostMeta)) {
                    throw new Error(`${u.tag}: no GET ${sc.expectHostMeta} seen`);
                }
            }
            result.hostMeta = sc.expectHostMeta;
            result.discovered = a.info.known;
        }
        for (const u of [a, b]) {
            const v = await u.cspViolations();
            for (const x of v) problems.push(`[${u.tag}] CSP violation: ${x}`);
        }
        log(`${sc.name}: ok ${JSON.stringify(result)}`);
        return result;
    } catch (e) {
        await shot(a.page, `${sc.name}-A-failed`);
        await shot(b.page, `${sc.name}-B-failed`);
        throw e;
    } finally {
        await a.close();
        await b.close();
    }
}

/** The CSP really blocks an off-machine host (the request never leaves the browser). */
async function cspSelfTest(browser) {
    const u = new User('csp', 'probe', cfg.users.a, { probeOnly: true });
    try {
        u.context = await browser.newContext();
        const page = (u.page = await u.context.newPage());
        const sent = [];
        page.on('request', (r) => sent.push(r.url()));
        await page.addInitScript(() => {
            window.__XMPPCM_TEST__ = { probeOnly: true };
            window.__cspViolations = [];
            document.addEventListener('securitypolicyviolation', (e) => window.__cspViolations.push(e.blockedURI));
        });
        // Not index.html: no converse.js needed for this, only the policy.
        await page.goto(`http://127.0.0.1:${cfg.pagePort}/csp-probe`, { timeout: STEP_MS });
        const outcome = await page.evaluate(async () => {
            try {
                await fetch('https://example.com/', { mode: 'cors' });
                return 'fetched';
            } catch (e) {
                return `blocked: ${e.message}`;
            }
        });
        await page.waitForFunction(() => window.__cspViolations.length > 0, null, { timeout: 5000 });
        const v = await page.evaluate(() => window.__cspViolations.slice());
        if (outcome === 'fetched' || !v.some((x) => x.startsWith('https://example.com'))) {
            throw new Error(`CSP self-test: a fetch to https://example.com was not blocked by the CSP (${outcome}, ${JSON.stringify(v)})`);
        }
        if (sent.some((x) => x.startsWith('https://example.com'))) {
            throw new Error('CSP self-test: the blocked request still reached the network layer');
        }
        log(`CSP self-test: fetch to example.com ${outcome}; violation reported`);
    } finally {
        await u.close();
    }
}

// ------------------------------------------------------------------ main
let server;
let browser;
async function main() {
    fs.mkdirSync(cfg.artifacts, { recursive: true });
    server = http.createServer(serve);
    await new Promise((res, rej) => server.once('error', rej).listen(cfg.pagePort, '127.0.0.1', res));
    const args = [...CHROMIUM_ARGS, ...(cfg.chromiumArgs || [])];
    if (cfg.trustSpkiOf) {
        // Trust exactly the test certificate's key (SHA-256 of its SubjectPublicKeyInfo), not
        // every certificate as ignoreHTTPSErrors would.
        const cert = new crypto.X509Certificate(fs.readFileSync(cfg.trustSpkiOf));
        const spki = cert.publicKey.export({ type: 'spki', format: 'der' });
        args.push(`--ignore-certificate-errors-spki-list=${crypto.createHash('sha256').update(spki).digest('base64')}`);
    }
    // No --user-data-dir here: playwright-core refuses it in launch() and instead gives every
    // launch a fresh, empty profile directory of its own (removed when the browser closes).
    // Each browser context on top of it is an isolated, incognito-like profile.
    log(`chromium ${args.join(' ')}`);
    browser = await chromium.launch({ executablePath: cfg.chromium || '/usr/bin/chromium', args, timeout: STEP_MS, headless: true });
    log(`chromium ${browser.version()} up`);
    await cspSelfTest(browser);
    const results = {};
    for (const sc of cfg.scenarios) {
        results[sc.name] = await runScenario(browser, sc);
    }
    if (problems.length) throw new Error(`problems seen:\n  ${problems.join('\n  ')}`);
    return results;
}

const deadline = setTimeout(() => {
    finish({ ok: false, error: `overall budget of ${cfg.budgetMs} ms exceeded` }, 1);
}, cfg.budgetMs || 100000);

let finished = false;
async function finish(result, code) {
    if (finished) return;
    finished = true;
    clearTimeout(deadline);
    if (code !== 0) {
        console.error('--- converse.js console (last 150 lines) ---');
        console.error(consoleLines.slice(-150).join('\n'));
        console.error(`--- last screenshot: ${lastScreenshot} ---`);
        result.screenshot = lastScreenshot;
    }
    fs.writeFileSync(path.join(cfg.artifacts || '.', 'console.log'), consoleLines.join('\n') + '\n');
    result.elapsedMs = Date.now() - T0;
    console.log(JSON.stringify(result));
    await withTimeout(browser?.close() ?? Promise.resolve(), 5000, 'browser close').catch(() => {});
    server?.close();
    server?.closeAllConnections?.();
    process.exit(code);
}

main().then(
    (results) => finish({ ok: true, results }, 0),
    (e) => finish({ ok: false, error: String(e?.stack || e) }, 1),
);
