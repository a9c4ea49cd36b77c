//! The writer's cache of recent accounts and riders' travel states.
//!
//! Every tap reads its rider's account and travel state, and most write the travel state
//! back; a rider taps in and out within minutes. Reading them again from RocksDB walks a
//! memtable's skip list or a table's blocks: at 3,000 taps/s the writer's reads were 6.7%
//! of the engine's CPU (`docs/PERFORMANCE.md`, "The writer's state cache"). The writer is
//! the only thread that changes these states, so it keeps the ones it last read or
//! committed, and a group commit looks here before the database.
//!
//! Exactness: an entry is always either a state read from the database or one this writer
//! made durable; a group commit's new states are kept only after its write succeeded, and a
//! failed write empties the cache (the next reads go to the database). A replica (a
//! follower in cluster mode) applies without one: a ledger that led in between would have
//! changed the states under it. Absent accounts and travel states are not kept.

use quick_cache::unsync::Cache;

use super::model::{Account, AccountRef, Travel};

/// Recent accounts and travel states, each bounded in entries (least recently used go).
pub struct StateCache {
    accounts: Cache<AccountRef, Account>,
    travel: Cache<u64, Travel>,
}

impl std::fmt::Debug for StateCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateCache")
            .field("accounts", &self.accounts.len())
            .field("travel", &self.travel.len())
            .finish()
    }
}

/// The states a group commit changed, to keep once its write is durable.
#[derive(Debug, Default)]
pub struct ChangedStates {
    /// Accounts and their new states.
    pub accounts: Vec<(AccountRef, Account)>,
    /// Riders and their new travel states.
    pub travel: Vec<(u64, Travel)>,
}

impl StateCache {
    /// A cache of at most `entries_max` accounts and as many travel states.
    pub fn new(entries_max: usize) -> StateCache {
        let entries_max = entries_max.max(1);
        StateCache {
            accounts: Cache::new(entries_max),
            travel: Cache::new(entries_max),
        }
    }

    /// The account's state, when kept.
    pub fn account(&self, account: &AccountRef) -> Option<Account> {
        self.accounts.get(account).copied()
    }

    /// The rider's travel state, when kept.
    pub fn travel(&self, rider: u64) -> Option<Travel> {
        self.travel.get(&rider).copied()
    }

    /// Keeps an account's state as the database holds it.
    pub fn keep_account(&mut self, account: AccountRef, state: Account) {
        self.accounts.insert(account, state);
    }

    /// Keeps a rider's travel state as the database holds it.
    pub fn keep_travel(&mut self, rider: u64, state: Travel) {
        self.travel.insert(rider, state);
    }

    /// Keeps the states a group commit wrote, once that write is durable.
    pub fn keep_committed(&mut self, changed: ChangedStates) {
        for (account, state) in changed.accounts {
            self.keep_account(account, state);
        }
        for (rider, state) in changed.travel {
            self.keep_travel(rider, state);
        }
    }

    /// Forgets everything: after a failed write the database's state must be read again.
    pub fn clear(&mut self) {
        self.accounts.clear();
        self.travel.clear();
    }

    /// How many accounts and travel states are kept.
    pub fn len(&self) -> (usize, usize) {
        (self.accounts.len(), self.travel.len())
    }
}
