//! The fuzz targets' view of xmpp-cm: the pure `xml` module, compiled from the main crate's
//! source (it uses nothing outside itself), so fuzz builds stay small. Targets live in
//! `fuzz_targets/`.

#[path = "../../src/xml/mod.rs"]
pub mod xml;
