//! Micro-benchmarks of the hot pure paths (issue: benchmarks): BOSH body parse and response
//! serialisation, framing a stream of stanzas from upstream, and the rid window.
//! Run: `cargo bench --bench hot_paths`.

use std::time::Instant;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use xmpp_cm::bosh::body::{parse, ResponseBody};
use xmpp_cm::bosh::window::Window;
use xmpp_cm::xml::{Frame, Framer, Limits};

const MESSAGE: &str = "<message xmlns='jabber:client' to='bob@localhost/res' from='alice@localhost/res' type='chat' id='m-123456'><body>Hello Bob, this is a typical chat message of moderate length.</body><active xmlns='http://jabber.org/protocol/chatstates'/></message>";

fn bosh_body(c: &mut Criterion) {
    let req = format!(
        "<body xmlns='http://jabber.org/protocol/httpbind' rid='1928374650' sid='kX3-9aQ_zz00AAbbCCddEE'>{MESSAGE}</body>"
    );
    let limits = Limits::default();
    let mut g = c.benchmark_group("bosh_body");
    g.throughput(Throughput::Bytes(req.len() as u64));
    g.bench_function("parse_request_with_one_message", |b| b.iter(|| parse(black_box(req.as_bytes()), &limits).unwrap()));
    let parsed = parse(req.as_bytes(), &limits).unwrap();
    let el = parsed.payloads[0].clone();
    g.bench_function("serialise_response_with_one_message", |b| {
        b.iter(|| {
            let mut r = ResponseBody::new();
            r.push_elements(std::iter::once(black_box(&el)));
            r.to_xml()
        })
    });
    g.finish();
}

fn framing(c: &mut Criterion) {
    let header = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' from='localhost' id='abc' version='1.0' xml:lang='en'>";
    let stanzas: String = std::iter::repeat_n(MESSAGE, 100).collect();
    let mut g = c.benchmark_group("framing");
    g.throughput(Throughput::Elements(100));
    g.bench_function("100_messages_in_4k_chunks", |b| {
        b.iter(|| {
            let mut f = Framer::new(Limits::default());
            f.feed(header.as_bytes());
            let mut n = 0;
            for chunk in stanzas.as_bytes().chunks(4096) {
                f.feed(chunk);
                while let Ok(Some(frame)) = f.next_frame() {
                    if matches!(frame, Frame::Element(_)) {
                        n += 1;
                    }
                }
            }
            assert_eq!(n, 100);
        })
    });
    g.finish();
}

fn rid_window(c: &mut Criterion) {
    let mut g = c.benchmark_group("rid_window");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("1000_in_order_requests_with_cache", |b| {
        b.iter(|| {
            let now = Instant::now();
            let mut w = Window::new(1_000_000, 2, 2);
            for i in 0..1000u64 {
                let rid = 1_000_001 + i;
                black_box(w.classify(rid));
                w.advance();
                w.store(rid, bytes::Bytes::new(), now);
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bosh_body, framing, rid_window);
criterion_main!(benches);
