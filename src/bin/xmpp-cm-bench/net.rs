//! Sockets for many connections on one machine: a higher open-file limit, and client source
//! addresses spread over 127.0.0.0/8 so more than one ephemeral port range (~28k ports per
//! source address and destination) is available.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpSocket, TcpStream};

/// Raise RLIMIT_NOFILE: the hard limit to `want` when allowed (root), the soft one to the hard.
/// Returns the soft limit in force afterwards.
pub fn raise_fd_limit(want: u64) -> u64 {
    // SAFETY: plain libc calls on a stack struct.
    unsafe {
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        if r.rlim_max < want {
            let up = libc::rlimit { rlim_cur: want, rlim_max: want };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &up) == 0 {
                return want;
            }
        }
        if r.rlim_cur < r.rlim_max {
            let up = libc::rlimit { rlim_cur: r.rlim_max, rlim_max: r.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &up) == 0 {
                return r.rlim_max;
            }
        }
        r.rlim_cur
    }
}

/// Chooses a loopback source address per connection, round robin over `n` addresses
/// (127.0.0.1, then 127.0.1.1, 127.0.1.2, …). With n == 1 the kernel chooses.
pub struct Sources {
    n: usize,
    next: AtomicUsize,
}

impl Sources {
    /// Enough addresses for `conns` connections at ≤ 20,000 each (the ephemeral range here is
    /// 32768–60999), unless `fixed` > 0.
    pub fn new(conns: usize, fixed: usize) -> Sources {
        let n = if fixed > 0 { fixed } else { conns.div_ceil(20_000).max(1) };
        Sources { n: n.min(60_000), next: AtomicUsize::new(0) }
    }

    pub fn count(&self) -> usize {
        self.n
    }

    fn pick(&self) -> Option<Ipv4Addr> {
        if self.n <= 1 {
            return None;
        }
        let k = self.next.fetch_add(1, Ordering::Relaxed) % self.n;
        Some(if k == 0 { Ipv4Addr::new(127, 0, 0, 1) } else { Ipv4Addr::new(127, 0, 1 + (k / 250) as u8, 1 + (k % 250) as u8) })
    }

    /// TCP connect to `to` from the next source address, with TCP_NODELAY.
    pub async fn connect(&self, to: SocketAddr) -> std::io::Result<TcpStream> {
        let s = match (self.pick(), to.ip()) {
            (Some(src), IpAddr::V4(_)) => {
                let sock = TcpSocket::new_v4()?;
                // Let connect() pick the port per destination, not bind() per address.
                let one: libc::c_int = 1;
                // SAFETY: valid fd and option pointer for the call's duration.
                unsafe {
                    libc::setsockopt(
                        sock.as_raw_fd(),
                        libc::IPPROTO_IP,
                        libc::IP_BIND_ADDRESS_NO_PORT,
                        &one as *const _ as *const libc::c_void,
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    );
                }
                sock.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
                sock.connect(to).await?
            }
            _ => TcpStream::connect(to).await?,
        };
        s.set_nodelay(true)?;
        Ok(s)
    }
}

/// Resolve "host:port" (loopback names only in practice) to one address.
pub async fn resolve(hostport: &str) -> std::io::Result<SocketAddr> {
    tokio::net::lookup_host(hostport)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("no address for {hostport}")))
}

/// Bind a listener; port 0 means "a free port below 32768" (load tests exhaust the ephemeral
/// range 32768–60999, where a listener could find its port taken).
pub async fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    if addr.port() != 0 {
        return bind(addr);
    }
    let seed = std::process::id() as usize ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos() as usize).unwrap_or(0);
    let mut last = None;
    for i in 0..200 {
        let port = 20_000 + ((seed.wrapping_mul(7919) + i * 104_729) % 12_000) as u16;
        match bind(SocketAddr::new(addr.ip(), port)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free port")))
}

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let sock = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(8192)
}
