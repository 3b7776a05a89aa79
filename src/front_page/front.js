// The network test of xmpp-cm's front page (src/front_page.rs serves this file and the page).
//
// "Test this network" opens, from the visitor's browser, a WebSocket (RFC 7395, subprotocol
// xmpp) and a BOSH session (XEP-0124/0206) to the URLs the page shows, each only as far as the
// XMPP server's stream features — no login — and closes them again:
//   WebSocket: <open to=DOMAIN/> → <stream:features/> → <close/>;
//   BOSH: creation <body to=DOMAIN/> → <stream:features/> (polling while the answer has none)
//         → terminate.
// Each has its own deadline (TIMEOUT_MS) and ends as pass (with the time from the first XMPP
// request to the features) or fail with a reason: refused (handshake or HTTP request refused, or
// the connection failed), closed (closed before the features; `condition` when the server named
// one), no-features (an answer that is not what XMPP sends), timeout. The table and one plain
// sentence show the outcome; data-* attributes carry the same for scripts (and the tests).
//
// The page runs under a strict Content-Security-Policy: no inline code, no eval, nothing loaded
// from elsewhere; the only connections are the two below.
'use strict';

(() => {
    const TIMEOUT_MS = 8000;
    const NS_FRAMING = 'urn:ietf:params:xml:ns:xmpp-framing';
    const NS_STREAMS = 'http://etherx.jabber.org/streams';
    const NS_STREAM_ERRORS = 'urn:ietf:params:xml:ns:xmpp-streams';
    const NS_HTTPBIND = 'http://jabber.org/protocol/httpbind';
    const NS_XBOSH = 'urn:xmpp:xbosh';

    const root = document.getElementById('xmpp-cm');
    const button = document.getElementById('run');
    const verdictEl = document.getElementById('verdict');
    if (!root || !button) return;
    const domain = root.dataset.domain || '';

    // The server gives absolute URLs, or bare paths when the request had no usable Host: those
    // are resolved against this page's address (and its scheme, for the WebSocket).
    const boshUrl = new URL(root.dataset.bosh || '/http-bind', location.href).href;
    const wsUrl = (() => {
        const u = new URL(root.dataset.websocket || '/xmpp-websocket', location.href);
        if (u.protocol === 'http:') u.protocol = 'ws:';
        if (u.protocol === 'https:') u.protocol = 'wss:';
        return u.href;
    })();
    document.getElementById('bosh-url').textContent = boshUrl;
    document.getElementById('websocket-url').textContent = wsUrl;

    const attr = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
    const seconds = (ms) => `${ms / 1000} s`;

    /** The root element of one XML document, or null when it is not well-formed XML. */
    function parse(text) {
        const doc = new DOMParser().parseFromString(String(text), 'text/xml');
        if (doc.getElementsByTagName('parsererror').length) return null;
        return doc.documentElement;
    }

    /** The defined condition of a stream error: its first child other than <text/>. */
    function streamCondition(el) {
        for (const c of el.children) {
            if (c.namespaceURI === NS_STREAM_ERRORS && c.localName !== 'text') return c.localName;
        }
        return 'undefined-condition';
    }

    function testWebSocket() {
        return new Promise((resolve) => {
            const t0 = performance.now();
            let ws;
            let opened = false;
            let handshakeMs = null;
            let sentOpen = 0;
            let done = false;
            const finish = (r) => {
                if (done) return;
                done = true;
                clearTimeout(timer);
                resolve({ transport: 'websocket', url: wsUrl, handshakeMs, ...r });
            };
            const fail = (reason, detail, condition) => {
                finish({ ok: false, reason, detail, condition: condition || null });
                try {
                    ws?.close();
                } catch {}
            };
            const timer = setTimeout(
                () =>
                    fail(
                        'timeout',
                        opened
                            ? `no stream features within ${seconds(TIMEOUT_MS)}`
                            : `the WebSocket handshake did not finish within ${seconds(TIMEOUT_MS)}`,
                    ),
                TIMEOUT_MS,
            );
            try {
                ws = new WebSocket(wsUrl, 'xmpp');
            } catch (e) {
                fail('refused', `the browser would not open it: ${e.message}`);
                return;
            }
            ws.onopen = () => {
                opened = true;
                handshakeMs = Math.round(performance.now() - t0);
                if (ws.protocol !== 'xmpp') {
                    fail('refused', 'the server did not accept the xmpp subprotocol');
                    return;
                }
                sentOpen = performance.now();
                ws.send(`<open xmlns="${NS_FRAMING}" to="${attr(domain)}" version="1.0"/>`);
            };
            ws.onmessage = (ev) => {
                if (done) return;
                const el = parse(ev.data);
                if (!el) {
                    fail('no-features', 'the server sent something that is not XML');
                } else if (el.namespaceURI === NS_FRAMING && el.localName === 'open') {
                    // The stream header; the features follow.
                } else if (el.namespaceURI === NS_STREAMS && el.localName === 'features') {
                    finish({ ok: true, rttMs: Math.round(performance.now() - sentOpen), detail: `stream features for ${domain}` });
                    ws.send(`<close xmlns="${NS_FRAMING}"/>`);
                    // The server answers <close/> and closes the socket; do not wait on it for long.
                    setTimeout(() => ws.close(), 2000);
                } else if (el.namespaceURI === NS_STREAMS && el.localName === 'error') {
                    const c = streamCondition(el);
                    fail('closed', `stream error: ${c}`, c);
                } else if (el.namespaceURI === NS_FRAMING && el.localName === 'close') {
                    fail('closed', 'the server closed the stream before its features');
                } else {
                    fail('no-features', `unexpected <${el.localName}/> instead of the stream features`);
                }
            };
            ws.onclose = (ev) => {
                if (done) return;
                if (!opened) {
                    fail('refused', `the WebSocket handshake was refused or the connection failed (close code ${ev.code})`);
                } else {
                    fail('closed', `the connection closed before the stream features (close code ${ev.code}${ev.reason ? `: ${ev.reason}` : ''})`);
                }
            };
        });
    }

    async function testBosh() {
        const abort = new AbortController();
        const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
        const result = (r) => ({ transport: 'bosh', url: boshUrl, condition: null, ...r });
        // A random first rid, well below 2^53 so that increments stay exact (XEP-0124 §14).
        let rid = 1 + (crypto.getRandomValues(new Uint32Array(1))[0] >>> 1);
        let sid = null;
        const post = async (xml) => {
            const res = await fetch(boshUrl, {
                method: 'POST',
                body: xml,
                headers: { 'Content-Type': 'text/xml; charset=utf-8' },
                signal: abort.signal,
                cache: 'no-store',
                credentials: 'omit',
            });
            return { res, text: await res.text() };
        };
        const t0 = performance.now();
        let req =
            `<body xmlns="${NS_HTTPBIND}" xmlns:xmpp="${NS_XBOSH}" content="text/xml; charset=utf-8" ` +
            `hold="1" rid="${rid}" to="${attr(domain)}" ver="1.6" wait="5" xml:lang="en" xmpp:version="1.0"/>`;
        try {
            for (;;) {
                let answer;
                try {
                    answer = await post(req);
                } catch (e) {
                    if (abort.signal.aborted) throw e;
                    return result({ ok: false, reason: 'refused', detail: `the request failed (${e.message}): refused, blocked or unreachable` });
                }
                const { res, text } = answer;
                if (!res.ok) return result({ ok: false, reason: 'refused', detail: `HTTP ${res.status} ${res.statusText}`.trim() });
                const body = parse(text);
                if (!body || body.namespaceURI !== NS_HTTPBIND || body.localName !== 'body') {
                    return result({ ok: false, reason: 'no-features', detail: 'the answer is not a BOSH <body/>' });
                }
                if (body.getAttribute('type') === 'terminate') {
                    const c = body.getAttribute('condition') || 'undefined-condition';
                    return result({ ok: false, reason: 'closed', detail: `session terminated: ${c}`, condition: c });
                }
                sid = sid || body.getAttribute('sid');
                if (!sid) return result({ ok: false, reason: 'no-features', detail: 'the session creation answer has no sid' });
                if (body.getElementsByTagNameNS(NS_STREAMS, 'features').length) {
                    const rttMs = Math.round(performance.now() - t0);
                    terminate(rid + 1, sid);
                    return result({ ok: true, rttMs, detail: `stream features for ${domain}` });
                }
                // No features yet: an empty request, held until the server has something.
                rid += 1;
                req = `<body xmlns="${NS_HTTPBIND}" rid="${rid}" sid="${attr(sid)}"/>`;
            }
        } catch (e) {
            if (abort.signal.aborted) return result({ ok: false, reason: 'timeout', detail: `no stream features within ${seconds(TIMEOUT_MS)}` });
            return result({ ok: false, reason: 'no-features', detail: String(e?.message || e) });
        } finally {
            clearTimeout(timer);
        }
    }

    /** End the BOSH session; its answer does not matter. */
    function terminate(rid, sid) {
        const abort = new AbortController();
        setTimeout(() => abort.abort(), 2000);
        fetch(boshUrl, {
            method: 'POST',
            body: `<body xmlns="${NS_HTTPBIND}" rid="${rid}" sid="${attr(sid)}" type="terminate"/>`,
            headers: { 'Content-Type': 'text/xml; charset=utf-8' },
            signal: abort.signal,
            credentials: 'omit',
        }).catch(() => {});
    }

    /** [kind, sentence] for the two results. */
    function verdict(ws, bosh) {
        if (ws.ok && bosh.ok) return ['both', 'WebSocket and BOSH both work on this network.'];
        if (bosh.ok) {
            if (ws.condition) return ['bosh-only', `WebSocket reached the connection manager but failed (${ws.condition}); clients will fall back to BOSH.`];
            return ['bosh-only', 'WebSocket is blocked on this network; clients will fall back to BOSH.'];
        }
        if (ws.ok) return ['websocket-only', 'BOSH is blocked on this network, but WebSocket works; clients that only speak BOSH cannot connect.'];
        const c = ws.condition || bosh.condition;
        if (c) return ['neither', `This network reaches the connection manager, but the XMPP service did not answer (${c}); no client can connect right now.`];
        return ['neither', 'Neither WebSocket nor BOSH gets through this network; XMPP web clients cannot connect from here.'];
    }

    const REASONS = { refused: 'refused', closed: 'closed', 'no-features': 'no stream features', timeout: 'timed out' };

    function show(row, r) {
        row.dataset.state = r.ok ? 'pass' : 'fail';
        row.dataset.reason = r.ok ? '' : r.reason;
        row.dataset.condition = r.condition || '';
        if (r.ok) row.dataset.rttMs = String(r.rttMs);
        else delete row.dataset.rttMs;
        row.querySelector('.state').textContent = r.ok ? 'works' : `fails: ${REASONS[r.reason] || r.reason}`;
        row.querySelector('.rtt').textContent = r.ok ? `${r.rttMs} ms` : '';
        const extra = r.ok && r.handshakeMs != null ? ` (WebSocket handshake ${r.handshakeMs} ms)` : '';
        row.querySelector('.detail').textContent = `${r.detail}${extra}`;
    }

    async function run() {
        button.disabled = true;
        button.textContent = 'Testing…';
        delete root.dataset.done;
        verdictEl.textContent = '';
        verdictEl.removeAttribute('data-verdict');
        const rows = { websocket: document.getElementById('websocket-result'), bosh: document.getElementById('bosh-result') };
        document.getElementById('results').hidden = false;
        for (const row of Object.values(rows)) {
            row.dataset.state = 'running';
            row.querySelector('.state').textContent = 'testing…';
            row.querySelector('.rtt').textContent = '';
            row.querySelector('.detail').textContent = '';
        }
        const [ws, bosh] = await Promise.all([testWebSocket(), testBosh()]);
        show(rows.websocket, ws);
        show(rows.bosh, bosh);
        const [kind, sentence] = verdict(ws, bosh);
        verdictEl.dataset.verdict = kind;
        verdictEl.textContent = sentence;
        root.dataset.done = '1';
        button.textContent = 'Test again';
        button.disabled = false;
    }

    button.addEventListener('click', () => {
        run().catch((e) => {
            verdictEl.textContent = `The test itself failed: ${e?.message || e}`;
            button.disabled = false;
        });
    });
    if (domain) button.disabled = false;
})();
