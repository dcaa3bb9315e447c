//! [`RateLimiter`] on Redis (feature `redis`): bucket states shared by every instance, one script call per check.
//!
//! The script reads the buckets, takes the time from the server's `TIME` (so instances whose clocks disagree
//! still agree on every bucket), admits the charges only if all fit (the GCRA condition of [`gcra`]), writes the
//! new states with an expiry, and returns the server's time and the states it read. The numbers of the answer
//! (remaining, reset, retry after) are then computed here by the same pure function from those inputs, and the
//! two decisions must agree. A Redis that cannot be reached is an error: the verifier fails closed or open as
//! configured.
//!
//! It is also a [`SlotStore`] (concurrency limits): a sorted set per scope whose members are slot ids scored by
//! expiry, judged by the server's `TIME`; an acquire is one script that drops lapsed members, counts and adds.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;

use crate::error::{Error, Result};
use crate::limits::{
    Charge, Decision, LimitScope, RateLimiter, Slot, SlotRefusal, SlotStore, gcra,
};

/// Admission by GCRA over every key at once, all or none. ARGV: mode (`check`, `charge`, or `refund`: each TAT
/// moved back by the cost, never before now), then per key its emission interval, period and cost in
/// microseconds/units. Returns `{now, admitted, state before…}`.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local force = ARGV[1] ~= 'check'
local sign = 1
if ARGV[1] == 'refund' then sign = -1 end
local before = {}
local after = {}
local admitted = 1
for i = 1, #KEYS do
  local base = 1 + (i - 1) * 3
  local emission = tonumber(ARGV[base + 1])
  local period = tonumber(ARGV[base + 2])
  local cost = tonumber(ARGV[base + 3])
  local stored = redis.call('GET', KEYS[i])
  local tat = now
  if stored then
    before[i] = stored
    local s = tonumber(stored)
    if s > now then tat = s end
  else
    before[i] = ''
  end
  after[i] = tat + sign * cost * emission
  if after[i] < now then after[i] = now end
  if (not force) and after[i] - period > now then admitted = 0 end
end
if admitted == 1 then
  for i = 1, #KEYS do
    local ttl = math.floor((after[i] - now) / 1000) + 1000
    redis.call('SET', KEYS[i], string.format('%d', after[i]), 'PX', ttl)
  end
end
local out = {now, admitted}
for i = 1, #KEYS do out[#out + 1] = before[i] end
return out
";

/// Takes a slot in every scope (KEYS) if each has fewer live members than its limit (ARGV[2 + i]), all or none.
/// ARGV[1]: the slot id, ARGV[2]: its time to live in microseconds. Returns `{0, 0}`, or `{i, live}` for the
/// first scope with no room.
const ACQUIRE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl = tonumber(ARGV[2])
for i = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  local n = redis.call('ZCARD', KEYS[i])
  if n >= tonumber(ARGV[2 + i]) then return {i, n} end
end
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], now + ttl, ARGV[1])
  redis.call('PEXPIRE', KEYS[i], math.floor(ttl / 1000) + 1000)
end
return {0, 0}
";

/// Extends each member ARGV[1 + i] of KEYS[i] still present to ARGV[1] microseconds from now.
const RENEW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl = tonumber(ARGV[1])
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', now + ttl, ARGV[1 + i])
  redis.call('PEXPIRE', KEYS[i], math.floor(ttl / 1000) + 1000)
end
return 0
";

/// The live members of each of KEYS.
const COUNT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i = 1, #KEYS do out[i] = redis.call('ZCOUNT', KEYS[i], '(' .. string.format('%d', now), '+inf') end
return out
";

/// What can go wrong inside the Redis backend. Private: callers see [`Error::Store`].
#[derive(Debug, thiserror::Error)]
enum RedisError {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply from the rate-limit script: {0}")]
    Reply(&'static str),
    #[error("the server's decision differs from keymeter's for the same state")]
    Disagree,
}

impl From<RedisError> for Error {
    fn from(e: RedisError) -> Self {
        Error::Store {
            store: "redis",
            source: Box::new(e),
        }
    }
}

/// A [`RateLimiter`] whose buckets live in Redis, shared by every instance pointed at it.
#[derive(Clone)]
pub struct RedisLimiter {
    conn: ConnectionManager,
    script: redis::Script,
    prefix: String,
}

impl std::fmt::Debug for RedisLimiter {
    // The connection is left out: its settings may carry the server's password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The URL with any password replaced, for messages.
fn shown(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

impl RedisLimiter {
    /// Connects to `url` (`redis://[:password@]host:port[/db]`); operations time out after 2 s, and a lost
    /// connection is re-established on the next call. Buckets are keys under `keymeter:rl:`.
    ///
    /// # Errors
    /// [`Error::Config`] for a URL that does not parse; [`Error::Store`] when the server cannot be reached.
    pub async fn connect(url: &str) -> Result<Self> {
        let client = redis::Client::open(url)
            .map_err(|_| Error::Config(format!("invalid Redis URL {}", shown(url))))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(RedisError::from)?;
        Ok(RedisLimiter {
            conn,
            script: redis::Script::new(SCRIPT),
            prefix: "keymeter:rl:".to_owned(),
        })
    }

    /// Puts bucket keys under another prefix (tests and several deployments on one server).
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    async fn run(&self, mode: &str, charges: &[Charge]) -> Result<(i64, bool, Vec<Option<i64>>)> {
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(mode);
        for c in charges {
            invocation
                .key(format!("{}{}", self.prefix, c.bucket))
                .arg(c.quota.emission_micros())
                .arg(c.quota.period.micros())
                .arg(c.cost);
        }
        let mut conn = self.conn.clone();
        let reply: Vec<redis::Value> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(RedisError::from)?;
        let int = |v: &redis::Value| match v {
            redis::Value::Int(n) => Ok(*n),
            _ => Err(RedisError::Reply("expected an integer")),
        };
        if reply.len() != charges.len() + 2 {
            return Err(RedisError::Reply("wrong number of values").into());
        }
        let now = int(&reply[0])?;
        let admitted = int(&reply[1])? == 1;
        let states = reply[2..]
            .iter()
            .map(|v| match v {
                redis::Value::BulkString(b) if b.is_empty() => Ok(None),
                redis::Value::BulkString(b) => std::str::from_utf8(b)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .map(Some)
                    .ok_or(RedisError::Reply("a bucket state that is not an integer")),
                _ => Err(RedisError::Reply("expected a bucket state")),
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok((now, admitted, states))
    }
}

#[async_trait]
impl RateLimiter for RedisLimiter {
    async fn check(&self, charges: &[Charge], _now: i64) -> Result<Decision> {
        if charges.is_empty() {
            return Ok(Decision::UNLIMITED);
        }
        let (now, admitted, states) = self.run("check", charges).await?;
        let (decision, _) = gcra::decide_all(&states, now, charges);
        if decision.allowed != admitted {
            return Err(RedisError::Disagree.into());
        }
        Ok(decision)
    }

    async fn charge(&self, charges: &[Charge], _now: i64) -> Result<()> {
        if charges.is_empty() {
            return Ok(());
        }
        self.run("charge", charges).await.map(|_| ())
    }

    async fn refund(&self, charges: &[Charge], _now: i64) -> Result<()> {
        if charges.is_empty() {
            return Ok(());
        }
        self.run("refund", charges).await.map(|_| ())
    }

    async fn reachable(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(RedisError::from)?;
        Ok(())
    }
}

impl RedisLimiter {
    fn slot_key(&self, scope: &LimitScope) -> String {
        format!("{}slots:{scope}", self.prefix)
    }
}

fn micros(ttl: chrono::Duration) -> i64 {
    ttl.num_microseconds().unwrap_or(i64::MAX / 4)
}

#[async_trait]
impl SlotStore for RedisLimiter {
    async fn acquire(
        &self,
        slot: &Slot,
        _now: chrono::DateTime<chrono::Utc>,
        ttl: chrono::Duration,
    ) -> Result<Option<SlotRefusal>> {
        if slot.claims.is_empty() {
            return Ok(None);
        }
        let script = redis::Script::new(ACQUIRE);
        let mut invocation = script.prepare_invoke();
        invocation.arg(&slot.id).arg(micros(ttl));
        for claim in &slot.claims {
            invocation.key(self.slot_key(&claim.scope)).arg(claim.max);
        }
        let mut conn = self.conn.clone();
        let reply: (i64, i64) = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(RedisError::from)?;
        match reply {
            (0, _) => Ok(None),
            (i, live) => {
                let claim = usize::try_from(i - 1)
                    .ok()
                    .and_then(|i| slot.claims.get(i))
                    .ok_or(RedisError::Reply("a scope index out of range"))?;
                Ok(Some(SlotRefusal {
                    scope: claim.scope.clone(),
                    max: claim.max,
                    in_flight: u64::try_from(live).unwrap_or(0),
                }))
            }
        }
    }

    async fn renew(
        &self,
        slots: &[Slot],
        _now: chrono::DateTime<chrono::Utc>,
        ttl: chrono::Duration,
    ) -> Result<()> {
        let script = redis::Script::new(RENEW);
        let mut invocation = script.prepare_invoke();
        invocation.arg(micros(ttl));
        let mut any = false;
        for slot in slots {
            for claim in &slot.claims {
                invocation.key(self.slot_key(&claim.scope)).arg(&slot.id);
                any = true;
            }
        }
        if !any {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        invocation
            .invoke_async::<i64>(&mut conn)
            .await
            .map_err(RedisError::from)?;
        Ok(())
    }

    async fn release(&self, slot: &Slot) -> Result<()> {
        let mut pipe = redis::pipe();
        for claim in &slot.claims {
            pipe.zrem(self.slot_key(&claim.scope), &slot.id).ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(RedisError::from)?;
        Ok(())
    }

    async fn in_flight(
        &self,
        scopes: &[LimitScope],
        _now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<u64>> {
        if scopes.is_empty() {
            return Ok(Vec::new());
        }
        let script = redis::Script::new(COUNT);
        let mut invocation = script.prepare_invoke();
        for scope in scopes {
            invocation.key(self.slot_key(scope));
        }
        let mut conn = self.conn.clone();
        let counts: Vec<i64> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(RedisError::from)?;
        Ok(counts
            .into_iter()
            .map(|n| u64::try_from(n).unwrap_or(0))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_in_messages_hide_the_password() {
        assert_eq!(
            super::shown("redis://:hunter2@10.0.0.1:6379/0"),
            "redis://…@10.0.0.1:6379/0"
        );
        assert_eq!(
            super::shown("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
