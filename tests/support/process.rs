//! Child processes the harness owns: spawned tied to the test process, waited on for a port,
//! stopped by their own PID. Never by name: other tests (and other people) run the same programs.

use std::ffi::OsString;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

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
