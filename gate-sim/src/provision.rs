//! Provisioning through the admin API: the providers' issuer keys (and one revoked key),
//! then the riders' accounts, top-ups and deny-list entries. Every call's transaction id
//! follows from the seed, so provisioning the same city twice changes nothing.

use fareway_gate::clock::UnixMillis;
use fareway_gate::token::mint::{Device, Issuer};
use fareway_proto::v1 as pb;
use tokio_stream::StreamExt as _;

use crate::client::AdminClient;
use crate::plan::{Rider, RiderKind};
use crate::rng::Rng;

/// An amount in minor units drawn uniformly from `low..=high` for each rider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spread {
    /// The least.
    pub low: i64,
    /// The most.
    pub high: i64,
}

impl Spread {
    /// Always `value`.
    pub const fn fixed(value: i64) -> Spread {
        Spread {
            low: value,
            high: value,
        }
    }

    /// One draw.
    pub fn draw(self, rng: &mut Rng) -> i64 {
        let width = self.high.abs_diff(self.low).saturating_add(1);
        self.low.saturating_add((rng.next_u64() % width) as i64)
    }
}

impl std::str::FromStr for Spread {
    type Err = String;

    /// `LOW..HIGH` (both included) or one amount.
    fn from_str(text: &str) -> Result<Spread, String> {
        let amount = |part: &str| {
            part.trim()
                .replace('_', "")
                .parse::<i64>()
                .map_err(|_| format!("{part:?} is not a whole number of minor units"))
        };
        let spread = match text.split_once("..") {
            Some((low, high)) => Spread {
                low: amount(low)?,
                high: amount(high)?,
            },
            None => Spread::fixed(amount(text)?),
        };
        if spread.low < 0 || spread.low > spread.high {
            return Err(format!(
                "{text:?}: an amount or LOW..HIGH with 0 <= LOW <= HIGH"
            ));
        }
        Ok(spread)
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}..{}", self.low, self.high)
    }
}

/// What a city's riders are like.
#[derive(Debug, Clone, Copy)]
pub struct Population {
    /// Riders.
    pub riders: u64,
    /// Payment providers (ids 1 to this); riders are shared out among them in turn.
    pub providers: u16,
    /// Share of riders on the deny list.
    pub denied_share: f64,
    /// Share of riders with no balance and no credit.
    pub broke_share: f64,
    /// What a good or deny-listed rider is topped up with, minor units.
    pub balance_minor: Spread,
    /// A good or deny-listed rider's credit limit, minor units.
    pub credit_limit_minor: Spread,
}

/// Why a population cannot be provisioned.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PopulationError {
    /// No riders, or more than a city holds.
    #[error("a city has 1 to {RIDERS_PER_CITY_MAX} riders")]
    Riders,
    /// No providers.
    #[error("a city has at least one payment provider")]
    Providers,
    /// Shares out of range.
    #[error("the deny-listed and broke shares are each 0 to 1 and leave some good riders")]
    Shares,
    /// A good rider could be refused for money, and the check could not tell a fault.
    #[error(
        "the least balance ({balance}) plus the least credit limit ({credit}) is under the daily cap ({cap}): a good rider could be refused; raise them"
    )]
    TooPoor {
        /// The least balance.
        balance: i64,
        /// The least credit limit.
        credit: i64,
        /// The fares' daily cap.
        cap: i64,
    },
}

impl Population {
    /// The standard mix: 2% deny-listed, 2% broke, the rest topped up with 20,000 to
    /// 80,000 and a credit limit of 0 to 2,000.
    pub fn standard(riders: u64, providers: u16) -> Population {
        Population {
            riders,
            providers,
            denied_share: 0.02,
            broke_share: 0.02,
            balance_minor: Spread {
                low: 20_000,
                high: 80_000,
            },
            credit_limit_minor: Spread {
                low: 0,
                high: 2_000,
            },
        }
    }

    /// Whether this population can be provisioned and its outcomes checked: a good rider
    /// must be able to pay a whole day's riding (the fares' daily cap), so that every
    /// refusal for money is an injected fault.
    pub fn check(&self, daily_cap_minor: i64) -> Result<(), PopulationError> {
        if !(1..=RIDERS_PER_CITY_MAX).contains(&self.riders) {
            return Err(PopulationError::Riders);
        }
        if self.providers == 0 {
            return Err(PopulationError::Providers);
        }
        let share = 0.0..=1.0;
        if !share.contains(&self.denied_share)
            || !share.contains(&self.broke_share)
            || self.denied_share + self.broke_share >= 1.0
        {
            return Err(PopulationError::Shares);
        }
        let (balance, credit) = (self.balance_minor.low, self.credit_limit_minor.low);
        if balance.saturating_add(credit) < daily_cap_minor {
            return Err(PopulationError::TooPoor {
                balance,
                credit,
                cap: daily_cap_minor,
            });
        }
        Ok(())
    }
}

/// Calls to the admin API at once while provisioning.
const PROVISION_CALLS_IN_FLIGHT: usize = 64;

/// What provisioning made.
#[derive(Debug)]
pub struct Provisioned {
    /// The riders, with their phones.
    pub riders: Vec<Rider>,
    /// An issuer the engine never saw.
    pub unknown_issuer: Issuer,
    /// An issuer registered and then revoked.
    pub revoked_issuer: Issuer,
}

fn seed_of(seed: u64, what: u64) -> [u8; 32] {
    let mut rng = Rng::new(seed ^ what.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut bytes = [0u8; 32];
    for chunk in bytes.chunks_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    bytes
}

/// The issuer of a provider in a city made from `seed`.
pub fn issuer_of(provider_id: u16, seed: u64) -> Issuer {
    Issuer::from_seed(provider_id, seed_of(seed, 1_000 + u64::from(provider_id)))
}

/// A rider's phone with a credential from `issuer` valid for a week.
pub fn device_of(issuer: &Issuer, account_id: u64, seed: u64) -> Device {
    let key = Device::key_from_seed(&seed_of(seed, 1_000_000 + account_id));
    let now = fareway_gate::clock::Clock::now(&fareway_gate::clock::SystemClock);
    let credential = issuer.issue(
        account_id,
        UnixMillis(now.0 + 7 * 86_400_000),
        0,
        Device::public_key_of(&key),
    );
    Device::new(key, credential, 0)
}

fn tx(seed: u64, what: u64) -> Vec<u8> {
    (u128::from(seed) << 64 | u128::from(what))
        .to_be_bytes()
        .to_vec()
}

/// The account id of rider `index` (from 0) in a city made from `seed`: each seed's city
/// has its own accounts, so that runs with other seeds on one engine do not meet each
/// other's deny list or balances.
pub fn account_id_of(seed: u64, index: u64) -> u64 {
    (seed % 1_000_000) * RIDERS_PER_CITY_MAX + index + 1
}

/// Most riders in one city.
pub const RIDERS_PER_CITY_MAX: u64 = 10_000_000;

/// Registers the keys and opens the accounts (see [`account_id_of`]).
pub async fn provision(
    admin: &AdminClient,
    population: Population,
    seed: u64,
) -> anyhow::Result<Provisioned> {
    let mut admin_one = admin.clone();
    register_issuer_keys(&mut admin_one, population.providers, seed).await?;
    let revoked_issuer = register_and_revoke_a_key(&mut admin_one, seed).await?;
    let unknown_issuer = Issuer::from_seed(1, seed_of(seed, 8));
    let kinds = rider_kinds(population, seed);
    let money = rider_money(population, seed);
    open_accounts(admin, population, seed, &kinds, money).await?;
    Ok(Provisioned {
        riders: riders_with_phones(kinds, population.providers, seed),
        unknown_issuer,
        revoked_issuer,
    })
}

/// Registers the simulator's issuer keys of `providers` providers for `seed` (what
/// [`provision`] does first); a cluster test registers them on every node.
pub async fn register_issuer_keys(
    admin: &mut AdminClient,
    providers: u16,
    seed: u64,
) -> anyhow::Result<()> {
    for provider_id in 1..=providers {
        let issuer = issuer_of(provider_id, seed);
        admin
            .register_issuer_key(pb::RegisterIssuerKeyRequest {
                transaction_id: tx(seed, u64::from(provider_id)),
                provider_id: u32::from(provider_id),
                provider_name: format!("sim-provider-{provider_id}"),
                public_key: issuer.public_key().to_vec(),
            })
            .await
            .map_err(|status| {
                anyhow::anyhow!("registering provider {provider_id}'s key: {status}")
            })?;
    }
    Ok(())
}

/// Registers one more key of provider 1 and revokes it, for the revoked-key fault.
async fn register_and_revoke_a_key(admin: &mut AdminClient, seed: u64) -> anyhow::Result<Issuer> {
    let revoked_issuer = Issuer::from_seed(1, seed_of(seed, 7));
    admin
        .register_issuer_key(pb::RegisterIssuerKeyRequest {
            transaction_id: tx(seed, 100),
            provider_id: 1,
            provider_name: "sim-provider-1".into(),
            public_key: revoked_issuer.public_key().to_vec(),
        })
        .await
        .map_err(|status| anyhow::anyhow!("registering the key to revoke: {status}"))?;
    admin
        .revoke_issuer_key(pb::RevokeIssuerKeyRequest {
            transaction_id: tx(seed, 101),
            provider_id: 1,
            key_id: revoked_issuer.key_id(),
        })
        .await
        .map_err(|status| anyhow::anyhow!("revoking a key: {status}"))?;
    Ok(revoked_issuer)
}

/// Each rider's kind, drawn from the seed's own stream: deny-listed, broke or good at
/// the population's shares.
fn rider_kinds(population: Population, seed: u64) -> Vec<RiderKind> {
    let mut rng = Rng::new(seed);
    (0..population.riders)
        .map(|_| {
            let roll = rng.unit();
            if roll < population.denied_share {
                RiderKind::Denied
            } else if roll < population.denied_share + population.broke_share {
                RiderKind::Broke
            } else {
                RiderKind::Good
            }
        })
        .collect()
}

/// Each rider's balance and credit limit. Drawn from their own stream, so that a seed's
/// riders keep their kinds whatever the spreads.
fn rider_money(population: Population, seed: u64) -> Vec<(i64, i64)> {
    let mut money_rng = Rng::new(seed ^ 0x006d_6f6e_6579);
    (0..population.riders)
        .map(|_| {
            let balance = population.balance_minor.draw(&mut money_rng);
            (balance, population.credit_limit_minor.draw(&mut money_rng))
        })
        .collect()
}

/// Opens every rider's account, `PROVISION_CALLS_IN_FLIGHT` at a time.
async fn open_accounts(
    admin: &AdminClient,
    population: Population,
    seed: u64,
    kinds: &[RiderKind],
    money: Vec<(i64, i64)>,
) -> anyhow::Result<()> {
    let calls = tokio_stream::iter(kinds.iter().copied().zip(money).enumerate()).map(
        |(index, (kind, (balance_minor, credit_limit_minor)))| {
            let account_id = account_id_of(seed, index as u64);
            RiderAccount {
                account_id,
                provider_id: (index as u64 % u64::from(population.providers)) as u32 + 1,
                kind,
                balance_minor,
                credit_limit_minor,
            }
            .open(admin.clone(), seed)
        },
    );
    let results: Vec<Result<(), tonic::Status>> =
        futures_unordered(calls, PROVISION_CALLS_IN_FLIGHT).await;
    if let Some(Err(status)) = results.into_iter().find(Result::is_err) {
        anyhow::bail!("provisioning riders failed: {status}");
    }
    Ok(())
}

/// One rider's account as it is to be opened.
#[derive(Debug, Clone, Copy)]
struct RiderAccount {
    account_id: u64,
    provider_id: u32,
    kind: RiderKind,
    balance_minor: i64,
    credit_limit_minor: i64,
}

impl RiderAccount {
    /// Opens the account (one that exists already will do), tops it up and deny-lists it
    /// as its kind asks, under transaction ids that follow from the seed.
    async fn open(self, mut admin: AdminClient, seed: u64) -> Result<(), tonic::Status> {
        let RiderAccount {
            account_id,
            provider_id,
            kind,
            balance_minor,
            credit_limit_minor,
        } = self;
        let base = 1_000_000 + account_id * 4;
        let open = pb::OpenAccountRequest {
            transaction_id: tx(seed, base),
            account_id,
            provider_id,
            credit_limit_minor: if kind == RiderKind::Broke {
                0
            } else {
                credit_limit_minor
            },
        };
        let opened = admin.open_account(open).await?.into_inner();
        if !opened.accepted && opened.refusal_code != "account_exists" {
            return Err(tonic::Status::failed_precondition(format!(
                "account {account_id} was not opened: {}",
                opened.refusal_code
            )));
        }
        // A balance of 0 needs no top-up (and the engine refuses one of 0).
        if kind != RiderKind::Broke && balance_minor > 0 {
            admin
                .top_up(pb::TopUpRequest {
                    transaction_id: tx(seed, base + 1),
                    account_id,
                    amount_minor: balance_minor,
                })
                .await?;
        }
        if kind == RiderKind::Denied {
            admin
                .add_deny_list_entry(pb::AccountRequest {
                    transaction_id: tx(seed, base + 2),
                    account_id,
                })
                .await?;
        }
        Ok(())
    }
}

/// The riders as provisioned, each with a phone holding a credential from its
/// provider's issuer.
fn riders_with_phones(kinds: Vec<RiderKind>, providers: u16, seed: u64) -> Vec<Rider> {
    let issuers: Vec<Issuer> = (1..=providers).map(|p| issuer_of(p, seed)).collect();
    kinds
        .into_iter()
        .enumerate()
        .map(|(index, kind)| {
            let account_id = account_id_of(seed, index as u64);
            let provider_index = (index as u64 % u64::from(providers)) as usize;
            Rider {
                account_id,
                provider_id: provider_index as u16 + 1,
                kind,
                device: device_of(&issuers[provider_index], account_id, seed),
            }
        })
        .collect()
}

/// Runs futures from a stream with at most `limit` at once, collecting their outputs.
async fn futures_unordered<S, F, T>(stream: S, limit: usize) -> Vec<T>
where
    S: tokio_stream::Stream<Item = F> + Unpin,
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let mut stream = stream;
    let mut running = tokio::task::JoinSet::new();
    let mut out = Vec::new();
    while let Some(future) = stream.next().await {
        if running.len() >= limit
            && let Some(done) = running.join_next().await
            && let Ok(value) = done
        {
            out.push(value);
        }
        running.spawn(future);
    }
    while let Some(done) = running.join_next().await {
        if let Ok(value) = done {
            out.push(value);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spread_parses_one_amount_or_a_range_and_refuses_the_rest() {
        assert_eq!("1_500".parse(), Ok(Spread::fixed(1_500)));
        assert_eq!(
            " 200 .. 9000".parse(),
            Ok(Spread {
                low: 200,
                high: 9_000
            })
        );
        for bad in ["", "ten", "5..2", "-1..3", "1.5", "1..", "1..2..3"] {
            assert!(bad.parse::<Spread>().is_err(), "{bad:?} was taken");
        }
    }

    #[test]
    fn draws_cover_the_spread_both_ends_included_and_follow_the_seed() {
        let spread = Spread { low: 10, high: 13 };
        let draws = |seed| {
            let mut rng = Rng::new(seed);
            (0..400)
                .map(|_| spread.draw(&mut rng))
                .collect::<Vec<i64>>()
        };
        let first = draws(3);
        assert_eq!(first, draws(3));
        assert_ne!(first, draws(4));
        let mut seen = first.clone();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen, [10, 11, 12, 13]);
        let mut rng = Rng::new(1);
        assert_eq!(Spread::fixed(7).draw(&mut rng), 7);
    }

    #[test]
    fn a_population_too_poor_for_a_days_riding_is_refused() {
        let mut population = Population::standard(100, 2);
        assert_eq!(population.check(1_500), Ok(()));
        population.balance_minor = Spread {
            low: 1_000,
            high: 5_000,
        };
        population.credit_limit_minor = Spread {
            low: 400,
            high: 400,
        };
        assert_eq!(
            population.check(1_500),
            Err(PopulationError::TooPoor {
                balance: 1_000,
                credit: 400,
                cap: 1_500
            })
        );
        population.credit_limit_minor = Spread::fixed(500);
        assert_eq!(population.check(1_500), Ok(()));
        population.denied_share = 0.6;
        population.broke_share = 0.4;
        assert_eq!(population.check(1_500), Err(PopulationError::Shares));
        population.broke_share = f64::NAN;
        assert_eq!(population.check(1_500), Err(PopulationError::Shares));
        assert_eq!(
            Population::standard(0, 2).check(1_500),
            Err(PopulationError::Riders)
        );
        assert_eq!(
            Population::standard(10, 0).check(1_500),
            Err(PopulationError::Providers)
        );
    }
}
