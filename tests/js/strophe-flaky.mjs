// Two strophe.js clients chat over BOSH for a while through a flaky path (tests/bosh_overactivity.rs
// puts HAProxy with a short server timeout and random drops in front of xmpp-cm), and A "reloads
// its page" now and then: it drops its connection without a terminate, and a new connection
// attaches to the same BOSH session with the next rid, as strophe's `restore` and converse.js'
// `keepalive` do after a page reload (the old page's poll is still held by the server).
//
//   node strophe-flaky.mjs --url U --domain localhost --a alice:alicepass --b bob:bobpass \
//        --seconds 30 [--reloads] [--step-timeout 25000] [--debug]
//
// Turns until --seconds are over: a random side sends a chat message with a unique body to the
// other's full JID after a random gap of 0.2-8 s (so some polls outlive a short proxy timeout,
// but none outlives two), and the other must receive it. With --reloads, after A received a
// message it reloads 0.3-1.5 s later, when its only outstanding request is an empty poll that
// has been on its way for 300 ms without an error (it reached the server: a reload that aborts
// a request before that leaves a rid gap, another problem). At the end every message must have
// arrived exactly once and both disconnect (a disconnect timing out on strophe's side is fine). The result line counts turns, reloads, the
// HTTP errors strophe saw (by status: 0 is a reset or a closed connection) and the statuses;
// ok only when neither session ended before the end.
import { parseArgs, usage, account, since, run, sleep, deliveryProblems, log } from './lib.mjs';
import { Strophe, stropheLogging, statusName } from './strophe-env.mjs';
import { StropheClient } from './strophe-client.mjs';

const args = parseArgs();
const url = typeof args.url === 'string' ? args.url : usage('--url is required');
if (!/^https?:/.test(url)) usage('--url must be a BOSH (http) URL');
const domain = typeof args.domain === 'string' ? args.domain : 'localhost';
const accA = account(args.a ?? 'alice:alicepass', '--a');
const accB = account(args.b ?? 'bob:bobpass', '--b');
const seconds = Number.parseInt(args.seconds ?? '30', 10);
const stepMs = Number.parseInt(args['step-timeout'] ?? '25000', 10);
const reloads = !!args.reloads;
const debug = !!args.debug;
if (!(seconds >= 1)) usage('--seconds must be >= 1');
stropheLogging(debug);

const between = (lo, hi) => lo + Math.random() * (hi - lo);
const state = { seconds, reloads: 0, reloads_skipped: 0, turns: 0, http_errors: {}, timings: {} };

/** Count every HTTP failure strophe's BOSH transport sees (it retries the same rid after each). */
function countErrors(conn) {
  const proto = conn._proto;
  const hit = proto._hitError.bind(proto);
  proto._hitError = (status) => {
    state.http_errors[status] = (state.http_errors[status] ?? 0) + 1;
    hit(status);
  };
}

/** A's only outstanding request is an empty poll that has been on its way for 300 ms, first send. */
function reloadable(conn) {
  const reqs = conn._proto._requests;
  if (reqs.length !== 1) return false;
  const r = reqs[0];
  return r.xmlData.childNodes.length === 0 && r.sends === 1 && r.xhr.readyState >= 1 && r.xhr.readyState <= 3 && r.age() >= 0.3;
}

/** The page reload: the old connection goes away silently, a new one attaches to its session. */
function reload(c) {
  const old = c.conn;
  const { sid, rid } = old._proto;
  old.connected = false;
  old.authenticated = false;
  clearTimeout(old._idleTimeout);
  old._proto._abortAllRequests();
  // A fresh client object (its own message handler) sharing the bookkeeping of the old one.
  const fresh = new StropheClient(c.name, url, c.acc, { domain, stepMs, debug });
  Object.assign(fresh, { received: c.received, order: c.order, statuses: c.statuses, failures: c.failures, wasConnected: true });
  countErrors(fresh.conn);
  fresh.conn.attach(old.jid, sid, rid, (status, condition) => {
    c.statuses.push(condition ? `${statusName(status)}:${condition}` : statusName(status));
    if ([Strophe.Status.CONNFAIL, Strophe.Status.ERROR, Strophe.Status.ATTACHFAIL].includes(status)) {
      fresh.failures.push(`${c.name} after reload: ${statusName(status)}${condition ? ` (${condition})` : ''}`);
    } else if (status === Strophe.Status.DISCONNECTED) {
      fresh.disconnected.resolve();
    }
  });
  // Starts its idle loop: the first request, an empty poll with the next rid.
  fresh.conn.flush();
  return fresh;
}

run(async () => {
  const t = state.timings;
  const t0 = performance.now();
  const opts = { domain, stepMs, debug };
  const users = { a: new StropheClient('a', url, accA, opts), b: new StropheClient('b', url, accB, opts) };
  state.statuses = { a: users.a.statuses, b: users.b.statuses };
  await Promise.all([users.a.login(), users.b.login()]);
  countErrors(users.a.conn);
  countErrors(users.b.conn);
  t.login_ms = since(t0);
  await Promise.all([users.a.presence(), users.b.presence()]);
  const jids = { a: users.a.conn.jid, b: users.b.conn.jid };

  const sent = { a: [], b: [] };
  const failures = () => [...users.a.failures, ...users.b.failures];
  const end = t0 + seconds * 1000;
  while (performance.now() < end && failures().length === 0) {
    await sleep(between(200, 8000));
    const [from, to] = Math.random() < 0.5 ? ['a', 'b'] : ['b', 'a'];
    const body = `${from}2${to}-${state.turns++}-${Math.random().toString(36).slice(2, 8)}`;
    sent[from].push(body);
    users[from].send(jids[to], body);
    await users[to].waitFor([body]);
    if (reloads && to === 'a') {
      await sleep(between(300, 1500));
      if (reloadable(users.a.conn)) {
        users.a = reload(users.a);
        state.reloads++;
      } else {
        state.reloads_skipped++;
      }
    }
  }
  if (failures().length) throw new Error(`session ended: ${failures().join('; ')}`);
  t.chat_ms = since(t0) - t.login_ms;
  await sleep(300);
  const bad = [...deliveryProblems(users.b, sent.a), ...deliveryProblems(users.a, sent.b)];
  if (bad.length) throw new Error(bad.join('; '));
  // The sessions lasted the run; the final terminate may meet a poll in strophe's retry backoff
  // and time out on strophe's side (CONNTIMEOUT), which says nothing about the session.
  await Promise.all([users.a.disconnect(), users.b.disconnect()]);
  const late = failures().filter((f) => !f.includes('CONNTIMEOUT'));
  if (late.length) throw new Error(`error states: ${late.join('; ')}`);
  log(`done: ${JSON.stringify(state)}`);
  return {};
}, { deadlineMs: seconds * 1000 + stepMs * 4 + 10000, partial: state });
