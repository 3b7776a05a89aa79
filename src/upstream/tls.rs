//! rustls client configuration for upstream connections, built with each configuration (startup, reload): the webpki
//! roots plus every certificate in the optional `upstream.ca_file`, TLS 1.2 and 1.3, ring as the
//! crypto provider (passed explicitly, so no process-global default is installed). Two configs:
//! one for STARTTLS and one identical but offering ALPN `xmpp-client` for XEP-0368 direct TLS.
//! The name checked against the certificate is always the XMPP domain (RFC 6125, done by the
//! webpki verifier); choosing that name is the caller's job ([`super::connect`]).
//!
//! [`build_observed`] builds the same configs with the same verifier wrapped in one that also
//! keeps what it was shown and what it decided ([`Verification`]), for `xmpp-cm check`: a
//! failed handshake otherwise leaves nothing of the server's chain to look at.

use std::path::Path;
use std::sync::Arc;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::config::ConfigError;

/// The ALPN protocol id XEP-0368 §3 asks direct-TLS clients to offer.
pub const ALPN_XMPP_CLIENT: &[u8] = b"xmpp-client";

/// The two client configurations, shared by every upstream connection.
#[derive(Clone)]
pub struct TlsConfigs {
    /// For STARTTLS on `_xmpp-client` targets and static routes (no ALPN: RFC 6120 defines none).
    pub starttls: Arc<ClientConfig>,
    /// For `_xmpps-client` targets: the same trust, plus ALPN `xmpp-client`.
    pub direct: Arc<ClientConfig>,
    /// Only from [`build_observed`]: the last verification either config made.
    pub seen: Option<Arc<Seen>>,
}

/// What the certificate verifier was shown and decided, for one handshake.
#[derive(Debug, Clone)]
pub struct Verification {
    /// The server's chain as sent: end entity first, then the intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// The name checked (the XMPP domain).
    pub server_name: String,
    /// The webpki verifier's verdict against the configured trust.
    pub result: Result<(), rustls::Error>,
    /// Time the verification took.
    pub took: Duration,
}

/// The slot a recording verifier writes into; [`Seen::take`] empties it. One slot is enough:
/// `check` makes one handshake at a time.
#[derive(Debug, Default)]
pub struct Seen(Mutex<Option<Verification>>);

impl Seen {
    pub fn take(&self) -> Option<Verification> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// The session verifier, unchanged, plus a copy of what it saw into [`Seen`].
#[derive(Debug)]
struct Recording {
    inner: Arc<WebPkiServerVerifier>,
    seen: Arc<Seen>,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let t0 = Instant::now();
        let r = self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        let chain = std::iter::once(end_entity).chain(intermediates).map(|c| c.clone().into_owned()).collect();
        let v = Verification {
            chain,
            server_name: server_name.to_str().into_owned(),
            result: r.as_ref().map(|_| ()).map_err(Clone::clone),
            took: t0.elapsed(),
        };
        *self.seen.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
        r
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

impl std::fmt::Debug for TlsConfigs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfigs").finish_non_exhaustive()
    }
}

/// Build both configurations. `ca_file` empty means webpki roots only; otherwise every PEM
/// certificate in it is trusted as well, and a file that cannot be read, holds a malformed PEM
/// block or no certificate at all is a configuration error with a one-line reason.
pub fn build(ca_file: &str) -> Result<TlsConfigs, ConfigError> {
    build_with(ca_file, false)
}

/// [`build`], with the verifier recording into [`TlsConfigs::seen`] (for `xmpp-cm check`).
pub fn build_observed(ca_file: &str) -> Result<TlsConfigs, ConfigError> {
    build_with(ca_file, true)
}

fn build_with(ca_file: &str, observed: bool) -> Result<TlsConfigs, ConfigError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if !ca_file.is_empty() {
        for cert in read_ca_file(Path::new(ca_file))? {
            roots.add(cert).map_err(|e| {
                ConfigError(format!("upstream.ca_file: '{ca_file}': unusable certificate: {e}"))
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // What `with_root_certificates` would build, made explicitly so `check` can wrap it.
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| ConfigError(format!("upstream TLS: {e}")))?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ConfigError(format!("upstream TLS: {e}")))?;
    let (config, seen) = if observed {
        let seen = Arc::new(Seen::default());
        let recording = Arc::new(Recording { inner: verifier, seen: seen.clone() });
        (builder.dangerous().with_custom_certificate_verifier(recording).with_no_client_auth(), Some(seen))
    } else {
        (builder.with_webpki_verifier(verifier).with_no_client_auth(), None)
    };
    let mut direct = config.clone();
    direct.alpn_protocols = vec![ALPN_XMPP_CLIENT.to_vec()];
    Ok(TlsConfigs { starttls: Arc::new(config), direct: Arc::new(direct), seen })
}

fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let shown = path.display();
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|e| ConfigError(format!("upstream.ca_file: '{shown}': {}", one_line(&e))))?;
    let certs = iter
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError(format!("upstream.ca_file: '{shown}': {}", one_line(&e))))?;
    if certs.is_empty() {
        return Err(ConfigError(format!("upstream.ca_file: '{shown}' holds no PEM certificate")));
    }
    Ok(certs)
}

fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string().split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    fn file_with(content: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content.as_bytes()).unwrap();
        f
    }

    #[test]
    fn no_ca_file_uses_webpki_roots_and_alpn_only_on_direct() {
        let c = build("").unwrap();
        assert!(c.starttls.alpn_protocols.is_empty());
        assert_eq!(c.direct.alpn_protocols, vec![b"xmpp-client".to_vec()]);
    }

    #[test]
    fn ca_file_with_certificates_is_accepted() {
        let f = file_with(&format!("{}\n{}", ca_pem(), ca_pem()));
        build(f.path().to_str().unwrap()).unwrap();
    }

    #[test]
    fn bad_ca_files_are_one_line_config_errors() {
        let empty = file_with("");
        let not_pem = file_with("hello\nworld\n");
        let broken = file_with("-----BEGIN CERTIFICATE-----\n!!!notbase64\n-----END CERTIFICATE-----\n");
        let garbage_der =
            file_with("-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n");
        let cases = [
            ("/nonexistent/ca.pem".to_string(), "upstream.ca_file"),
            (empty.path().to_str().unwrap().to_string(), "no PEM certificate"),
            (not_pem.path().to_str().unwrap().to_string(), "no PEM certificate"),
            (broken.path().to_str().unwrap().to_string(), "upstream.ca_file"),
            (garbage_der.path().to_str().unwrap().to_string(), "unusable certificate"),
        ];
        for (path, want) in cases {
            let e = build(&path).unwrap_err().0;
            assert!(e.contains(want), "{path}: {e}");
            assert!(!e.contains('\n'), "{path}: {e}");
        }
    }
}
