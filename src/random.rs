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
    let mut buf = [0u8; 64];
    let mut filled = 0;
    while filled < out.len() {
        random.fill(&mut buf)?;
        for &b in &buf {
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
    zeroize::Zeroize::zeroize(&mut buf);
    Ok(())
}

pub(crate) fn base62_alphabet() -> &'static [u8; 62] {
    BASE62
}
