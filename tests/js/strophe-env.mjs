// Load strophe.js 5 in Node with what its BOSH and WebSocket transports need.
//
// strophe's Node entry already installs `WebSocket` (ws), `DOMParser`, `XMLSerializer` and
// `document` (xmldom). BOSH also needs `XMLHttpRequest`: xhr2 provides one without
// `responseXML`, and without it strophe's BOSH login stalls silently right after session
// creation, so the subclass below parses `responseText` on demand.
import XHR2 from 'xhr2';
import * as strophe from 'strophe.js';

class XMLHttpRequestWithXML extends XHR2 {
  get responseXML() {
    if (this.readyState !== 4 || !this.responseText) return null;
    // strophe's own DOMParser wrapper: a <parsererror> document on bad XML, like browsers.
    return new globalThis.DOMParser().parseFromString(this.responseText, 'text/xml');
  }
}
globalThis.XMLHttpRequest = XMLHttpRequestWithXML;

export const { Strophe, $pres, $msg, $iq } = strophe;
export default strophe;

/** Quiet strophe's own logging unless debugging (its INFO/DEBUG lines are noise in test logs). */
export function stropheLogging(debug) {
  Strophe.setLogLevel(debug ? Strophe.LogLevel.DEBUG : Strophe.LogLevel.WARN);
}

/** Name of a Strophe.Status value, for messages. */
export function statusName(s) {
  return Object.keys(Strophe.Status).find((k) => Strophe.Status[k] === s) ?? String(s);
}
