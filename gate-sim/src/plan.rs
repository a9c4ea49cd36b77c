//! The plan of a run: every tap the simulated gates will make, when, with what code, and
//! what answer it must get. Made before the timed window (codes are minted here, so
//! signing does not steal the engine's CPU while it is measured), from a seed: the same
//! seed gives the same plan.

use std::collections::BTreeMap;

use fareway::clock::UnixMillis;
use fareway::token::mint::{Device, Issuer};
use fareway_proto::v1 as pb;

use crate::rng::Rng;

/// A fault the simulator mixes in, and the answer it must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// The same code at the same gate under a new id, soon after: the original answer.
    DuplicateScan,
    /// The same id and content again (a gate retrying after a timeout): the original answer.
    GateRetry,
    /// A used code at another gate: rejected `code_reused`.
    ReplayOtherGate,
    /// A code whose device signature was altered: rejected `bad_code_signature`.
    ForgedSignature,
    /// A code made ten minutes before the scan: rejected `code_expired`.
    ExpiredCode,
    /// A code under an issuer key the engine never saw: rejected `unknown_issuer_key`.
    UnknownKey,
    /// A code under a revoked issuer key: rejected `revoked_issuer_key`.
    RevokedKey,
    /// A deny-listed rider: rejected `account_denied`.
    DeniedRider,
    /// A rider with no balance and no credit: rejected `credit_limit_exceeded`.
    OverCreditLimit,
    /// A station the fares file does not have: rejected `unknown_station`.
    UnknownStation,
    /// Text that is not a code: rejected `bad_encoding`.
    MalformedCode,
    /// A used transaction id with other content: `ALREADY_EXISTS`.
    IdConflict,
}

impl Fault {
    /// Every fault.
    pub const ALL: [Fault; 12] = [
        Fault::DuplicateScan,
        Fault::GateRetry,
        Fault::ReplayOtherGate,
        Fault::ForgedSignature,
        Fault::ExpiredCode,
        Fault::UnknownKey,
        Fault::RevokedKey,
        Fault::DeniedRider,
        Fault::OverCreditLimit,
        Fault::UnknownStation,
        Fault::MalformedCode,
        Fault::IdConflict,
    ];

    /// The name in reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Fault::DuplicateScan => "duplicate_scan",
            Fault::GateRetry => "gate_retry",
            Fault::ReplayOtherGate => "replay_other_gate",
            Fault::ForgedSignature => "forged_signature",
            Fault::ExpiredCode => "expired_code",
            Fault::UnknownKey => "unknown_key",
            Fault::RevokedKey => "revoked_key",
            Fault::DeniedRider => "denied_rider",
            Fault::OverCreditLimit => "over_credit_limit",
            Fault::UnknownStation => "unknown_station",
            Fault::MalformedCode => "malformed_code",
            Fault::IdConflict => "id_conflict",
        }
    }

    /// The answer this fault must get.
    pub fn expected(self) -> Expected {
        match self {
            Fault::DuplicateScan | Fault::GateRetry => Expected::SameAsOriginal,
            Fault::ReplayOtherGate => Expected::Rejected("code_reused"),
            Fault::ForgedSignature => Expected::Rejected("bad_code_signature"),
            Fault::ExpiredCode => Expected::Rejected("code_expired"),
            Fault::UnknownKey => Expected::Rejected("unknown_issuer_key"),
            Fault::RevokedKey => Expected::Rejected("revoked_issuer_key"),
            Fault::DeniedRider => Expected::Rejected("account_denied"),
            Fault::OverCreditLimit => Expected::Rejected("credit_limit_exceeded"),
            Fault::UnknownStation => Expected::Rejected("unknown_station"),
            Fault::MalformedCode => Expected::Rejected("bad_encoding"),
            Fault::IdConflict => Expected::Status(tonic::Code::AlreadyExists),
        }
    }
}

/// What a tap must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// Accepted (a valid tap by a rider who may travel).
    Accepted,
    /// Rejected with this reason code.
    Rejected(&'static str),
    /// The answer the tap it repeats got, marked as a replay.
    SameAsOriginal,
    /// A call that fails with this status.
    Status(tonic::Code),
}

/// One planned tap.
#[derive(Debug, Clone)]
pub struct PlannedTap {
    /// When to send it, from the start of the timed window.
    pub due_ms: u64,
    /// The request.
    pub request: pb::TapRequest,
    /// The rider's account (0 for a code that names none).
    pub account_id: u64,
    /// The rider's provider.
    pub provider_id: u16,
    /// The fault it is, if any.
    pub fault: Option<Fault>,
    /// The planned tap it repeats (duplicate, retry), by index.
    pub repeats: Option<usize>,
    /// What it must get.
    pub expected: Expected,
}

/// A rider as provisioned.
#[derive(Debug)]
pub struct Rider {
    /// The account id.
    pub account_id: u64,
    /// The provider.
    pub provider_id: u16,
    /// The kind.
    pub kind: RiderKind,
    /// The phone.
    pub device: Device,
}

/// What a rider is like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RiderKind {
    /// Has money: every valid tap is accepted.
    Good,
    /// On the deny list.
    Denied,
    /// No balance and no credit.
    Broke,
}

/// The network the riders travel on.
#[derive(Debug, Clone)]
pub struct Network {
    /// Metro stations.
    pub stations: Vec<u32>,
    /// Bus routes.
    pub routes: Vec<u32>,
    /// Gates per station.
    pub gates_per_station: u32,
    /// The most a rider pays in a day (what a good rider must be able to pay).
    pub daily_cap_minor: i64,
}

impl Network {
    /// Every metro station and bus route of a fares table, with this many gates of each
    /// direction per station.
    pub fn of(fares: &fareway::fares::FareTable, gates_per_station: u32) -> Network {
        Network {
            stations: fares.stations().map(|(id, _)| id).collect(),
            routes: fares.routes().map(|(id, _)| id).collect(),
            gates_per_station: gates_per_station.max(1),
            daily_cap_minor: fares.daily_cap.0,
        }
    }

    /// A gate id of a station: station * 100 + n (entry gates first, then exit gates).
    pub fn gate(&self, station: u32, n: u32, exit: bool) -> u32 {
        station * 100 + (n % self.gates_per_station) * 2 + u32::from(exit)
    }

    /// A bus reader's id on a route.
    pub fn bus_reader(&self, route: u32, n: u32) -> u32 {
        1_000_000 + route * 100 + n % 50
    }
}

/// Offered load over time.
#[derive(Debug, Clone, Copy)]
pub enum Profile {
    /// The same rate throughout.
    Constant {
        /// Taps per second.
        rate: f64,
    },
    /// A rush hour: rises from a fifth of the peak to the peak at the middle and falls back.
    Rush {
        /// Peak taps per second.
        peak: f64,
    },
}

impl Profile {
    /// The mean offered rate over a run.
    pub fn mean_rate(self) -> f64 {
        match self {
            Profile::Constant { rate } => rate,
            // The raised cosine's mean is half its height.
            Profile::Rush { peak } => peak * (0.2 + 0.8 * 0.5),
        }
    }

    /// The offered rate at `at` seconds into a run of `duration` seconds.
    pub fn rate_at(self, at: f64, duration: f64) -> f64 {
        match self {
            Profile::Constant { rate } => rate,
            Profile::Rush { peak } => {
                let phase = (at / duration.max(1e-9)).clamp(0.0, 1.0);
                // A raised cosine: 0.2 x peak at the ends, the peak in the middle.
                let shape = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * phase).cos();
                peak * (0.2 + 0.8 * shape)
            }
        }
    }
}

/// How much fault of each kind to mix in: the chance that a rider's next trip is replaced
/// by (or followed by) this fault.
pub type FaultRates = BTreeMap<Fault, f64>;

/// Everything the plan needs.
#[derive(Debug)]
pub struct PlanInput<'a> {
    /// The riders (good, denied, broke).
    pub riders: &'a mut [Rider],
    /// The network.
    pub network: &'a Network,
    /// Offered load.
    pub profile: Profile,
    /// How long the timed window lasts, in seconds.
    pub duration_s: f64,
    /// Most taps (the plan stops at whichever bound comes first).
    pub taps_max: u64,
    /// The fault mix.
    pub faults: &'a FaultRates,
    /// The seed.
    pub seed: u64,
    /// The wall-clock time the timed window starts at (scan times are real times).
    pub start: UnixMillis,
    /// An issuer the engine does not know, and one it revoked.
    pub unknown_issuer: &'a Issuer,
    /// See `unknown_issuer`.
    pub revoked_issuer: &'a Issuer,
    /// First transaction id to use.
    pub first_id: u128,
}

/// Builds the plan: arrivals are a Poisson process at the profile's rate; each arrival is
/// a trip by a random rider (a metro journey: entry, then exit a few seconds later at
/// another station; or a bus ride), with faults mixed in at their rates.
pub fn make_plan(input: PlanInput<'_>) -> Vec<PlannedTap> {
    let mut rng = Rng::new(input.seed);
    let mut taps: Vec<PlannedTap> = Vec::new();
    let mut next_id = input.first_id;
    let mut id = || {
        next_id += 1;
        next_id
    };
    let network = input.network;
    let good: Vec<usize> = indices(input.riders, RiderKind::Good);
    let denied: Vec<usize> = indices(input.riders, RiderKind::Denied);
    let broke: Vec<usize> = indices(input.riders, RiderKind::Broke);
    assert!(!good.is_empty(), "a run needs riders with money");
    let mut t = 0.0f64;
    let duration_ms = input.duration_s * 1_000.0;
    let mut gate_counter = 0u32;
    // Taps of the trip before this one (the first gap assumes the mean).
    let (mut taps_before, mut last_trip_taps) = (0usize, 1.6f64);
    while (taps.len() as u64) < input.taps_max {
        let rate = input
            .profile
            .rate_at(t / 1_000.0, input.duration_s)
            .max(0.1);
        // The gap after a trip grows with that trip's taps (one to three), so that taps,
        // not trips, arrive at the offered rate: a fixed guess of taps per trip offered
        // about 10% fewer taps than asked, since journeys near the window's end are bus
        // rides.
        if taps.len() > taps_before {
            last_trip_taps = (taps.len() - taps_before) as f64;
        }
        taps_before = taps.len();
        t += rng.exponential(1_000.0 * last_trip_taps / rate);
        if t >= duration_ms {
            break;
        }
        let due = t as u64;
        let at = input.start.saturating_add(due);
        gate_counter = gate_counter.wrapping_add(1);
        // A rider fault needs such a rider: a small city may have none.
        let fault = match pick_fault(&mut rng, input.faults) {
            Some(Fault::DeniedRider) if denied.is_empty() => None,
            Some(Fault::OverCreditLimit) if broke.is_empty() => None,
            fault => fault,
        };
        let rider_index = match fault {
            Some(Fault::DeniedRider) => denied[rng.below(denied.len())],
            Some(Fault::OverCreditLimit) => broke[rng.below(broke.len())],
            _ => good[rng.below(good.len())],
        };
        let rider = &mut input.riders[rider_index];
        let (account_id, provider_id) = (rider.account_id, rider.provider_id);
        let tap =
            |due_ms: u64, request: pb::TapRequest, fault: Option<Fault>, expected| PlannedTap {
                due_ms,
                request,
                account_id,
                provider_id,
                fault,
                repeats: None,
                expected,
            };
        let station = network.stations[rng.below(network.stations.len())];
        let route = network.routes[rng.below(network.routes.len())];
        // Most faults are one bus tap whose code (or rider) is the fault.
        let fault_code = match fault {
            Some(Fault::DeniedRider | Fault::OverCreditLimit) => Some(rider.device.code_text(at)),
            Some(Fault::ForgedSignature) => {
                let mut bytes = rider.device.code_bytes(at);
                let last = bytes.len() - 1;
                bytes[last] ^= 0x01;
                Some(fareway::token::format::encode_text(&bytes))
            }
            Some(Fault::ExpiredCode) => Some(
                rider
                    .device
                    .code_text(UnixMillis(at.0.saturating_sub(600_000))),
            ),
            Some(kind @ (Fault::UnknownKey | Fault::RevokedKey)) => {
                let issuer = if kind == Fault::UnknownKey {
                    input.unknown_issuer
                } else {
                    input.revoked_issuer
                };
                let mut device =
                    crate::provision::device_of(issuer, account_id, input.seed ^ 0xdead);
                Some(device.code_text(at))
            }
            Some(Fault::MalformedCode) => Some("not a rider code!".to_string()),
            _ => None,
        };
        if let (Some(code), Some(kind)) = (fault_code, fault) {
            let gate = network.bus_reader(route, gate_counter);
            let bus = request(id(), gate, pb::Direction::Bus, route, at, code);
            taps.push(tap(due, bus, fault, kind.expected()));
            continue;
        }
        match fault {
            // One bus tap, made above.
            Some(
                Fault::DeniedRider
                | Fault::OverCreditLimit
                | Fault::ForgedSignature
                | Fault::ExpiredCode
                | Fault::UnknownKey
                | Fault::RevokedKey
                | Fault::MalformedCode,
            ) => {}
            Some(Fault::UnknownStation) => {
                let code = rider.device.code_text(at);
                let gate = network.gate(station, gate_counter, false);
                taps.push(tap(
                    due,
                    request(id(), gate, pb::Direction::Entry, 999_999, at, code),
                    fault,
                    Fault::UnknownStation.expected(),
                ));
            }
            // Faults that repeat a tap: a valid bus ride, then its repeat a moment later.
            Some(
                kind @ (Fault::DuplicateScan
                | Fault::GateRetry
                | Fault::ReplayOtherGate
                | Fault::IdConflict),
            ) => {
                let code = rider.device.code_text(at);
                let gate = network.bus_reader(route, gate_counter);
                let original = request(id(), gate, pb::Direction::Bus, route, at, code);
                let original_index = taps.len();
                taps.push(tap(due, original.clone(), None, Expected::Accepted));
                let later = due + 300 + rng.below(700) as u64;
                let mut repeat = original;
                match kind {
                    Fault::DuplicateScan => repeat.transaction_id = id().to_be_bytes().to_vec(),
                    Fault::GateRetry => {}
                    Fault::ReplayOtherGate => {
                        repeat.transaction_id = id().to_be_bytes().to_vec();
                        repeat.gate_id += 1;
                    }
                    _ => repeat.gate_id += 1,
                }
                let mut planned = tap(later, repeat, Some(kind), kind.expected());
                planned.repeats = Some(original_index);
                taps.push(planned);
            }
            None => {
                // A journey's exit comes 2 s to a quarter of the run (at most 20 s) after
                // its entry, within the window: a journey that cannot end in it is a bus ride.
                let ride_ms = (duration_ms / 4.0).min(20_000.0) as u64;
                let journey_fits = ride_ms > 2_000 && due + ride_ms < duration_ms as u64;
                if journey_fits && rng.below(100) < 60 {
                    // A metro journey: entry now, exit a few seconds later elsewhere.
                    let mut exit_station = network.stations[rng.below(network.stations.len())];
                    if exit_station == station && network.stations.len() > 1 {
                        exit_station = network.stations[(network
                            .stations
                            .iter()
                            .position(|s| *s == station)
                            .unwrap_or(0)
                            + 1)
                            % network.stations.len()];
                    }
                    let code = rider.device.code_text(at);
                    let entry_gate = network.gate(station, gate_counter, false);
                    taps.push(tap(
                        due,
                        request(id(), entry_gate, pb::Direction::Entry, station, at, code),
                        None,
                        Expected::Accepted,
                    ));
                    let exit_due = due + 2_000 + rng.below((ride_ms - 2_000) as usize) as u64;
                    let exit_at = input.start.saturating_add(exit_due);
                    let code = rider.device.code_text(exit_at);
                    let exit_gate = network.gate(exit_station, gate_counter, true);
                    taps.push(tap(
                        exit_due,
                        request(
                            id(),
                            exit_gate,
                            pb::Direction::Exit,
                            exit_station,
                            exit_at,
                            code,
                        ),
                        None,
                        Expected::Accepted,
                    ));
                } else {
                    let code = rider.device.code_text(at);
                    let gate = network.bus_reader(route, gate_counter);
                    taps.push(tap(
                        due,
                        request(id(), gate, pb::Direction::Bus, route, at, code),
                        None,
                        Expected::Accepted,
                    ));
                }
            }
        }
    }
    // In time order; a stable sort keeps an original before its repeat at the same time.
    let mut order: Vec<usize> = (0..taps.len()).collect();
    order.sort_by_key(|index| taps[*index].due_ms);
    let mut position = vec![0; taps.len()];
    for (new, old) in order.iter().enumerate() {
        position[*old] = new;
    }
    let mut sorted: Vec<PlannedTap> = order.iter().map(|index| taps[*index].clone()).collect();
    for tap in &mut sorted {
        tap.repeats = tap.repeats.map(|old| position[old]);
    }
    sorted.truncate(input.taps_max as usize);
    sorted
}

fn indices(riders: &[Rider], kind: RiderKind) -> Vec<usize> {
    riders
        .iter()
        .enumerate()
        .filter(|(_, rider)| rider.kind == kind)
        .map(|(index, _)| index)
        .collect()
}

fn pick_fault(rng: &mut Rng, rates: &FaultRates) -> Option<Fault> {
    let roll = rng.unit();
    let mut sum = 0.0;
    for (fault, rate) in rates {
        sum += rate;
        if roll < sum {
            return Some(*fault);
        }
    }
    None
}

/// A tap request.
pub fn request(
    id: u128,
    gate_id: u32,
    direction: pb::Direction,
    place: u32,
    scan_time: UnixMillis,
    code: String,
) -> pb::TapRequest {
    let (station_id, route_id) = match direction {
        pb::Direction::Bus => (0, place),
        _ => (place, 0),
    };
    pb::TapRequest {
        transaction_id: id.to_be_bytes().to_vec(),
        gate_id,
        direction: direction as i32,
        station_id,
        route_id,
        scan_time_ms: scan_time.0,
        code: Some(pb::ScannedCode { text: code }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid bus tap under transaction id `id` (a repeat of tap `repeats` when given:
    /// a gate retry), for the tests of the player and the checks.
    pub(crate) fn planned(id: u128, repeats: Option<usize>) -> PlannedTap {
        PlannedTap {
            due_ms: 0,
            request: request(id, 1, pb::Direction::Bus, 501, UnixMillis(0), String::new()),
            account_id: 1,
            provider_id: 1,
            fault: repeats.map(|_| Fault::GateRetry),
            repeats,
            expected: Expected::Accepted,
        }
    }
    use crate::provision::{device_of, issuer_of};

    fn riders(kinds: &[RiderKind]) -> Vec<Rider> {
        let issuer = issuer_of(1, 5);
        kinds
            .iter()
            .enumerate()
            .map(|(index, kind)| Rider {
                account_id: index as u64 + 1,
                provider_id: 1,
                kind: *kind,
                device: device_of(&issuer, index as u64 + 1, 5),
            })
            .collect()
    }

    fn plan(riders: &mut [Rider], faults: &FaultRates, seed: u64) -> Vec<PlannedTap> {
        let profile = Profile::Constant { rate: 200.0 };
        plan_over(riders, faults, seed, profile, 20.0)
    }

    fn plan_over(
        riders: &mut [Rider],
        faults: &FaultRates,
        seed: u64,
        profile: Profile,
        duration_s: f64,
    ) -> Vec<PlannedTap> {
        let network = Network {
            stations: vec![100, 101, 102],
            routes: vec![501],
            gates_per_station: 2,
            daily_cap_minor: 1_500,
        };
        let (unknown, revoked) = (issuer_of(1, 6), issuer_of(1, 7));
        make_plan(PlanInput {
            riders,
            network: &network,
            profile,
            duration_s,
            taps_max: 100_000,
            faults,
            seed,
            start: UnixMillis(1_800_000_000_000),
            unknown_issuer: &unknown,
            revoked_issuer: &revoked,
            first_id: 1,
        })
    }

    /// Regression: taps per second offered were about 10% under the asked rate.
    #[test]
    fn taps_come_at_the_offered_rate_constant_or_rush() {
        let kinds = [RiderKind::Good, RiderKind::Denied, RiderKind::Broke];
        let faults = crate::every_fault_at(0.01);
        for (profile, seed) in [
            (Profile::Constant { rate: 500.0 }, 3),
            (Profile::Rush { peak: 1_000.0 }, 4),
        ] {
            let taps = plan_over(&mut riders(&kinds), &faults, seed, profile, 30.0);
            let asked = profile.mean_rate() * 30.0;
            let ratio = taps.len() as f64 / asked;
            assert!(
                (0.96..=1.04).contains(&ratio),
                "{profile:?}: {} taps planned for {asked}",
                taps.len()
            );
        }
    }

    #[test]
    fn a_rider_fault_is_not_injected_without_such_riders() {
        let mut good = riders(&[RiderKind::Good; 10]);
        let faults: FaultRates = [(Fault::DeniedRider, 0.4), (Fault::OverCreditLimit, 0.4)]
            .into_iter()
            .collect();
        let taps = plan(&mut good, &faults, 1);
        assert!(taps.len() > 1_000);
        assert!(taps.iter().all(|tap| tap.fault.is_none()));
        assert!(taps.iter().all(|tap| tap.expected == Expected::Accepted));
    }

    #[test]
    fn the_same_seed_gives_the_same_plan_in_time_order_with_repeats_after_originals() {
        let faults = crate::every_fault_at(0.03);
        let kinds = [
            RiderKind::Good,
            RiderKind::Denied,
            RiderKind::Broke,
            RiderKind::Good,
        ];
        let first = plan(&mut riders(&kinds), &faults, 9);
        let second = plan(&mut riders(&kinds), &faults, 9);
        let shape = |taps: &[PlannedTap]| -> Vec<_> {
            taps.iter()
                .map(|tap| {
                    (
                        tap.due_ms,
                        tap.request.gate_id,
                        tap.account_id,
                        tap.fault,
                        tap.repeats,
                    )
                })
                .collect()
        };
        assert_eq!(shape(&first), shape(&second));
        assert!(
            first
                .windows(2)
                .all(|pair| pair[0].due_ms <= pair[1].due_ms)
        );
        for (index, tap) in first.iter().enumerate() {
            if let Some(original) = tap.repeats {
                assert!(original < index);
                assert_eq!(first[original].request.code, tap.request.code);
            }
        }
        for fault in Fault::ALL {
            assert!(
                first.iter().any(|tap| tap.fault == Some(fault)),
                "no {}",
                fault.name()
            );
        }
        let other = plan(&mut riders(&kinds), &faults, 10);
        assert_ne!(shape(&first), shape(&other));
    }
}
