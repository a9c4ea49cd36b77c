//! Time as the engine sees it: milliseconds since the Unix epoch, read through a
//! [`Clock`] so that tests control it. Domain code never calls `SystemTime::now()`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A point in time, in milliseconds since 1970-01-01T00:00:00Z (UTC).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    /// This time plus `millis`, saturating at the end of time rather than wrapping.
    pub fn saturating_add(self, millis: u64) -> UnixMillis {
        UnixMillis(self.0.saturating_add(millis))
    }

    /// This time minus `millis`, saturating at the epoch.
    pub fn saturating_sub(self, millis: u64) -> UnixMillis {
        UnixMillis(self.0.saturating_sub(millis))
    }
}

impl std::fmt::Display for UnixMillis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// Where the engine reads the current time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time.
    fn now(&self) -> UnixMillis;
}

/// The machine's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixMillis {
        // A clock before 1970 is a broken machine; reading it as the epoch makes every
        // code look as if it came from the future, which rejects rather than accepts.
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis() as u64)
            .unwrap_or(0);
        UnixMillis(millis)
    }
}

/// A clock that only moves when a test moves it.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: AtomicU64,
}

impl ManualClock {
    /// A clock stopped at `now`.
    pub fn new(now: UnixMillis) -> ManualClock {
        ManualClock {
            now_ms: AtomicU64::new(now.0),
        }
    }

    /// Sets the time.
    pub fn set(&self, now: UnixMillis) {
        self.now_ms.store(now.0, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixMillis {
        UnixMillis(self.now_ms.load(Ordering::SeqCst))
    }
}
