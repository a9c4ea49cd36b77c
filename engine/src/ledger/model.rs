//! The ledger's vocabulary: accounts, transaction ids, commands, outcomes and receipts.
//! Plain data: no storage, no clock.

use crate::clock::UnixMillis;
use crate::fares::RiderTotals;
use crate::money::Amount;

/// A 128-bit transaction id chosen by the caller (a gate picks one per physical scan and
/// reuses it on every retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TxId(pub u128);

impl std::fmt::Display for TxId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Which account a posting moves money in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AccountRef {
    /// A rider's account, by the account id carried in the rider's credential.
    Rider(u64),
    /// A transit operator's fare revenue.
    OperatorRevenue(u16),
    /// A payment provider's clearing account: what the provider has funded or owes.
    ProviderClearing(u16),
}

/// Whether a rider may travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccountStatus {
    /// May travel.
    Active,
    /// On the deny list: charges are refused; top-ups and refunds still land.
    Denied,
    /// Closed for good (only with a zero balance).
    Closed,
}

/// An account's stored state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    /// Whether it may be charged.
    pub status: AccountStatus,
    /// The rider's funding provider (for a provider clearing account, the provider itself;
    /// for an operator account, 0).
    pub provider_id: u16,
    /// How far below zero the balance may go ("ride first, pay later"). Zero for the
    /// operator and provider accounts, which have no limit checks.
    pub credit_limit: Amount,
    /// The balance: the sum of the account's postings.
    pub balance: Amount,
}

impl Account {
    /// Whether a gate must refuse the rider: the account is deny-listed or closed, or in
    /// debt (below its credit limit: a metro exit is charged past it, "ride first, pay
    /// later", and so will taps a gate let through offline).
    pub fn refused_at_gates(&self) -> bool {
        self.status != AccountStatus::Active
            || i128::from(self.balance.0) < -i128::from(self.credit_limit.0)
    }
}

pub use crate::fares::{RouteId, StationId, TapKind};

/// The first 16 bytes of the SHA-256 of a rider code's bytes.
pub type CodeFingerprint = [u8; 16];

/// A verified rider code scanned at a gate. The gate service verifies the code before it
/// submits the tap; the ledger decides the rest (code reuse, account, journey, fare).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tap {
    /// The rider's account, from the verified credential.
    pub account_id: u64,
    /// The gate (or bus reader) that scanned the code.
    pub gate_id: u32,
    /// The scanned code's fingerprint: a code is used once, at one gate.
    pub code: CodeFingerprint,
    /// Entry, exit or bus, and where.
    pub kind: TapKind,
    /// Whether the gate decided alone (its link was down) and let the rider through: the
    /// tap is then charged even past the credit limit or on a deny-listed account (the
    /// operator carried the risk; the account goes into debt), and arrives late.
    pub offline: bool,
    /// The rider's concession bits, from the verified code's credential flags
    /// (`fares::CONCESSION_BITS`; 0 for none).
    pub concessions: u8,
}

/// A metro journey a tap belongs to, as recorded with the tap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Journey {
    /// The journey's id: the log sequence of the tap that opened it (for an exit with no
    /// entry or a bus ride, the tap's own sequence).
    pub id: u64,
    /// The station where it was entered, when there was an entry.
    pub entry_station: Option<StationId>,
    /// When it was entered, when there was an entry.
    pub entered_at: Option<UnixMillis>,
}

/// A rider's travel state: the open journey, if any, and what the caps, tiers, transfer
/// discount and hopper need (`fares::RiderTotals`). Stored in the rider's account value
/// (`codec::encode_rider`), changed only by taps and journey closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Travel {
    /// What the rider paid in the current service day, week and month.
    pub totals: RiderTotals,
    /// The metro journey entered and not yet exited.
    pub open_journey: Option<OpenJourney>,
    /// The scan time of the rider's latest accepted tap or journey close: a tap scanned
    /// before it arrives late and re-prices its service day (`ledger::travel`).
    pub latest_step_at: UnixMillis,
}

/// A metro journey with an entry and no exit yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenJourney {
    /// The journey id (the entry tap's sequence).
    pub id: u64,
    /// The entry station.
    pub station: StationId,
    /// The entry time.
    pub entered_at: UnixMillis,
    /// The rider's concession bits at the entry: the journey is priced with them.
    pub concessions: u8,
}

/// Where and when a code was first used, to tell a gate retrying from a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeUse {
    /// The gate that first scanned it.
    pub gate_id: u32,
    /// The scan time of that first tap.
    pub time: UnixMillis,
    /// The log sequence of that first tap.
    pub sequence: u64,
}

/// What a transaction asks the ledger to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Open a rider account with a zero balance.
    OpenAccount {
        /// The rider's account id.
        account_id: u64,
        /// The payment provider that funds it.
        provider_id: u16,
        /// How far below zero it may go.
        credit_limit: Amount,
    },
    /// Deny-list, clear, or close a rider account.
    SetStatus {
        /// The rider's account id.
        account_id: u64,
        /// The new status.
        status: AccountStatus,
    },
    /// Credit a rider from the provider's clearing account.
    TopUp {
        /// The rider's account id.
        account_id: u64,
        /// A positive amount.
        amount: Amount,
    },
    /// Charge a rider a fare, credited to an operator's revenue.
    Charge {
        /// The rider's account id.
        account_id: u64,
        /// The operator that earns the fare.
        operator_id: u16,
        /// Zero or more (a capped trip costs nothing but is still recorded).
        amount: Amount,
    },
    /// Reverse an accepted charge in full, with new postings.
    Refund {
        /// The charge to reverse.
        original: TxId,
    },
    /// A manual correction between a rider and an operator: a positive amount credits the
    /// rider, a negative one debits. No credit limit applies.
    Adjust {
        /// The rider's account id.
        account_id: u64,
        /// The operator on the other side.
        operator_id: u16,
        /// Non-zero.
        amount: Amount,
    },
    /// A rider's verified code at a gate.
    Tap(Tap),
    /// Close a metro journey that was entered and never exited within the fares file's
    /// limit, charging the maximum fare (sent by the journey sweeper).
    CloseJourney {
        /// The rider's account id.
        account_id: u64,
        /// The journey to close.
        journey_id: u64,
    },
    /// A tap a gate let through while offline that the engine found forged (its code
    /// failed verification at its scan time): nothing is charged, and the fare is the
    /// operator's revenue loss, recorded with its reason. No rider: a forged code names
    /// none that can be trusted.
    LostFare {
        /// The gate that let the rider through.
        gate_id: u32,
        /// Entry, exit or bus, and where.
        kind: TapKind,
        /// Why the code failed.
        reason: crate::token::Reason,
    },
    /// A fare corrected after a late tap re-priced the rider's day: made by the ledger
    /// itself, never sent by a caller. A positive amount credits the rider (the fare was
    /// too high), a negative one debits (too low). No credit limit applies.
    Correct {
        /// The rider's account id.
        account_id: u64,
        /// The operator that earned the corrected fare.
        operator_id: u16,
        /// The transaction whose fare it corrects.
        corrects: TxId,
        /// Non-zero.
        amount: Amount,
    },
}

impl Command {
    /// The command's kind, as named in statements and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::OpenAccount { .. } => "open_account",
            Command::SetStatus { .. } => "set_status",
            Command::TopUp { .. } => "top_up",
            Command::Charge { .. } => "charge",
            Command::Refund { .. } => "refund",
            Command::Adjust { .. } => "adjust",
            Command::Tap(Tap {
                kind: TapKind::MetroEntry { .. },
                ..
            }) => "metro_entry",
            Command::Tap(Tap {
                kind: TapKind::MetroExit { .. },
                ..
            }) => "metro_exit",
            Command::Tap(Tap {
                kind: TapKind::Bus { .. },
                ..
            }) => "bus",
            Command::CloseJourney { .. } => "close_journey",
            Command::Correct { .. } => "fare_correction",
            Command::LostFare { .. } => "lost_fare",
        }
    }
}

/// One request to the ledger: an id, the caller's time, and a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// The idempotency key.
    pub id: TxId,
    /// When the caller made the request (a gate's scan time). Part of the content.
    pub time: UnixMillis,
    /// What to do.
    pub command: Command,
}

impl Request {
    /// The first field in which two requests with the same id differ, if any. Used to
    /// name the field in a conflict.
    ///
    /// The time is content only where the caller chose it (a gate's scan time, a charge's
    /// time, the sweeper's derived time). Operations commands are stamped with the
    /// server's clock when they arrive, so a retry a second later is the same request.
    pub fn first_difference(&self, other: &Request) -> Option<&'static str> {
        let caller_timed = matches!(
            self.command,
            Command::Charge { .. }
                | Command::Tap(_)
                | Command::CloseJourney { .. }
                | Command::Correct { .. }
                | Command::LostFare { .. }
        );
        if caller_timed && self.time != other.time {
            return Some("time");
        }
        // Each step answers only for a pair of commands of the kinds it knows.
        let (mine, theirs) = (self.command, other.command);
        account_command_difference(mine, theirs)
            .or_else(|| money_command_difference(mine, theirs))
            .or_else(|| travel_command_difference(mine, theirs))
            .unwrap_or(Some("kind"))
    }
}

/// For two account commands of one kind (open, set status, top up), `Some` of their
/// first differing field, if any; `None` for any other pair.
fn account_command_difference(mine: Command, theirs: Command) -> Option<Option<&'static str>> {
    use Command::{OpenAccount, SetStatus, TopUp};
    let difference = match (mine, theirs) {
        (
            OpenAccount {
                account_id: a,
                provider_id: p,
                credit_limit: c,
            },
            OpenAccount {
                account_id: a2,
                provider_id: p2,
                credit_limit: c2,
            },
        ) => first_of(&[
            (a != a2, "account_id"),
            (p != p2, "provider_id"),
            (c != c2, "credit_limit"),
        ]),
        (
            SetStatus {
                account_id: a,
                status: s,
            },
            SetStatus {
                account_id: a2,
                status: s2,
            },
        ) => first_of(&[(a != a2, "account_id"), (s != s2, "status")]),
        (
            TopUp {
                account_id: a,
                amount: m,
            },
            TopUp {
                account_id: a2,
                amount: m2,
            },
        ) => first_of(&[(a != a2, "account_id"), (m != m2, "amount")]),
        _ => return None,
    };
    Some(difference)
}

/// For two money commands of one kind (charge, adjust, refund), `Some` of their first
/// differing field, if any; `None` for any other pair.
fn money_command_difference(mine: Command, theirs: Command) -> Option<Option<&'static str>> {
    use Command::{Adjust, Charge, Correct, Refund};
    let difference = match (mine, theirs) {
        (
            Charge {
                account_id: a,
                operator_id: o,
                amount: m,
            },
            Charge {
                account_id: a2,
                operator_id: o2,
                amount: m2,
            },
        )
        | (
            Adjust {
                account_id: a,
                operator_id: o,
                amount: m,
            },
            Adjust {
                account_id: a2,
                operator_id: o2,
                amount: m2,
            },
        ) => first_of(&[
            (a != a2, "account_id"),
            (o != o2, "operator_id"),
            (m != m2, "amount"),
        ]),
        (Refund { original: r }, Refund { original: r2 }) => first_of(&[(r != r2, "original")]),
        (
            Correct {
                account_id: a,
                operator_id: o,
                corrects: c,
                amount: m,
            },
            Correct {
                account_id: a2,
                operator_id: o2,
                corrects: c2,
                amount: m2,
            },
        ) => first_of(&[
            (a != a2, "account_id"),
            (o != o2, "operator_id"),
            (c != c2, "corrects"),
            (m != m2, "amount"),
        ]),
        _ => return None,
    };
    Some(difference)
}

/// For two travel commands of one kind (tap, close journey), `Some` of their first
/// differing field, if any; `None` for any other pair.
fn travel_command_difference(mine: Command, theirs: Command) -> Option<Option<&'static str>> {
    use Command::{CloseJourney, LostFare};
    let difference = match (mine, theirs) {
        (Command::Tap(tap), Command::Tap(tap2)) => first_of(&[
            (tap.account_id != tap2.account_id, "account_id"),
            (tap.gate_id != tap2.gate_id, "gate_id"),
            (tap.code != tap2.code, "code"),
            (
                std::mem::discriminant(&tap.kind) != std::mem::discriminant(&tap2.kind),
                "direction",
            ),
            // Not whether it was offline: a gate whose online try was recorded but whose
            // answer was lost, and which then decided alone and uploads the same scan,
            // gets the recorded answer.
            (tap.kind != tap2.kind, "place"),
        ]),
        (
            CloseJourney {
                account_id: a,
                journey_id: j,
            },
            CloseJourney {
                account_id: a2,
                journey_id: j2,
            },
        ) => first_of(&[(a != a2, "account_id"), (j != j2, "journey_id")]),
        (
            LostFare {
                gate_id: g,
                kind: k,
                reason: r,
            },
            LostFare {
                gate_id: g2,
                kind: k2,
                reason: r2,
            },
        ) => first_of(&[
            (g != g2, "gate_id"),
            (k != k2, "place"),
            (r != r2, "reason"),
        ]),
        _ => return None,
    };
    Some(difference)
}

fn first_of(checks: &[(bool, &'static str)]) -> Option<&'static str> {
    checks
        .iter()
        .find(|(differs, _)| *differs)
        .map(|(_, field)| *field)
}

/// Why the ledger refused a command. A refusal is a recorded outcome, replayed like an
/// acceptance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refusal {
    /// No such rider account.
    UnknownAccount,
    /// The account is deny-listed.
    AccountDenied,
    /// The account is closed.
    AccountClosed,
    /// The charge would take the balance below the credit limit.
    CreditLimitExceeded,
    /// An account with this id is already open.
    AccountExists,
    /// The amount is out of range for this command (for example a top-up of zero).
    InvalidAmount,
    /// The refunded transaction does not exist.
    UnknownOriginal,
    /// The refunded transaction is not an accepted charge.
    NotRefundable,
    /// The charge was already refunded.
    AlreadyRefunded,
    /// A balance would leave the 64-bit range.
    BalanceOverflow,
    /// Closing an account whose balance is not zero.
    BalanceNotZero,
    /// A tap names a metro station the fares file does not know.
    UnknownStation,
    /// A tap names a bus route the fares file does not know.
    UnknownRoute,
    /// The code was already used at another gate, or at the same gate after the retry
    /// window: a replay.
    CodeReused,
    /// The journey to close is not the rider's open journey (it was exited or closed).
    JourneyNotOpen,
    /// The journey to close has not yet been open for the fares file's limit.
    JourneyNotExpired,
}

impl Refusal {
    /// Every refusal, in code order.
    pub const ALL: [Refusal; 16] = [
        Refusal::UnknownAccount,
        Refusal::AccountDenied,
        Refusal::AccountClosed,
        Refusal::CreditLimitExceeded,
        Refusal::AccountExists,
        Refusal::InvalidAmount,
        Refusal::UnknownOriginal,
        Refusal::NotRefundable,
        Refusal::AlreadyRefunded,
        Refusal::BalanceOverflow,
        Refusal::BalanceNotZero,
        Refusal::UnknownStation,
        Refusal::UnknownRoute,
        Refusal::CodeReused,
        Refusal::JourneyNotOpen,
        Refusal::JourneyNotExpired,
    ];

    /// The stable code string.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::UnknownAccount => "unknown_account",
            Refusal::AccountDenied => "account_denied",
            Refusal::AccountClosed => "account_closed",
            Refusal::CreditLimitExceeded => "credit_limit_exceeded",
            Refusal::AccountExists => "account_exists",
            Refusal::InvalidAmount => "invalid_amount",
            Refusal::UnknownOriginal => "unknown_original",
            Refusal::NotRefundable => "not_refundable",
            Refusal::AlreadyRefunded => "already_refunded",
            Refusal::BalanceOverflow => "balance_overflow",
            Refusal::BalanceNotZero => "balance_not_zero",
            Refusal::UnknownStation => "unknown_station",
            Refusal::UnknownRoute => "unknown_route",
            Refusal::CodeReused => "code_reused",
            Refusal::JourneyNotOpen => "journey_not_open",
            Refusal::JourneyNotExpired => "journey_not_expired",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// What became of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Applied; its postings are in the ledger.
    Accepted,
    /// Refused with a reason; nothing moved.
    Refused(Refusal),
    /// The same code at the same gate within the retry window, under a new transaction id:
    /// the gate scanned it twice. Nothing moved; the answer is the original tap's.
    Duplicate {
        /// The log sequence of the original tap.
        of: u64,
    },
}

/// One leg of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Posting {
    /// The account.
    pub account: AccountRef,
    /// Positive credits the account, negative debits it.
    pub amount: Amount,
}

/// The most postings one transaction has (a charge or a refund has two).
pub const POSTINGS_PER_TRANSACTION_MAX: usize = 2;

/// A transaction as the ledger recorded it: the request, its outcome and its postings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The request as first received.
    pub request: Request,
    /// What became of it.
    pub outcome: Outcome,
    /// The money moved (empty when refused).
    pub postings: Vec<Posting>,
    /// The rider account's balance after this transaction (for commands on a rider).
    pub rider_balance_after: Option<Amount>,
    /// The journey an accepted tap (or journey close) belongs to.
    pub journey: Option<Journey>,
}

impl Record {
    /// What this transaction charged the rider: the rider's debit (zero when nothing
    /// moved; negative for a refund, which credits the rider).
    pub fn rider_charge(&self) -> Amount {
        self.postings
            .iter()
            .find(|posting| matches!(posting.account, AccountRef::Rider(_)))
            .and_then(|posting| posting.amount.checked_neg())
            .unwrap_or(Amount::ZERO)
    }
}

/// The rider account among a transaction's postings, if any (a charge, refund, top-up
/// or adjustment has exactly one).
pub fn rider_of_postings(postings: &[Posting]) -> Option<u64> {
    postings.iter().find_map(|posting| match posting.account {
        AccountRef::Rider(id) => Some(id),
        _ => None,
    })
}

/// Whether a transaction is owed by (or to) the rider's payment provider and so goes into
/// settlement: an accepted charge, refund, or fare-charging tap or journey close that
/// moved money.
pub fn settles(command: &Command, outcome: Outcome, postings: &[Posting]) -> bool {
    let charges_fares = matches!(
        command,
        Command::Charge { .. }
            | Command::Refund { .. }
            | Command::Tap(_)
            | Command::CloseJourney { .. }
            | Command::Correct { .. }
    );
    charges_fares && outcome == Outcome::Accepted && !postings.is_empty()
}

/// What the caller gets back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The transaction's position in the ledger's log.
    pub sequence: u64,
    /// The recorded transaction.
    pub record: Record,
    /// True when this answer repeats an earlier one for the same id.
    pub replay: bool,
    /// How many fares of the rider's this transaction corrected (a late tap re-pricing
    /// its day records each correction after itself); 0 on a replay.
    pub corrections: u32,
}
