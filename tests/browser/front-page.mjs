// xmpp-cm's front page in headless Debian Chromium, driven by playwright-core. Started by
// tests/browser_front_page.rs (which starts Prosody, xmpp-cm and HAProxy) as
//
//   node front-page.mjs '<json>'
//
// with {chromium, artifacts, budgetMs, pages:[{name, url}]}. For each page, in a fresh browser
// context: load it (as served by xmpp-cm, under xmpp-cm's own Content-Security-Policy), check
// that the policy header is there and that the style and script were applied, click "Test this
// network" like a visitor, wait for the verdict, and read what the page shows: each transport's
// row (state, reason, round trip, text) and the sentence. Then, on the same page, a probe proves
// the policy is in force: a fetch to another origin (loopback, never leaves the machine) must be
// blocked with a securitypolicyviolation event. A screenshot of each page goes to `artifacts`.
//
// Everything the page did is reported for the Rust test to judge: CSP violations seen before
// the probe, console errors, page errors, every request and WebSocket (and whether any left
// loopback). Prints progress to stderr and one JSON line to stdout ({"ok":true,"pages":{…}} or
// {"ok":false,"error":…}); exits 0 only when the script itself worked. Every wait is bounded.

import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { CHROMIUM_ARGS } from './chromium.mjs';

const cfg = JSON.parse(process.argv[2] || '{}');
const T0 = Date.now();
const STEP_MS = 20000;
const log = (...a) => console.error(`[front +${((Date.now() - T0) / 1000).toFixed(1)}s]`, ...a);

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]']);
const isLoopback = (u) => {
    try {
        const { protocol, hostname } = new URL(u);
        return ['data:', 'blob:', 'about:'].includes(protocol) || LOOPBACK.has(hostname);
    } catch {
        return false;
    }
};

async function runPage(browser, { name, url }) {
    const context = await browser.newContext({ viewport: { width: 900, height: 820 } });
    const page = await context.newPage();
    page.setDefaultTimeout(STEP_MS);
    const seen = { consoleErrors: [], pageErrors: [], requests: [], websockets: [], offLoopback: [] };
    page.on('console', (m) => {
        log(`[${name}] console.${m.type()}: ${m.text()}`);
        if (m.type() === 'error') seen.consoleErrors.push(m.text());
    });
    page.on('pageerror', (e) => seen.pageErrors.push(String(e.stack || e.message)));
    page.on('request', (r) => {
        if (!isLoopback(r.url())) seen.offLoopback.push(r.url());
    });
    page.on('requestfinished', async (r) => {
        const res = await r.response().catch(() => null);
        seen.requests.push({ method: r.method(), url: r.url(), status: res?.status() ?? null });
    });
    page.on('requestfailed', (r) => seen.requests.push({ method: r.method(), url: r.url(), status: null, failure: r.failure()?.errorText }));
    page.on('websocket', (ws) => {
        const w = { url: ws.url(), received: [], closed: false };
        seen.websockets.push(w);
        if (!isLoopback(ws.url())) seen.offLoopback.push(ws.url());
        ws.on('framereceived', (f) => w.received.push(String(f.payload).slice(0, 120)));
        ws.on('close', () => (w.closed = true));
    });
    await page.addInitScript(() => {
        window.__cspViolations = [];
        document.addEventListener('securitypolicyviolation', (e) => {
            window.__cspViolations.push(`${e.violatedDirective} blocked ${e.blockedURI}`);
        });
    });

    log(`[${name}] open ${url}`);
    const res = await page.goto(url, { waitUntil: 'load', timeout: STEP_MS });
    const out = { url, status: res.status(), csp: (await res.allHeaders())['content-security-policy'] || null };
    // The stylesheet and the script ran: main's width comes from front.css, and front.js
    // enables the button (it starts disabled in the HTML).
    out.styled = await page.evaluate(() => getComputedStyle(document.querySelector('main')).maxWidth);
    const button = page.getByRole('button', { name: 'Test this network' });
    await button.waitFor({ state: 'visible', timeout: STEP_MS });
    out.scriptRan = await button.isEnabled();
    out.shownUrls = await page.evaluate(() => ({
        bosh: document.getElementById('bosh-url').textContent,
        websocket: document.getElementById('websocket-url').textContent,
        domain: document.getElementById('xmpp-cm').dataset.domain,
    }));

    const t = Date.now();
    await button.click();
    await page.waitForSelector('#xmpp-cm[data-done="1"]', { timeout: STEP_MS });
    out.testMs = Date.now() - t;
    out.results = await page.evaluate(() => {
        const row = (id) => {
            const r = document.getElementById(id);
            return {
                state: r.dataset.state,
                reason: r.dataset.reason || null,
                condition: r.dataset.condition || null,
                rttMs: r.dataset.rttMs === undefined ? null : Number(r.dataset.rttMs),
                shown: r.querySelector('.state').textContent,
                rtt: r.querySelector('.rtt').textContent,
                detail: r.querySelector('.detail').textContent,
            };
        };
        const v = document.getElementById('verdict');
        return { websocket: row('websocket-result'), bosh: row('bosh-result'), verdict: v.dataset.verdict, sentence: v.textContent };
    });
    log(`[${name}] ${JSON.stringify(out.results)}`);
    // Let the BOSH terminate and the WebSocket <close/> finish before judging the traffic.
    await page.waitForTimeout(800);
    out.screenshot = path.join(cfg.artifacts, `front-page-${name}.png`);
    await page.screenshot({ path: out.screenshot, fullPage: true, timeout: 5000 });
    out.cspViolations = await page.evaluate(() => window.__cspViolations.slice());
    out.consoleErrors = seen.consoleErrors.slice();

    // The probe: another origin (loopback, so nothing could leave the machine anyway).
    out.cspProbe = await page.evaluate(async () => {
        const before = window.__cspViolations.length;
        let outcome;
        try {
            await fetch('http://127.0.0.2:9/probe', { mode: 'no-cors' });
            outcome = 'fetched';
        } catch (e) {
            outcome = `blocked: ${e.message}`;
        }
        await new Promise((r) => setTimeout(r, 300));
        return { outcome, violations: window.__cspViolations.slice(before) };
    });
    out.pageErrors = seen.pageErrors;
    out.requests = seen.requests;
    out.websockets = seen.websockets;
    out.offLoopback = seen.offLoopback;
    await context.close();
    return out;
}

let browser;
async function main() {
    fs.mkdirSync(cfg.artifacts, { recursive: true });
    const args = [...CHROMIUM_ARGS];
    browser = await chromium.launch({ executablePath: cfg.chromium || '/usr/bin/chromium', args, timeout: STEP_MS, headless: true });
    log(`chromium ${browser.version()} up`);
    const pages = {};
    for (const p of cfg.pages) pages[p.name] = await runPage(browser, p);
    return pages;
}

let finished = false;
async function finish(result, code) {
    if (finished) return;
    finished = true;
    clearTimeout(deadline);
    result.elapsedMs = Date.now() - T0;
    console.log(JSON.stringify(result));
    await Promise.race([browser?.close(), new Promise((r) => setTimeout(r, 5000))]).catch(() => {});
    process.exit(code);
}
const deadline = setTimeout(() => finish({ ok: false, error: `overall budget of ${cfg.budgetMs} ms exceeded` }, 1), cfg.budgetMs || 60000);

main().then(
    (pages) => finish({ ok: true, pages }, 0),
    (e) => finish({ ok: false, error: String(e?.stack || e) }, 1),
);
