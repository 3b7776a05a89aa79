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
import { parseArgs, usage, since, run, chatBothWays, chatOptions } from './lib.mjs';
import { stropheLogging } from './strophe-env.mjs';
import { StropheClient } from './strophe-client.mjs';

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
const { domain, accA, accB, messages, stepMs, debug } = chatOptions(args);
stropheLogging(debug);

const state = { transport, transport_b: transportB, messages, timings: {} };
run(async () => {
  const t = state.timings;
  const t0 = performance.now();
  const opts = { domain, stepMs, debug };
  const A = new StropheClient('a', url, accA, opts);
  const B = new StropheClient('b', urlB, accB, opts);
  state.statuses = { a: A.statuses, b: B.statuses };

  await Promise.all([
    A.login().then(() => { t.login_a_ms = since(t0); }),
    B.login().then(() => { t.login_b_ms = since(t0); }),
  ]);
  state.jid_a = A.conn.jid;
  state.jid_b = B.conn.jid;

  await chatBothWays(A, A.conn.jid, B, B.conn.jid, messages, t);

  const t1 = performance.now();
  await Promise.all([A.disconnect(), B.disconnect()]);
  t.disconnect_ms = since(t1);
  const failures = [...A.failures, ...B.failures];
  if (failures.length) throw new Error(`error states after login: ${failures.join('; ')}`);
  t.total_ms = since(t0);
  return {};
}, { deadlineMs: stepMs * 6 + 5000, partial: state });
