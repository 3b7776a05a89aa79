// A strophe.js connection wrapped for test scripts: bounded login, presence reflection,
// message bookkeeping (exactly-once and order checks) and bounded disconnect.
import { within, deferred, tag, log, deliveryProblems, waitForBodies } from './lib.mjs';
import { Strophe, $pres, $msg, statusName } from './strophe-env.mjs';

const FAIL_STATES = new Set([
  Strophe.Status.CONNFAIL, Strophe.Status.AUTHFAIL, Strophe.Status.ERROR,
  Strophe.Status.CONNTIMEOUT, Strophe.Status.ATTACHFAIL,
]);

export class StropheClient {
  /**
   * @param name     short label ("a", "b") used in resources and messages
   * @param service  BOSH (http://) or WebSocket (ws://) URL; strophe picks the transport from it
   * @param acc      {user, pass}
   * @param opts     {domain, stepMs, debug, connOptions (passed to Strophe.Connection)}
   */
  constructor(name, service, acc, { domain, stepMs, debug = false, connOptions = {} }) {
    this.name = name;
    this.acc = acc;
    this.domain = domain;
    this.stepMs = stepMs;
    this.conn = new Strophe.Connection(service, connOptions);
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

  /** Connect and authenticate; resolves on CONNECTED, rejects on a failure state or timeout. */
  login(resource = `${this.name}-${tag()}`) {
    const jid = `${this.acc.user}@${this.domain}/${resource}`;
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
    return within(this.stepMs, `${this.name} login`, this.connected.promise);
  }

  /** Send initial presence; resolve when the server reflects it back to this resource. */
  presence() {
    const seen = deferred();
    this.conn.addHandler(() => {
      seen.resolve();
      return false;
    }, null, 'presence', null, null, this.conn.jid, { matchBareFromJid: false });
    this.conn.send($pres());
    return within(this.stepMs, `${this.name} presence reflection`, seen.promise);
  }

  send(to, body) {
    this.conn.send($msg({ to, type: 'chat', id: `m-${tag()}` }).c('body').t(body));
  }

  /** Resolve once every body in `bodies` has been received at least once. */
  waitFor(bodies) {
    return waitForBodies(this, bodies, this.stepMs);
  }

  /** Clean disconnect (unavailable presence, </close> or BOSH terminate); bounded. */
  async disconnect() {
    this.conn.disconnect('test done');
    await within(this.stepMs, `${this.name} disconnect`, this.disconnected.promise);
  }

  /** Every body in `bodies` exactly once and in order; returns a list of problems. */
  problems(bodies) {
    return deliveryProblems(this, bodies);
  }
}
