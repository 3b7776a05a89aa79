// Shared helpers for the client scripts the Rust integration tests run (tests/support/node.rs).
//
// Contract every script keeps: parse `--key value` arguments, bound every wait, print exactly one
// JSON line on stdout ({"ok": true|false, ...}) and exit 0 on success, 1 on failure, 2 on bad
// arguments. Diagnostics go to stderr (the Rust side shows them when a test fails).

// Client libraries log through console.info/debug/log, which Node writes to stdout; stdout is
// reserved for the result line, so send all of those to stderr.
const toStderr = (...a) => process.stderr.write(a.map(String).join(' ') + '\n');
console.log = toStderr;
console.info = toStderr;
console.debug = toStderr;

/** `--key value` pairs (and bare `--flag`) → object. */
export function parseArgs(argv = process.argv.slice(2)) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) usage(`unexpected argument ${a}`);
    const key = a.slice(2);
    const next = argv[i + 1];
    if (next === undefined || next.startsWith('--')) {
      out[key] = true;
    } else {
      out[key] = next;
      i++;
    }
  }
  return out;
}

export function usage(msg) {
  process.stderr.write(`bad arguments: ${msg}\n`);
  process.stdout.write(JSON.stringify({ ok: false, error: `bad arguments: ${msg}` }) + '\n');
  process.exit(2);
}

/** "user:pass" → {user, pass}. */
export function account(spec, what) {
  if (typeof spec !== 'string' || !spec.includes(':')) usage(`${what} must be user:password`);
  const i = spec.indexOf(':');
  return { user: spec.slice(0, i), pass: spec.slice(i + 1) };
}

/** Reject with `what` if `promise` does not settle within `ms`. */
export function within(ms, what, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timeout after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A promise with its resolve/reject exposed. */
export function deferred() {
  let resolve, reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** Milliseconds since `t0`, rounded. */
export const since = (t0) => Math.round(performance.now() - t0);

/** A short random tag so bodies are unique across runs and sessions. */
export const tag = () => Math.random().toString(36).slice(2, 10);

export function log(...parts) {
  process.stderr.write(`[${new Date().toISOString()}] ${parts.join(' ')}\n`);
}

/** Print the one JSON result line and exit with the matching status. */
let finished = false;
export function finish(result) {
  if (finished) return;
  finished = true;
  // Clients keep timers and sockets alive; leave as soon as the line is flushed.
  process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(result.ok ? 0 : 1));
}

/** Run `main`, turning any throw or a global deadline into a failed result line. */
export function run(main, { deadlineMs = 60000, partial = {} } = {}) {
  const timer = setTimeout(() => {
    log(`global deadline of ${deadlineMs} ms reached`);
    finish({ ok: false, ...partial, error: `global deadline of ${deadlineMs} ms reached` });
  }, deadlineMs);
  process.on('unhandledRejection', (e) => {
    log(`unhandled rejection: ${e && e.stack ? e.stack : e}`);
  });
  main().then(
    (result) => {
      clearTimeout(timer);
      finish({ ok: true, ...partial, ...result });
    },
    (e) => {
      clearTimeout(timer);
      log(`failed: ${e && e.stack ? e.stack : e}`);
      finish({ ok: false, ...partial, error: String(e && e.message ? e.message : e) });
    },
  );
}

/** Every body in `bodies` received by client `c` (its `received` counts and `order`) exactly
 * once and in order; returns a list of problems. */
export function deliveryProblems(c, bodies) {
  const out = [];
  for (const b of bodies) {
    const n = c.received.get(b) ?? 0;
    if (n !== 1) out.push(`${c.name} got '${b}' ${n} times`);
  }
  const got = c.order.filter((b) => bodies.includes(b));
  if (got.length === bodies.length && got.some((b, i) => b !== bodies[i])) {
    out.push(`${c.name} got messages out of order: ${got.join(',')}`);
  }
  return out;
}

/** The chat both ways between two logged-in clients (`presence()`, `send(to, body)`,
 * `waitFor(bodies)`): presence, then `messages` bodies A→B and B→A, each side checked for
 * loss, duplicates and order; the step timings go into `t`. */
export async function chatBothWays(A, jidA, B, jidB, messages, t) {
  let t1 = performance.now();
  await Promise.all([A.presence(), B.presence()]);
  t.presence_ms = since(t1);

  const runId = tag();
  const ab = Array.from({ length: messages }, (_, i) => `a2b-${runId}-${i}`);
  const ba = Array.from({ length: messages }, (_, i) => `b2a-${runId}-${i}`);

  t1 = performance.now();
  for (const body of ab) await A.send(jidB, body);
  await B.waitFor(ab);
  t.a_to_b_ms = since(t1);

  t1 = performance.now();
  for (const body of ba) await B.send(jidA, body);
  await A.waitFor(ba);
  t.b_to_a_ms = since(t1);

  // Give duplicates a moment to show up before counting.
  await sleep(300);
  const bad = [...deliveryProblems(B, ab), ...deliveryProblems(A, ba)];
  if (bad.length) throw new Error(bad.join('; '));
}

/** The options both chat scripts share: the two accounts, message count, step timeout, debug. */
export function chatOptions(args) {
  const domain = typeof args.domain === 'string' ? args.domain : 'localhost';
  const accA = account(args.a ?? 'alice:alicepass', '--a');
  const accB = account(args.b ?? 'bob:bobpass', '--b');
  const messages = Number.parseInt(args.messages ?? '1', 10);
  const stepMs = Number.parseInt(args['step-timeout'] ?? '15000', 10);
  if (!(messages >= 1)) usage('--messages must be >= 1');
  return { domain, accA, accB, messages, stepMs, debug: !!args.debug };
}

/** Resolve once client `c` (its `received` set, `onMessage` hook, `name`) has received every
 * body in `bodies` at least once; fail after `stepMs` saying how many are missing. */
export function waitForBodies(c, bodies, stepMs) {
  const done = deferred();
  const check = () => {
    if (bodies.every((b) => c.received.has(b))) done.resolve();
  };
  c.onMessage = check;
  check();
  const missing = () => bodies.filter((b) => !c.received.has(b)).length;
  return within(stepMs, `${c.name} receiving ${bodies.length} messages`, done.promise)
    .catch((e) => { throw new Error(`${e.message} (${missing()} missing)`); });
}
