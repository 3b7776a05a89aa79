//! `xmpp-cm check DOMAIN` and `xmpp-cm check --front`: what an operator runs when something
//! fails. The domain check walks exactly the path a session takes — the same configuration
//! loading, [`crate::upstream::connect_observed`] with the same resolver, SSRF guard, TCP,
//! PROXY header, STARTTLS and TLS code — and prints one line per step as it is taken
//! ([`walk`]); the front check reads the public listeners' certificate files and the settings
//! that must agree with them ([`front`]). Each ends with a one-line verdict; `--json` prints
//! the same as one document. Exit codes: [`EXIT_OK`], [`EXIT_FAIL`], [`EXIT_CONFIG`].
//!
//! Nothing here changes what a session does: this module only watches and describes.

pub mod front;
pub mod walk;
pub mod x509;

#[cfg(test)]
mod tests;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{Config, ConfigError};
use crate::upstream::Upstream;

/// A session would work (and the front is consistent).
pub const EXIT_OK: i32 = 0;
/// Something on the path would fail; the verdict says what.
pub const EXIT_FAIL: i32 = 1;
/// The configuration does not load (as `--check-config` and startup: EX_CONFIG).
pub const EXIT_CONFIG: i32 = 64;

/// What to check, from the command line.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--config FILE`; `None`: built-in defaults and the environment only.
    pub config_file: Option<PathBuf>,
    /// The XMPP domain to walk a session to.
    pub domain: Option<String>,
    /// `--front`: the public listeners' certificate and the settings around it.
    pub front: bool,
    /// `--json`: one JSON document instead of lines.
    pub json: bool,
}

/// One step as printed: `ok`, `warn` or `FAIL`, its name, how long it took, what was seen.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Step {
    pub name: &'static str,
    pub ok: bool,
    /// Works, but an operator should know (`ok` stays true; the exit code is not affected).
    pub warning: bool,
    /// Milliseconds, to 0.1.
    pub ms: f64,
    pub detail: String,
}

/// How one check (the domain walk, or the front) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub ok: bool,
    pub text: String,
}

impl Verdict {
    pub fn ok(text: impl Into<String>) -> Verdict {
        Verdict { ok: true, text: text.into() }
    }
    pub fn fail(text: impl Into<String>) -> Verdict {
        Verdict { ok: false, text: text.into() }
    }
}

/// The JSON document of `--json`.
#[derive(Debug, Serialize)]
struct Document<'a> {
    steps: &'a [Step],
    verdict: &'a str,
    exit: i32,
}

/// The steps so far; in text mode each is printed the moment it is added, so a step that
/// hangs shows where it hangs.
pub struct Report {
    json: bool,
    steps: Mutex<Vec<Step>>,
}

impl Report {
    pub fn new(json: bool) -> Report {
        Report { json, steps: Mutex::new(Vec::new()) }
    }

    fn push(&self, name: &'static str, ok: bool, warning: bool, took: Duration, detail: String) {
        let ms = (took.as_secs_f64() * 10_000.0).round() / 10.0;
        let step = Step { name, ok, warning, ms, detail };
        if !self.json {
            println!("{}", line(&step));
            let _ = std::io::stdout().flush();
        }
        self.steps.lock().unwrap_or_else(|e| e.into_inner()).push(step);
    }

    pub fn ok(&self, name: &'static str, took: Duration, detail: impl Into<String>) {
        self.push(name, true, false, took, detail.into());
    }
    pub fn warn(&self, name: &'static str, took: Duration, detail: impl Into<String>) {
        self.push(name, true, true, took, detail.into());
    }
    pub fn fail(&self, name: &'static str, took: Duration, detail: impl Into<String>) {
        self.push(name, false, false, took, detail.into());
    }

    pub fn steps(&self) -> Vec<Step> {
        self.steps.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The last failed step among `names` (the failure a session's final error came from),
    /// else the last failed step of all.
    pub fn last_failed(&self, names: &[&str]) -> Option<&'static str> {
        let steps = self.steps.lock().unwrap_or_else(|e| e.into_inner());
        let failed = || steps.iter().rev().filter(|s| !s.ok);
        failed().find(|s| names.contains(&s.name)).or_else(|| failed().next()).map(|s| s.name)
    }

    /// Print the verdict (text) or the whole document (JSON); the exit code.
    fn finish(&self, verdict: &str, exit: i32) -> i32 {
        if self.json {
            let steps = self.steps();
            let doc = Document { steps: &steps, verdict, exit };
            match serde_json::to_string_pretty(&doc) {
                Ok(s) => println!("{s}"),
                Err(e) => eprintln!("xmpp-cm: cannot encode the report: {e}"),
            }
        } else {
            println!("verdict: {verdict}");
        }
        exit
    }
}

/// A step as one text line: `ok    tcp_connect      0.3 ms  127.0.0.1:5222 …`.
pub fn line(s: &Step) -> String {
    let mark = match (s.ok, s.warning) {
        (false, _) => "FAIL",
        (true, true) => "warn",
        (true, false) => "ok",
    };
    format!("{mark:<4}  {:<15} {:>7.1} ms  {}", s.name, s.ms, s.detail)
}

/// Run the checks `opts` asks for; the process exit code.
pub fn run(opts: &Options) -> i32 {
    let report = Report::new(opts.json);
    let t0 = Instant::now();
    let loaded = Config::load(opts.config_file.as_deref())
        .and_then(|c| Upstream::new_observed(Arc::new(c)));
    let upstream = match loaded {
        Ok(u) => u,
        Err(e) => return bad_config(&report, t0.elapsed(), &e),
    };
    report.ok("config", t0.elapsed(), describe_config(opts.config_file.as_deref()));

    let mut verdicts = Vec::new();
    if opts.front {
        verdicts.push(front::check(&upstream.config, &report));
    }
    if let Some(domain) = &opts.domain {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("xmpp-cm: cannot start the runtime: {e}");
                return EXIT_FAIL;
            }
        };
        verdicts.push(rt.block_on(walk::domain(&upstream, domain, &report)));
    }
    let ok = verdicts.iter().all(|v| v.ok);
    let text = verdicts.iter().map(|v| v.text.as_str()).collect::<Vec<_>>().join("; ");
    let verdict = format!("{}: {text}", if ok { "ok" } else { "FAIL" });
    report.finish(&verdict, if ok { EXIT_OK } else { EXIT_FAIL })
}

/// The same one-line reason as startup and `--check-config` on stderr, and exit 64.
fn bad_config(report: &Report, took: Duration, e: &ConfigError) -> i32 {
    eprintln!("xmpp-cm: bad configuration: {e}");
    if report.json {
        report.fail("config", took, e.to_string());
        return report.finish(&format!("FAIL: bad configuration: {e}"), EXIT_CONFIG);
    }
    EXIT_CONFIG
}

/// Where the configuration came from: the file, and which `XMPP_CM_*` variables were layered
/// over it (names only: values may be secrets).
fn describe_config(file: Option<&Path>) -> String {
    let mut env: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with("XMPP_CM_"))
        .collect();
    env.sort();
    let base = match file {
        Some(p) => format!("{} loaded and valid", p.display()),
        None => "built-in defaults (no --config) valid".to_string(),
    };
    if env.is_empty() {
        format!("{base}; no XMPP_CM_* environment variables")
    } else {
        format!("{base}; overridden by the environment: {}", env.join(", "))
    }
}
