//! SIGTERM/SIGINT → CancellationToken.
