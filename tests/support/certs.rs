//! A throw-away CA and a server certificate it signs, made with the `openssl` CLI (installed
//! alongside Prosody). The leaf is CA:FALSE on purpose: rustls refuses a CA certificate presented
//! as a server's own, which is what a bare `openssl req -x509` would give. P-256 keys keep
//! generation in the milliseconds even when many tests start servers at once. [`MintCa`] makes
//! CAs and certificates in-process with rcgen, for the odd ones a test needs (expired, for
//! another name, a key that matches nothing).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::process::{run_ok, which};

/// Files written by [`TestCa::generate`] into one directory.
#[derive(Debug, Clone)]
pub struct TestCa {
    /// The CA certificate (PEM): what verifiers (xmpp-cm's `upstream.ca_file`) trust.
    pub ca_cert: PathBuf,
    /// The server certificate (PEM), SAN: the domain, localhost, 127.0.0.1, ::1.
    pub cert: PathBuf,
    /// The server key (PEM, PKCS#8).
    pub key: PathBuf,
    /// Certificate followed by key in one file (ejabberd's `certfiles` format).
    pub combined: PathBuf,
}

impl TestCa {
    /// Make a CA and a server certificate for `domain` under `dir`.
    pub fn generate(dir: &Path, domain: &str) -> TestCa {
        if which("openssl").is_none() {
            panic!("the openssl CLI is not installed: run scripts/test.sh (it installs prosody, ejabberd and openssl)");
        }
        std::fs::create_dir_all(dir).expect("create cert dir");
        let p = |n: &str| dir.join(n);
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        run_ok(
            Command::new("openssl")
                .args(["req", "-x509"])
                .args(ec)
                .args(["-days", "3650", "-subj", "/CN=xmpp-cm test CA"])
                .args(["-addext", "basicConstraints=critical,CA:TRUE"])
                .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
                .arg("-keyout")
                .arg(p("ca.key"))
                .arg("-out")
                .arg(p("ca.crt")),
            "test CA",
        );
        run_ok(
            Command::new("openssl")
                .arg("req")
                .args(ec)
                .arg("-subj")
                .arg(format!("/CN={domain}"))
                .arg("-keyout")
                .arg(p("server.key"))
                .arg("-out")
                .arg(p("server.csr")),
            "server CSR",
        );
        std::fs::write(
            p("ext.cnf"),
            format!(
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
                 extendedKeyUsage=serverAuth\n\
                 subjectAltName=DNS:{domain},DNS:localhost,IP:127.0.0.1,IP:::1\n"
            ),
        )
        .expect("write ext.cnf");
        run_ok(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "3650", "-CAcreateserial"])
                .arg("-in")
                .arg(p("server.csr"))
                .arg("-CA")
                .arg(p("ca.crt"))
                .arg("-CAkey")
                .arg(p("ca.key"))
                .arg("-extfile")
                .arg(p("ext.cnf"))
                .arg("-out")
                .arg(p("server.crt")),
            "sign server certificate",
        );
        let pem = std::fs::read_to_string(p("server.crt")).expect("read server.crt")
            + &std::fs::read_to_string(p("server.key")).expect("read server.key");
        std::fs::write(p("server.pem"), pem).expect("write server.pem");
        TestCa { ca_cert: p("ca.crt"), cert: p("server.crt"), key: p("server.key"), combined: p("server.pem") }
    }
}

/// Which validity period [`MintCa::leaf`] gives a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// 2024-01-01 to 2100-01-01.
    Current,
    /// 2020-01-01 to 2021-01-01: expired.
    Expired,
}

/// A throw-away CA made in-process with rcgen, for certificates a test shapes itself (expired,
/// for another name, with a key that does not match), where [`TestCa`] always makes one good
/// server certificate. Files are PEM; keys PKCS#8 (P-256).
pub struct MintCa {
    dir: PathBuf,
    /// The CA certificate (PEM), for `upstream.ca_file`.
    pub ca_cert: PathBuf,
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl MintCa {
    /// A CA called `name`, its files under `dir`.
    pub fn new(dir: &Path, name: &str) -> MintCa {
        std::fs::create_dir_all(dir).expect("create cert dir");
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = p.self_signed(&key).expect("self-sign CA");
        let ca_cert = dir.join(format!("{}-ca.crt", file_name(name)));
        std::fs::write(&ca_cert, cert.pem()).expect("write CA certificate");
        MintCa { dir: dir.to_path_buf(), ca_cert, cert, key }
    }

    /// A server certificate for `names` (DNS names or IP addresses, the first also its CN),
    /// signed by this CA: (`<file>.crt`, `<file>.key`).
    pub fn leaf(&self, file: &str, names: &[&str], validity: Validity) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let mut p = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("leaf params");
        if let Some(first) = names.first() {
            p.distinguished_name.push(rcgen::DnType::CommonName, *first);
        }
        p.is_ca = rcgen::IsCa::ExplicitNoCa;
        p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let (from, to) = match validity {
            Validity::Current => ((2024, 1, 1), (2100, 1, 1)),
            Validity::Expired => ((2020, 1, 1), (2021, 1, 1)),
        };
        p.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
        p.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
        let cert = p.signed_by(&key, &self.cert, &self.key).expect("sign leaf");
        let (crt, pem_key) = (self.dir.join(format!("{file}.crt")), self.dir.join(format!("{file}.key")));
        std::fs::write(&crt, cert.pem()).expect("write leaf certificate");
        std::fs::write(&pem_key, key.serialize_pem()).expect("write leaf key");
        (crt, pem_key)
    }

    /// A fresh private key that belongs to no certificate (`<file>.key`).
    pub fn stray_key(&self, file: &str) -> PathBuf {
        let path = self.dir.join(format!("{file}.key"));
        std::fs::write(&path, rcgen::KeyPair::generate().expect("key").serialize_pem()).expect("write key");
        path
    }
}

fn file_name(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect()
}
