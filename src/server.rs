//! Builds the public router (BOSH, WebSocket) and the admin router, binds the listeners, and
//! drains on shutdown.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::upstream::Upstream;
use crate::Config;

/// Everything a request handler needs; shared by all transports.
pub struct AppState {
    pub config: Arc<Config>,
    pub upstream: Arc<Upstream>,
    /// Cancelled on SIGTERM: transports stop taking new sessions and end live ones.
    pub shutdown: CancellationToken,
    /// Every session task is spawned on this tracker so the drain can wait for them.
    pub tracker: TaskTracker,
}
