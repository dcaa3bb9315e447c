//! Randomness, injected: token ids, secrets and salts come from a [`RandomSource`], the OS CSPRNG by default.

use std::fmt::Debug;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// A source of random bytes.
pub trait RandomSource: Send + Sync + Debug {
    /// Fills `dest` with random bytes.
    ///
    /// # Errors
    /// [`Error::Random`] when the source cannot deliver.
    fn fill(&self, dest: &mut [u8]) -> Result<()>;
}

/// The operating system's CSPRNG (`getrandom`). Use this in production.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsRandom;

impl RandomSource for OsRandom {
    fn fill(&self, dest: &mut [u8]) -> Result<()> {
        getrandom::fill(dest).map_err(|e| Error::Random(e.to_string()))
    }
}

/// The OS CSPRNG read ahead: each thread keeps [`READ_AHEAD`] bytes from `getrandom` and hands them out in
/// order, wiping each byte as it goes, so one system call serves many ids instead of one each. For ids made on a
/// hot path (the meter's request and event ids); key secrets and salts come from [`OsRandom`] directly. A forked
/// child reads afresh (the buffer remembers the process it was filled in), so parent and child never share bytes.
///
/// ```
/// use keymeter::random::{BufferedOsRandom, RandomSource};
/// let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
/// BufferedOsRandom.fill(&mut a)?;
/// BufferedOsRandom.fill(&mut b)?;
/// assert_ne!(a, b);
/// # Ok::<(), keymeter::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct BufferedOsRandom;

/// How many bytes [`BufferedOsRandom`] reads at a time, per thread.
pub const READ_AHEAD: usize = 1024;

struct ReadAhead {
    bytes: [u8; READ_AHEAD],
    /// Bytes from here on are unused.
    next: usize,
    /// The process that filled `bytes`.
    pid: u32,
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.bytes);
    }
}

thread_local! {
    static READ_AHEAD_BYTES: std::cell::RefCell<ReadAhead> = const {
        std::cell::RefCell::new(ReadAhead { bytes: [0; READ_AHEAD], next: READ_AHEAD, pid: 0 })
    };
}

impl RandomSource for BufferedOsRandom {
    fn fill(&self, dest: &mut [u8]) -> Result<()> {
        // Large requests gain nothing from the buffer.
        if dest.len() > READ_AHEAD / 4 {
            return OsRandom.fill(dest);
        }
        READ_AHEAD_BYTES.with_borrow_mut(|ahead| {
            let pid = std::process::id();
            if ahead.pid != pid || READ_AHEAD - ahead.next < dest.len() {
                OsRandom.fill(&mut ahead.bytes)?;
                ahead.next = 0;
                ahead.pid = pid;
            }
            let taken = &mut ahead.bytes[ahead.next..ahead.next + dest.len()];
            dest.copy_from_slice(taken);
            zeroize::Zeroize::zeroize(taken);
            ahead.next += dest.len();
            Ok(())
        })
    }
}

/// A reproducible byte stream (SHA-256 in counter mode over a seed), **for tests only**: anyone who knows the seed
/// knows every "secret" it produced.
#[derive(Debug)]
pub struct SeededRandom {
    state: Mutex<(u64, u64)>,
}

impl SeededRandom {
    /// A stream determined by `seed`.
    pub fn new(seed: u64) -> Self {
        SeededRandom {
            state: Mutex::new((seed, 0)),
        }
    }
}

impl RandomSource for SeededRandom {
    fn fill(&self, dest: &mut [u8]) -> Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for chunk in dest.chunks_mut(32) {
            let block = Sha256::new()
                .chain_update(state.0.to_le_bytes())
                .chain_update(state.1.to_le_bytes())
                .finalize();
            state.1 += 1;
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
        Ok(())
    }
}

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Fills `out` with uniformly random base62 characters, by rejection sampling (bytes ≥ 248 are dropped, so each
/// of the 62 characters is equally likely).
///
/// # Errors
/// [`Error::Random`] when the source fails.
pub fn fill_base62(random: &dyn RandomSource, out: &mut [u8]) -> Result<()> {
    base62_reading(random, out, 64)
}

/// [`fill_base62`] reading only a few bytes more than `out` needs (a draw is refused 8 times in 256), for ids made
/// per request from a [`BufferedOsRandom`], whose buffer then lasts three times as long.
pub(crate) fn fill_base62_lean(random: &dyn RandomSource, out: &mut [u8]) -> Result<()> {
    base62_reading(random, out, (out.len() + 4).min(64))
}

/// Fills `out` reading `read` (at most 64) bytes at a time.
fn base62_reading(random: &dyn RandomSource, out: &mut [u8], read: usize) -> Result<()> {
    let mut buf = [0u8; 64];
    let buf = &mut buf[..read.clamp(1, 64)];
    let mut filled = 0;
    while filled < out.len() {
        random.fill(buf)?;
        for &b in buf.iter() {
            // 248 = 4 * 62: the largest multiple of 62 that fits in a byte.
            if b < 248 {
                out[filled] = BASE62[usize::from(b % 62)];
                filled += 1;
                if filled == out.len() {
                    break;
                }
            }
        }
    }
    zeroize::Zeroize::zeroize(buf);
    Ok(())
}

pub(crate) fn base62_alphabet() -> &'static [u8; 62] {
    BASE62
}

#[cfg(test)]
mod tests {
    use super::{BufferedOsRandom, READ_AHEAD, RandomSource};

    /// Reads across refills and past the buffer's size never repeat a chunk, and what was handed out is wiped.
    #[test]
    fn buffered_os_random_hands_out_each_byte_once() {
        let mut seen = std::collections::HashSet::new();
        // 100-byte reads: ten per buffer, then a refill with the tail unused.
        for _ in 0..3 * READ_AHEAD / 100 {
            let mut chunk = [0u8; 100];
            BufferedOsRandom.fill(&mut chunk).unwrap();
            assert!(seen.insert(chunk.to_vec()), "a chunk came back twice");
        }
        let mut large = vec![0u8; READ_AHEAD];
        BufferedOsRandom.fill(&mut large).unwrap();
        assert!(large.iter().any(|&b| b != 0));
        super::READ_AHEAD_BYTES.with_borrow(|ahead| {
            assert!(ahead.bytes[..ahead.next].iter().all(|&b| b == 0));
        });
    }
}
