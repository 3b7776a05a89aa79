//! A deliberately small HTTP/1.1 client over a plain tokio `TcpStream`, for tests that care about
//! exact bytes (BOSH bodies, status codes, headers) without a client library normalising them.
//! One request per connection (`Connection: close`); `http://` only (xmpp-cm's listener in tests
//! is plain HTTP on loopback). Every call is bounded by a timeout.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A parsed response. Header names keep the server's spelling; look them up with [`Self::header`].
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Default bound for a BOSH request: above the longest `wait` tests use (60 s), so a held
/// request is answered before the client gives up.
pub const BOSH_TIMEOUT: Duration = Duration::from_secs(65);

/// POST `body` (Content-Type `text/xml; charset=utf-8`, as strophe.js sends) to a BOSH URL.
/// Returns (status, headers, body). Panics on connection errors or after [`BOSH_TIMEOUT`].
pub async fn bosh_post(url: &str, body: &str) -> (u16, Vec<(String, String)>, String) {
    bosh_post_timeout(url, body, BOSH_TIMEOUT).await
}

/// [`bosh_post`] with an explicit bound.
pub async fn bosh_post_timeout(url: &str, body: &str, timeout: Duration) -> (u16, Vec<(String, String)>, String) {
    let r = http_request("POST", url, &[("Content-Type", "text/xml; charset=utf-8")], body.as_bytes(), timeout)
        .await
        .unwrap_or_else(|e| panic!("bosh_post {url}: {e}\nrequest body: {body}"));
    (r.status, r.headers, r.body)
}

/// Any request; `Err` on connect/IO errors, malformed responses or timeout.
/// `Host`, `Content-Length` (when there is a body or the method is POST/PUT) and
/// `Connection: close` are added.
pub async fn http_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<HttpResponse, String> {
    let (hostport, path) = split_url(url)?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    let raw = raw_exchange(&hostport, &bytes, timeout).await?;
    parse_response(&raw, method == "HEAD")
}

/// Write `request` verbatim to `addr` ("host:port"), then read until the server closes;
/// `Err` if that takes longer than `timeout`. For malformed-request and pipelining tests.
pub async fn raw_exchange(addr: &str, request: &[u8], timeout: Duration) -> Result<Vec<u8>, String> {
    let work = async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        s.write_all(request).await.map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| format!("read: {e}"))?;
        Ok::<_, String>(buf)
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| format!("no complete response from {addr} within {timeout:?}"))?
}

/// "http://host:port/path" → ("host:port", "/path").
fn split_url(url: &str) -> Result<(String, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("only http:// URLs are supported: {url}"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let hostport = if hostport.contains(':') { hostport.to_string() } else { format!("{hostport}:80") };
    Ok((hostport, path.to_string()))
}

/// Parse a whole HTTP/1.1 response (the connection was read to EOF).
pub fn parse_response(raw: &[u8], head: bool) -> Result<HttpResponse, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {} bytes: {:?}", raw.len(), String::from_utf8_lossy(raw)))?;
    let head_text = std::str::from_utf8(&raw[..end]).map_err(|_| "headers are not UTF-8".to_string())?;
    let mut lines = head_text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad status line {status_line:?}"));
    }
    let status: u16 = parts.next().and_then(|s| s.parse().ok()).ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let get = |n: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.as_str());
    let rest = &raw[end + 4..];
    let body: Vec<u8> = if head || status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else if get("Transfer-Encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        dechunk(rest)?
    } else if let Some(len) = get("Content-Length") {
        let len: usize = len.parse().map_err(|_| format!("bad Content-Length {len:?}"))?;
        if rest.len() < len {
            return Err(format!("body truncated: {} of {len} bytes", rest.len()));
        }
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    let body = String::from_utf8(body).map_err(|e| format!("body is not UTF-8: {e}"))?;
    Ok(HttpResponse { status, headers, body })
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").ok_or("chunk size line without CRLF")?;
        let size_text = std::str::from_utf8(&b[..eol]).map_err(|_| "chunk size not UTF-8")?;
        let size_hex = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| format!("bad chunk size {size_text:?}"))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            return Err("chunk truncated".into());
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}
