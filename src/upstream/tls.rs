//! rustls client configuration for upstream connections: webpki roots plus the optional
//! `ca_file`, certificate name checked against the XMPP domain.
