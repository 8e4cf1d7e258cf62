//! The control plane: admin HTTP API, metrics, status page.

use std::sync::Arc;

use crate::runtime::server::Shared;

/// Starts the admin API thread (not yet implemented beyond this stub:
/// see issue 9).
pub fn start(_shared: Arc<Shared>) -> std::io::Result<()> {
    Ok(())
}
