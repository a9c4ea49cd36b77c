//! The ledger's vocabulary: accounts, transaction ids, commands, outcomes and receipts.
//! Plain data: no storage, no clock.

use crate::clock::UnixMillis;
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
    pub fn first_difference(&self, other: &Request) -> Option<&'static str> {
        if self.time != other.time {
            return Some("time");
        }
        use Command::*;
        match (self.command, other.command) {
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
            _ => Some("kind"),
        }
    }
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
}

impl Refusal {
    /// Every refusal, in code order.
    pub const ALL: [Refusal; 11] = [
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
}

/// The rider account among a transaction's postings, if any (a charge, refund, top-up
/// or adjustment has exactly one).
pub fn rider_of_postings(postings: &[Posting]) -> Option<u64> {
    postings.iter().find_map(|posting| match posting.account {
        AccountRef::Rider(id) => Some(id),
        _ => None,
    })
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
}
