//! Builds the public and admin routers, binds the listeners, drains on shutdown.
