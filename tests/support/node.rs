//! Run the Node client scripts in tests/js (strophe.js, xmpp.js) with a hard timeout.
//! Each script prints one JSON result line on stdout and exits 0 on success.

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::process::{have_setpriv, signal_pid, which};
use super::repo_root;

/// What a script run produced.
#[derive(Debug)]
pub struct NodeOutput {
    /// None when the script was killed for running past its timeout.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    pub elapsed: Duration,
}

impl NodeOutput {
    /// Exited 0 within the timeout.
    pub fn success(&self) -> bool {
        !self.timed_out && self.status.is_some_and(|s| s.success())
    }

    /// The last non-empty stdout line: the script's JSON result.
    pub fn result_line(&self) -> &str {
        self.stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("")
    }

    /// Panic with everything useful unless the script succeeded; returns the result line.
    pub fn assert_ok(&self, what: &str) -> &str {
        if !self.success() {
            panic!(
                "{what} failed (status {:?}, timed out: {}, {:?})\n--- result ---\n{}\n--- stderr (last 80 lines) ---\n{}",
                self.status,
                self.timed_out,
                self.elapsed,
                self.result_line(),
                last_lines(&self.stderr, 80)
            );
        }
        let line = self.result_line();
        assert!(line.contains("\"ok\":true"), "{what}: exit 0 but result line says otherwise: {line}");
        line
    }
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `node tests/js/<script> <args…>`, killed after `timeout`.
/// Panics with a pointer to scripts/test.sh when node or tests/js/node_modules is missing.
pub fn node(script: &str, args: &[&str], timeout: Duration) -> NodeOutput {
    node_env(script, args, &[], timeout)
}

/// [`node`] with extra environment variables (e.g. `NODE_EXTRA_CA_CERTS` for an https:// URL).
pub fn node_env(script: &str, args: &[&str], env: &[(&str, &str)], timeout: Duration) -> NodeOutput {
    let js = repo_root().join("tests/js");
    if which("node").is_none() {
        panic!("node is not installed: Node 20 is needed for the client tests (scripts/test.sh expects it)");
    }
    if !js.join("node_modules").is_dir() {
        panic!("tests/js/node_modules is missing: run scripts/test.sh (it runs `npm ci` in tests/js)");
    }
    let t0 = Instant::now();
    // Tied to this (waiting) thread: if the test process dies, the client dies with it.
    let mut cmd = if have_setpriv() {
        let mut c = Command::new("setpriv");
        c.args(["--pdeathsig", "KILL", "--", "node"]);
        c
    } else {
        Command::new("node")
    };
    let mut child = cmd
        .arg(js.join(script))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(&js)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node {script}: {e}"));
    // Drain both pipes on threads so a chatty script cannot block on a full pipe.
    let mut out = child.stdout.take().expect("stdout piped");
    let mut err = child.stderr.take().expect("stderr piped");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if t0.elapsed() < timeout => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                timed_out = true;
                signal_pid(child.id(), "KILL");
                let _ = child.wait();
                break None;
            }
        }
    };
    NodeOutput {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
        timed_out,
        elapsed: t0.elapsed(),
    }
}
