//! [`Streak`]: how background work that retries (heartbeats, flushes) logs its failures — once when a streak of
//! them starts, at `warn`, and once when it ends, at `info` — so an outage is one line each way, not one a tick.

/// Whether the last attempt failed, and the logging of a change.
#[derive(Debug, Default)]
pub(crate) struct Streak {
    failing: bool,
}

impl Streak {
    /// Notes an attempt's `outcome`: the first failure after a success logs `failed` with the error, the first
    /// success after a failure logs `recovered`.
    pub(crate) fn note<T, E: std::fmt::Display>(
        &mut self,
        outcome: &Result<T, E>,
        failed: &str,
        recovered: &str,
    ) {
        match outcome {
            Ok(_) if self.failing => {
                self.failing = false;
                tracing::info!("{recovered}");
            }
            Err(e) if !self.failing => {
                self.failing = true;
                tracing::warn!(error = %e, "{failed}");
            }
            _ => {}
        }
    }
}
