//! Byte layouts of every key and value in the ledger's RocksDB, all big-endian with fixed
//! widths, as documented in `docs/storage.md`. This is the one place a key is spelled out:
//! other modules build and read keys only through these functions. Keys sort in the order
//! that scans need: the log by sequence, an account's postings by sequence, a provider's
//! entries by sequence.
//!
//! Decoding never trusts a stored length beyond its bound: a value that does not parse is
//! reported as corruption, never a panic.

use crate::clock::UnixMillis;
use crate::fares::{Periods, RiderTotals, periods_of_day};
use crate::money::Amount;

use super::LedgerError;
use super::model::{
    Account, AccountRef, AccountStatus, CodeFingerprint, CodeUse, Command, Journey, OpenJourney,
    Outcome, POSTINGS_PER_TRANSACTION_MAX, Posting, Receipt, Record, Refusal, Request, Tap,
    TapKind, Travel, TxId,
};
use super::travel::{RecordedStep, Step, StepKind};
use crate::token::Reason;

/// The stored code of an outcome that is a duplicate (followed by the original's sequence).
/// Refusal codes count up from 1 and stay far below it.
const OUTCOME_DUPLICATE: u8 = 0xFE;

/// Bytes of an account key.
pub const ACCOUNT_KEY_LEN: usize = 9;
/// The version byte at the start of every value, so a later layout can be told apart.
const VALUE_VERSION: u8 = 1;

/// Meta key: the on-disk format version (u32, big-endian).
pub const META_FORMAT_VERSION: &[u8] = b"format_version";
/// Meta key: the next log sequence (u64, big-endian).
pub const META_NEXT_SEQUENCE: &[u8] = b"next_sequence";
/// Meta key: the first log sequence whose id entry has not been pruned (u64, big-endian;
/// absent means 1).
pub const META_IDS_PRUNED_BELOW: &[u8] = b"ids_pruned_below";

/// Meta key (cluster mode): the sequence of the last message of the shard's stream applied
/// to this replica (u64, big-endian; absent means 0). Written in the same batch as the
/// state that message produced, so a restart goes on from the next message.
pub const META_APPLIED_STREAM_SEQUENCE: &[u8] = b"applied_stream_sequence";

/// Meta key: the first transaction sequence whose deny-list changes `deny_journal` holds
/// (u64, big-endian; absent means 1: a ledger made with the journal). A ledger upgraded
/// to it starts it at its next sequence then.
pub const META_DENY_JOURNAL_FROM: &[u8] = b"deny_journal_from";

/// Meta key (cluster mode): which shard of how many this replica holds (two u32,
/// big-endian: shard, then shard count). Written when the replica is made, so that a
/// directory opened as another shard (or from a cluster of another shard count) is
/// refused, and an audit can tell the shards of a cluster apart.
pub const META_SHARD: &[u8] = b"shard";

/// The key of a log record: its sequence.
pub fn log_key(sequence: u64) -> [u8; 8] {
    sequence.to_be_bytes()
}

/// The sequence a log key names.
pub fn decode_log_key(key: &[u8]) -> Result<u64, LedgerError> {
    decode_sequence(key, "log key")
}

/// The key of an idempotency entry: the transaction id.
pub fn id_key(id: TxId) -> [u8; 16] {
    id.0.to_be_bytes()
}

/// The key of a refund entry: the refunded charge's id.
pub fn refund_key(original: TxId) -> [u8; 16] {
    original.0.to_be_bytes()
}

/// The key of an account: a kind byte, then the id.
pub fn account_key(account: AccountRef) -> [u8; ACCOUNT_KEY_LEN] {
    let (kind, id) = match account {
        AccountRef::Rider(id) => (1u8, id),
        AccountRef::OperatorRevenue(id) => (2u8, u64::from(id)),
        AccountRef::ProviderClearing(id) => (3u8, u64::from(id)),
    };
    let mut key = [0u8; ACCOUNT_KEY_LEN];
    key[0] = kind;
    key[1..].copy_from_slice(&id.to_be_bytes());
    key
}

/// The account a key names.
pub fn decode_account_key(key: &[u8]) -> Result<AccountRef, LedgerError> {
    let mut reader = Reader::new(key, "account key");
    let kind = reader.u8()?;
    let id = reader.u64()?;
    reader.end()?;
    let small = |id: u64| u16::try_from(id).map_err(|_| corrupt("account key", "id out of range"));
    match kind {
        1 => Ok(AccountRef::Rider(id)),
        2 => Ok(AccountRef::OperatorRevenue(small(id)?)),
        3 => Ok(AccountRef::ProviderClearing(small(id)?)),
        _ => Err(corrupt("account key", "unknown kind")),
    }
}

/// An account's value (value version 1): status, provider, credit limit, balance.
pub fn encode_account(account: &Account) -> Vec<u8> {
    let mut writer = Writer::default();
    writer.u8(VALUE_VERSION);
    write_account_fields(&mut writer, account);
    writer.0
}

/// The value version of a rider's account that carries the rider's travel state after its
/// fields (storage format 7).
const ACCOUNT_VERSION_WITH_TRAVEL: u8 = 2;

/// A rider's account value with the rider's travel state: one key read and written per
/// tap rather than two. A rider who has not travelled is written as a plain account
/// (value version 1), so that one state has one encoding: replicas compare their bytes.
pub fn encode_rider(account: &Account, travel: &Travel) -> Vec<u8> {
    if *travel == Travel::default() {
        return encode_account(account);
    }
    let mut writer = Writer::default();
    writer.u8(ACCOUNT_VERSION_WITH_TRAVEL);
    write_account_fields(&mut writer, account);
    writer.bytes(&encode_travel(travel));
    writer.0
}

fn write_account_fields(writer: &mut Writer, account: &Account) {
    writer.u8(status_code(account.status));
    writer.u16(account.provider_id);
    writer.i64(account.credit_limit.0);
    writer.i64(account.balance.0);
}

/// Reads an account's value (a rider's travel state, if it holds one, is skipped).
pub fn decode_account(bytes: &[u8]) -> Result<Account, LedgerError> {
    Ok(decode_rider(bytes)?.0)
}

/// Reads a rider's account value: the account, and the rider's travel state (the
/// default, no travel yet, for a plain account value).
pub fn decode_rider(bytes: &[u8]) -> Result<(Account, Travel), LedgerError> {
    let mut reader = Reader::new(bytes, "account");
    let version = reader.u8()?;
    if version != VALUE_VERSION && version != ACCOUNT_VERSION_WITH_TRAVEL {
        return Err(corrupt("account", "unknown value version"));
    }
    let status = status_from(reader.u8()?).ok_or_else(|| corrupt("account", "unknown status"))?;
    let account = Account {
        status,
        provider_id: reader.u16()?,
        credit_limit: Amount(reader.i64()?),
        balance: Amount(reader.i64()?),
    };
    if version == VALUE_VERSION {
        reader.end()?;
        return Ok((account, Travel::default()));
    }
    Ok((account, decode_travel(reader.rest())?))
}

/// The key of a posting: the account's key, then the sequence.
pub fn posting_key(account: AccountRef, sequence: u64) -> [u8; ACCOUNT_KEY_LEN + 8] {
    let mut key = [0u8; ACCOUNT_KEY_LEN + 8];
    key[..ACCOUNT_KEY_LEN].copy_from_slice(&account_key(account));
    key[ACCOUNT_KEY_LEN..].copy_from_slice(&sequence.to_be_bytes());
    key
}

/// A posting's value: the amount and the balance after it.
pub fn encode_posting(amount: Amount, balance_after: Amount) -> [u8; 16] {
    let mut value = [0u8; 16];
    value[..8].copy_from_slice(&amount.0.to_be_bytes());
    value[8..].copy_from_slice(&balance_after.0.to_be_bytes());
    value
}

/// Reads a posting's key and value: (account, sequence, amount, balance after).
pub fn decode_posting(
    key: &[u8],
    value: &[u8],
) -> Result<(AccountRef, u64, Amount, Amount), LedgerError> {
    if key.len() != ACCOUNT_KEY_LEN + 8 {
        return Err(corrupt("posting key", "wrong length"));
    }
    let account = decode_account_key(&key[..ACCOUNT_KEY_LEN])?;
    let sequence = Reader::new(&key[ACCOUNT_KEY_LEN..], "posting key").u64()?;
    let mut reader = Reader::new(value, "posting");
    let amount = Amount(reader.i64()?);
    let balance_after = Amount(reader.i64()?);
    reader.end()?;
    Ok((account, sequence, amount, balance_after))
}

/// The value of an idempotency entry: the transaction's sequence.
pub fn encode_sequence(sequence: u64) -> [u8; 8] {
    sequence.to_be_bytes()
}

/// Reads a sequence value.
pub fn decode_sequence(bytes: &[u8], what: &'static str) -> Result<u64, LedgerError> {
    let mut reader = Reader::new(bytes, what);
    let sequence = reader.u64()?;
    reader.end()?;
    Ok(sequence)
}

/// A `deny_journal` key: the last transaction sequence of the group commit that made the
/// change (a position every replica of a shard agrees on), then the account.
pub fn deny_journal_key(sequence: u64, account_id: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&sequence.to_be_bytes());
    key[8..].copy_from_slice(&account_id.to_be_bytes());
    key
}

/// Reads a `deny_journal` entry: (sequence, account, refused or lifted).
pub fn decode_deny_change(key: &[u8], value: &[u8]) -> Result<(u64, u64, bool), LedgerError> {
    let mut reader = Reader::new(key, "deny journal key");
    let sequence = reader.u64()?;
    let account_id = reader.u64()?;
    reader.end()?;
    let denied = match value {
        [0] => false,
        [1] => true,
        _ => {
            return Err(corrupt(
                "deny journal entry",
                "its change is neither 0 nor 1",
            ));
        }
    };
    Ok((sequence, account_id, denied))
}

/// The value of [`META_SHARD`]: shard `shard` of `shards`.
pub fn encode_shard(shard: u32, shards: u32) -> [u8; 8] {
    let mut value = [0u8; 8];
    value[..4].copy_from_slice(&shard.to_be_bytes());
    value[4..].copy_from_slice(&shards.to_be_bytes());
    value
}

/// Reads a [`META_SHARD`] value: `(shard, shards)`.
pub fn decode_shard(bytes: &[u8]) -> Result<(u32, u32), LedgerError> {
    let mut reader = Reader::new(bytes, "replica's shard");
    let shard = reader.u32()?;
    let shards = reader.u32()?;
    reader.end()?;
    Ok((shard, shards))
}

/// The key of a provider's settlement entry: provider, then sequence.
pub fn provider_entry_key(provider_id: u16, sequence: u64) -> [u8; 10] {
    let mut key = [0u8; 10];
    key[..2].copy_from_slice(&provider_id.to_be_bytes());
    key[2..].copy_from_slice(&sequence.to_be_bytes());
    key
}

/// The first key of the next provider's entries (to skip over one provider's entries), or
/// `None` after the last provider id.
pub fn next_provider_entries(provider_id: u16) -> Option<[u8; 2]> {
    provider_id.checked_add(1).map(u16::to_be_bytes)
}

/// Reads a provider's settlement entry key: (provider, sequence).
pub fn decode_provider_entry_key(key: &[u8]) -> Result<(u16, u64), LedgerError> {
    let mut reader = Reader::new(key, "settlement entry key");
    let provider_id = reader.u16()?;
    let sequence = reader.u64()?;
    reader.end()?;
    Ok((provider_id, sequence))
}

/// The `settlement` column family's keys: a one-byte kind, then the kind's key. Its values
/// are settlement's own (JSON and fixed-width heads, see `crate::settlement`).
pub mod settlement_keys {
    /// Batch id (8) → the batch (JSON).
    pub const BATCH: u8 = b'B';
    /// Provider id (2) → the provider's position: through sequence (8) + last batch id (8).
    pub const HEAD: u8 = b'H';
    /// Close id (16) → the close's request and batches (JSON).
    pub const CLOSE: u8 = b'C';
    /// Batch id (8) → its acknowledgement (JSON).
    pub const ACK: u8 = b'A';
    /// The next batch id (8).
    pub const NEXT_BATCH_ID: &[u8] = b"N";

    /// A batch's key.
    pub fn batch(id: u64) -> [u8; 9] {
        with_kind(BATCH, id.to_be_bytes())
    }

    /// A batch acknowledgement's key.
    pub fn ack(id: u64) -> [u8; 9] {
        with_kind(ACK, id.to_be_bytes())
    }

    /// A provider's position's key.
    pub fn head(provider_id: u16) -> [u8; 3] {
        with_kind(HEAD, provider_id.to_be_bytes())
    }

    /// The provider a position's key names, if the key is one.
    pub fn head_provider(key: &[u8]) -> Option<u16> {
        match key {
            [HEAD, high, low] => Some(u16::from_be_bytes([*high, *low])),
            _ => None,
        }
    }

    /// A close's key.
    pub fn close(id: u128) -> [u8; 17] {
        with_kind(CLOSE, id.to_be_bytes())
    }

    /// A provider's position: the last sequence its batches cover, and its last batch.
    pub fn encode_head(through_sequence: u64, batch_id: u64) -> [u8; 16] {
        let mut head = [0u8; 16];
        head[..8].copy_from_slice(&through_sequence.to_be_bytes());
        head[8..].copy_from_slice(&batch_id.to_be_bytes());
        head
    }

    fn with_kind<const N: usize, const M: usize>(kind: u8, rest: [u8; N]) -> [u8; M] {
        let mut key = [0u8; M];
        key[0] = kind;
        key[1..].copy_from_slice(&rest);
        key
    }
}

/// A transaction record (the value in the log, keyed by sequence).
pub fn encode_record(record: &Record) -> Vec<u8> {
    let mut writer = Writer::default();
    writer.u8(VALUE_VERSION);
    writer.u128(record.request.id.0);
    writer.u64(record.request.time.0);
    write_command(&mut writer, &record.request.command);
    write_outcome(&mut writer, record.outcome);
    match record.rider_balance_after {
        Some(balance) => {
            writer.u8(1);
            writer.i64(balance.0);
        }
        None => writer.u8(0),
    }
    write_postings(&mut writer, record.request.id, &record.postings);
    write_journey(&mut writer, record.journey);
    writer.0
}

fn write_command(writer: &mut Writer, command: &Command) {
    match *command {
        Command::OpenAccount {
            account_id,
            provider_id,
            credit_limit,
        } => {
            writer.u8(1);
            writer.u64(account_id);
            writer.u16(provider_id);
            writer.i64(credit_limit.0);
        }
        Command::SetStatus { account_id, status } => {
            writer.u8(2);
            writer.u64(account_id);
            writer.u8(status_code(status));
        }
        Command::TopUp { account_id, amount } => {
            writer.u8(3);
            writer.u64(account_id);
            writer.i64(amount.0);
        }
        Command::Charge {
            account_id,
            operator_id,
            amount,
        } => {
            writer.u8(4);
            writer.u64(account_id);
            writer.u16(operator_id);
            writer.i64(amount.0);
        }
        Command::Refund { original } => {
            writer.u8(5);
            writer.u128(original.0);
        }
        Command::Adjust {
            account_id,
            operator_id,
            amount,
        } => {
            writer.u8(6);
            writer.u64(account_id);
            writer.u16(operator_id);
            writer.i64(amount.0);
        }
        Command::Tap(tap) => write_tap(writer, &tap),
        Command::CloseJourney {
            account_id,
            journey_id,
        } => {
            writer.u8(8);
            writer.u64(account_id);
            writer.u64(journey_id);
        }
        Command::LostFare {
            gate_id,
            kind,
            reason,
        } => {
            writer.u8(10);
            writer.u32(gate_id);
            let (kind, place) = tap_kind_code(kind);
            writer.u8(kind);
            writer.u32(place);
            writer.u8(reason_code(reason));
        }
        Command::Correct {
            account_id,
            operator_id,
            corrects,
            amount,
        } => {
            writer.u8(9);
            writer.u64(account_id);
            writer.u16(operator_id);
            writer.u128(corrects.0);
            writer.i64(amount.0);
        }
    }
}

/// A tap: tag 7, or tag 11 with the rider's concession bits after the same fields (a tap
/// without a concession keeps the bytes it had before concessions).
fn write_tap(writer: &mut Writer, tap: &Tap) {
    writer.u8(if tap.concessions == 0 { 7 } else { 11 });
    writer.u64(tap.account_id);
    writer.u32(tap.gate_id);
    writer.bytes(&tap.code);
    let (kind, place) = tap_kind_code(tap.kind);
    writer.u8(kind | if tap.offline { TAP_OFFLINE } else { 0 });
    writer.u32(place);
    if tap.concessions != 0 {
        writer.u8(tap.concessions);
    }
}

/// A code verification's reason as stored: its place in [`Reason::ALL`] plus one.
fn reason_code(reason: Reason) -> u8 {
    let index = Reason::ALL.iter().position(|known| *known == reason);
    index.map_or(0, |index| index as u8 + 1)
}

fn reason_from(code: u8) -> Option<Reason> {
    Reason::ALL.get(usize::from(code).checked_sub(1)?).copied()
}

/// The high bit of a tap's kind byte: the gate decided alone (an offline tap).
const TAP_OFFLINE: u8 = 0x80;

/// A tap kind's code (1 entry, 2 exit, 3 bus) and its station or route.
fn tap_kind_code(kind: TapKind) -> (u8, u32) {
    match kind {
        TapKind::MetroEntry { station } => (1, station),
        TapKind::MetroExit { station } => (2, station),
        TapKind::Bus { route } => (3, route),
    }
}

/// The tap kind of a code and a station or route.
fn tap_kind_from(code: u8, place: u32) -> Option<TapKind> {
    match code {
        1 => Some(TapKind::MetroEntry { station: place }),
        2 => Some(TapKind::MetroExit { station: place }),
        3 => Some(TapKind::Bus { route: place }),
        _ => None,
    }
}

fn write_outcome(writer: &mut Writer, outcome: Outcome) {
    match outcome {
        Outcome::Accepted => writer.u8(0),
        Outcome::Refused(refusal) => writer.u8(refusal_code(refusal)),
        Outcome::Duplicate { of } => {
            writer.u8(OUTCOME_DUPLICATE);
            writer.u64(of);
        }
    }
}

/// The postings, behind a one-byte count. The state machine never makes more than
/// [`POSTINGS_PER_TRANSACTION_MAX`] (each fits in the count byte), and money is conserved:
/// their sum is zero. A record that breaks either is a bug in the state machine, and the
/// writer stops here rather than record it (every record is encoded before its group
/// commit is written; [`decode_record`] checks the sum again on every read back).
fn write_postings(writer: &mut Writer, id: TxId, postings: &[Posting]) {
    assert!(
        postings.len() <= POSTINGS_PER_TRANSACTION_MAX,
        "{} postings in one transaction; at most {POSTINGS_PER_TRANSACTION_MAX}",
        postings.len()
    );
    assert!(
        postings_sum_to_zero(postings),
        "the postings of transaction {id} do not sum to zero: {postings:?}"
    );
    writer.u8(postings.len() as u8);
    for posting in postings {
        writer.bytes(&account_key(posting.account));
        writer.i64(posting.amount.0);
    }
}

fn write_journey(writer: &mut Writer, journey: Option<Journey>) {
    match journey {
        None => writer.u8(0),
        Some(journey) => {
            writer.u8(1);
            writer.u64(journey.id);
            match (journey.entry_station, journey.entered_at) {
                (Some(station), Some(at)) => {
                    writer.u8(1);
                    writer.u32(station);
                    writer.u64(at.0);
                }
                _ => writer.u8(0),
            }
        }
    }
}

/// Whether postings sum to zero (an overflowing sum does not).
pub fn postings_sum_to_zero(postings: &[Posting]) -> bool {
    postings
        .iter()
        .try_fold(Amount::ZERO, |sum, posting| sum.checked_add(posting.amount))
        == Some(Amount::ZERO)
}

/// Reads a transaction record. A record whose postings do not sum to zero is refused as
/// corrupt: money conservation is checked again on every read back.
pub fn decode_record(bytes: &[u8]) -> Result<Record, LedgerError> {
    let what = "transaction record";
    let mut reader = Reader::new(bytes, what);
    reader.version()?;
    let id = TxId(reader.u128()?);
    let time = UnixMillis(reader.u64()?);
    let command = read_command(&mut reader)?;
    let outcome = match reader.u8()? {
        0 => Outcome::Accepted,
        OUTCOME_DUPLICATE => Outcome::Duplicate { of: reader.u64()? },
        code => {
            Outcome::Refused(refusal_from(code).ok_or_else(|| corrupt(what, "unknown refusal"))?)
        }
    };
    let rider_balance_after = match reader.u8()? {
        0 => None,
        1 => Some(Amount(reader.i64()?)),
        _ => return Err(corrupt(what, "bad balance flag")),
    };
    let postings = read_postings(&mut reader)?;
    let journey = read_journey(&mut reader)?;
    reader.end()?;
    Ok(Record {
        request: Request { id, time, command },
        outcome,
        postings,
        rider_balance_after,
        journey,
    })
}

fn read_command(reader: &mut Reader<'_>) -> Result<Command, LedgerError> {
    let what = reader.what;
    Ok(match reader.u8()? {
        1 => Command::OpenAccount {
            account_id: reader.u64()?,
            provider_id: reader.u16()?,
            credit_limit: Amount(reader.i64()?),
        },
        2 => Command::SetStatus {
            account_id: reader.u64()?,
            status: status_from(reader.u8()?).ok_or_else(|| corrupt(what, "unknown status"))?,
        },
        3 => Command::TopUp {
            account_id: reader.u64()?,
            amount: Amount(reader.i64()?),
        },
        4 => Command::Charge {
            account_id: reader.u64()?,
            operator_id: reader.u16()?,
            amount: Amount(reader.i64()?),
        },
        5 => Command::Refund {
            original: TxId(reader.u128()?),
        },
        6 => Command::Adjust {
            account_id: reader.u64()?,
            operator_id: reader.u16()?,
            amount: Amount(reader.i64()?),
        },
        7 => Command::Tap(read_tap(reader)?),
        11 => {
            let tap = read_tap(reader)?;
            let concessions = reader.u8()?;
            if concessions == 0 {
                return Err(corrupt(reader.what, "a tap with concessions names none"));
            }
            Command::Tap(Tap { concessions, ..tap })
        }
        8 => Command::CloseJourney {
            account_id: reader.u64()?,
            journey_id: reader.u64()?,
        },
        10 => {
            let gate_id = reader.u32()?;
            let (kind, place) = (reader.u8()?, reader.u32()?);
            Command::LostFare {
                gate_id,
                kind: tap_kind_from(kind, place)
                    .ok_or_else(|| corrupt(what, "unknown tap kind"))?,
                reason: reason_from(reader.u8()?).ok_or_else(|| corrupt(what, "unknown reason"))?,
            }
        }
        9 => Command::Correct {
            account_id: reader.u64()?,
            operator_id: reader.u16()?,
            corrects: TxId(reader.u128()?),
            amount: Amount(reader.i64()?),
        },
        _ => return Err(corrupt(what, "unknown command")),
    })
}

fn read_tap(reader: &mut Reader<'_>) -> Result<Tap, LedgerError> {
    let account_id = reader.u64()?;
    let gate_id = reader.u32()?;
    let code = reader.array::<16>()?;
    let kind = reader.u8()?;
    let place = reader.u32()?;
    let offline = kind & TAP_OFFLINE != 0;
    let kind = tap_kind_from(kind & !TAP_OFFLINE, place)
        .ok_or_else(|| corrupt(reader.what, "unknown tap kind"))?;
    Ok(Tap {
        account_id,
        gate_id,
        code,
        kind,
        offline,
        concessions: 0,
    })
}

fn read_postings(reader: &mut Reader<'_>) -> Result<Vec<Posting>, LedgerError> {
    let what = "transaction record";
    let count = usize::from(reader.u8()?);
    if count > POSTINGS_PER_TRANSACTION_MAX {
        return Err(corrupt(what, "too many postings"));
    }
    let mut postings = Vec::with_capacity(count);
    for _ in 0..count {
        let account = decode_account_key(reader.take(ACCOUNT_KEY_LEN)?)?;
        postings.push(Posting {
            account,
            amount: Amount(reader.i64()?),
        });
    }
    if !postings_sum_to_zero(&postings) {
        return Err(corrupt(what, "postings do not sum to zero"));
    }
    Ok(postings)
}

fn read_journey(reader: &mut Reader<'_>) -> Result<Option<Journey>, LedgerError> {
    let what = "transaction record";
    Ok(match reader.u8()? {
        0 => None,
        1 => {
            let id = reader.u64()?;
            let (entry_station, entered_at) = match reader.u8()? {
                0 => (None, None),
                1 => (Some(reader.u32()?), Some(UnixMillis(reader.u64()?))),
                _ => return Err(corrupt(what, "bad journey entry flag")),
            };
            Some(Journey {
                id,
                entry_station,
                entered_at,
            })
        }
        _ => return Err(corrupt(what, "bad journey flag")),
    })
}

/// The key of anything keyed by rider (`deny`, and `travel` before storage format 7).
pub fn rider_key(account_id: u64) -> [u8; 8] {
    account_id.to_be_bytes()
}

/// The rider a rider key names.
pub fn decode_rider_key(key: &[u8]) -> Result<u64, LedgerError> {
    decode_sequence(key, "rider key")
}

/// The value version of a travel state that ends with the latest step's time.
const TRAVEL_VERSION_WITH_LATEST_STEP: u8 = 2;
/// The value version of a travel state and a rider step that hold the rider's week and
/// month totals (storage format 6).
const VERSION_WITH_TOTALS: u8 = 3;

/// A rider's travel state: value version 3, the rider's totals, the open journey and the
/// latest step's time.
pub fn encode_travel(travel: &Travel) -> Vec<u8> {
    let mut writer = Writer::default();
    writer.u8(VERSION_WITH_TOTALS);
    write_totals(&mut writer, &travel.totals);
    write_open_journey(&mut writer, travel.open_journey);
    writer.u64(travel.latest_step_at.0);
    writer.0
}

/// Reads a rider's travel state. A version 1 or 2 state (before week and month totals)
/// holds the day's total and last trip only: its week and month totals start at zero. A
/// version 1 state (before offline taps) has no latest step time: its last trip's start
/// or open journey's entry stands in for it.
pub fn decode_travel(bytes: &[u8]) -> Result<Travel, LedgerError> {
    let what = "travel state";
    let mut reader = Reader::new(bytes, what);
    let version = reader.u8()?;
    let totals = match version {
        VERSION_WITH_TOTALS => read_totals(&mut reader)?,
        VALUE_VERSION | TRAVEL_VERSION_WITH_LATEST_STEP => read_day_totals(&mut reader)?,
        _ => return Err(corrupt(what, "unknown value version")),
    };
    let open_journey = read_open_journey(&mut reader, version)?;
    let latest_step_at = if version == VALUE_VERSION {
        let entered_at = open_journey.map(|open| open.entered_at);
        totals
            .last_trip_started_at
            .max(entered_at)
            .unwrap_or_default()
    } else {
        UnixMillis(reader.u64()?)
    };
    reader.end()?;
    Ok(Travel {
        totals,
        open_journey,
        latest_step_at,
    })
}

/// A rider's totals: day (4), week (4), month (4), charged today, bus today, charged this
/// week, bus this week, tier spend this month (8 each, signed), then the last trip's and
/// the hopper's start (0, or 1 and the time (8)).
fn write_totals(writer: &mut Writer, totals: &RiderTotals) {
    writer.u32(totals.periods.day);
    writer.u32(totals.periods.week);
    writer.u32(totals.periods.month);
    for amount in [
        totals.charged_today,
        totals.bus_today,
        totals.charged_week,
        totals.bus_week,
        totals.tier_spend_month,
    ] {
        writer.i64(amount.0);
    }
    for time in [totals.last_trip_started_at, totals.hopper_started_at] {
        write_optional_time(writer, time);
    }
}

fn read_totals(reader: &mut Reader) -> Result<RiderTotals, LedgerError> {
    let periods = Periods {
        day: reader.u32()?,
        week: reader.u32()?,
        month: reader.u32()?,
    };
    Ok(RiderTotals {
        periods,
        charged_today: Amount(reader.i64()?),
        bus_today: Amount(reader.i64()?),
        charged_week: Amount(reader.i64()?),
        bus_week: Amount(reader.i64()?),
        tier_spend_month: Amount(reader.i64()?),
        last_trip_started_at: read_optional_time(reader)?,
        hopper_started_at: read_optional_time(reader)?,
    })
}

/// The totals of a version 1 or 2 travel state: the day (4), charged that day (8), the
/// last trip's start. Its week and month are the day's (so that the next step of that
/// week or month does not start them afresh), their totals zero.
fn read_day_totals(reader: &mut Reader) -> Result<RiderTotals, LedgerError> {
    let day = reader.u32()?;
    Ok(RiderTotals {
        periods: periods_of_day(day),
        charged_today: Amount(reader.i64()?),
        last_trip_started_at: read_optional_time(reader)?,
        ..RiderTotals::default()
    })
}

/// A time or none: 0, or 1 and the time (8).
fn write_optional_time(writer: &mut Writer, time: Option<UnixMillis>) {
    match time {
        Some(at) => {
            writer.u8(1);
            writer.u64(at.0);
        }
        None => writer.u8(0),
    }
}

fn read_optional_time(reader: &mut Reader) -> Result<Option<UnixMillis>, LedgerError> {
    match reader.u8()? {
        0 => Ok(None),
        1 => Ok(Some(UnixMillis(reader.u64()?))),
        _ => Err(corrupt(reader.what, "bad time flag")),
    }
}

/// An open journey, or none: 0, or 1 and its id (8), station (4), entry time (8) and
/// (value version 3) the entry's concession bits (1).
fn write_open_journey(writer: &mut Writer, open: Option<OpenJourney>) {
    match open {
        Some(open) => {
            writer.u8(1);
            writer.u64(open.id);
            writer.u32(open.station);
            writer.u64(open.entered_at.0);
            writer.u8(open.concessions);
        }
        None => writer.u8(0),
    }
}

/// Reads an open journey of a value of `version` (before version 3: no concession bits).
fn read_open_journey(
    reader: &mut Reader<'_>,
    version: u8,
) -> Result<Option<OpenJourney>, LedgerError> {
    Ok(match reader.u8()? {
        0 => None,
        1 => Some(OpenJourney {
            id: reader.u64()?,
            station: reader.u32()?,
            entered_at: UnixMillis(reader.u64()?),
            concessions: if version >= VERSION_WITH_TOTALS {
                reader.u8()?
            } else {
                0
            },
        }),
        _ => return Err(corrupt(reader.what, "bad open journey flag")),
    })
}

/// The key of a rider's step in `rider_steps`: rider, scan time, sequence, so that a
/// rider's steps sort in scan order.
pub fn rider_step_key(account_id: u64, time: UnixMillis, sequence: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..8].copy_from_slice(&account_id.to_be_bytes());
    key[8..16].copy_from_slice(&time.0.to_be_bytes());
    key[16..].copy_from_slice(&sequence.to_be_bytes());
    key
}

/// A rider's step: kind (1 entry, 2 exit, 3 bus: station or route widened to 8 bytes; 4
/// journey close: the journey id), operator, what was charged, the journey open after.
pub fn encode_rider_step(recorded: &RecordedStep) -> Vec<u8> {
    let mut writer = Writer::default();
    writer.u8(VERSION_WITH_TOTALS);
    let (kind, place) = match recorded.step.kind {
        StepKind::Tap(kind) => {
            let (code, place) = tap_kind_code(kind);
            (code, u64::from(place))
        }
        StepKind::Close { journey_id } => (4, journey_id),
    };
    writer.u8(kind);
    writer.u64(place);
    writer.u16(recorded.operator_id);
    writer.i64(recorded.charged.0);
    write_open_journey(&mut writer, recorded.open_after);
    write_totals(&mut writer, &recorded.totals_after);
    writer.u8(recorded.step.concessions);
    writer.0
}

/// Reads a rider's step from its key and value.
pub fn decode_rider_step(key: &[u8], value: &[u8]) -> Result<(u64, RecordedStep), LedgerError> {
    let what = "rider step";
    let key = <[u8; 24]>::try_from(key).map_err(|_| corrupt(what, "key is not 24 bytes"))?;
    let number = |at: usize| u64::from_be_bytes(key[at..at + 8].try_into().unwrap_or_default());
    let (account_id, time, sequence) = (number(0), UnixMillis(number(8)), number(16));
    let mut reader = Reader::new(value, what);
    let version = reader.u8()?;
    if version != VALUE_VERSION && version != VERSION_WITH_TOTALS {
        return Err(corrupt(what, "unknown value version"));
    }
    let code = reader.u8()?;
    let place = reader.u64()?;
    let kind = match code {
        4 => StepKind::Close { journey_id: place },
        _ => {
            let place = u32::try_from(place).map_err(|_| corrupt(what, "place out of range"))?;
            StepKind::Tap(tap_kind_from(code, place).ok_or_else(|| corrupt(what, "unknown kind"))?)
        }
    };
    let operator_id = reader.u16()?;
    let charged = Amount(reader.i64()?);
    let open_after = read_open_journey(&mut reader, version)?;
    // A version 1 step (storage format 5) has no totals (a walk from it starts them
    // afresh) and no concession bits.
    let (totals_after, concessions) = if version == VERSION_WITH_TOTALS {
        (read_totals(&mut reader)?, reader.u8()?)
    } else {
        (RiderTotals::default(), 0)
    };
    reader.end()?;
    let step = Step {
        time,
        sequence,
        kind,
        concessions,
    };
    Ok((
        account_id,
        RecordedStep {
            step,
            operator_id,
            charged,
            open_after,
            totals_after,
        },
    ))
}

/// The key of an open journey in the sweeper's index: entry time, then rider, so that a
/// scan from the start finds the oldest first.
pub fn open_journey_key(entered_at: UnixMillis, account_id: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&entered_at.0.to_be_bytes());
    key[8..].copy_from_slice(&account_id.to_be_bytes());
    key
}

/// Reads an open-journey index entry: (entry time, rider, journey id).
pub fn decode_open_journey(
    key: &[u8],
    value: &[u8],
) -> Result<(UnixMillis, u64, u64), LedgerError> {
    let mut reader = Reader::new(key, "open journey key");
    let entered_at = UnixMillis(reader.u64()?);
    let account_id = reader.u64()?;
    reader.end()?;
    Ok((
        entered_at,
        account_id,
        decode_sequence(value, "open journey")?,
    ))
}

/// The key of a code's first use: its fingerprint.
pub fn code_key(code: &CodeFingerprint) -> [u8; 16] {
    *code
}

/// A code's first use.
pub fn encode_code_use(used: &CodeUse) -> [u8; 20] {
    let mut value = [0u8; 20];
    value[..4].copy_from_slice(&used.gate_id.to_be_bytes());
    value[4..12].copy_from_slice(&used.time.0.to_be_bytes());
    value[12..].copy_from_slice(&used.sequence.to_be_bytes());
    value
}

/// Reads a code's first use.
pub fn decode_code_use(bytes: &[u8]) -> Result<CodeUse, LedgerError> {
    let mut reader = Reader::new(bytes, "code use");
    let used = CodeUse {
        gate_id: reader.u32()?,
        time: UnixMillis(reader.u64()?),
        sequence: reader.u64()?,
    };
    reader.end()?;
    Ok(used)
}

fn status_code(status: AccountStatus) -> u8 {
    match status {
        AccountStatus::Active => 0,
        AccountStatus::Denied => 1,
        AccountStatus::Closed => 2,
    }
}

fn status_from(code: u8) -> Option<AccountStatus> {
    match code {
        0 => Some(AccountStatus::Active),
        1 => Some(AccountStatus::Denied),
        2 => Some(AccountStatus::Closed),
        _ => None,
    }
}

fn refusal_code(refusal: Refusal) -> u8 {
    // Codes start at 1: 0 means accepted. Position in `Refusal::ALL` is the stored code,
    // so new refusals are only ever appended there.
    Refusal::ALL
        .iter()
        .position(|r| *r == refusal)
        .map(|index| index as u8 + 1)
        .unwrap_or(u8::MAX)
}

fn refusal_from(code: u8) -> Option<Refusal> {
    Refusal::ALL.get(usize::from(code).checked_sub(1)?).copied()
}

/// The version byte of a shard log entry (see [`encode_log_entry`]).
pub const LOG_ENTRY_VERSION: u8 = 1;
/// Most requests in one shard log entry: its count is a `u16`.
pub const LOG_ENTRY_REQUESTS_MAX: usize = u16::MAX as usize;
/// Most bytes one request takes in a log entry (a fare correction: id, time, kind,
/// account, operator, corrected id, amount; a tap takes one byte less), so that a group
/// commit's limit can be set under the log's message size limit.
pub const LOG_ENTRY_REQUEST_BYTES_MAX: usize = 16 + 8 + 1 + 8 + 2 + 16 + 8;

/// One message of a shard's log in cluster mode: one group commit's requests, in the order
/// the leader applied them. Layout: version `u8` (1), count `u16`, then each request as
/// id `u128`, time `u64` and its command (the layout of a transaction record's command).
/// Replaying the requests in order on the state before them gives the state after them.
pub fn encode_log_entry(requests: &[Request]) -> Vec<u8> {
    assert!(
        requests.len() <= LOG_ENTRY_REQUESTS_MAX,
        "{} requests in one log entry; at most {LOG_ENTRY_REQUESTS_MAX}",
        requests.len()
    );
    let mut writer = Writer::default();
    writer.u8(LOG_ENTRY_VERSION);
    writer.u16(requests.len() as u16);
    for request in requests {
        write_request(&mut writer, request);
    }
    writer.0
}

/// Reads a shard log entry; see [`encode_log_entry`]. An entry of another version, or one
/// that does not parse, is an error naming what was found: a replica never guesses.
pub fn decode_log_entry(bytes: &[u8]) -> Result<Vec<Request>, LedgerError> {
    let what = "shard log entry";
    let mut reader = Reader::new(bytes, what);
    if reader.u8()? != LOG_ENTRY_VERSION {
        return Err(corrupt(what, "unknown log entry version"));
    }
    let count = usize::from(reader.u16()?);
    let mut requests = Vec::with_capacity(count);
    for _ in 0..count {
        requests.push(read_request(&mut reader)?);
    }
    reader.end()?;
    Ok(requests)
}

/// A request forwarded to a shard's leader: version `u8` (1) and the request as in a log
/// entry.
pub fn encode_request(request: &Request) -> Vec<u8> {
    let mut writer = Writer::default();
    writer.u8(LOG_ENTRY_VERSION);
    write_request(&mut writer, request);
    writer.0
}

/// Reads a forwarded request; see [`encode_request`].
pub fn decode_request(bytes: &[u8]) -> Result<Request, LedgerError> {
    let mut reader = Reader::new(bytes, "forwarded request");
    if reader.u8()? != LOG_ENTRY_VERSION {
        return Err(corrupt("forwarded request", "unknown version"));
    }
    let request = read_request(&mut reader)?;
    reader.end()?;
    Ok(request)
}

/// A leader's answer to a forwarded request: version `u8` (1), then `0`, the sequence
/// `u64`, the replay flag `u8` and the transaction record; or `1`, the error's code and
/// message, each a `u16` length and UTF-8.
pub fn encode_answer(answer: &Result<Receipt, LedgerError>) -> Vec<u8> {
    let mut writer = Writer::default();
    writer.u8(LOG_ENTRY_VERSION);
    match answer {
        Ok(receipt) => {
            writer.u8(0);
            writer.u64(receipt.sequence);
            writer.u8(u8::from(receipt.replay));
            writer.u32(receipt.corrections);
            writer.bytes(&encode_record(&receipt.record));
        }
        Err(err) => {
            writer.u8(1);
            for text in [err.code().to_string(), err.to_string()] {
                let text = cut_at_char(&text, usize::from(u16::MAX));
                writer.u16(text.len() as u16);
                writer.bytes(text.as_bytes());
            }
        }
    }
    writer.0
}

/// Reads a leader's answer; see [`encode_answer`]. The leader's error comes back as
/// [`LedgerError::Remote`] with its code and message.
pub fn decode_answer(bytes: &[u8]) -> Result<Result<Receipt, LedgerError>, LedgerError> {
    let what = "leader's answer";
    let mut reader = Reader::new(bytes, what);
    if reader.u8()? != LOG_ENTRY_VERSION {
        return Err(corrupt(what, "unknown version"));
    }
    match reader.u8()? {
        0 => {
            let sequence = reader.u64()?;
            let replay = match reader.u8()? {
                0 => false,
                1 => true,
                _ => return Err(corrupt(what, "bad replay flag")),
            };
            let corrections = reader.u32()?;
            let record = decode_record(reader.bytes)?;
            Ok(Ok(Receipt {
                sequence,
                record,
                replay,
                corrections,
            }))
        }
        1 => {
            let mut text = || -> Result<String, LedgerError> {
                let len = usize::from(reader.u16()?);
                String::from_utf8(reader.take(len)?.to_vec())
                    .map_err(|_| corrupt(what, "error text is not UTF-8"))
            };
            let code = text()?;
            let message = text()?;
            reader.end()?;
            Ok(Err(LedgerError::Remote { code, message }))
        }
        _ => Err(corrupt(what, "unknown answer kind")),
    }
}

/// The longest prefix of `text` of at most `bytes_max` bytes that ends on a character.
fn cut_at_char(text: &str, bytes_max: usize) -> &str {
    let mut end = text.len().min(bytes_max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn write_request(writer: &mut Writer, request: &Request) {
    writer.u128(request.id.0);
    writer.u64(request.time.0);
    write_command(writer, &request.command);
}

fn read_request(reader: &mut Reader<'_>) -> Result<Request, LedgerError> {
    Ok(Request {
        id: TxId(reader.u128()?),
        time: UnixMillis(reader.u64()?),
        command: read_command(reader)?,
    })
}

/// A corruption error for a value that does not parse.
pub fn corrupt(what: &'static str, problem: &'static str) -> LedgerError {
    LedgerError::Corrupt { what, problem }
}

#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn bytes(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }
    fn u8(&mut self, value: u8) {
        self.0.push(value);
    }
    fn u16(&mut self, value: u16) {
        self.bytes(&value.to_be_bytes());
    }
    fn u32(&mut self, value: u32) {
        self.bytes(&value.to_be_bytes());
    }
    fn u64(&mut self, value: u64) {
        self.bytes(&value.to_be_bytes());
    }
    fn i64(&mut self, value: i64) {
        self.bytes(&value.to_be_bytes());
    }
    fn u128(&mut self, value: u128) {
        self.bytes(&value.to_be_bytes());
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Reader { bytes, what }
    }
    fn take(&mut self, count: usize) -> Result<&'a [u8], LedgerError> {
        if self.bytes.len() < count {
            return Err(corrupt(self.what, "truncated"));
        }
        let (head, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], LedgerError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn version(&mut self) -> Result<(), LedgerError> {
        if self.u8()? != VALUE_VERSION {
            return Err(corrupt(self.what, "unknown value version"));
        }
        Ok(())
    }
    fn u8(&mut self) -> Result<u8, LedgerError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, LedgerError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, LedgerError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, LedgerError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn i64(&mut self) -> Result<i64, LedgerError> {
        Ok(i64::from_be_bytes(self.array()?))
    }
    fn u128(&mut self) -> Result<u128, LedgerError> {
        Ok(u128::from_be_bytes(self.array()?))
    }
    /// Everything not read yet.
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }
    fn end(&self) -> Result<(), LedgerError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(corrupt(self.what, "trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_entry_of_another_version_or_cut_short_is_refused_by_name() {
        let entry = encode_log_entry(&[Request {
            id: TxId(1),
            time: UnixMillis(2),
            command: Command::TopUp {
                account_id: 3,
                amount: Amount(4),
            },
        }]);
        let mut other_version = entry.clone();
        other_version[0] = 2;
        let refused = decode_log_entry(&other_version).unwrap_err().to_string();
        assert!(
            refused.contains("shard log entry: unknown log entry version"),
            "{refused}"
        );
        let cut = decode_log_entry(&entry[..entry.len() - 1])
            .unwrap_err()
            .to_string();
        assert!(cut.contains("shard log entry: truncated"), "{cut}");
        let mut longer = entry.clone();
        longer.push(0);
        assert!(decode_log_entry(&longer).is_err());
        assert_eq!(
            decode_log_entry(&[LOG_ENTRY_VERSION, 0, 0]).unwrap(),
            Vec::new()
        );
    }

    #[test]
    fn a_leaders_long_error_is_cut_on_a_character_and_still_decodes() {
        // "ledger invariant broken: " (25 bytes) and 65,509 more make 65,534; the next
        // character is two bytes, across the 65,535-byte limit.
        let text = format!("{}{}", "a".repeat(65_509), "é".repeat(40));
        let answer = encode_answer(&Err(LedgerError::Invariant(text)));
        match decode_answer(&answer).unwrap() {
            Err(LedgerError::Remote { code, message }) => {
                assert_eq!(code, "invariant");
                assert_eq!(message.len(), 65_534);
                assert!(message.ends_with('a'));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(cut_at_char("aé", 2), "a");
        assert_eq!(cut_at_char("aé", 3), "aé");
    }

    #[test]
    fn a_leaders_answer_round_trips_with_its_error_code() {
        let receipt = Receipt {
            sequence: 42,
            record: Record {
                request: Request {
                    id: TxId(9),
                    time: UnixMillis(10),
                    command: Command::TopUp {
                        account_id: 3,
                        amount: Amount(500),
                    },
                },
                outcome: Outcome::Accepted,
                postings: vec![
                    Posting {
                        account: AccountRef::Rider(3),
                        amount: Amount(500),
                    },
                    Posting {
                        account: AccountRef::ProviderClearing(1),
                        amount: Amount(-500),
                    },
                ],
                rider_balance_after: Some(Amount(500)),
                journey: None,
            },
            replay: true,
            corrections: 3,
        };
        let answer = decode_answer(&encode_answer(&Ok(receipt.clone()))).unwrap();
        assert_eq!(answer.unwrap(), receipt);
        let conflict = LedgerError::Conflict {
            id: TxId(9),
            field: "amount",
        };
        match decode_answer(&encode_answer(&Err(conflict))).unwrap() {
            Err(LedgerError::Remote { code, message }) => {
                assert_eq!(code, "id_conflict");
                assert_eq!(
                    message,
                    "transaction 00000000000000000000000000000009 was already used with a different amount"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_command_round_trips() {
        let commands = [
            Command::OpenAccount {
                account_id: 7,
                provider_id: 2,
                credit_limit: Amount(500),
            },
            Command::SetStatus {
                account_id: 7,
                status: AccountStatus::Denied,
            },
            Command::TopUp {
                account_id: 7,
                amount: Amount(1_000),
            },
            Command::Charge {
                account_id: 7,
                operator_id: 3,
                amount: Amount(250),
            },
            Command::Refund {
                original: TxId(u128::MAX - 5),
            },
            Command::Adjust {
                account_id: 7,
                operator_id: 3,
                amount: Amount(-40),
            },
            Command::Tap(Tap {
                account_id: 7,
                gate_id: 12,
                code: [9; 16],
                kind: TapKind::MetroEntry { station: 101 },
                offline: false,
                concessions: 0,
            }),
            Command::Tap(Tap {
                account_id: 7,
                gate_id: 13,
                code: [8; 16],
                kind: TapKind::MetroExit { station: 104 },
                offline: true,
                concessions: 0,
            }),
            Command::Tap(Tap {
                account_id: 7,
                gate_id: 14,
                code: [7; 16],
                kind: TapKind::Bus { route: 501 },
                offline: true,
                concessions: 0,
            }),
            Command::CloseJourney {
                account_id: 7,
                journey_id: 5,
            },
            Command::Correct {
                account_id: 7,
                operator_id: 3,
                corrects: TxId(u128::MAX - 9),
                amount: Amount(-120),
            },
            Command::LostFare {
                gate_id: 15,
                kind: TapKind::MetroExit { station: 104 },
                reason: Reason::BadCodeSignature,
            },
        ];
        // A shard log entry carries every command, in order, and nothing else.
        let requests: Vec<Request> = commands
            .iter()
            .enumerate()
            .map(|(index, command)| Request {
                id: TxId(u128::MAX - index as u128),
                time: UnixMillis(1_700_000_000_000 + index as u64),
                command: *command,
            })
            .collect();
        let entry = encode_log_entry(&requests);
        assert_eq!(entry[..3], [LOG_ENTRY_VERSION, 0, requests.len() as u8]);
        assert!(entry.len() <= 3 + requests.len() * LOG_ENTRY_REQUEST_BYTES_MAX);
        assert_eq!(decode_log_entry(&entry).unwrap(), requests);
        for request in &requests {
            assert_eq!(decode_request(&encode_request(request)).unwrap(), *request);
        }
        for (index, command) in commands.into_iter().enumerate() {
            let record = Record {
                request: Request {
                    id: TxId(index as u128),
                    time: UnixMillis(99),
                    command,
                },
                outcome: match index % 3 {
                    0 => Outcome::Accepted,
                    1 => Outcome::Refused(Refusal::JourneyNotExpired),
                    _ => Outcome::Duplicate { of: 3 },
                },
                postings: vec![
                    Posting {
                        account: AccountRef::Rider(7),
                        amount: Amount(-250),
                    },
                    Posting {
                        account: AccountRef::OperatorRevenue(3),
                        amount: Amount(250),
                    },
                ],
                rider_balance_after: Some(Amount(-250)),
                journey: match index % 3 {
                    0 => None,
                    1 => Some(Journey {
                        id: 4,
                        entry_station: None,
                        entered_at: None,
                    }),
                    _ => Some(Journey {
                        id: 4,
                        entry_station: Some(101),
                        entered_at: Some(UnixMillis(77)),
                    }),
                },
            };
            assert_eq!(decode_record(&encode_record(&record)).unwrap(), record);
            let bytes = encode_record(&record);
            for len in 0..bytes.len() {
                assert!(decode_record(&bytes[..len]).is_err(), "prefix {len} parsed");
            }
        }
    }

    #[test]
    fn refusal_codes_are_stable() {
        // Stored codes: changing these breaks existing data directories.
        assert_eq!(refusal_code(Refusal::UnknownAccount), 1);
        assert_eq!(refusal_code(Refusal::BalanceNotZero), 11);
        for refusal in Refusal::ALL {
            assert_eq!(refusal_from(refusal_code(refusal)), Some(refusal));
        }
        assert_eq!(refusal_from(0), None);
        assert_eq!(refusal_code(Refusal::JourneyNotExpired), 16);
        assert_eq!(refusal_from(17), None);
        assert!(Refusal::ALL.len() < usize::from(OUTCOME_DUPLICATE));
        // Lost fares store a code's reason by its place: pinned, as stored bytes are.
        assert_eq!(reason_code(Reason::TooLong), 1);
        assert_eq!(reason_code(Reason::WeakDeviceKey), 10);
        assert_eq!(reason_code(Reason::AccountDenied), 14);
        for reason in Reason::ALL {
            assert_eq!(reason_from(reason_code(reason)), Some(reason));
        }
        assert_eq!(reason_from(0), None);
        assert_eq!(reason_from(15), None);
    }

    /// A tap without concession bits keeps the bytes it had before concessions (tag 7);
    /// one with them is tag 11 with the bits after the same fields.
    #[test]
    fn a_tap_with_concessions_is_tag_11_and_one_without_keeps_its_bytes() {
        let tap = Tap {
            account_id: 0x0102,
            gate_id: 3,
            code: [9; 16],
            kind: TapKind::Bus { route: 501 },
            offline: true,
            concessions: 0,
        };
        let mut plain = Writer::default();
        write_tap(&mut plain, &tap);
        let mut expected = vec![7, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 3];
        expected.extend([9; 16]);
        expected.extend([3 | 0x80, 0, 0, 0x01, 0xF5]);
        assert_eq!(plain.0, expected);
        let student = Tap {
            concessions: 0x01,
            ..tap
        };
        let mut with_bits = Writer::default();
        write_tap(&mut with_bits, &student);
        expected[0] = 11;
        expected.push(0x01);
        assert_eq!(with_bits.0, expected);
        let mut reader = Reader::new(&with_bits.0, "test");
        assert_eq!(read_command(&mut reader).unwrap(), Command::Tap(student));
        // Tag 11 naming no concession is corruption, not a second spelling of tag 7.
        let last = expected.len() - 1;
        expected[last] = 0;
        assert!(read_command(&mut Reader::new(&expected, "test")).is_err());
    }

    #[test]
    fn travel_state_round_trips() {
        let open = OpenJourney {
            id: 9,
            station: 100,
            entered_at: UnixMillis(6),
            concessions: 0x02,
        };
        let totals = RiderTotals {
            periods: Periods {
                day: 20_000,
                week: 2_857,
                month: 24_315,
            },
            charged_today: Amount(1_200),
            bus_today: Amount(175),
            charged_week: Amount(4_470),
            bus_week: Amount(350),
            tier_spend_month: Amount(10_400),
            last_trip_started_at: Some(UnixMillis(5)),
            hopper_started_at: Some(UnixMillis(4)),
        };
        let travel = Travel {
            totals,
            open_journey: Some(open),
            latest_step_at: UnixMillis(7),
        };
        for travel in [Travel::default(), travel] {
            assert_eq!(decode_travel(&encode_travel(&travel)).unwrap(), travel);
        }
    }

    /// A rider's account value carries the travel state after the account's 20 bytes
    /// (value version 2); a rider who has not travelled is a plain account (version 1),
    /// so that one state has one encoding, and every account reader reads both.
    #[test]
    fn a_rider_value_holds_the_account_then_the_travel_state() {
        let account = Account {
            status: AccountStatus::Denied,
            provider_id: 3,
            credit_limit: Amount(500),
            balance: Amount(-120),
        };
        let travel = Travel {
            open_journey: Some(OpenJourney {
                id: 9,
                station: 100,
                entered_at: UnixMillis(6),
                concessions: 0,
            }),
            latest_step_at: UnixMillis(6),
            ..Travel::default()
        };
        let plain = encode_account(&account);
        assert_eq!(encode_rider(&account, &Travel::default()), plain);
        assert_eq!(decode_rider(&plain).unwrap(), (account, Travel::default()));
        let with_travel = encode_rider(&account, &travel);
        let mut expected = vec![2u8];
        expected.extend_from_slice(&plain[1..]);
        expected.extend(encode_travel(&travel));
        assert_eq!(with_travel, expected);
        assert_eq!(decode_rider(&with_travel).unwrap(), (account, travel));
        assert_eq!(decode_account(&with_travel).unwrap(), account);
        for len in 0..with_travel.len() {
            assert!(matches!(
                decode_rider(&with_travel[..len]),
                Err(LedgerError::Corrupt { .. })
            ));
        }
        let mut unknown = with_travel;
        unknown[0] = 3;
        assert!(matches!(
            decode_rider(&unknown),
            Err(LedgerError::Corrupt { .. })
        ));
    }

    /// The bytes of a version 1 or 2 travel state: day 20,000, 1,200 charged, last trip at
    /// 5, journey 9 open at station 100 since 6, and (version 2) the latest step at 7.
    fn old_travel(version: u8) -> Vec<u8> {
        let mut bytes = vec![version];
        bytes.extend(20_000u32.to_be_bytes());
        bytes.extend(1_200i64.to_be_bytes());
        bytes.push(1);
        bytes.extend(5u64.to_be_bytes());
        bytes.push(1);
        bytes.extend(9u64.to_be_bytes());
        bytes.extend(100u32.to_be_bytes());
        bytes.extend(6u64.to_be_bytes());
        if version == 2 {
            bytes.extend(7u64.to_be_bytes());
        }
        bytes
    }

    #[test]
    fn travel_states_and_steps_before_format_6_read_with_their_day_totals_only() {
        let open = OpenJourney {
            id: 9,
            station: 100,
            entered_at: UnixMillis(6),
            concessions: 0,
        };
        // Day 20,000 is 2024-10-04, a Friday: week 2,857, month 2024 * 12 + 9.
        assert_eq!(
            periods_of_day(20_000),
            Periods {
                day: 20_000,
                week: 2_857,
                month: 24_297
            }
        );
        let day_only = RiderTotals {
            periods: periods_of_day(20_000),
            charged_today: Amount(1_200),
            last_trip_started_at: Some(UnixMillis(5)),
            ..RiderTotals::default()
        };
        let expected = |latest_step_at| Travel {
            totals: day_only,
            open_journey: Some(open),
            latest_step_at: UnixMillis(latest_step_at),
        };
        assert_eq!(decode_travel(&old_travel(2)).unwrap(), expected(7));
        // Before offline taps (version 1): the open journey's entry is the latest step.
        assert_eq!(decode_travel(&old_travel(1)).unwrap(), expected(6));
        let mut unknown = old_travel(2);
        unknown[0] = 4;
        assert!(decode_travel(&unknown).is_err());
        // A version 1 step: kind 4 (a close of journey 70), operator 1, charged -5, no
        // journey open after it; its totals start afresh.
        let mut bytes = vec![1, 4];
        bytes.extend(70u64.to_be_bytes());
        bytes.extend(1u16.to_be_bytes());
        bytes.extend((-5i64).to_be_bytes());
        bytes.push(0);
        let step = RecordedStep {
            step: Step {
                time: UnixMillis(1_000),
                sequence: 77,
                kind: StepKind::Close { journey_id: 70 },
                concessions: 0,
            },
            operator_id: 1,
            charged: Amount(-5),
            open_after: None,
            totals_after: RiderTotals::default(),
        };
        let key = rider_step_key(42, step.step.time, step.step.sequence);
        assert_eq!(decode_rider_step(&key, &bytes).unwrap(), (42, step));
        let step = RecordedStep {
            step: Step {
                kind: StepKind::Tap(TapKind::Bus { route: 501 }),
                concessions: 0x04,
                ..step.step
            },
            open_after: Some(open),
            totals_after: day_only,
            ..step
        };
        assert_eq!(
            decode_rider_step(&key, &encode_rider_step(&step)).unwrap(),
            (42, step)
        );
    }

    #[test]
    fn code_uses_round_trip() {
        let used = CodeUse {
            gate_id: 3,
            time: UnixMillis(4),
            sequence: 5,
        };
        assert_eq!(decode_code_use(&encode_code_use(&used)).unwrap(), used);
    }

    #[test]
    fn truncated_and_padded_values_are_corruption_not_panics() {
        let account = Account {
            status: AccountStatus::Active,
            provider_id: 1,
            credit_limit: Amount(0),
            balance: Amount(5),
        };
        let bytes = encode_account(&account);
        for len in 0..bytes.len() {
            assert!(matches!(
                decode_account(&bytes[..len]),
                Err(LedgerError::Corrupt { .. })
            ));
        }
        let mut padded = bytes.clone();
        padded.push(0);
        assert!(matches!(
            decode_account(&padded),
            Err(LedgerError::Corrupt { .. })
        ));
        assert_eq!(decode_account(&bytes).unwrap(), account);
    }
}
