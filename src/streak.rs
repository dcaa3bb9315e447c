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

/// Runs `step` on what `alive` points to every `every` (a late tick delays the next instead of bunching them),
/// logging its failures once per streak (`failed`, then `recovered`), until nothing else holds it. The first run
/// is one interval after the start.
pub(crate) fn spawn_every<T, F, Fut, V, E>(
    alive: std::sync::Weak<T>,
    every: std::time::Duration,
    failed: &'static str,
    recovered: &'static str,
    step: F,
) -> tokio::task::JoinHandle<()>
where
    T: ?Sized + Send + Sync + 'static,
    F: Fn(std::sync::Arc<T>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<V, E>> + Send,
    E: std::fmt::Display,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut streak = Streak::default();
        loop {
            tick.tick().await;
            let Some(strong) = alive.upgrade() else {
                return;
            };
            streak.note(&step(strong).await, failed, recovered);
        }
    })
}
