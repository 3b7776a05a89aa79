//! A real, unmodified ejabberd (Debian package, 23.01) as a second, different upstream.
//!
//! Started as a bare Erlang VM (`erl … -s ejabberd`) rather than through `ejabberdctl`: no
//! Erlang distribution, so no epmd, node name or cookie to clash with other instances, and the
//! PID we hold is the VM's own. Accounts are created through mod_http_api (`POST /api/register`,
//! loopback only) because `ejabberdctl register` starts a whole VM per user (~1 s each).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::certs::TestCa;
use super::http::{http_request, HttpResponse};
use super::process::{plain_path, server_dir, server_handle, which, Launch, Server, Spawn};
use super::prosody::ACCOUNTS;
use super::free_port;

/// How to set up one ejabberd.
#[derive(Debug, Clone)]
pub struct EjabberdOpts {
    pub domain: String,
    /// `starttls_required` on c2s (STARTTLS is always offered).
    pub tls_required: bool,
    /// Only SASL PLAIN (SCRAM mechanisms disabled; passwords stored plain).
    pub plain_only: bool,
    /// Users `user1..userN` / `pass1..passN`, besides alice, bob, carol and dave.
    pub users: usize,
    /// ejabberd's own mod_bosh (/bosh) and WebSocket (/ws) on its HTTP port.
    pub http: bool,
    /// ejabberd loglevel: none, emergency, alert, critical, error, warning, notice, info, debug.
    pub log_level: String,
    /// YAML appended at top level (must not repeat a key written here).
    pub extra_config: String,
    /// `use_proxy_protocol: true` on the c2s listener: every connection must start with a
    /// PROXY header (v1 or v2), whose source address ejabberd then logs and uses.
    pub proxy_protocol: bool,
}

impl Default for EjabberdOpts {
    fn default() -> Self {
        EjabberdOpts {
            domain: "localhost".into(),
            tls_required: false,
            plain_only: false,
            users: 0,
            http: false,
            log_level: "info".into(),
            extra_config: String::new(),
            proxy_protocol: false,
        }
    }
}

/// A running ejabberd: a configuration of [`Server`] (killed by PID on drop, temp dir removed after).
pub struct Ejabberd {
    server: Server,
    domain: String,
    c2s_port: u16,
    http_port: u16,
    ca: TestCa,
}

impl Ejabberd {
    /// Write config and CA, start the VM, wait (≤20 s) for its ports, register the accounts.
    /// Panics with ejabberd's log if it does not come up.
    pub fn start(opts: EjabberdOpts) -> Ejabberd {
        let Some(erl) = which("erl") else {
            panic!("Erlang/ejabberd is not installed (no `erl` on PATH): run scripts/test.sh, which installs ejabberd");
        };
        let erl_libs = ejabberd_libs().unwrap_or_else(|| {
            panic!("ejabberd is not installed (no ejabberdctl / ejabberd.app found): run scripts/test.sh, which installs it")
        });
        let dir = server_dir("ejabberd");
        let root = dir.path().to_path_buf();
        let ca = TestCa::generate(&root.join("certs"), &opts.domain);
        let c2s_port = free_port();
        let http_port = free_port();
        let log = root.join("ejabberd.log");
        let config = root.join("ejabberd.yml");
        std::fs::create_dir_all(root.join("spool")).expect("spool dir");
        std::fs::write(&config, config_text(&opts, &ca, c2s_port, http_port)).expect("write ejabberd.yml");
        std::fs::write(root.join("inetrc"), "{lookup,[\"file\",\"native\"]}.\n{host,{127,0,0,1},[\"localhost\"]}.\n")
            .expect("write inetrc");

        let mut spawn = Spawn::new(erl, root.join("stdout.log"))
            .args(["+K", "true", "-noinput", "-noshell"])
            .arg("-mnesia")
            .arg("dir")
            .arg(format!("\"{}\"", plain_path(&root.join("spool"))))
            .args(["-ejabberd", "log_rotate_count", "0", "-s", "ejabberd"])
            .env("HOME", &root)
            .env("ERL_LIBS", erl_libs)
            .env("ERL_INETRC", root.join("inetrc"))
            .env("ERL_CRASH_DUMP_BYTES", "0")
            .env("EJABBERD_CONFIG_PATH", &config)
            .env("EJABBERD_LOG_PATH", &log);
        spawn.cwd = Some(root.clone());
        let server = Server::start(Launch {
            name: "ejabberd",
            dir,
            config,
            log,
            spawn,
            ports: vec![c2s_port, http_port],
            ready_within: Duration::from_secs(20),
        });
        let mut users: Vec<(String, String)> =
            ACCOUNTS.iter().map(|(u, p)| (u.to_string(), p.to_string())).collect();
        users.extend((1..=opts.users).map(|i| (format!("user{i}"), format!("pass{i}"))));
        if let Err(why) = register_all(http_port, &opts.domain, users) {
            panic!("{}", server.failure(&why));
        }
        Ejabberd { server, domain: opts.domain, c2s_port, http_port, ca }
    }

    pub fn c2s_port(&self) -> u16 {
        self.c2s_port
    }
    /// ejabberd's HTTP port (admin API; BOSH and WebSocket too when `http` was asked for).
    pub fn http_port(&self) -> u16 {
        self.http_port
    }
    pub fn bosh_url(&self) -> String {
        format!("http://127.0.0.1:{}/bosh", self.http_port)
    }
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.http_port)
    }
    pub fn domain(&self) -> &str {
        &self.domain
    }
    pub fn ca_file(&self) -> &Path {
        &self.ca.ca_cert
    }
    /// Register one more account through the admin API.
    pub fn add_user(&self, user: &str, pass: &str) {
        register_all(self.http_port, &self.domain, vec![(user.into(), pass.into())])
            .unwrap_or_else(|e| panic!("register {user}: {e}"));
    }
}

server_handle!(Ejabberd, upstream);

/// The ERL_LIBS that Debian's ejabberdctl sets (the directory holding ejabberd-<version>/).
fn ejabberd_libs() -> Option<String> {
    let ctl = which("ejabberdctl").or_else(|| {
        let p = PathBuf::from("/usr/sbin/ejabberdctl");
        p.is_file().then_some(p)
    })?;
    let text = std::fs::read_to_string(ctl).ok()?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("ERL_LIBS="))
        .map(|v| v.trim_matches(|c| c == '\'' || c == '"').to_string())
}

/// POST /api/register for every user, 8 at a time, retrying while the API is still starting.
fn register_all(port: u16, host: &str, users: Vec<(String, String)>) -> Result<(), String> {
    let host = host.to_string();
    // Own thread and runtime: callers may already be inside a tokio runtime.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        rt.block_on(async move {
            use futures_util::stream::{self, TryStreamExt};
            let url = format!("http://127.0.0.1:{port}/api/register");
            stream::iter(users.into_iter().map(Ok::<_, String>))
                .try_for_each_concurrent(8, |(u, p)| {
                    let url = url.clone();
                    let host = host.clone();
                    async move {
                        let body = format!(r#"{{"user":"{u}","host":"{host}","password":"{p}"}}"#);
                        let deadline = Instant::now() + Duration::from_secs(10);
                        loop {
                            let r: Result<HttpResponse, String> = http_request(
                                "POST",
                                &url,
                                &[("Content-Type", "application/json")],
                                body.as_bytes(),
                                Duration::from_secs(10),
                            )
                            .await;
                            match r {
                                Ok(r) if r.status == 200 || r.body.contains("already registered") => return Ok(()),
                                Ok(r) if Instant::now() > deadline => {
                                    return Err(format!("register {u}: HTTP {} {}", r.status, r.body))
                                }
                                Err(e) if Instant::now() > deadline => return Err(format!("register {u}: {e}")),
                                _ => tokio::time::sleep(Duration::from_millis(100)).await,
                            }
                        }
                    }
                })
                .await
        })
    })
    .join()
    .map_err(|_| "registration thread panicked".to_string())?
}

fn config_text(o: &EjabberdOpts, ca: &TestCa, c2s: u16, http: u16) -> String {
    let mut handlers = String::from("      /api: mod_http_api\n");
    if o.http {
        handlers.push_str("      /bosh: mod_bosh\n      /ws: ejabberd_http_ws\n");
    }
    let (pw_format, disable) = if o.plain_only {
        ("plain", "disable_sasl_mechanisms: [\"SCRAM-SHA-1\", \"SCRAM-SHA-256\", \"SCRAM-SHA-512\", \"DIGEST-MD5\", \"X-OAUTH2\"]\n")
    } else {
        ("scram", "")
    };
    let mut c = String::new();
    let _ = write!(
        c,
        r#"# written by tests/support/ejabberd.rs
hosts:
  - "{domain}"
loglevel: {level}
log_rotate_count: 0
certfiles:
  - "{pem}"
listen:
  -
    port: {c2s}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    max_stanza_size: 262144
    shaper: none
    access: c2s
    starttls: true
    starttls_required: {req}
    use_proxy_protocol: {proxy}
  -
    port: {http}
    ip: "127.0.0.1"
    module: ejabberd_http
    tls: false
    request_handlers:
{handlers}acl:
  loopback:
    ip: [127.0.0.0/8, "::1/128"]
access_rules:
  c2s:
    allow: all
api_permissions:
  "loopback admin api":
    from: [mod_http_api]
    who:
      - acl: loopback
    what: "*"
shaper_rules:
  max_user_sessions: 100
  c2s_shaper: none
auth_method: [internal]
auth_password_format: {pw_format}
{disable}modules:
  mod_bosh: {{}}
  mod_disco: {{}}
  mod_http_api: {{}}
  mod_ping: {{}}
  mod_roster: {{}}
  mod_stream_mgmt: {{}}
  mod_carboncopy: {{}}
  mod_privacy: {{}}
  mod_blocking: {{}}
  mod_version: {{}}
{extra}
"#,
        domain = o.domain,
        level = o.log_level,
        pem = plain_path(&ca.combined),
        req = o.tls_required,
        extra = o.extra_config,
        proxy = o.proxy_protocol,
    );
    c
}
