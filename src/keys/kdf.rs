//! Where slow hashes run, and who may make a verifier run one.
//!
//! - [`KdfThreads`]: a fixed set of threads for KDFs. tokio's blocking pool would run each on whichever of up to
//!   512 threads is free, and the allocator keeps a memory arena per thread: a flood of slow verifications then
//!   leaves a KDF's memory (tens of MiB) behind in each of dozens of arenas. A fixed set keeps it to one a slot.
//! - [`FailureBudget`]: failed verifications per client address (IPv6 by /64), so a stranger sending made-up
//!   keys gets a few KDFs and then `RATE_LIMITED`, never one KDF per request.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::limits::Quota;
use crate::limits::gcra::{LimitStatus, decide, force};

type Job = Box<dyn FnOnce() + Send>;

/// A fixed number of threads that run KDFs, started on first use and ended when the owner is dropped.
#[derive(Debug)]
pub struct KdfThreads {
    size: usize,
    jobs: Mutex<Option<Sender<Job>>>,
}

impl KdfThreads {
    /// `size` threads (at least one), started by the first [`KdfThreads::run`].
    pub fn new(size: usize) -> Self {
        KdfThreads {
            size: size.max(1),
            jobs: Mutex::new(None),
        }
    }

    fn sender(&self) -> Result<Sender<Job>> {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = jobs.as_ref() {
            return Ok(tx.clone());
        }
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..self.size {
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("keymeter-kdf-{i}"))
                .spawn(move || worker(&rx))
                .map_err(|e| Error::Internal(format!("cannot start a KDF thread: {e}")))?;
        }
        *jobs = Some(tx.clone());
        Ok(tx)
    }

    /// Runs `work` on one of the threads and waits for it without blocking the async workers.
    ///
    /// # Errors
    /// [`Error::Internal`] when no thread can be started, or `work` panicked.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            // A panicking KDF must not take its thread with it.
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            let _ = tx.send(out);
        });
        self.sender()?
            .send(job)
            .map_err(|_| Error::Internal("the KDF threads have ended".into()))?;
        match rx.await {
            Ok(Ok(out)) => Ok(out),
            _ => Err(Error::Internal("a KDF failed".into())),
        }
    }
}

fn worker(rx: &Mutex<Receiver<Job>>) {
    loop {
        // The lock is held only while waiting for the next job; it ends when every sender is gone.
        let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        job();
    }
}

/// The most client addresses a [`FailureBudget`] remembers; past it, addresses whose budget is whole again are
/// forgotten first, then all.
const MAX_ADDRESSES: usize = 65_536;

/// Failed verifications allowed per client address (a GCRA bucket each, in memory).
#[derive(Debug)]
pub struct FailureBudget {
    quota: Quota,
    tats: Mutex<HashMap<IpAddr, i64>>,
}

/// One bucket per IPv4 address and per IPv6 /64 (one subscriber's network).
fn bucket_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl FailureBudget {
    /// `quota` failures per address.
    pub fn new(quota: Quota) -> Self {
        FailureBudget {
            quota,
            tats: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `ip` has spent its budget at `now` (micros): the limit's numbers when it has. Checked before the
    /// lookup; only failures are counted ([`FailureBudget::failed`]), so a client whose keys verify is never
    /// refused here, however many requests it has in flight.
    pub fn spent(&self, ip: IpAddr, now: i64) -> Option<LimitStatus> {
        let tats = self.tats.lock().unwrap_or_else(|p| p.into_inner());
        let (allowed, _, status) = decide(tats.get(&bucket_of(ip)).copied(), now, &self.quota, 1);
        (!allowed).then_some(status)
    }

    /// Counts one failed verification from `ip` at `now` (micros).
    pub fn failed(&self, ip: IpAddr, now: i64) {
        let mut tats = self.tats.lock().unwrap_or_else(|p| p.into_inner());
        let key = bucket_of(ip);
        if tats.len() >= MAX_ADDRESSES && !tats.contains_key(&key) {
            tats.retain(|_, tat| *tat > now);
            if tats.len() >= MAX_ADDRESSES {
                tats.clear();
            }
        }
        let tat = force(tats.get(&key).copied(), now, &self.quota, 1);
        tats.insert(key, tat);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Period;

    #[test]
    fn an_address_gets_its_budget_then_waits() {
        let budget = FailureBudget::new(Quota {
            count: 3,
            period: Period::Minute,
        });
        let a: IpAddr = "203.0.113.7".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b_sibling: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        for _ in 0..3 {
            assert!(budget.spent(a, 0).is_none());
            budget.failed(a, 0);
        }
        let status = budget.spent(a, 0).expect("spent");
        assert_eq!(status.retry_after_secs(), 20);
        assert!(budget.spent(a, 20_000_000).is_none(), "one more after 20 s");
        for _ in 0..3 {
            budget.failed(b, 0);
        }
        assert!(budget.spent(b_sibling, 0).is_some(), "one /64, one budget");
        assert!(
            budget
                .spent("2001:db8:1:3::1".parse().unwrap(), 0)
                .is_none()
        );
    }

    #[tokio::test]
    async fn work_runs_on_the_kdf_threads_and_a_panic_is_an_error() {
        let threads = KdfThreads::new(2);
        let name = threads
            .run(|| std::thread::current().name().map(str::to_owned))
            .await
            .unwrap();
        assert!(name.unwrap().starts_with("keymeter-kdf-"));
        assert!(threads.run(|| panic!("boom")).await.is_err());
        assert_eq!(threads.run(|| 7).await.unwrap(), 7, "the thread survived");
    }
}
