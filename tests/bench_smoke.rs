//! Keeps `xmpp-cm-bench` working: its own `upstream` server plus a few sessions over TCP
//! (`setup`, then a 1 s `pingpong` and `flood`), and the JSON record must parse with no error;
//! then its BOSH and WebSocket clients through xmpp-cm in front of that upstream.
//! No timing is asserted: only that the tool runs and counts.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BENCH: &str = env!("CARGO_BIN_EXE_xmpp-cm-bench");

/// The upstream child, killed (by its PID) when the test ends.
struct Upstream(Child);

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_upstream() -> (Upstream, String) {
    let mut child = Command::new(BENCH)
        .args(["--threads", "1", "upstream", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start xmpp-cm-bench upstream");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read listening line");
    let up = Upstream(child);
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad listening line {line:?}: {e}"));
    let addr = v["listening"][0].as_str().expect("listening address").to_string();
    (up, addr)
}

fn run(addr: &str, args: &[&str]) -> serde_json::Value {
    run_over("tcp", addr, args)
}

fn run_over(transport: &str, target: &str, args: &[&str]) -> serde_json::Value {
    let mut cmd = Command::new(BENCH);
    cmd.args(["--threads", "1", "run", "--transport", transport, "--target", target, "--domain", "bench.test", "--quiet"]);
    cmd.args(args);
    let out = cmd.output().expect("run xmpp-cm-bench");
    assert!(out.status.success(), "xmpp-cm-bench {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or("");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("record does not parse ({e}): {line}"))
}

#[test]
fn bench_tool_runs_against_its_own_upstream() {
    let (up, addr) = start_upstream();
    let pid = up.0.id().to_string();
    let watch = format!("upstream={pid}");

    let r = run(&addr, &["--workload", "setup", "--sessions", "8", "--pid", &watch]);
    assert_eq!(r["errors_total"], 0, "{r}");
    assert_eq!(r["logins"]["ok"], 8, "{r}");
    assert_eq!(r["procs"][0]["pid"].as_u64(), Some(pid.parse::<u64>().unwrap()), "{r}");
    assert!(r["procs"][0]["rss_kib_loaded"].as_u64().unwrap_or(0) > 0, "RSS sampled from /proc: {r}");

    for workload in ["pingpong", "flood"] {
        let r = run(&addr, &["--workload", workload, "--sessions", "6", "--duration", "1", "--warmup", "0.2", "--rate", "20"]);
        assert_eq!(r["errors_total"], 0, "{workload}: {r}");
        assert_eq!(r["logins"]["ok"], 6, "{workload}: {r}");
        assert!(r["messages"]["received"].as_u64().unwrap_or(0) > 0, "{workload}: {r}");
        assert!(r["messages"]["latency_ms"]["count"].as_u64().unwrap_or(0) > 0, "{workload}: {r}");
        if workload == "pingpong" {
            // The generator's own lag and the latency from the write are recorded beside the
            // latency from the intended send time.
            assert!(r["messages"]["send_lag_ms"]["count"].as_u64().unwrap_or(0) > 0, "{r}");
            assert!(r["messages"]["latency_from_write_ms"]["count"].as_u64().unwrap_or(0) > 0, "{r}");
            assert!(!r["messages"]["per_second"].as_array().map(Vec::is_empty).unwrap_or(true), "{r}");
        }
    }
    std::thread::sleep(Duration::from_millis(10));
}

/// The generator's BOSH and WebSocket clients, through xmpp-cm (plaintext upstream) to the
/// bench upstream: logins, a pingpong and a flood in each client mode (`batch`, and `browser`:
/// one stanza per BOSH request, window 4), messages back and no error (none lost).
#[test]
fn bench_tool_drives_bosh_and_websocket_through_xmpp_cm() {
    let (up, addr) = start_upstream();
    let toml = format!(
        "[http]\nlisten = [\"127.0.0.1:{}\"]\n[admin]\nlisten = \"127.0.0.1:{}\"\n[upstream]\ndomains = [\"bench.test\"]\ntls = \"none\"\n\
         [upstream.routes]\n\"bench.test\" = \"{addr}\"\n[limits]\nnew_sessions_per_ip_per_sec = 1000\n",
        support::free_port(),
        support::free_port()
    );
    let cm = support::xmpp_cm::XmppCm::start(&toml);
    let watch = format!("proxy={}", cm.pid());
    for (transport, target) in [("bosh", cm.bosh_url()), ("ws", cm.ws_url())] {
        for (mode, workload) in [("batch", "pingpong"), ("batch", "flood"), ("browser", "pingpong"), ("browser", "flood")] {
            let args = ["--mode", mode, "--workload", workload, "--sessions", "4", "--duration", "1", "--warmup", "0.2", "--rate", "20", "--pid", &watch];
            let r = run_over(transport, &target, &args);
            let what = format!("{transport} {mode} {workload}: {r}\n--- xmpp-cm log ---\n{}", cm.log());
            assert_eq!(r["params"]["mode"], mode, "{what}");
            if workload == "flood" {
                assert_eq!(r["params"]["window"], if mode == "browser" { 4 } else { 8 }, "the mode's default window: {what}");
            }
            assert_eq!(r["errors_total"], 0, "{what}");
            assert_eq!(r["logins"]["ok"], 4, "{what}");
            // A message that never comes back is counted as a `lost` error (errors_total above);
            // `sent` and `received` count by different clocks (write time, intended time), so
            // they are not compared.
            assert!(r["messages"]["received"].as_u64().unwrap_or(0) > 0, "messages came back: {what}");
            assert!(r["procs"][0]["cpu_s"].as_f64().is_some(), "xmpp-cm's CPU sampled: {what}");
        }
    }
    drop(cm);
    drop(up);
}

/// A run of `port_count` consecutive loopback ports, all free right now, below 32768.
fn free_port_run(port_count: u16) -> u16 {
    let seed = std::process::id() as u16;
    for i in 0..200u16 {
        let base = 20000 + (seed.wrapping_add(i.wrapping_mul(97)) % 1000) * 10;
        let held: Vec<_> = (base..base + port_count).map_while(|p| std::net::TcpListener::bind(("127.0.0.1", p)).ok()).collect();
        if held.len() == port_count as usize {
            return base;
        }
    }
    panic!("no run of {port_count} free loopback ports");
}

/// bench/scale.sh (the 100k run split over processes when one process's open-file limit is too
/// low) with 2 chains of 15 sessions: every session is held at once per xmpp-cm's own gauges,
/// and every generator writes its record with no error.
#[test]
fn scale_script_holds_every_session_across_chains() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("scale.jsonl");
    let bin = std::path::Path::new(BENCH).parent().expect("bin dir");
    assert!(bin.join("xmpp-cm").exists(), "xmpp-cm is built next to xmpp-cm-bench");
    let base = free_port_run(6);
    let res = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/bench/scale.sh"))
        .args(["--sessions", "30", "--chains", "2", "--hold", "1", "--port-base", &base.to_string()])
        .arg("--out")
        .arg(&out)
        .arg("--bin")
        .arg(bin)
        .output()
        .expect("run bench/scale.sh");
    let log = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "bench/scale.sh failed: {log}");
    let recs: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .expect("records")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad record ({e}): {l}")))
        .collect();
    let total = recs.iter().find(|r| r["note"] == "scale-total").unwrap_or_else(|| panic!("no summary record: {log}"));
    assert_eq!(total["chains"], 2);
    assert_eq!(total["max_held_at_once"], 30, "{total}");
    assert_eq!(total["held_after_window"], 30, "{total}");
    assert!(total["rss_kib_loaded"]["proxy"].as_u64().unwrap_or(0) > 0, "{total}");
    let shards: Vec<_> = recs.iter().filter(|r| r["note"] == "scale-shard").collect();
    assert_eq!(shards.len(), 2, "one record per generator: {log}");
    for s in shards {
        assert_eq!(s["logins"]["ok"], 15, "{s}");
        assert_eq!(s["errors_total"], 0, "{s}");
    }
}
