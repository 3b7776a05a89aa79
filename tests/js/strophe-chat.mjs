// Two strophe.js clients chat through BOSH or WebSocket.
//
//   node strophe-chat.mjs --transport bosh|ws --url U --domain localhost \
//        --a alice:alicepass --b bob:bobpass [--url-b U2 --transport-b ws] \
//        [--messages 1] [--step-timeout 15000] [--debug]
//
// Logs both users in, sends initial presence (and waits for its reflection, so each side is
// available), sends `--messages` A→B and B→A chat messages with unique bodies to full JIDs,
// checks every one arrives exactly once and in order, then disconnects both cleanly.
// Prints {"ok":…, "timings":{…}, …} on one line; exit 0 on success.
import { parseArgs, usage, account, within, sleep, deferred, since, tag, log, run } from './lib.mjs';
import { Strophe, $pres, $msg, stropheLogging, statusName } from './strophe-env.mjs';

const args = parseArgs();
const schemeOf = (u) => (/^wss?:/.test(u) ? 'ws' : /^https?:/.test(u) ? 'bosh' : null);
const url = typeof args.url === 'string' ? args.url : usage('--url is required');
const transport = args.transport ?? schemeOf(url);
const urlB = typeof args['url-b'] === 'string' ? args['url-b'] : url;
const transportB = args['transport-b'] ?? (args['url-b'] ? schemeOf(urlB) : transport);
for (const [t, u, flag] of [[transport, url, '--transport'], [transportB, urlB, '--transport-b']]) {
  if (!['bosh', 'ws'].includes(t)) usage(`${flag} must be bosh or ws`);
  // strophe picks its transport from the URL scheme; refuse a contradiction rather than test the wrong thing.
  if (schemeOf(u) !== t) usage(`${flag} ${t} does not match URL ${u}`);
}
const domain = typeof args.domain === 'string' ? args.domain : 'localhost';
const accA = account(args.a ?? 'alice:alicepass', '--a');
const accB = account(args.b ?? 'bob:bobpass', '--b');
const messages = Number.parseInt(args.messages ?? '1', 10);
const stepMs = Number.parseInt(args['step-timeout'] ?? '15000', 10);
const debug = !!args.debug;
if (!(messages >= 1)) usage('--messages must be >= 1');
stropheLogging(debug);

const FAIL_STATES = new Set([
  Strophe.Status.CONNFAIL, Strophe.Status.AUTHFAIL, Strophe.Status.ERROR,
  Strophe.Status.CONNTIMEOUT, Strophe.Status.ATTACHFAIL,
]);

class Client {
  constructor(name, service, acc) {
    this.name = name;
    this.acc = acc;
    this.conn = new Strophe.Connection(service, {});
    /** Every status change, as "NAME" or "NAME:condition", for the result and for diagnosis. */
    this.statuses = [];
    /** Error states seen after login (a clean run has none). */
    this.failures = [];
    /** body text → times received */
    this.received = new Map();
    this.order = [];
    this.connected = deferred();
    this.disconnected = deferred();
    this.wasConnected = false;
    if (debug) {
      this.conn.rawInput = (d) => log(`${name} IN `, d);
      this.conn.rawOutput = (d) => log(`${name} OUT`, d);
    }
    this.conn.addHandler((st) => {
      const body = st.getElementsByTagName('body')[0];
      if (body) {
        const text = body.textContent;
        this.received.set(text, (this.received.get(text) ?? 0) + 1);
        this.order.push(text);
        this.onMessage?.();
      }
      return true;
    }, null, 'message', null);
  }

  login() {
    const jid = `${this.acc.user}@${domain}/${this.name}-${tag()}`;
    this.conn.connect(jid, this.acc.pass, (status, condition) => {
      this.statuses.push(condition ? `${statusName(status)}:${condition}` : statusName(status));
      if (status === Strophe.Status.CONNECTED) {
        this.wasConnected = true;
        this.connected.resolve();
      } else if (FAIL_STATES.has(status)) {
        const what = `${this.name}: ${statusName(status)}${condition ? ` (${condition})` : ''}`;
        if (this.wasConnected) this.failures.push(what);
        this.connected.reject(new Error(what));
      } else if (status === Strophe.Status.DISCONNECTED) {
        this.connected.reject(new Error(`${this.name}: disconnected before login completed`));
        this.disconnected.resolve();
      }
    });
    return within(stepMs, `${this.name} login`, this.connected.promise);
  }

  /** Send initial presence; resolve when the server reflects it back to this resource. */
  presence() {
    const seen = deferred();
    this.conn.addHandler(() => {
      seen.resolve();
      return false;
    }, null, 'presence', null, null, this.conn.jid, { matchBareFromJid: false });
    this.conn.send($pres());
    return within(stepMs, `${this.name} presence reflection`, seen.promise);
  }

  send(to, body) {
    this.conn.send($msg({ to, type: 'chat', id: `m-${tag()}` }).c('body').t(body));
  }

  /** Resolve once every body in `bodies` has been received at least once. */
  waitFor(bodies) {
    const done = deferred();
    const check = () => {
      if (bodies.every((b) => this.received.has(b))) done.resolve();
    };
    this.onMessage = check;
    check();
    const missing = () => bodies.filter((b) => !this.received.has(b)).length;
    return within(stepMs, `${this.name} receiving ${bodies.length} messages`, done.promise)
      .catch((e) => { throw new Error(`${e.message} (${missing()} missing)`); });
  }

  async disconnect() {
    this.conn.disconnect('test done');
    await within(stepMs, `${this.name} disconnect`, this.disconnected.promise);
  }
}

/** Every body exactly once and in send order; returns a list of problems. */
function problems(client, bodies) {
  const out = [];
  for (const b of bodies) {
    const n = client.received.get(b) ?? 0;
    if (n !== 1) out.push(`${client.name} got '${b}' ${n} times`);
  }
  const got = client.order.filter((b) => bodies.includes(b));
  if (got.length === bodies.length && got.some((b, i) => b !== bodies[i])) {
    out.push(`${client.name} got messages out of order: ${got.join(',')}`);
  }
  return out;
}

const state = { transport, transport_b: transportB, messages, timings: {} };
run(async () => {
  const t = state.timings;
  const t0 = performance.now();
  const A = new Client('a', url, accA);
  const B = new Client('b', urlB, accB);
  state.statuses = { a: A.statuses, b: B.statuses };

  await Promise.all([
    A.login().then(() => { t.login_a_ms = since(t0); }),
    B.login().then(() => { t.login_b_ms = since(t0); }),
  ]);
  state.jid_a = A.conn.jid;
  state.jid_b = B.conn.jid;

  let t1 = performance.now();
  await Promise.all([A.presence(), B.presence()]);
  t.presence_ms = since(t1);

  const run = tag();
  const ab = Array.from({ length: messages }, (_, i) => `a2b-${run}-${i}`);
  const ba = Array.from({ length: messages }, (_, i) => `b2a-${run}-${i}`);

  t1 = performance.now();
  for (const body of ab) A.send(B.conn.jid, body);
  await B.waitFor(ab);
  t.a_to_b_ms = since(t1);

  t1 = performance.now();
  for (const body of ba) B.send(A.conn.jid, body);
  await A.waitFor(ba);
  t.b_to_a_ms = since(t1);

  // Give duplicates a moment to show up before counting.
  await sleep(300);
  const bad = [...problems(B, ab), ...problems(A, ba)];
  if (bad.length) throw new Error(bad.join('; '));

  t1 = performance.now();
  await Promise.all([A.disconnect(), B.disconnect()]);
  t.disconnect_ms = since(t1);
  const failures = [...A.failures, ...B.failures];
  if (failures.length) throw new Error(`error states after login: ${failures.join('; ')}`);
  t.total_ms = since(t0);
  return {};
}, { deadlineMs: stepMs * 6 + 5000, partial: state });
