//! TLS on the public listeners: a rustls server config (TLS 1.2 + 1.3, ring) whose certificate
//! comes from a [`CertStore`] that is reloaded when the PEM files change or on SIGHUP, without
//! touching live connections. A bad new certificate is logged and the old one stays in use.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{ConfigError, HttpTls};

/// ALPN of XEP-0368 Direct TLS clients.
pub const ALPN_XMPP_CLIENT: &[u8] = b"xmpp-client";

/// The certificate in use, swapped atomically on reload.
#[derive(Debug)]
pub struct CertStore {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// (mtime, len) of both files when last loaded, to notice changes.
    stamp: RwLock<Option<(FileStamp, FileStamp)>>,
}

type FileStamp = (Option<SystemTime>, u64);

fn stamp(p: &Path) -> FileStamp {
    match std::fs::metadata(p) {
        Ok(m) => (m.modified().ok(), m.len()),
        Err(_) => (None, 0),
    }
}

impl CertStore {
    pub fn load(cfg: &HttpTls) -> Result<Arc<CertStore>, ConfigError> {
        let cert_file = PathBuf::from(&cfg.cert_file);
        let key_file = PathBuf::from(&cfg.key_file);
        let key = load_key(&cert_file, &key_file).map_err(ConfigError)?;
        Ok(Arc::new(CertStore {
            stamp: RwLock::new(Some((stamp(&cert_file), stamp(&key_file)))),
            cert_file,
            key_file,
            current: RwLock::new(Arc::new(key)),
        }))
    }

    /// Reload when the files changed (or always, when `force`). Returns whether a new
    /// certificate is now in use. Errors are logged; the old certificate stays.
    pub fn reload(&self, force: bool) -> bool {
        let now = (stamp(&self.cert_file), stamp(&self.key_file));
        if !force && self.stamp.read().map(|s| *s == Some(now)).unwrap_or(false) {
            return false;
        }
        if let Ok(mut s) = self.stamp.write() {
            *s = Some(now);
        }
        match load_key(&self.cert_file, &self.key_file) {
            Ok(k) => {
                if let Ok(mut c) = self.current.write() {
                    *c = Arc::new(k);
                }
                info!(cert = %self.cert_file.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                warn!(cert = %self.cert_file.display(), error = %e, "TLS certificate reload failed; keeping the old one");
                false
            }
        }
    }

    /// Poll the files every `every` and reload on SIGHUP, until `stop`.
    pub fn watch(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        tokio::spawn(async move {
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                let hup_recv = async {
                    match hup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => { self.reload(false); }
                    _ = hup_recv => { self.reload(true); }
                }
            }
        });
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}

fn load_key(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| format!("http.tls.cert_file {}: {e}", cert_file.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("http.tls.cert_file {}: {e}", cert_file.display()))?;
    if chain.is_empty() {
        return Err(format!("http.tls.cert_file {}: no certificate in it", cert_file.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| format!("http.tls.key_file {}: {e}", key_file.display()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("http.tls.key_file {}: {e}", key_file.display()))?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match().map_err(|e| format!("http.tls: key does not match certificate: {e}"))?;
    Ok(ck)
}

/// The server config for the public listeners: ALPN h2, http/1.1 (and `xmpp-client` when
/// passthrough is on).
pub fn server_config(store: Arc<CertStore>, passthrough: bool) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ConfigError(format!("http.tls: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(store);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if passthrough {
        cfg.alpn_protocols.push(ALPN_XMPP_CLIENT.to_vec());
    }
    Ok(Arc::new(cfg))
}
