// Two xmpp.js (@xmpp/client 0.14) clients chat over WebSocket.
//
//   node xmppjs-chat.mjs --url ws://127.0.0.1:P/xmpp-websocket --domain localhost \
//        --a alice:alicepass --b bob:bobpass [--url-b U2] [--messages 1] [--step-timeout 15000] [--debug]
//
// Same scenario as strophe-chat.mjs. xmpp.js serialises stanzas without `xmlns`, which the
// proxy must treat as jabber:client. Its automatic reconnect is switched off: a drop must fail
// the run, not be papered over. Prints one JSON line; exit 0 on success.
import WebSocket from 'ws';
import { parseArgs, usage, within, deferred, since, tag, log, run, chatBothWays, chatOptions, waitForBodies } from './lib.mjs';

// Node 20 has no global WebSocket; @xmpp/websocket expects one.
globalThis.WebSocket ??= WebSocket;
const { client, xml } = await import('@xmpp/client');

const args = parseArgs();
const url = typeof args.url === 'string' ? args.url : usage('--url is required');
const urlB = typeof args['url-b'] === 'string' ? args['url-b'] : url;
for (const u of [url, urlB]) if (!/^wss?:/.test(u)) usage(`xmpp.js has no BOSH: ${u} is not ws:// or wss://`);
const { domain, accA, accB, messages, stepMs, debug } = chatOptions(args);

class Client {
  constructor(name, service, acc) {
    this.name = name;
    this.x = client({ service, domain, username: acc.user, password: acc.pass, resource: `${name}-${tag()}` });
    this.x.reconnect.stop();
    this.events = [];
    this.errors = [];
    this.received = new Map();
    this.order = [];
    this.online = false;
    this.x.on('status', (s) => this.events.push(s));
    this.x.on('error', (e) => {
      this.errors.push(String(e && e.message ? e.message : e));
      log(`${name} error: ${e && e.stack ? e.stack : e}`);
    });
    if (debug) {
      this.x.on('input', (d) => log(`${name} IN `, d));
      this.x.on('output', (d) => log(`${name} OUT`, d));
    }
    this.x.on('stanza', (st) => {
      if (st.is('message')) {
        const text = st.getChildText('body');
        if (text !== null && text !== undefined) {
          this.received.set(text, (this.received.get(text) ?? 0) + 1);
          this.order.push(text);
          this.onMessage?.();
        }
      } else if (st.is('presence') && st.attrs.from === String(this.x.jid)) {
        this.onOwnPresence?.();
      }
    });
  }

  async login() {
    const address = await within(stepMs, `${this.name} login`, this.x.start());
    this.online = true;
    return String(address);
  }

  presence() {
    const seen = deferred();
    this.onOwnPresence = () => seen.resolve();
    this.x.send(xml('presence'));
    return within(stepMs, `${this.name} presence reflection`, seen.promise);
  }

  send(to, body) {
    return this.x.send(xml('message', { to, type: 'chat', id: `m-${tag()}` }, xml('body', {}, body)));
  }

  waitFor(bodies) {
    return waitForBodies(this, bodies, stepMs);
  }

  async disconnect() {
    // stop() sends </close>, waits (≤2 s inside xmpp.js) for the server's <close/>, closes the socket.
    await within(stepMs, `${this.name} disconnect`, this.x.stop());
  }
}

const state = { transport: 'ws', messages, timings: {} };
run(async () => {
  const t = state.timings;
  const t0 = performance.now();
  const A = new Client('a', url, accA);
  const B = new Client('b', urlB, accB);
  state.events = { a: A.events, b: B.events };
  state.errors = { a: A.errors, b: B.errors };

  [state.jid_a, state.jid_b] = await Promise.all([
    A.login().then((j) => { t.login_a_ms = since(t0); return j; }),
    B.login().then((j) => { t.login_b_ms = since(t0); return j; }),
  ]);

  await chatBothWays(A, state.jid_a, B, state.jid_b, messages, t);
  const errors = [...A.errors, ...B.errors];
  if (errors.length) throw new Error(`client errors: ${errors.join('; ')}`);

  const t1 = performance.now();
  await Promise.all([A.disconnect(), B.disconnect()]);
  t.disconnect_ms = since(t1);
  t.total_ms = since(t0);
  return {};
}, { deadlineMs: stepMs * 6 + 5000, partial: state });
