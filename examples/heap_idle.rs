//! Heap profiling harness (issue 17, bench/findings.md "Where the bytes of an idle session
//! go"): xmpp-cm's server exactly as `xmpp-cm --config FILE` runs it, minus logging and the
//! reload watcher, on the system allocator, so that heaptrack sees every allocation (the
//! xmpp-cm binary uses mimalloc, which heaptrack cannot follow).
//!
//!     heaptrack -o OUT target/release/examples/heap_idle FILE
//!
//! Sessions held when the process is killed are heaptrack's "leaked" bytes.

use std::sync::Arc;

fn main() -> anyhow::Result<()> {
    let path = std::env::args().nth(1).ok_or_else(|| anyhow::anyhow!("usage: heap_idle CONFIG.toml"))?;
    let config = Arc::new(xmpp_cm::Config::load(Some(std::path::Path::new(&path)))?);
    tokio::runtime::Runtime::new()?.block_on(async {
        // Inside the runtime, as `xmpp-cm` builds it.
        let state = xmpp_cm::server::AppState::new(config.clone())?;
        let listeners = xmpp_cm::server::bind(&config).await?;
        xmpp_cm::shutdown::on_signals(state.shutdown.clone());
        xmpp_cm::server::serve(listeners, state).await?;
        Ok(())
    })
}
