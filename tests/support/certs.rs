//! A throw-away CA and a server certificate it signs, made with the `openssl` CLI (installed
//! alongside Prosody). The leaf is CA:FALSE on purpose: rustls refuses a CA certificate presented
//! as a server's own, which is what a bare `openssl req -x509` would give. P-256 keys keep
//! generation in the milliseconds even when many tests start servers at once.

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
