//! A real HAProxy (Debian package, `/usr/sbin/haproxy`) as the plain load balancer in front of
//! several xmpp-cm replicas: `mode http`, `balance roundrobin` decided per request, no affinity
//! of any kind (no stick tables, no cookies, no `prefer-last-server`), health checks
//! `GET /readyz` on each replica's admin port every 100 ms (one failure takes a replica out, so a
//! draining replica gets no new requests; two successes bring it back). Timeouts fit BOSH holds
//! (120 s) and WebSocket tunnels (1 h). Its own temp dir, free loopback ports, killed by PID on
//! drop. A stats page (`/stats;csv`) on a second port tells which servers are up and how many
//! requests each got. [`Opts`] can make it refuse WebSocket upgrades, like a proxy on a
//! network that lets only plain HTTP through; [`Flaky`] makes it cut held BOSH requests and lose
//! some requests and responses, like a badly tuned proxy on a bad network path.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use super::process::{server_dir, server_handle, Launch, Server, Spawn};
use super::{free_port, tail};

/// Where the Debian package installs it (it is not on a normal user's PATH).
pub const BIN: &str = "/usr/sbin/haproxy";

/// One backend server: where HTTP requests go, and the port of its health check (`/readyz`).
#[derive(Debug, Clone, Copy)]
pub struct Backend {
    pub addr: SocketAddr,
    pub check_port: u16,
}

/// One row of the stats CSV for a server of the backend.
#[derive(Debug, Clone)]
pub struct ServerStats {
    /// `r0`, `r1`, … in the order the backends were given.
    pub name: String,
    /// `UP`, `DOWN`, `UP 1/2`, `MAINT`, …
    pub status: String,
    /// Total sessions (connections) HAProxy sent to it.
    pub sessions_total: u64,
    /// HTTP responses with a 2xx status it returned through HAProxy.
    pub responses_2xx: u64,
    /// Every other response: 1xx, 3xx, 4xx, 5xx and unparsable ones.
    pub responses_other: u64,
}

/// What [`HaProxy::start_with`] changes from the plain load balancer [`HaProxy::start`] runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Opts {
    /// Answer every request carrying `Upgrade: websocket` with 403 (HAProxy's own page, no
    /// backend involved), as a proxy that blocks WebSocket does; everything else still passes.
    pub refuse_websocket: bool,
}

/// A flaky path through HAProxy, for [`HaProxy::start_flaky`]: what a real network and a badly
/// tuned proxy do to BOSH requests.
#[derive(Debug, Clone, Copy)]
pub struct Flaky {
    /// `timeout server`: when shorter than the BOSH `wait`, a held request is cut after it with
    /// HAProxy's own 504 (and its backend connection closed), as a proxy with a short read
    /// timeout does.
    pub server_timeout: Duration,
    /// Percent of requests closed without a response before they reach the backend
    /// (`http-request reject`), and, drawn separately, percent of backend responses replaced by
    /// HAProxy's 502 (`http-response deny`: the backend answered, the client never sees it).
    pub drop_percent: u8,
}

/// A running HAProxy: a configuration of [`Server`] (killed by PID on drop, temp dir removed after).
pub struct HaProxy {
    server: Server,
    port: u16,
    stats_port: u16,
}

impl HaProxy {
    /// Write the config for `backends` and start `haproxy -f cfg -db`; wait (≤10 s) for its
    /// ports and (≤10 s) until every backend passes its health check.
    /// Panics with HAProxy's output if it does not come up.
    pub fn start(backends: &[Backend]) -> HaProxy {
        Self::start_with(backends, Opts::default())
    }

    /// [`Self::start`] with `opts`.
    pub fn start_with(backends: &[Backend], opts: Opts) -> HaProxy {
        Self::launch(backends, opts, None)
    }

    /// [`Self::start`] with the cuts and drops of `flaky` on every request.
    pub fn start_flaky(backends: &[Backend], flaky: Flaky) -> HaProxy {
        Self::launch(backends, Opts::default(), Some(flaky))
    }

    fn launch(backends: &[Backend], opts: Opts, flaky: Option<Flaky>) -> HaProxy {
        if !Path::new(BIN).is_file() {
            panic!("HAProxy is not installed (no {BIN}): run scripts/test.sh, which installs it");
        }
        let dir = server_dir("haproxy");
        let port = free_port();
        let stats_port = free_port();
        let config = dir.path().join("haproxy.cfg");
        let log = dir.path().join("haproxy.log");
        std::fs::write(&config, config_text(port, stats_port, backends, opts, flaky)).expect("write haproxy config");
        let spawn = Spawn::new(BIN, &log).arg("-f").arg(&config).arg("-db");
        let server = Server::start(Launch {
            name: "haproxy",
            dir,
            config,
            log,
            spawn,
            ports: vec![port, stats_port],
            ready_within: Duration::from_secs(10),
        });
        let h = HaProxy { server, port, stats_port };
        let names: Vec<String> = (0..backends.len()).map(|i| format!("r{i}")).collect();
        h.wait_status(&names, "UP", Duration::from_secs(10));
        h
    }

    /// `http://127.0.0.1:P` of the balanced frontend.
    pub fn http_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    /// The frontend's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The backend's servers as the stats page reports them now.
    pub fn servers(&self) -> Vec<ServerStats> {
        let csv = http_get_blocking(self.stats_port, "/stats;csv", Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("HAProxy stats: {e}\n--- log ---\n{}", tail(self.server.log_path(), 30)));
        let mut lines = csv.lines();
        let header = lines.next().unwrap_or_default().trim_start_matches("# ");
        let cols: Vec<&str> = header.split(',').collect();
        let col = |name: &str| cols.iter().position(|c| *c == name).unwrap_or_else(|| panic!("no {name} in {header}"));
        let (px, sv, st, stot, h2) = (col("pxname"), col("svname"), col("status"), col("stot"), col("hrsp_2xx"));
        let others: Vec<usize> = ["hrsp_1xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other"].iter().map(|c| col(c)).collect();
        let num = |f: &[&str], i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > h2 && f[px] == "replicas" && f[sv] != "BACKEND")
            .map(|f| ServerStats {
                name: f[sv].to_string(),
                status: f[st].to_string(),
                sessions_total: num(&f, stot),
                responses_2xx: num(&f, h2),
                responses_other: others.iter().map(|&i| num(&f, i)).sum(),
            })
            .collect()
    }

    /// Wait until every server in `names` has exactly `status` ("UP", "DOWN"); panics after
    /// `timeout` with the stats rows.
    pub fn wait_status(&self, names: &[String], status: &str, timeout: Duration) {
        let t0 = Instant::now();
        loop {
            let rows = self.servers();
            let ok = names.iter().all(|n| rows.iter().any(|r| &r.name == n && r.status == status));
            if ok {
                return;
            }
            assert!(t0.elapsed() < timeout, "HAProxy servers {names:?} not {status} after {timeout:?}: {rows:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

server_handle!(HaProxy);

fn config_text(port: u16, stats_port: u16, backends: &[Backend], opts: Opts, flaky: Option<Flaky>) -> String {
    let mut servers = String::new();
    for (i, b) in backends.iter().enumerate() {
        servers.push_str(&format!(
            "    server r{i} {} check port {} inter 100ms fastinter 100ms downinter 100ms fall 2 rise 2\n",
            b.addr, b.check_port
        ));
    }
    let refuse = if opts.refuse_websocket {
        "    # Opts::refuse_websocket: no WebSocket through here.\n    http-request deny deny_status 403 if { hdr(upgrade) -m str -i websocket }\n"
    } else {
        ""
    };
    let (server_timeout, drops) = match flaky {
        Some(f) => (
            format!("{}ms", f.server_timeout.as_millis()),
            format!(
                "    # Flaky: requests lost before the backend, answers lost after it.\n    \
                 http-request reject if {{ rand(100) lt {p} }}\n    \
                 http-response deny deny_status 502 if {{ rand(100) lt {p} }}\n",
                p = f.drop_percent
            ),
        ),
        None => ("120s".to_string(), String::new()),
    };
    format!(
        r#"# written by tests/support/haproxy.rs
global
    maxconn 4096
    log stdout format raw local0 info

defaults
    mode http
    log global
    option httplog
    timeout connect 2s
    timeout client 120s
    timeout server {server_timeout}
    timeout http-request 10s
    timeout http-keep-alive 120s
    timeout tunnel 1h
    # Without it a health check must finish within `inter` (100 ms), and on a loaded 2-core
    # machine a slow /readyz then marks a healthy replica down (the front-page test saw 503s).
    timeout check 2s
    # A replica that goes down mid-request is not retried elsewhere: a BOSH request must reach
    # exactly one replica (the client retransmits by itself).
    retries 0

frontend public
    bind 127.0.0.1:{port}
{refuse}    default_backend replicas

backend replicas
    # Per request, no affinity: keep-alive to the backends may be reused by any client
    # connection (http-reuse always), and each request picks the next server in turn
    # (no prefer-last-server, no stick tables, no cookies).
    balance roundrobin
    http-reuse always
{drops}    option httpchk GET /readyz
    http-check expect status 200
{servers}
frontend stats
    bind 127.0.0.1:{stats_port}
    stats enable
    stats uri /stats
    stats refresh 0
"#
    )
}

/// A tiny blocking GET (HTTP/1.0, read to EOF) for the stats page, usable outside tokio.
fn http_get_blocking(port: u16, path: &str, timeout: Duration) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| format!("read: {e}"))?;
    let r = super::http::parse_response(&buf, false)?;
    if r.status != 200 {
        return Err(format!("status {}: {}", r.status, r.body));
    }
    Ok(r.body)
}
