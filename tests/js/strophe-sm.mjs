// XEP-0198 stream resumption with strophe.js over WebSocket, through the proxy.
//
//   node strophe-sm.mjs --url ws://127.0.0.1:P/xmpp-websocket --domain localhost \
//        --a alice:alicepass --b bob:bobpass [--url-b U2] [--messages 3] \
//        [--settle 1000] [--allow-no-resume] [--step-timeout 15000] [--debug]
//
// 1. A logs in over WebSocket with stream management and waits for <enabled resume='true'/>;
//    B logs in (any transport); both send presence; A→B once as a sanity check.
// 2. A's socket is destroyed without <close/> (network loss), then `--settle` ms pass so the
//    proxy notices and drops its upstream stream without </stream:stream>.
// 3. B sends `--messages` messages to A's full JID while A is away (the server queues them).
// 4. A connects again with the same stored SM state and must get <resumed/> (same full JID),
//    then receive each queued message exactly once, in order; then B→A live once more.
// 5. Both disconnect cleanly.
// With --allow-no-resume, a failed resumption is reported (resumed:false) instead of failing.
// Prints one JSON line; exit 0 on success.
import { parseArgs, usage, account, within, sleep, since, tag, run } from './lib.mjs';
import strophe, { stropheLogging } from './strophe-env.mjs';
import { StropheClient } from './strophe-client.mjs';

const args = parseArgs();
const url = typeof args.url === 'string' ? args.url : usage('--url is required');
if (!/^wss?:/.test(url)) usage('strophe.js negotiates stream management over WebSocket only: --url must be ws:// or wss://');
const urlB = typeof args['url-b'] === 'string' ? args['url-b'] : url;
const domain = typeof args.domain === 'string' ? args.domain : 'localhost';
const accA = account(args.a ?? 'alice:alicepass', '--a');
const accB = account(args.b ?? 'bob:bobpass', '--b');
const messages = Number.parseInt(args.messages ?? '3', 10);
const settleMs = Number.parseInt(args.settle ?? '1000', 10);
const stepMs = Number.parseInt(args['step-timeout'] ?? '15000', 10);
const allowNoResume = !!args['allow-no-resume'];
const debug = !!args.debug;
if (!(messages >= 1)) usage('--messages must be >= 1');
stropheLogging(debug);

/** Poll `pred` every 20 ms until true; bounded. */
async function until(what, pred) {
  await within(stepMs, what, (async () => {
    while (!pred()) await sleep(20);
  })());
}

const state = { transport: 'ws', messages, timings: {} };
run(async () => {
  const t = state.timings;
  const t0 = performance.now();
  // One storage for both of A's connections: it carries the SM id and counters across, as
  // sessionStorage does across a page reload in a browser.
  const storage = new strophe.MemoryStorageBackend();
  const smOptions = { enableStreamManagement: true, streamManagement: { storage } };
  const opts = { domain, stepMs, debug };
  const A1 = new StropheClient('a1', url, accA, { ...opts, connOptions: smOptions });
  const B = new StropheClient('b', urlB, accB, opts);
  state.statuses = { a1: A1.statuses, b: B.statuses };

  await Promise.all([A1.login(), B.login()]);
  t.login_ms = since(t0);
  await until('A1 <enabled/>', () => A1.conn.isStreamManagementEnabled());
  const sm = A1.conn.sm.state;
  state.sm_id = sm.id;
  state.resume_supported = sm.resumeSupported;
  if (!sm.resumeSupported) throw new Error(`server did not offer resumption in <enabled/> (id ${sm.id})`);
  if (sm.location) throw new Error(`<enabled/> carried location='${sm.location}': the proxy must strip it`);
  state.jid_a = A1.conn.jid;
  state.jid_b = B.conn.jid;
  await Promise.all([A1.presence(), B.presence()]);

  const runId = tag();
  const sanity = `a2b-${runId}`;
  A1.send(B.conn.jid, sanity);
  await B.waitFor([sanity]);
  // Let the server's <a/> (or our own <r/> round trip) settle the counters before the drop.
  A1.conn.sm.requestAck?.();
  await sleep(200);

  // Network loss: destroy the socket, no <close/>, no TCP FIN handshake from a clean close.
  let t1 = performance.now();
  const ws = A1.conn._proto.socket;
  if (!ws || typeof ws.terminate !== 'function') throw new Error('cannot reach the ws socket to drop it');
  ws.terminate();
  await sleep(settleMs);

  const queued = Array.from({ length: messages }, (_, i) => `b2a-queued-${runId}-${i}`);
  for (const body of queued) B.send(state.jid_a, body);
  await sleep(300);

  const A2 = new StropheClient('a2', url, accA, { ...opts, connOptions: smOptions });
  state.statuses.a2 = A2.statuses;
  await A2.login();
  state.resumed = A2.conn.hasResumed();
  state.jid_a2 = A2.conn.jid;
  t.drop_to_connected_ms = since(t1);
  if (!state.resumed) {
    if (!allowNoResume) throw new Error('reconnected but the session was not resumed (<failed/>?)');
  } else {
    if (A2.conn.jid !== state.jid_a) throw new Error(`resumed with a different JID ${A2.conn.jid} (was ${state.jid_a})`);
    await A2.waitFor(queued);
    t.queued_delivered_ms = since(t1);
  }

  const live = `b2a-live-${runId}`;
  t1 = performance.now();
  B.send(A2.conn.jid, live);
  await A2.waitFor([live]);
  t.live_after_resume_ms = since(t1);

  await sleep(300);
  const bad = [...B.problems([sanity]), ...A2.problems(state.resumed ? [...queued, live] : [live])];
  if (bad.length) throw new Error(bad.join('; '));

  t1 = performance.now();
  await Promise.all([A2.disconnect(), B.disconnect()]);
  t.disconnect_ms = since(t1);
  const failures = [...A2.failures, ...B.failures];
  if (failures.length) throw new Error(`error states after login: ${failures.join('; ')}`);
  t.total_ms = since(t0);
  return {};
}, { deadlineMs: stepMs * 10 + settleMs + 5000, partial: state });
