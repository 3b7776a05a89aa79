//! A real, unmodified Prosody 0.12 (Debian package) as upstream: its own temp dir, config,
//! throw-away CA, accounts and free loopback ports. Its own BOSH/WebSocket modules stay off
//! unless `http` is asked for (to compare against, or to prove a client script), since xmpp-cm
//! is what fronts it.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use super::certs::TestCa;
use super::process::{plain_path, server_dir, server_handle, which, Launch, Server, Spawn};
use super::free_port;

/// How to set up one Prosody.
#[derive(Debug, Clone)]
pub struct ProsodyOpts {
    /// The VirtualHost / JID domain.
    pub domain: String,
    /// `c2s_require_encryption`: STARTTLS mandatory before SASL on TCP.
    pub tls_required: bool,
    /// SCRAM off, only SASL PLAIN (cheap logins for load tests; xmpp.js' SCRAM costs ~0.7 s CPU).
    pub plain_only: bool,
    /// Users `user1..userN` / `pass1..passN`, besides alice, bob, carol and dave.
    pub users: usize,
    /// Prosody's own mod_bosh (/http-bind) and mod_websocket (/xmpp-websocket) on a free port.
    pub http: bool,
    /// Also listen for XEP-0368 direct TLS c2s on a free port.
    pub direct_tls: bool,
    /// Prosody log level: debug, info, warn, error.
    pub log_level: String,
    /// Lua appended to the global section (before the VirtualHost), e.g. `smacks_hibernation_time = 30`.
    pub extra_config: String,
}

impl Default for ProsodyOpts {
    fn default() -> Self {
        ProsodyOpts {
            domain: "localhost".into(),
            tls_required: false,
            plain_only: false,
            users: 0,
            http: false,
            direct_tls: false,
            log_level: "info".into(),
            extra_config: String::new(),
        }
    }
}

/// The fixed accounts every server gets (user, password).
pub const ACCOUNTS: [(&str, &str); 4] =
    [("alice", "alicepass"), ("bob", "bobpass"), ("carol", "carolpass"), ("dave", "davepass")];

/// A running Prosody: a configuration of [`Server`] (killed by PID on drop, temp dir removed after).
pub struct Prosody {
    server: Server,
    domain: String,
    c2s_port: u16,
    http_port: Option<u16>,
    direct_tls_port: Option<u16>,
    ca: TestCa,
}

impl Prosody {
    /// Write config, CA, accounts; start `prosody -F`; wait (≤15 s) for its ports.
    /// Panics with Prosody's log if it does not come up.
    pub fn start(opts: ProsodyOpts) -> Prosody {
        let Some(bin) = which("prosody") else {
            panic!("Prosody is not installed (no `prosody` on PATH): run scripts/test.sh, which installs it");
        };
        let dir = server_dir("prosody");
        let root = dir.path().to_path_buf();
        let ca = TestCa::generate(&root.join("certs"), &opts.domain);
        let c2s_port = free_port();
        let http_port = opts.http.then(free_port);
        let direct_tls_port = opts.direct_tls.then(free_port);
        let config = root.join("prosody.cfg.lua");
        std::fs::create_dir_all(root.join("data")).expect("data dir");
        std::fs::write(&config, config_text(&opts, &root, &ca, c2s_port, http_port, direct_tls_port))
            .expect("write prosody config");

        let mut users: Vec<(String, String)> =
            ACCOUNTS.iter().map(|(u, p)| (u.to_string(), p.to_string())).collect();
        users.extend((1..=opts.users).map(|i| (format!("user{i}"), format!("pass{i}"))));
        for (u, p) in &users {
            write_account(&root.join("data"), &opts.domain, u, p);
        }

        let spawn = Spawn::new(bin, root.join("stdout.log")).arg("--config").arg(&config).arg("-F");
        let ports: Vec<u16> = [Some(c2s_port), http_port, direct_tls_port].into_iter().flatten().collect();
        let server = Server::start(Launch {
            name: "prosody",
            dir,
            config,
            log: root.join("prosody.log"),
            spawn,
            ports,
            ready_within: Duration::from_secs(15),
        });
        Prosody { server, domain: opts.domain, c2s_port, http_port, direct_tls_port, ca }
    }

    /// TCP port of c2s on 127.0.0.1 (STARTTLS).
    pub fn c2s_port(&self) -> u16 {
        self.c2s_port
    }
    /// XEP-0368 direct TLS c2s port, if `direct_tls` was asked for.
    pub fn direct_tls_port(&self) -> Option<u16> {
        self.direct_tls_port
    }
    /// Prosody's own HTTP port, if `http` was asked for.
    pub fn http_port(&self) -> Option<u16> {
        self.http_port
    }
    /// Prosody's own BOSH endpoint (needs `http`).
    pub fn bosh_url(&self) -> String {
        format!("http://127.0.0.1:{}/http-bind", self.http_port.expect("ProsodyOpts.http was not set"))
    }
    /// Prosody's own WebSocket endpoint (needs `http`).
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/xmpp-websocket", self.http_port.expect("ProsodyOpts.http was not set"))
    }
    pub fn domain(&self) -> &str {
        &self.domain
    }
    /// PEM of the CA that signed Prosody's certificate.
    pub fn ca_file(&self) -> &Path {
        &self.ca.ca_cert
    }
    pub fn certs(&self) -> &TestCa {
        &self.ca
    }
    /// Add an account (plain password file). Works while running for users not yet used.
    pub fn add_user(&self, user: &str, pass: &str) {
        write_account(&self.server.dir().join("data"), &self.domain, user, pass);
    }
}

server_handle!(Prosody, upstream);

/// util.datamanager's path encoding: every non-alphanumeric byte → %xx.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02x}") })
        .collect()
}

fn lua_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n"))
}

/// An account as mod_auth_internal_plain stores it: DATA/<enc(host)>/accounts/<enc(user)>.dat.
fn write_account(data: &Path, host: &str, user: &str, pass: &str) {
    let dir = data.join(enc(host)).join("accounts");
    std::fs::create_dir_all(&dir).expect("accounts dir");
    let body = format!("return {{\n\t[\"password\"] = {};\n}};\n", lua_str(pass));
    std::fs::write(dir.join(format!("{}.dat", enc(user))), body).expect("write account");
}

fn config_text(
    o: &ProsodyOpts,
    root: &Path,
    ca: &TestCa,
    c2s: u16,
    http: Option<u16>,
    direct_tls: Option<u16>,
) -> String {
    let r = plain_path(root);
    let mut modules = vec![
        "disco", "roster", "saslauth", "tls", "ping", "time", "version", "uptime", "posix",
        "carbons", "smacks", "blocklist", "csi_simple",
    ];
    if http.is_some() {
        modules.extend(["http", "bosh", "websocket"]);
    }
    let modules: String = modules.iter().map(|m| format!("\"{m}\"; ")).collect();
    let disabled_mechs = if o.plain_only {
        // internal_plain also offers SCRAM-SHA-256 (computed from the plain password).
        r#""DIGEST-MD5", "SCRAM-SHA-1", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-256-PLUS""#
    } else {
        r#""DIGEST-MD5""#
    };
    let mut c = String::new();
    let _ = write!(
        c,
        r#"-- written by tests/support/prosody.rs
run_as_root = true        -- test instance started directly (possibly as root), no user switch
pidfile = "{r}/prosody.pid"
data_path = "{r}/data"
plugin_paths = {{ }}
log = {{
  {{ levels = {{ min = "{level}" }}, to = "file", filename = "{r}/prosody.log" }};
}}
admins = {{ }}

-- loopback only, every port chosen by the harness
interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s} }}
c2s_interfaces = {{ "127.0.0.1" }}
c2s_direct_tls_ports = {{ {dtls} }}
s2s_ports = {{ }}
http_ports = {{ {http} }}
http_interfaces = {{ "127.0.0.1" }}
https_ports = {{ }}
component_ports = {{ }}

-- No "limits" (Debian's default 10 kB/s c2s rate would throttle everything), no s2s, no offline
-- storage (a message to an absent user must not come back later and look like a duplicate).
modules_enabled = {{ {modules}}}
modules_disabled = {{ "s2s"; "offline"; }}

authentication = "internal_plain"
c2s_require_encryption = {req}
allow_unencrypted_plain_auth = {allow_plain}
disable_sasl_mechanisms = {{ {disabled_mechs} }}
consider_bosh_secure = true
consider_websocket_secure = true
http_default_host = "{domain}"
statistics = nil
{dtls_ssl}
{extra}

VirtualHost "{domain}"
  ssl = {{
    certificate = "{cert}";
    key = "{key}";
  }}
"#,
        level = o.log_level,
        dtls = direct_tls.map(|p| p.to_string()).unwrap_or_default(),
        http = http.map(|p| p.to_string()).unwrap_or_default(),
        req = o.tls_required,
        allow_plain = !o.tls_required,
        domain = o.domain,
        extra = o.extra_config,
        cert = plain_path(&ca.cert),
        key = plain_path(&ca.key),
        // Direct TLS ports pick the host's certificate by SNI; this is the fallback without SNI.
        dtls_ssl = match direct_tls {
            Some(_) => format!(
                "c2s_direct_tls_ssl = {{ certificate = \"{}\"; key = \"{}\"; }}",
                plain_path(&ca.cert),
                plain_path(&ca.key)
            ),
            None => String::new(),
        },
    );
    c
}
