//! Child processes the harness owns: spawned tied to the test process, waited on for a port,
//! stopped by their own PID. Never by name: other tests (and other people) run the same programs.
//!
//! [`Server`] is the one server-process handle: a temp dir holding a config file and a log, the
//! process started from them and ready once its ports accept. Prosody, ejabberd, HAProxy and
//! xmpp-cm are configurations of it (each writes its own config, then calls [`Server::start`]).

use std::ffi::OsString;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::tail;

/// How to start one server process; its stdout and stderr both go to `log`.
#[derive(Debug, Clone, Default)]
pub struct Spawn {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    /// Environment variables removed from what the child inherits (e.g. `XMPP_CM_*`).
    pub env_remove: Vec<OsString>,
    pub cwd: Option<PathBuf>,
    pub log: PathBuf,
}

impl Spawn {
    pub fn new(program: impl Into<OsString>, log: impl Into<PathBuf>) -> Spawn {
        Spawn { program: program.into(), log: log.into(), ..Spawn::default() }
    }
    pub fn arg(mut self, a: impl Into<OsString>) -> Spawn {
        self.args.push(a.into());
        self
    }
    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Spawn {
        self.env.push((k.into(), v.into()));
        self
    }
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, a: I) -> Spawn {
        self.args.extend(a.into_iter().map(Into::into));
        self
    }
}

/// A fresh temp dir for one server (`xmpp-cm-<name>-XXXX`), removed when its [`Server`] goes.
pub fn server_dir(name: &str) -> TempDir {
    tempfile::Builder::new().prefix(&format!("xmpp-cm-{name}-")).tempdir().expect("temp dir")
}

/// One server configuration, ready to run: its dir (config already written there), where it
/// logs, how to start it and the ports that must accept before it counts as up.
pub struct Launch {
    pub name: &'static str,
    pub dir: TempDir,
    pub config: PathBuf,
    /// The server's own log (may be the same file as `spawn.log`, its stdout and stderr).
    pub log: PathBuf,
    pub spawn: Spawn,
    pub ports: Vec<u16>,
    pub ready_within: Duration,
}

/// `Deref`/`DerefMut` from a server configuration to the [`Server`] in its `server` field, so
/// it has the handle's `log`, `log_path`, `config_path`, `dir`, `pid`, `signal`, `wait_exit`
/// and `stop`. With `upstream`: also [`super::Upstream`] from its `domain`, `c2s_port` and `ca`.
macro_rules! server_handle {
    ($t:ty) => {
        impl std::ops::Deref for $t {
            type Target = $crate::support::process::Server;
            fn deref(&self) -> &Self::Target {
                &self.server
            }
        }
        impl std::ops::DerefMut for $t {
            fn deref_mut(&mut self) -> &mut Self::Target {
                &mut self.server
            }
        }
    };
    ($t:ty, upstream) => {
        server_handle!($t);
        impl $crate::support::Upstream for $t {
            fn domain(&self) -> &str {
                &self.domain
            }
            fn c2s_port(&self) -> u16 {
                self.c2s_port
            }
            fn ca_file(&self) -> &std::path::Path {
                &self.ca.ca_cert
            }
        }
    };
}
pub(crate) use server_handle;

/// A running server: its process (stopped by PID on drop), then its temp dir.
pub struct Server {
    // Field order matters: the process stops before its directory is removed.
    proc: Owned,
    dir: TempDir,
    name: &'static str,
    config: PathBuf,
    log: PathBuf,
    stdout: PathBuf,
}

impl Server {
    /// Spawn `launch` and wait until its ports accept; panics with its config and logs if it
    /// exits or does not come up in time.
    pub fn start(launch: Launch) -> Server {
        Self::try_start(launch).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Self::start`], but `Err(reason, config and logs)` instead of panicking.
    pub fn try_start(launch: Launch) -> Result<Server, String> {
        let Launch { name, dir, config, log, spawn, ports, ready_within } = launch;
        let stdout = spawn.log.clone();
        let program = spawn.program.to_string_lossy().into_owned();
        let proc = Owned::spawn(name, spawn).unwrap_or_else(|e| panic!("cannot start {name} ({program}): {e}"));
        let mut server = Server { proc, dir, name, config, log, stdout };
        match wait_ports(&mut server.proc, &ports, ready_within) {
            Ok(_) => Ok(server),
            Err(why) => Err(server.failure(&why)),
        }
    }

    /// "<name> did not come up (why)" with the tails of its config, log and stdout, for a
    /// startup step after the ports (e.g. registering accounts) that fails.
    pub fn failure(&self, why: &str) -> String {
        let mut msg = format!(
            "{} did not come up ({why}).\n--- {} ---\n{}\n--- {} ---\n{}",
            self.name,
            self.config.display(),
            tail(&self.config, 80),
            self.log.display(),
            tail(&self.log, 80)
        );
        if self.stdout != self.log {
            msg.push_str(&format!("\n--- stdout/stderr ---\n{}", tail(&self.stdout, 30)));
        }
        msg
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn config_path(&self) -> &Path {
        &self.config
    }
    pub fn log_path(&self) -> &Path {
        &self.log
    }
    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }
    /// Send a signal ("TERM", "KILL", "STOP", "CONT", "HUP", …) to its PID.
    pub fn signal(&self, sig: &str) {
        self.proc.signal(sig)
    }
    /// Wait up to `timeout` for it to exit by itself (after [`Self::signal`]).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.proc.wait_timeout(timeout)
    }
    /// Stop it now: SIGTERM, SIGKILL after 3 s.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.proc.stop(Duration::from_secs(3))
    }
}

/// A running child that is stopped (by PID) when dropped.
#[derive(Debug)]
pub struct Owned {
    child: Option<Child>,
    pid: u32,
    name: String,
}

type Request = (Spawn, mpsc::Sender<std::io::Result<Child>>);

/// Is `setpriv --pdeathsig` usable here (util-linux; present on Debian/Ubuntu)?
pub fn have_setpriv() -> bool {
    static HAVE: OnceLock<bool> = OnceLock::new();
    *HAVE.get_or_init(|| {
        Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    })
}

/// Children are forked from one thread that lives as long as the test process. The parent-death
/// signal fires when the *forking thread* exits, so forking from a test thread or a tokio
/// blocking-pool thread (which exits when idle) could kill a server in the middle of a test.
fn spawner() -> &'static Mutex<mpsc::Sender<Request>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        thread::Builder::new()
            .name("harness-spawner".into())
            .spawn(move || {
                for (spec, reply) in rx {
                    let _ = reply.send(spawn_here(&spec));
                }
            })
            .expect("spawn harness-spawner thread");
        Mutex::new(tx)
    })
}

fn spawn_here(spec: &Spawn) -> std::io::Result<Child> {
    let log = File::options().create(true).append(true).open(&spec.log)?;
    let mut cmd = if have_setpriv() {
        let mut c = Command::new("setpriv");
        c.args(["--pdeathsig", "KILL", "--"]).arg(&spec.program);
        c
    } else {
        Command::new(&spec.program)
    };
    cmd.args(&spec.args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    for k in &spec.env_remove {
        cmd.env_remove(k);
    }
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    if let Some(d) = &spec.cwd {
        cmd.current_dir(d);
    }
    cmd.spawn()
}

impl Owned {
    /// Start `spec` (setpriv execs the program, so the PID is the program's own).
    pub fn spawn(name: &str, spec: Spawn) -> std::io::Result<Owned> {
        let (tx, rx) = mpsc::channel();
        spawner()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send((spec, tx))
            .expect("harness spawner thread is gone");
        let child = rx.recv().expect("harness spawner thread is gone")?;
        Ok(Owned { pid: child.id(), child: Some(child), name: name.to_string() })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `Some(status)` once the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Wait up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send a signal by name ("TERM", "INT", "HUP", "STOP", "CONT", "KILL", …) to this PID only.
    pub fn signal(&self, sig: &str) {
        signal_pid(self.pid, sig);
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; reaps the child.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        signal_pid(self.pid, "TERM");
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s);
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("[harness] {} (pid {}) ignored SIGTERM for {grace:?}; SIGKILL", self.name, self.pid);
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// `kill -<sig> <pid>`: the harness has no libc binding, and the kill(1) utility is everywhere.
pub fn signal_pid(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{}", sig.trim_start_matches("SIG")))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Does 127.0.0.1:`port` accept a TCP connection right now?
pub fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Poll until every port accepts, the process exits (Err with its status) or `timeout` passes.
pub fn wait_ports(proc: &mut Owned, ports: &[u16], timeout: Duration) -> Result<Duration, String> {
    let t0 = Instant::now();
    loop {
        if ports.iter().all(|p| port_open(*p)) {
            return Ok(t0.elapsed());
        }
        if let Some(status) = proc.try_wait() {
            return Err(format!("exited early with {status}"));
        }
        if t0.elapsed() > timeout {
            let closed: Vec<u16> = ports.iter().copied().filter(|p| !port_open(*p)).collect();
            return Err(format!("ports {closed:?} still closed after {timeout:?}"));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Full path of `program` on PATH (or None), for "is it installed?" checks.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Run a short helper command to completion; panic with its output if it fails.
pub fn run_ok(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{what}: {cmd:?} failed with {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Is `dir` a path we may hand to a Lua/YAML config literally (no quotes, backslashes, newlines)?
pub fn plain_path(p: &Path) -> String {
    let s = p.to_str().expect("temp paths are UTF-8");
    assert!(!s.contains(['"', '\\', '\n', '\'']), "unexpected characters in temp path {s:?}");
    s.to_string()
}
