//! Table tests of the session rules with explicit times: every case is a creation (rid 1,
//! handle `h0`) and a list of steps `(ms after the start, input, expected actions)`. A request
//! of step `i` has the reply handle `hi`; a reply renders as `h<i> <status> <body>` with the
//! `httpbind`, `stream` and `xmpp` namespace declarations left out, so an empty answer is `<body/>`.
//! Each expected pattern must occur in the action at the same place, and the number of actions
//! must match. Cases cite the CHECKLIST IDs (`../shared/spec/CHECKLIST.md`) they cover.

use super::*;
use crate::bosh::body::parse;
use sha1::{Digest, Sha1};

enum In {
    /// A request: the `<body/>` attributes (rid included) and its children.
    Req(String, &'static str),
    /// An element from the upstream.
    Up(&'static str),
    /// `</stream:stream>` from the upstream.
    UpClose,
    /// The upstream stream is open (header `from`, features follow), then the backlog written.
    Connected(Option<&'static str>),
    /// The write asked for succeeded / failed.
    Wrote,
    WriteFailed,
    /// The link refused the restart (before SASL success).
    RestartRefused,
    /// The timer fired.
    Tick,
    /// The shell ends the session (drain, reload, connect failure).
    End(Error),
    /// Renders `deadline <ms>` (or `deadline none`).
    Deadline,
    /// Renders `room <bool>` ([`Core::has_room`]).
    Room,
    /// Multiple streams: an element from this stream's upstream (a `<stream:error/>` ends it).
    UpOn(StreamId, &'static str),
    /// Multiple streams: an added stream is open (features follow).
    StreamUp(StreamId),
    /// Multiple streams: an added stream's connect failed.
    StreamFailed(StreamId),
    /// The shell refused the add-stream asked for.
    Refused(Error),
    /// A multi-stream write or restart is done; it failed on these streams.
    WroteStreams(Vec<StreamId>),
}

struct Case {
    name: &'static str,
    rules: Rules,
    /// Attributes of the creation request besides `rid='1'`.
    create: String,
    /// Connect (features queued and answered) at 0 ms before the steps.
    open: bool,
    steps: Vec<(u64, In, Vec<&'static str>)>,
}

fn rules() -> Rules {
    Rules {
        wait: Duration::from_secs(60),
        hold: 1,
        requests: 2,
        inactivity: Duration::from_secs(30),
        polling: Duration::from_secs(2),
        maxpause: Some(120),
        legacy: false,
        ack_mode: false,
        max_rid_repeats: 3,
        max_queued_bytes: 1 << 20,
        max_streams: 1,
    }
}

fn req(attrs: &str, children: &str) -> Request {
    let xml = format!("<body xmlns='http://jabber.org/protocol/httpbind' {attrs}>{children}</body>");
    parse(xml.as_bytes(), &Default::default()).expect("test request parses")
}

fn element(xml: &str) -> Element {
    crate::xml::parse_document(xml.as_bytes(), &crate::xml::Limits::default(), &[]).expect("test element parses")
}

/// An upstream stream header with `id='id'` and this `from`.
fn header(from: Option<&str>) -> StreamHeader {
    StreamHeader { from: from.map(Into::into), id: Some("id".into()), ..StreamHeader::default() }
}

fn rid(n: u64) -> String {
    format!("rid='{n}'")
}

fn sha1_hex(s: &str) -> String {
    hex::encode(Sha1::digest(s.as_bytes()))
}

const FEATURES: &str = "<stream:features xmlns:stream='http://etherx.jabber.org/streams'/>";
const MSG: &str = "<message xmlns='jabber:client' id='u1'><body>hi</body></message>";
const STREAM_ERROR: &str = "<stream:error xmlns:stream='http://etherx.jabber.org/streams'>\
    <conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>";

fn render(act: &Action<usize>) -> String {
    match act {
        Action::Reply(h, status, body) => {
            let body = String::from_utf8_lossy(body)
                .replace(" xmlns='http://jabber.org/protocol/httpbind'", "")
                .replace(" xmlns:stream='http://etherx.jabber.org/streams'", "")
                .replace(" xmlns:xmpp='urn:xmpp:xbosh'", "");
            format!("h{h} {status} {body}")
        }
        Action::Write(els) => format!("write {}", els.iter().map(|e| e.to_xml(ns::CLIENT)).collect::<String>()),
        Action::Restart(r) => format!("restart rid {}", r.rid),
        Action::End(e) => format!("end {e:?}"),
        Action::WriteTo(id, els) => format!("write to {id} {}", els.iter().map(|e| e.to_xml(ns::CLIENT)).collect::<String>()),
        Action::RestartOn(id, r) => format!("restart {id} rid {}", r.rid),
        Action::AddStream(id, r) => format!("add {id} to {}", r.to.as_deref().unwrap_or_default()),
        Action::CloseStream(id, e) => format!("close {id} {e:?}"),
    }
}

fn run(case: Case) {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let creation = req(&format!("rid='1' {}", case.create), "");
    let mut core: Core<usize> = Core::new(case.rules, "sid", (1, 11), &creation, 0, t0);
    let mut acts = Vec::new();
    if case.open {
        core.connected(header(None), element(FEATURES));
        core.written(Ok(()), t0, &mut acts);
        let got: Vec<String> = acts.drain(..).map(|a| render(&a)).collect();
        assert!(
            got.len() == 1 && got[0].starts_with("h0 200 <body") && got[0].contains("features"),
            "{}: {got:?}",
            case.name
        );
    }
    for (i, (ms, input, want)) in case.steps.into_iter().enumerate() {
        let (h, now) = (i + 1, at(ms));
        assert!(!core.done(), "{} step {h}: the session is already over", case.name);
        let mut extra = None;
        match input {
            In::Req(attrs, children) => core.request(req(&attrs, children), h, now, &mut acts),
            In::Up(xml) => {
                // As the link yields it: the server's `<stream:error/>` ends its stream.
                let el = element(xml);
                let item = if el.is("error", ns::STREAM) { Err(Error::UpstreamStreamError(Box::new(el))) } else { Ok(el) };
                core.upstream(std::iter::once(item), now, &mut acts)
            }
            In::UpClose => core.upstream(std::iter::once(Err(Error::UpstreamClosed)), now, &mut acts),
            In::Connected(from) => {
                core.connected(header(from), element(FEATURES));
                core.written(Ok(()), now, &mut acts);
            }
            In::Wrote => core.written(Ok(()), now, &mut acts),
            In::WriteFailed => core.written(Err(Error::UpstreamLost("test".into())), now, &mut acts),
            In::RestartRefused => core.written(Err(Error::BadRequest("restart before SASL success".into())), now, &mut acts),
            In::Tick => core.tick(now, &mut acts),
            In::End(e) => core.end(e, None, now, &mut acts),
            In::Deadline => {
                let d = core.deadline().map_or("none".into(), |d| d.duration_since(t0).as_millis().to_string());
                extra = Some(format!("deadline {d}"));
            }
            In::Room => extra = Some(format!("room {}", core.has_room())),
            In::UpOn(id, xml) => {
                let el = element(xml);
                let item = if el.is("error", ns::STREAM) { Err(Error::UpstreamStreamError(Box::new(el))) } else { Ok(el) };
                core.upstream_on(id, std::iter::once(item), now, &mut acts)
            }
            In::StreamUp(id) => core.stream_connected(id, element(FEATURES), now, &mut acts),
            In::StreamFailed(id) => core.stream_failed(id, Error::UpstreamLost("refused".into()), now, &mut acts),
            In::Refused(e) => core.written(Err(e), now, &mut acts),
            In::WroteStreams(ids) => {
                let failed = ids.into_iter().map(|id| (id, Error::UpstreamLost("test".into()))).collect();
                core.written_streams(failed, now, &mut acts)
            }
        }
        let got: Vec<String> = acts.drain(..).map(|a| render(&a)).chain(extra).collect();
        let ok = got.len() == want.len() && got.iter().zip(&want).all(|(g, w)| g.contains(w));
        assert!(ok, "{} step {h} at {ms} ms:\n got {got:#?}\nwant {want:#?}", case.name);
    }
}

/// BOSH-R-01, R-03 (*in-order*): an early rid is parked, nothing of it goes upstream until the
/// gap closes; then both are written in rid order; R-06: beyond `hold` the oldest is answered.
#[test]
fn in_order_delivery_parks_early_rids() {
    run(Case {
        name: "early rid parked",
        rules: rules(),
        create: String::new(),
        open: true,
        steps: vec![
            (0, In::Req(rid(3), "<message id='m3'/>"), vec![]),
            (10, In::Req(rid(2), "<message id='m2'/>"), vec!["write <message id='m2'"]),
            (11, In::Wrote, vec!["write <message id='m3'"]),
            (12, In::Wrote, vec!["h2 200 <body/>"]),
            (13, In::Deadline, vec!["deadline 60011"]),
        ],
    });
}

/// BOSH-R-06 (*answer-in-order*), R-07 and R-15: a new request answers the oldest held one;
/// a stanza from upstream goes out at once in the held request; the normal long-poll loop
/// (a new empty request after `polling`) is not penalised.
#[test]
fn hold_answers_oldest_first_and_stanzas_go_out_at_once() {
    run(Case {
        name: "beyond hold",
        rules: rules(),
        create: String::new(),
        open: true,
        steps: vec![
            (0, In::Req(rid(2), ""), vec![]),
            (2000, In::Req(rid(3), ""), vec!["h1 200 <body/>"]),
            (2500, In::Up(MSG), vec!["h2 200 <body><message xmlns='jabber:client' id='u1'"]),
            (2600, In::Up(MSG), vec![]),
            (2700, In::Req(rid(4), ""), vec!["h5 200 <body><message"]),
        ],
    });
}

/// BOSH-R-05: a held request is answered empty when its `wait` is over, not a millisecond
/// earlier; then the inactivity clock runs from that answer.
#[test]
fn wait_deadline_gives_an_empty_answer() {
    run(Case {
        name: "wait deadline",
        rules: rules(),
        create: String::new(),
        open: true,
        steps: vec![
            (1000, In::Req(rid(2), ""), vec![]),
            (1000, In::Deadline, vec!["deadline 61000"]),
            (60999, In::Tick, vec![]),
            (61000, In::Tick, vec!["h1 200 <body/>"]),
            (61000, In::Deadline, vec!["deadline 91000"]),
        ],
    });
}

/// BOSH-R-17: with every request answered, `inactivity` without a request ends the session
/// silently (the shell bounces and closes the upstream); a new request restarts the clock.
#[test]
fn inactivity_ends_the_session_client_gone() {
    run(Case {
        name: "inactivity",
        rules: rules(),
        create: String::new(),
        open: true,
        steps: vec![
            (0, In::Deadline, vec!["deadline 30000"]),
            (29999, In::Tick, vec![]),
            (30000, In::Tick, vec!["end ClientGone"]),
        ],
    });
}

/// BOSH-R-10 (*no-duplicate*): a repeat of an answered rid gets the cached body again and its
/// payload is not written a second time.
#[test]
fn repeat_is_answered_from_the_cache() {
    run(Case {
        name: "repeat from cache",
        rules: rules(),
        create: String::new(),
        open: true,
        steps: vec![
            (0, In::Req(rid(2), "<message id='m2'/>"), vec!["write <message id='m2'"]),
            (1, In::Wrote, vec![]),
            (100, In::Up(MSG), vec!["h1 200 <body><message xmlns='jabber:client' id='u1'"]),
            (200, In::Req(rid(2), "<message id='m2'/>"), vec!["h4 200 <body><message xmlns='jabber:client' id='u1'"]),
        ],
    });
}

/// BOSH-R-11: a repeat of a held rid answers the older copy with a recoverable error; the
/// newest copy gets the eventual answer. BOSH-R-13, T-12: beyond `max_rid_repeats`,
/// policy-violation.
#[test]
fn repeats_of_a_held_rid_and_the_repeat_cap() {
    run(Case {
        name: "held repeat",
        rules: rules(),
        create: String::new(),
        open: true,
        steps: vec![
            (0, In::Req(rid(2), ""), vec![]),
            (10, In::Req(rid(2), ""), vec!["h1 200 <body type='error'/>"]),
            (20, In::Up(MSG), vec!["h2 200 <body><message"]),
        ],
    });
    run(Case {
        name: "repeat cap",
        rules: Rules { max_rid_repeats: 2, ..rules() },
        create: String::new(),
        open: true,
        steps: vec![
            (0, In::Req(rid(2), ""), vec![]),
            (10, In::Req(rid(2), ""), vec!["h1 200 <body type='error'/>"]),
            (20, In::Req(rid(2), ""), vec!["h2 200 <body type='error'/>"]),
            (
                30,
                In::Req(rid(2), ""),
                vec![
                    "h3 200 <body type='error'/>",
                    "end PolicyViolation(RidRepeatedTooOften)",
                    "h4 200 <body type='terminate' condition='policy-violation'/>",
                ],
            ),
        ],
    });
}

/// BOSH-R-02, T-10, T-18: a rid above the window is item-not-found (HTTP 404 for a legacy
/// session); BOSH-R-12: a repeat whose response is no longer cached too, and the held request
/// gets other-request (T-11).
#[test]
fn rid_too_high_or_no_longer_cached_is_item_not_found() {
    run(Case {
        name: "rid too high",
        rules: rules(),
        create: String::new(),
        open: true,
        steps: vec![(
            0,
            In::Req(rid(4), ""),
            vec![
                "end ItemNotFound(\"rid outside the window\")",
                "h1 200 <body type='terminate' condition='item-not-found'/>",
            ],
        )],
    });
    run(Case {
        name: "rid too high, legacy",
        rules: Rules { legacy: true, ..rules() },
        create: String::new(),
        open: true,
        steps: vec![(
            0,
            In::Req(rid(4), ""),
            vec!["end ItemNotFound", "h1 404 <body type='terminate' condition='item-not-found'/>"],
        )],
    });
    run(Case {
        name: "no longer cached",
        rules: rules(),
        create: String::new(),
        open: true,
        steps: vec![
            (0, In::Req(rid(2), ""), vec![]),
            (3000, In::Req(rid(3), ""), vec!["h1 200 <body/>"]),
            (6000, In::Req(rid(4), ""), vec!["h2 200 <body/>"]),
            (6100, In::Req(rid(2), ""), vec!["h4 200 <body/>"]),
            (
                6200,
                In::Req(rid(1), ""),
                vec![
                    "end ItemNotFound(\"response no longer cached\")",
                    "h3 200 <body type='terminate' condition='other-request'/>",
                    "h5 200 <body type='terminate' condition='item-not-found'/>",
                ],
            ),
        ],
    });
}

/// BOSH-R-21: each `key` must hash to the previous `newkey`/`key` (compared case-insensitively);
/// `newkey` starts a new sequence; a wrong or missing key is item-not-found.
#[test]
fn key_sequence() {
    let (k1, n1) = ("seed".to_string(), "other".to_string());
    let k2 = sha1_hex(&k1);
    let k3 = sha1_hex(&k2).to_ascii_uppercase();
    let n2 = sha1_hex(&n1);
    let create = format!("newkey='{k3}'");
    let ok_steps = |last: In, want: Vec<&'static str>| Case {
        name: "keys",
        rules: rules(),
        create: create.clone(),
        open: true,
        steps: vec![(0, In::Req(format!("rid='2' key='{k2}'"), ""), vec![]), (3000, last, want)],
    };
    run(ok_steps(In::Req(format!("rid='3' key='{k1}'"), ""), vec!["h1 200 <body/>"]));
    let mismatch = vec![
        "end ItemNotFound(\"key sequence mismatch\")",
        "h1 200 <body type='terminate' condition='other-request'/>",
        "h2 200 <body type='terminate' condition='item-not-found'/>",
    ];
    run(ok_steps(In::Req(format!("rid='3' key='{k2}'"), ""), mismatch.clone()));
    run(ok_steps(In::Req(rid(3), ""), mismatch));
    run(Case {
        name: "newkey restarts the sequence",
        rules: rules(),
        create,
        open: true,
        steps: vec![
            (0, In::Req(format!("rid='2' key='{k2}'"), ""), vec![]),
            (3000, In::Req(format!("rid='3' key='{k1}' newkey='{n2}'"), ""), vec!["h1 200 <body/>"]),
            (6000, In::Req(format!("rid='4' key='{n1}'"), ""), vec!["h2 200 <body/>"]),
            (
                9000,
                In::Req(format!("rid='5' key='{k1}'"), ""),
                vec!["end ItemNotFound", "h3 200", "h4 200 <body type='terminate' condition='item-not-found'/>"],
            ),
        ],
    });
}

/// BOSH-S-25, R-19: in ack mode the creation response carries `ack`, later ones the highest
/// in-order rid when it is not their own. BOSH-R-20: a client `ack` below the last answered rid
/// gets `report`/`time` once the missing response is `REPORT_AFTER` old, not before.
#[test]
fn acks_and_reports() {
    run(Case {
        name: "ack mode",
        rules: Rules { ack_mode: true, ..rules() },
        create: "ack='1'".into(),
        open: false,
        steps: vec![
            (0, In::Connected(None), vec!["h0 200 <body sid='sid'"]),
            (0, In::Req(format!("{} ack='1'", rid(2)), ""), vec![]),
            (3000, In::Req(format!("{} ack='1'", rid(3)), ""), vec!["h2 200 <body ack='3'/>"]),
            (4500, In::Req(format!("{} ack='1'", rid(4)), "<message id='m4'/>"), vec!["write"]),
            (4500, In::Wrote, vec!["h3 200 <body ack='4'/>"]),
            (4999, In::Req(format!("{} ack='1'", rid(5)), "<message id='m5'/>"), vec!["write"]),
            (4999, In::Wrote, vec!["h4 200 <body ack='5'/>"]),
            (
                5000,
                In::Req(format!("{} ack='1'", rid(6)), "<message id='m6'/>"),
                vec!["h8 200 <body report='2' time='2000'/>"],
            ),
        ],
    });
}

/// BOSH-R-18: pause answers every held request and itself at once, without payloads, and the
/// inactivity limit becomes the pause (clamped to `maxpause`) until the next request; R-14:
/// a pause may be one request over `requests`.
#[test]
fn pause_answers_everything_and_replaces_inactivity() {
    run(Case {
        name: "pause clamps and replaces inactivity",
        rules: rules(),
        create: String::new(),
        open: true,
        steps: vec![
            (0, In::Req(rid(2), ""), vec![]),
            (3000, In::Req(format!("{} pause='300'", rid(3)), ""), vec!["h1 200 <body/>", "h2 200 <body/>"]),
            (3000, In::Deadline, vec!["deadline 123000"]),
            (122999, In::Tick, vec![]),
            (123000, In::Tick, vec!["end ClientGone"]),
        ],
    });
    run(Case {
        name: "pause over requests",
        rules: rules(),
        create: String::new(),
        open: true,
        steps: vec![
            (0, In::Req(rid(2), "<message id='m2'/>"), vec!["write"]),
            (0, In::Wrote, vec![]),
            (10, In::Req(rid(4), "<message id='m4'/>"), vec![]),
            (
                20,
                In::Req(format!("{} pause='60'", rid(3)), ""),
                vec!["h1 200 <body/>", "h4 200 <body/>", "write <message id='m4'"],
            ),
        ],
    });
}

/// BOSH-R-14, T-11: more unanswered requests than `requests` is policy-violation (the trigger
/// gets it, the others other-request); a terminate may be one over (then T-01/T-02 apply).
#[test]
fn too_many_requests() {
    let steps = |last: &str| {
        vec![
            (0, In::Req(rid(2), "<message id='m2'/>"), vec!["write"]),
            (0, In::Wrote, vec![]),
            (10, In::Req(rid(4), "<message id='m4'/>"), vec![]),
            (20, In::Req(format!("{} {last}", rid(3)), ""), vec![]),
        ]
    };
    let mut over = steps("");
    over[3].2 = vec![
        "end PolicyViolation(TooManyRequests)",
        "h1 200 <body type='terminate' condition='other-request'/>",
        "h3 200 <body type='terminate' condition='other-request'/>",
        "h4 200 <body type='terminate' condition='policy-violation'/>",
    ];
    run(Case { name: "too many", rules: rules(), create: String::new(), open: true, steps: over });
    let mut terminate = steps("type='terminate'");
    terminate[3].2 = vec!["h1 200 <body type='terminate'/>", "h4 200 <body/>", "end ClientTerminate"];
    run(Case {
        name: "terminate may be one over",
        rules: rules(),
        create: String::new(),
        open: true,
        steps: terminate,
    });
}

/// BOSH-R-16 b: in a long-polling session, an empty request that finds `requests` open and
/// follows an empty one by less than `polling` is too soon; the third too soon in a row (a
/// client looping empty requests with two in flight) is policy-violation. The same loop at
/// `polling` intervals never is.
#[test]
fn two_empty_requests_too_soon() {
    let case = |gap: u64, last: Vec<&'static str>| Case {
        name: "empty loop",
        rules: rules(),
        create: String::new(),
        open: true,
        steps: vec![
            (0, In::Req(rid(2), ""), vec![]),
            (gap, In::Req(rid(3), ""), vec!["h1 200 <body/>"]),
            (2 * gap, In::Req(rid(4), ""), vec!["h2 200 <body/>"]),
            (3 * gap, In::Req(rid(5), ""), last),
        ],
    };
    run(case(
        10,
        vec![
            "end PolicyViolation(EmptyRequestsTooFrequently)",
            "h3 200 <body type='terminate' condition='other-request'/>",
            "h4 200 <body type='terminate' condition='policy-violation'/>",
        ],
    ));
    run(case(2000, vec!["h3 200 <body/>"]));
}

/// BOSH-R-16 a: a polling session's new empty request sooner than `polling` after an empty
/// answer to an empty request is policy-violation; an answer that carried stanzas does not
/// count.
#[test]
fn polling_session_too_frequent() {
    let polling = || Rules { hold: 0, requests: 1, ..rules() };
    let case = |steps| Case { name: "polling", rules: polling(), create: String::new(), open: true, steps };
    run(case(vec![
        (0, In::Req(rid(2), ""), vec!["h1 200 <body/>"]),
        (
            1999,
            In::Req(rid(3), ""),
            vec![
                "end PolicyViolation(PollingTooFrequently)",
                "h2 200 <body type='terminate' condition='policy-violation'/>",
            ],
        ),
    ]));
    run(case(vec![
        (0, In::Req(rid(2), ""), vec!["h1 200 <body/>"]),
        (2000, In::Req(rid(3), ""), vec!["h2 200 <body/>"]),
    ]));
    run(case(vec![
        (0, In::Up(MSG), vec![]),
        (0, In::Req(rid(2), ""), vec!["h2 200 <body><message"]),
        (10, In::Req(rid(3), ""), vec!["h3 200 <body/>"]),
    ]));
}

/// BOSH-T-01, T-02: a terminate's payloads go upstream first; then the oldest open request gets
/// type='terminate' and the others empty bodies; alone, the terminate gets type='terminate'
///
#[test]
fn terminate_fan_out() {
    run(Case {
        name: "terminate with one held",
        rules: rules(),
        create: String::new(),
        open: true,
        steps: vec![
            (0, In::Req(rid(2), ""), vec![]),
            (
                3000,
                In::Req(format!("{} type='terminate'", rid(3)), "<presence type='unavailable'/>"),
                vec!["write <presence"],
            ),
            (3001, In::WriteFailed, vec!["h1 200 <body type='terminate'/>", "h2 200 <body/>", "end ClientTerminate"]),
        ],
    });
    run(Case {
        name: "terminate alone",
        rules: rules(),
        create: String::new(),
        open: true,
        steps: vec![(
            0,
            In::Req(format!("{} type='terminate'", rid(2)), ""),
            vec!["h1 200 <body type='terminate'/>", "end ClientTerminate"],
        )],
    });
}

/// BOSH-T-14, T-20, T-23 (*nothing-lost*): with nothing held, the terminal body (what was
/// queued, then the server's `<stream:error/>`) waits for the next request, under the
/// inactivity clock; a clean close is a plain terminate.
#[test]
fn terminal_body_is_kept_for_the_next_request() {
    run(Case {
        name: "stream error kept",
        rules: rules(),
        create: String::new(),
        open: true,
        steps: vec![
            (0, In::Up(MSG), vec![]),
            (10, In::Up(STREAM_ERROR), vec!["end UpstreamStreamError"]),
            (10, In::Deadline, vec!["deadline 30010"]),
            (20, In::Req(rid(2), ""), vec!["h4 200 <body type='terminate' condition='remote-stream-error'><message xmlns='jabber:client' id='u1'><body>hi</body></message><stream:error><conflict"]),
        ],
    });
    run(Case {
        name: "clean close kept",
        rules: rules(),
        create: String::new(),
        open: true,
        steps: vec![
            (0, In::UpClose, vec!["end UpstreamClosed"]),
            (10, In::Req(rid(2), ""), vec!["h2 200 <body type='terminate'/>"]),
        ],
    });
    run(Case {
        name: "kept body expires",
        rules: rules(),
        create: String::new(),
        open: true,
        steps: vec![(10, In::UpClose, vec!["end UpstreamClosed"]), (30010, In::Tick, vec!["end ClientGone"])],
    });
}

/// BOSH-T-11, T-16: an end without a trigger (drain, reload, the upstream) gives the oldest held
/// request the terminal body, the other held ones the condition, parked ones other-request;
/// system-shutdown and host-gone are not kept when nothing is held (T-06).
#[test]
fn end_without_trigger() {
    run(Case {
        name: "host gone with two held and one parked",
        rules: Rules { hold: 2, requests: 3, ..rules() },
        create: String::new(),
        open: true,
        steps: vec![
            (0, In::Req(rid(2), ""), vec![]),
            (3000, In::Req(rid(3), ""), vec![]),
            (3010, In::Req(rid(5), "<message id='m5'/>"), vec![]),
            (3020, In::Req(rid(5), "<message id='m5'/>"), vec!["h3 200 <body type='error'/>"]),
            (
                3030,
                In::End(Error::HostGone),
                vec![
                    "end HostGone",
                    "h1 200 <body type='terminate' condition='host-gone'/>",
                    "h2 200 <body type='terminate' condition='host-gone'/>",
                    "h4 200 <body type='terminate' condition='other-request'/>",
                ],
            ),
        ],
    });
    run(Case {
        name: "shutdown with nothing held",
        rules: rules(),
        create: String::new(),
        open: true,
        steps: vec![(0, In::End(Error::Shutdown), vec!["end Shutdown"])],
    });
}

/// XBOSH-13: a restart is refused (bad-request) until the upstream said SASL `<success/>`, and
/// only once per success; stanzas in a restart body are ignored (XBOSH-10).
#[test]
fn restart_is_the_links_to_refuse() {
    const RESTART: &str = "xmlns:xmpp='urn:xmpp:xbosh' xmpp:restart='true'";
    // The restart rule (once after each SASL success) is `Link::restart`'s, for every
    // transport: here a refusal comes back as the restart's result and ends the session with
    // the restart request as the trigger.
    run(Case {
        name: "restart refused by the link",
        rules: rules(),
        create: String::new(),
        open: true,
        steps: vec![
            (0, In::Req(format!("{} {RESTART}", rid(2)), ""), vec!["restart rid 2"]),
            (
                10,
                In::RestartRefused,
                vec!["end BadRequest", "h1 200 <body type='terminate' condition='bad-request'/>"],
            ),
        ],
    });
    run(Case {
        name: "restart after success",
        rules: rules(),
        create: String::new(),
        open: true,
        steps: vec![
            (0, In::Req(rid(2), ""), vec![]),
            (10, In::Up("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"), vec!["h1 200 <body><success"]),
            (20, In::Req(format!("{} {RESTART}", rid(3)), "<message id='ignored'/>"), vec!["restart rid 3"]),
            (30, In::Wrote, vec![]),
            (40, In::Up(FEATURES), vec!["h3 200 <body><stream:features"]),
        ],
    });
}

/// Backpressure: once the queue for the client reaches `max_queued_bytes` the shell stops
/// reading the upstream; a response that carries the queue makes room again.
#[test]
fn queue_limit_stops_reading() {
    run(Case {
        name: "queue limit",
        rules: Rules { max_queued_bytes: 100, ..rules() },
        create: String::new(),
        open: true,
        steps: vec![
            (0, In::Up(MSG), vec![]),
            (0, In::Room, vec!["room true"]),
            (1, In::Up(MSG), vec![]),
            (1, In::Room, vec!["room false"]),
            (2, In::Req(rid(2), ""), vec!["h5 200 <body><message"]),
            (2, In::Room, vec!["room true"]),
        ],
    });
}

/// BOSH-S-31, S-26, S-22, S-28: the creation request waits for the upstream features at most
/// `wait`; the features and the header's `from`/`authid` go into the first response after
/// they arrived; a payload sent meanwhile is written (the shell keeps it for the connection).
#[test]
fn creation_waits_for_the_features() {
    run(Case {
        name: "features in time",
        rules: rules(),
        create: String::new(),
        open: false,
        steps: vec![
            (0, In::Deadline, vec!["deadline 60000"]),
            (100, In::Connected(Some("example.com")), vec!["h0 200 <body sid='sid' wait='60' requests='2' hold='1' inactivity='30' polling='2' ver='1.11' xmpp:restartlogic='true' maxpause='120' from='example.com' authid='id' xmpp:version='1.0'><stream:features/>"]),
        ],
    });
    run(Case {
        name: "features late",
        rules: rules(),
        create: String::new(),
        open: false,
        steps: vec![
            (59999, In::Tick, vec![]),
            (60000, In::Tick, vec!["h0 200 <body sid='sid'"]),
            (60010, In::Req(rid(2), "<message id='m2'/>"), vec!["write"]),
            (60010, In::Wrote, vec![]),
            (
                60100,
                In::Connected(Some("example.com")),
                vec!["h3 200 <body from='example.com' authid='id' xmpp:version='1.0'><stream:features/>"],
            ),
        ],
    });
    run(Case {
        name: "connect failed",
        rules: rules(),
        create: String::new(),
        open: false,
        steps: vec![(
            100,
            In::End(Error::UpstreamLost("refused".into())),
            vec!["end UpstreamLost", "h0 200 <body type='terminate' condition='remote-connection-failed' sid='sid'"],
        )],
    });
}

/// A failed write ends the session with the request that carried the payload as the trigger
/// (the condition), the other held ones getting other-request.
#[test]
fn failed_write_ends_with_its_request_as_trigger() {
    run(Case {
        name: "write failed",
        rules: rules(),
        create: String::new(),
        open: true,
        steps: vec![
            (0, In::Req(rid(2), ""), vec![]),
            (3000, In::Req(rid(3), "<message id='m3'/>"), vec!["write"]),
            (
                3001,
                In::WriteFailed,
                vec![
                    "end UpstreamLost",
                    "h1 200 <body type='terminate' condition='other-request'/>",
                    "h2 200 <body type='terminate' condition='remote-connection-failed'/>",
                ],
            ),
        ],
    });
}

// ---------------------------------------------------------------------- multiple streams

/// The name of stream `id` of the test session (sid `sid`), in a pattern.
fn named(pattern: &str, ids: &[StreamId]) -> &'static str {
    let mut p = pattern.to_string();
    for (i, id) in ids.iter().enumerate() {
        p = p.replace(&format!("{{{i}}}"), &super::streams::stream_name("sid", *id));
    }
    Box::leak(p.into_boxed_str())
}

fn multi(max: u16) -> Rules {
    Rules { max_streams: max, ..rules() }
}

/// BOSH-R-22: with `max_streams_per_session` 1 nothing is advertised (the creation tables
/// above match the whole attribute list), a later `to` is an ordinary empty request and a
/// `stream` attribute is ignored: the payload goes to the one stream as before (§16.3).
#[test]
fn one_stream_ignores_to_and_stream() {
    run(Case {
        name: "single stream",
        rules: rules(),
        create: String::new(),
        open: true,
        steps: vec![
            (0, In::Req(format!("{} to='b.test'", rid(2)), ""), vec![]),
            (10, In::Req(format!("{} stream='bogus'", rid(3)), MSG), vec!["write <message"]),
            (11, In::Wrote, vec!["h1 200 <body/>"]),
        ],
    });
}

/// BOSH-R-23 (XEP-0124 §16.2–§16.5): the creation response names the first stream; an empty
/// request with `to` adds a stream, answered with its name and `from`; its features follow in
/// a response naming it; a payload with `stream` goes to that stream only, one without to
/// every stream; each response carries one stream's stanzas and names it; an unknown stream
/// is item-not-found for that stream only (an empty request's `stream` means nothing); a
/// terminate naming a stream closes it alone; closing the last one ends the session. (An add
/// is an empty request for the §11 overactivity rule, hence the 2 s before it.)
#[test]
fn two_streams_add_address_and_close() {
    run(Case {
        name: "two streams",
        rules: multi(3),
        create: String::new(),
        open: true,
        steps: vec![
            (0, In::Req(rid(2), ""), vec![]),
            (2010, In::Req(format!("{} to='B.test' xml:lang='en'", rid(3)), ""), vec!["add 1 to B.test"]),
            (2011, In::Wrote, vec![named("h2 200 <body stream='{0}' from='b.test'/>", &[1])]),
            (2020, In::StreamUp(1), vec![named("h1 200 <body stream='{0}'><stream:features/></body>", &[1])]),
            (4000, In::Req(rid(4), ""), vec![]),
            (4001, In::Req(format!("{} stream='{}'", rid(5), super::streams::stream_name("sid", 1)), MSG), vec!["write to 1 <message"]),
            (4002, In::WroteStreams(vec![]), vec!["h5 200 <body/>"]),
            (4003, In::UpOn(1, MSG), vec![named("h6 200 <body stream='{0}'><message", &[1])]),
            // Both streams have stanzas queued: one response each, in turn.
            (5000, In::UpOn(1, MSG), vec![]),
            (5001, In::UpOn(FIRST, MSG), vec![]),
            (6000, In::Req(rid(6), ""), vec![named("h11 200 <body stream='{0}'><message", &[0])]),
            (6001, In::Req(rid(7), ""), vec![named("h12 200 <body stream='{0}'><message", &[1])]),
            (8000, In::Req(format!("{} stream='nope'", rid(8)), MSG), vec!["h13 200 <body type='terminate' condition='item-not-found' stream='nope'/>"]),
            (8001, In::Req(format!("{} stream='nope'", rid(9)), ""), vec![]),
            (8002, In::Req(rid(10), MSG), vec!["write <message"]),
            (8003, In::WroteStreams(vec![]), vec!["h14 200 <body/>"]),
            (
                8004,
                In::Req(format!("{} type='terminate' stream='{}'", rid(11), super::streams::stream_name("sid", 1)), "<presence type='unavailable'/>"),
                vec!["write to 1 <presence"],
            ),
            (8005, In::WroteStreams(vec![]), vec!["close 1 ClientTerminate", named("h17 200 <body type='terminate' stream='{0}'/>", &[1])]),
            (
                8006,
                In::Req(format!("{} stream='{}'", rid(12), super::streams::stream_name("sid", 1)), MSG),
                vec![named("h19 200 <body type='terminate' condition='item-not-found' stream='{0}'/>", &[1])],
            ),
            (
                8007,
                In::Req(format!("{} type='terminate' stream='{}'", rid(13), super::streams::stream_name("sid", 0)), ""),
                vec!["h15 200 <body type='terminate'/>", "h20 200 <body/>", "end ClientTerminate"],
            ),
        ],
    });
}

/// BOSH-R-23, §16.6: the cap refuses the stream (policy-violation naming a fresh stream), a
/// refusal by the shell (host-unknown, admission) likewise, a stream the server ends or
/// whose connect fails gets its terminate naming it, and the session goes on until its last
/// stream ends.
#[test]
fn stream_refusals_and_ends_spare_the_session() {
    run(Case {
        name: "stream ends",
        rules: multi(2),
        create: String::new(),
        open: true,
        steps: vec![
            (0, In::Req(rid(2), ""), vec![]),
            (2010, In::Req(format!("{} to='b.test' route='xmpp:b.test:5222'", rid(3)), ""), vec!["add 1 to b.test"]),
            (2011, In::Wrote, vec![named("h2 200 <body stream='{0}' from='b.test'/>", &[1])]),
            (4020, In::Req(format!("{} to='c.test'", rid(4)), ""), vec![named("h4 200 <body type='terminate' condition='policy-violation' stream='{0}'/>", &[2])]),
            (
                4030,
                In::UpOn(1, STREAM_ERROR),
                vec!["close 1 UpstreamStreamError", named("h1 200 <body type='terminate' condition='remote-stream-error' stream='{0}'><stream:error", &[1])],
            ),
            (4040, In::Req(format!("{} to='c.test'", rid(5)), ""), vec!["add 3 to c.test"]),
            (4041, In::Refused(Error::HostUnknown), vec![named("h6 200 <body type='terminate' condition='host-unknown' stream='{0}'/>", &[3])]),
            (4050, In::Req(format!("{} to='d.test'", rid(6)), ""), vec!["add 4 to d.test"]),
            (4051, In::Wrote, vec![named("h8 200 <body stream='{0}' from='d.test'/>", &[4])]),
            (4060, In::StreamFailed(4), vec!["close 4 UpstreamLost"]),
            (6000, In::Req(rid(7), ""), vec![named("h11 200 <body type='terminate' condition='remote-connection-failed' stream='{0}'/>", &[4])]),
            (6001, In::Deadline, vec!["deadline 36000"]),
            // The last stream's end is the session's.
            (6002, In::UpClose, vec!["end UpstreamClosed"]),
            (6003, In::Req(rid(8), ""), vec!["h14 200 <body type='terminate'"]),
        ],
    });
}

/// XBOSH restart in a multi-stream session: with `stream` that stream, without it the oldest
/// open one; a stream whose restart or write failed ends alone while others are open.
#[test]
fn restarts_go_to_one_stream() {
    run(Case {
        name: "restart",
        rules: multi(3),
        create: String::new(),
        open: true,
        steps: vec![
            (0, In::Req(format!("{} to='b.test'", rid(2)), ""), vec!["add 1 to b.test"]),
            (1, In::Wrote, vec![named("h1 200 <body stream='{0}' from='b.test'/>", &[1])]),
            (
                10,
                In::Req(format!("{} stream='{}' xmpp:restart='true' xmlns:xmpp='urn:xmpp:xbosh'", rid(3), super::streams::stream_name("sid", 1)), ""),
                vec!["restart 1 rid 3"],
            ),
            (11, In::WroteStreams(vec![]), vec![]),
            (12, In::Req(format!("{} xmpp:restart='true' xmlns:xmpp='urn:xmpp:xbosh'", rid(4)), ""), vec!["restart 0 rid 4"]),
            (
                13,
                In::WroteStreams(vec![FIRST]),
                vec!["close 0 UpstreamLost", named("h3 200 <body type='terminate' condition='remote-connection-failed' stream='{0}'/>", &[0])],
            ),
            (14, In::UpOn(1, MSG), vec![named("h5 200 <body stream='{0}'><message", &[1])]),
        ],
    });
}

/// BOSH-R-15, R-16 b (issue 18): a client that gave its held empty request up and goes on with
/// the next rid (a page reload restoring the session: the old page's poll is still held) sends
/// one too-soon empty request, then waits on it; the session goes on. Later too-soon requests
/// count from zero again once a request was not too soon.
#[test]
fn a_request_given_up_by_the_client_is_not_overactivity() {
    run(Case {
        name: "reload",
        rules: rules(),
        create: String::new(),
        open: true,
        steps: vec![
            (0, In::Req(rid(2), ""), vec![]),
            // The new page's first request, 300 ms after the old page's poll.
            (300, In::Req(rid(3), ""), vec!["h1 200 <body/>"]),
            (300, In::Up(MSG), vec!["h2 200 <body><message"]),
            (310, In::Req(rid(4), ""), vec![]),
            // Two reloads in quick succession: too soon twice in a row, still fine.
            (400, In::Req(rid(5), ""), vec!["h4 200 <body/>"]),
            (500, In::Req(rid(6), ""), vec!["h5 200 <body/>"]),
            (500, In::Up(MSG), vec!["h6 200 <body><message"]),
            (510, In::Req(rid(7), ""), vec![]),
            (60_510, In::Tick, vec!["h8 200 <body/>"]),
        ],
    });
}

/// BOSH-R-16 b: a request with a payload is not too soon (payloads are the upstream's and the
/// throttle's to police) and resets the streak: the empty requests after it count from one.
#[test]
fn a_payload_resets_the_empty_streak() {
    run(Case {
        name: "payload resets",
        rules: rules(),
        create: String::new(),
        open: true,
        steps: vec![
            (0, In::Req(rid(2), ""), vec![]),
            (10, In::Req(rid(3), ""), vec!["h1 200 <body/>"]),
            (20, In::Req(rid(4), ""), vec!["h2 200 <body/>"]),
            (30, In::Req(rid(5), "<message id='m5'/>"), vec!["write"]),
            (30, In::Wrote, vec!["h3 200 <body/>"]),
            (40, In::Req(rid(6), ""), vec!["h4 200 <body/>"]),
            (50, In::Req(rid(7), ""), vec!["h6 200 <body/>"]),
            (60, In::Req(rid(8), ""), vec!["h7 200 <body/>"]),
            (
                70,
                In::Req(rid(9), ""),
                vec![
                    "end PolicyViolation(EmptyRequestsTooFrequently)",
                    "h8 200 <body type='terminate' condition='other-request'/>",
                    "h9 200 <body type='terminate' condition='policy-violation'/>",
                ],
            ),
        ],
    });
}

/// BOSH-R-16 b with multiple streams (§16.2): adding streams asks for something, so adds in
/// quick succession while a poll is held are not too-soon empty requests.
#[test]
fn adding_streams_is_not_an_idle_poll() {
    let add = |r: u64, d: &str| In::Req(format!("{} to='{d}'", rid(r)), "");
    run(Case {
        name: "quick adds",
        rules: multi(4),
        create: String::new(),
        open: true,
        steps: vec![
            (0, In::Req(rid(2), ""), vec![]),
            (10, add(3, "b1.test"), vec!["add 1 to b1.test"]),
            (11, In::Wrote, vec![named("h2 200 <body stream='{0}' from='b1.test'/>", &[1])]),
            (20, add(4, "b2.test"), vec!["add 2 to b2.test"]),
            (21, In::Wrote, vec![named("h4 200 <body stream='{0}' from='b2.test'/>", &[2])]),
            (30, add(5, "b3.test"), vec!["add 3 to b3.test"]),
            (31, In::Wrote, vec![named("h6 200 <body stream='{0}' from='b3.test'/>", &[3])]),
        ],
    });
}
