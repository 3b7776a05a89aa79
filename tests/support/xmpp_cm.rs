//! The xmpp-cm binary under test (`CARGO_BIN_EXE_xmpp-cm`), started from a TOML config in its
//! own temp dir, output to a log file, stopped by PID on drop. Tests reach it only through its
//! ports, signals and log, like an operator would.

use std::process::ExitStatus;
use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::Figment;

use super::process::{server_dir, server_handle, Launch, Server, Spawn};
use super::{free_port, Upstream};

/// Path of the binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_xmpp-cm");

/// A running xmpp-cm: a configuration of [`Server`].
pub struct XmppCm {
    server: Server,
    http_port: u16,
    admin_port: Option<u16>,
    bosh_path: String,
    ws_path: String,
    /// `http.tls.cert_file` is set: the public listener speaks HTTPS/WSS.
    tls: bool,
}

impl XmppCm {
    /// A config in front of `up`: public and admin listeners on free loopback ports, `up`'s
    /// domain allowed and routed statically to its c2s port, TLS required and verified with
    /// `up`'s test CA, 5 s connect timeout, debug logs for xmpp-cm.
    pub fn config_for(up: &impl Upstream) -> String {
        Self::config_with(up, &[])
    }

    /// [`Self::config_for`] with keys replaced or added: `("bosh.max_wait", "5")`,
    /// `("upstream.tls", "\"none\"")`, `("upstream.routes.\"other.test\"", "\"127.0.0.1:1\"")`.
    /// Values are TOML literals (quote strings; see [`toml_str`]).
    pub fn config_with(up: &impl Upstream, overrides: &[(&str, &str)]) -> String {
        let mut t = TomlTables::default();
        t.set("http", "listen", &format!("[{}]", toml_str(&format!("127.0.0.1:{}", free_port()))));
        t.set("admin", "listen", &toml_str(&format!("127.0.0.1:{}", free_port())));
        t.set("upstream", "domains", &format!("[{}]", toml_str(up.domain())));
        t.set("upstream", "tls", "\"required\"");
        t.set("upstream", "ca_file", &toml_str(up.ca_file().to_str().expect("UTF-8 temp path")));
        t.set("upstream", "connect_timeout", "5");
        t.set("upstream.routes", &toml_str(up.domain()), &toml_str(&format!("127.0.0.1:{}", up.c2s_port())));
        t.set("log", "level", "\"xmpp_cm=debug,info\"");
        for (k, v) in overrides {
            let (table, key) = split_key(k);
            t.set(table, key, v);
        }
        t.render()
    }

    /// Start with `toml`; wait (≤10 s) until its HTTP (and admin) port accepts.
    /// Panics with its log if it exits or does not come up.
    pub fn start(toml: &str) -> XmppCm {
        Self::start_with_env(toml, &[])
    }

    /// [`Self::start`] with extra environment (e.g. `XMPP_CM_BOSH__MAX_WAIT`). Inherited
    /// `XMPP_CM_*` variables are removed so the developer's shell cannot change a test.
    pub fn start_with_env(toml: &str, env: &[(&str, &str)]) -> XmppCm {
        Self::try_start(toml, env).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Self::start_with_env`], but `Err(reason + log)` instead of panicking.
    pub fn try_start(toml: &str, env: &[(&str, &str)]) -> Result<XmppCm, String> {
        let listen = Listen::from_toml(toml);
        let mut ports = vec![listen.http_port];
        ports.extend(listen.admin_port);
        let server = Server::try_start(launch(toml, env, ports, &[]))?;
        Ok(XmppCm {
            server,
            http_port: listen.http_port,
            admin_port: listen.admin_port,
            bosh_path: listen.bosh_path,
            ws_path: listen.ws_path,
            tls: listen.tls,
        })
    }

    /// Run the binary with `toml` and `args` (e.g. `["--check-config"]`) until it exits (or
    /// `timeout`, then it is killed): (exit status, combined output). For bad-config tests.
    pub fn run_to_exit(toml: &str, args: &[&str], env: &[(&str, &str)], timeout: Duration) -> (Option<ExitStatus>, String) {
        let mut server = Server::start(launch(toml, env, Vec::new(), args));
        let status = server.wait_exit(timeout);
        server.stop();
        (status, server.log())
    }

    /// BOSH endpoint, e.g. `http://127.0.0.1:P/http-bind` (`https://` with `http.tls`).
    pub fn bosh_url(&self) -> String {
        format!("{}{}", self.http_base(), self.bosh_path)
    }
    /// WebSocket endpoint, e.g. `ws://127.0.0.1:P/xmpp-websocket` (`wss://` with `http.tls`).
    pub fn ws_url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://127.0.0.1:{}{}", self.http_port, self.ws_path)
    }
    /// `http://127.0.0.1:P` of the public listener (`https://` with `http.tls`), for
    /// host-meta, CORS and raw requests. (The raw client in support::http speaks http:// only.)
    pub fn http_base(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.http_port)
    }
    /// "127.0.0.1:P" of the public listener (for raw TCP tests).
    pub fn http_addr(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }
    /// `http://127.0.0.1:Q` of the admin listener (/metrics, /healthz, /readyz).
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port.expect("admin listener disabled in this config"))
    }
    /// Rewrite its config file with keys replaced or added (as in [`Self::config_with`]),
    /// for live-reload tests; returns the new text. Only files written by this harness.
    pub fn rewrite_config(&self, overrides: &[(&str, &str)]) -> String {
        let config = self.server.config_path();
        let old = std::fs::read_to_string(config).expect("read config");
        let toml = with_overrides(&old, overrides);
        // Replaced in one rename: a reload never reads half a file.
        let tmp = config.with_extension("toml.new");
        std::fs::write(&tmp, &toml).expect("write config");
        std::fs::rename(&tmp, config).expect("replace config");
        toml
    }
}

server_handle!(XmppCm);

/// xmpp-cm as a [`Server`] configuration: `toml` in its own temp dir, output to its log,
/// inherited `XMPP_CM_*` variables removed (the developer's shell cannot change a test).
fn launch(toml: &str, env: &[(&str, &str)], ports: Vec<u16>, args: &[&str]) -> Launch {
    let dir = server_dir("cm");
    let config = dir.path().join("xmpp-cm.toml");
    std::fs::write(&config, toml).expect("write config");
    let log = dir.path().join("xmpp-cm.log");
    let mut spawn = Spawn::new(BIN, &log).arg("--config").arg(&config).args(args.iter().copied()).env("RUST_BACKTRACE", "1");
    spawn.env_remove = std::env::vars_os()
        .map(|(k, _)| k)
        .filter(|k| k.to_string_lossy().starts_with("XMPP_CM_"))
        .collect();
    for (k, v) in env {
        spawn = spawn.env(*k, *v);
    }
    Launch { name: "xmpp-cm", dir, config, log, spawn, ports, ready_within: Duration::from_secs(10) }
}

/// Where the config says it listens (defaults as in src/config.rs when a key is absent).
struct Listen {
    http_port: u16,
    admin_port: Option<u16>,
    bosh_path: String,
    ws_path: String,
    tls: bool,
}

impl Listen {
    fn from_toml(toml: &str) -> Listen {
        let f = Figment::from(Toml::string(toml));
        let listen: Vec<String> = f.extract_inner("http.listen").unwrap_or_else(|_| vec!["0.0.0.0:5280".into()]);
        let first = listen.first().expect("http.listen is empty");
        let port = |a: &str| -> u16 {
            a.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or_else(|| panic!("cannot read a port in {a:?}"))
        };
        let admin: String = f.extract_inner("admin.listen").unwrap_or_else(|_| "127.0.0.1:9280".into());
        Listen {
            http_port: port(first),
            admin_port: (!admin.is_empty()).then(|| port(&admin)),
            bosh_path: f.extract_inner("http.bosh_path").unwrap_or_else(|_| "/http-bind".into()),
            ws_path: f.extract_inner("http.websocket_path").unwrap_or_else(|_| "/xmpp-websocket".into()),
            tls: f.extract_inner::<String>("http.tls.cert_file").is_ok_and(|c| !c.is_empty()),
        }
    }
}

/// A TOML basic string literal for `s`.
pub fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A config written by [`XmppCm::config_with`] with more keys replaced or added.
pub fn with_overrides(rendered: &str, overrides: &[(&str, &str)]) -> String {
    let mut t = TomlTables::default();
    let mut table = String::new();
    for line in rendered.lines() {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            table = name.to_string();
        } else if let Some((k, v)) = line.split_once(" = ") {
            t.set(&table, k, v);
        }
    }
    for (k, v) in overrides {
        let (table, key) = split_key(k);
        t.set(table, key, v);
    }
    t.render()
}

/// "a.b.key" → ("a.b", "key"); a quoted last segment may contain dots: `t."x.y"`.
fn split_key(k: &str) -> (&str, &str) {
    if let Some(inner) = k.strip_suffix('"') {
        if let Some(open) = inner.rfind('"') {
            let table = k[..open].trim_end_matches('.');
            return (table, &k[open..]);
        }
    }
    k.rsplit_once('.').unwrap_or_else(|| panic!("config override {k:?} needs a table: section.key"))
}

/// Ordered TOML tables of `key = literal` lines.
#[derive(Default)]
struct TomlTables(Vec<(String, Vec<(String, String)>)>);

impl TomlTables {
    fn set(&mut self, table: &str, key: &str, value: &str) {
        let idx = match self.0.iter().position(|(t, _)| t == table) {
            Some(i) => i,
            None => {
                self.0.push((table.to_string(), Vec::new()));
                self.0.len() - 1
            }
        };
        let keys = &mut self.0[idx].1;
        match keys.iter_mut().find(|(k, _)| k == key) {
            Some(kv) => kv.1 = value.to_string(),
            None => keys.push((key.to_string(), value.to_string())),
        }
    }

    fn render(&self) -> String {
        let mut out = String::from("# written by tests/support/xmpp_cm.rs\n");
        for (table, keys) in &self.0 {
            out.push_str(&format!("\n[{table}]\n"));
            for (k, v) in keys {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
        out
    }
}
