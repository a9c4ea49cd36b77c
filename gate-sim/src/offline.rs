//! The link-loss fault (`docs/gate-sim.md`): a share of the gates lose their link for the
//! middle half of the timed window. Their taps in that time are decided by the gate
//! library alone (`fareway_gate::link::GateLink`, with the engine's signed bundle) and
//! queued on disk; when the link comes back each gate uploads its queue and refreshes
//! its bundle, while the other gates stay online and riders move between both (an entry
//! at an offline gate, the exit at an online one: the exit is charged first, and the
//! entry's upload re-prices the journey).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use fareway_gate::bundle::{self, Body, Bundle};
use fareway_gate::clock::UnixMillis;
use fareway_gate::link::GateLink;
use fareway_gate::offline::OfflineDecision;
use fareway_proto::v1 as pb;

use crate::client::Engine;
use crate::plan::{AdminCall, Expected, Fault, PlannedTap, Rider, RiderKind, admin_id};
use crate::run::{Answer, Recorder};

/// How many times a gate uploads again what the engine asked it to retry.
const UPLOAD_TRIES: usize = 20;

/// The fault's settings.
#[derive(Debug, Clone, Copy)]
pub struct LinkLoss {
    /// The share of gates that lose their link (0 to 1).
    pub share: f64,
    /// The engine's bundle key (its public part): gates open bundles with it.
    pub engine_key: [u8; 32],
}

/// When the link is down, from the start of the timed window: its middle half.
pub fn outage(duration_ms: u64) -> (u64, u64) {
    (duration_ms / 4, duration_ms * 3 / 4)
}

/// When the rides of riders deny-listed in the outage ([`Fault::DeniedInOutage`]) are
/// due: from a while after the outage starts (the simulator deny-lists them then, and
/// the engine must have it before their online rides) to a while before it ends.
pub fn outage_rides(duration_ms: u64) -> (u64, u64) {
    let (from, to) = outage(duration_ms);
    let length = to - from;
    (from + (length / 4).min(2_000), to - length / 8)
}

/// With the link-loss fault, every fourth deny-listed rider is deny-listed only when the
/// gates lose their link (see [`Fault::DeniedInOutage`]): the gates' bundles, taken
/// before, do not know it.
pub fn deny_some_in_outage(riders: &mut [Rider]) {
    let denied = riders
        .iter_mut()
        .filter(|rider| rider.kind == RiderKind::Denied);
    for rider in denied.step_by(4) {
        rider.kind = RiderKind::DeniedInOutage;
    }
}

/// Marks the taps an offline gate decides: at a gate of the `share` that loses its link
/// (drawn from the seed), due in the outage, and neither a tap another repeats nor a
/// fault (their expected answers assume the engine decides them), but for a broke
/// rider's ride (the gate cannot know the balance and lets the rider on, and the upload
/// charges the ride into debt) and a ride of a rider deny-listed in the outage (the
/// gate's bundle is older): both expected, the operator's risk.
pub fn mark_offline(plan: &mut [PlannedTap], share: f64, seed: u64, duration_ms: u64) {
    let (from, to) = outage(duration_ms);
    let repeated: std::collections::HashSet<usize> =
        plan.iter().filter_map(|tap| tap.repeats).collect();
    for (index, tap) in plan.iter_mut().enumerate() {
        tap.offline = loses_link(tap.request.gate_id, share, seed)
            && (from..to).contains(&tap.due_ms)
            && matches!(
                tap.fault,
                None | Some(Fault::OverCreditLimit | Fault::DeniedInOutage)
            )
            && tap.repeats.is_none()
            && !repeated.contains(&index);
        if tap.offline && tap.fault == Some(Fault::OverCreditLimit) {
            tap.expected = Expected::Accepted;
        }
    }
}

/// Whether gate `gate_id` is among the `share` of gates that lose their link.
pub fn loses_link(gate_id: u32, share: f64, seed: u64) -> bool {
    let mixed = (u64::from(gate_id) ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((mixed >> 40) as f64 / (1u64 << 24) as f64) < share
}

/// What the offline gates did.
#[derive(Debug, Clone, Default)]
pub struct OfflineRun {
    /// Gates that lost their link and took taps.
    pub gates: usize,
    /// Taps they decided alone.
    pub decided: usize,
    /// Of those, the ones they opened for.
    pub opened: usize,
    /// Taps the engine answered for good when they were uploaded.
    pub uploaded: usize,
    /// From the link's return to the last gate's queue uploaded, in seconds.
    pub upload_s: f64,
    /// Taps still queued after every try.
    pub left_queued: usize,
    /// Riders deny-listed when the gates lost their link.
    pub denied_in_outage: usize,
    /// Their rides that gates with the older bundle let through, and the engine charged
    /// (the operator's expected risk, not an error).
    pub stale_bundle_rides: usize,
    /// What those rides were charged, minor units.
    pub stale_bundle_fares_minor: i64,
}

/// Plays the offline gates' taps of `plan` (those marked offline): each decided at its
/// due time by its gate alone and queued in `folder`; once the outage ends, every gate
/// uploads its queue at once and refreshes its bundle. Records each tap's answer. The
/// gates' file work (a synced append per tap) runs on a thread of its own, never on the
/// runtime that sends the online taps.
pub(crate) async fn play(
    engine: &Engine,
    plan: &[PlannedTap],
    link_loss: LinkLoss,
    start: Instant,
    duration_ms: u64,
    recorder: Recorder,
    folder: &Path,
) -> anyhow::Result<OfflineRun> {
    let denied_in_outage = lift_denied_in_outage(engine, plan).await?;
    let held = engines_bundle(engine, link_loss).await?;
    let (from, _) = outage(duration_ms);
    let deny = tokio::spawn(deny_at(
        engine.clone(),
        denied_in_outage.clone(),
        start + Duration::from_millis(from),
    ));
    let taps: Vec<(usize, PlannedTap)> = plan
        .iter()
        .enumerate()
        .filter(|(_, tap)| tap.offline)
        .map(|(index, tap)| (index, tap.clone()))
        .collect();
    let folder = folder.to_path_buf();
    let decided = tokio::task::spawn_blocking(move || {
        let gates = open_gates(&taps, link_loss, held, &folder)?;
        decide_all(gates, &taps, start)
    })
    .await??;
    let Decided {
        gates,
        mut opened,
        mut run,
    } = decided;
    let (_, back) = outage(duration_ms);
    tokio::time::sleep_until((start + Duration::from_millis(back)).into()).await;
    deny.await??;
    run.denied_in_outage = denied_in_outage.len();
    let returned = Instant::now();
    let answers = upload_all(engine, gates).await;
    run.upload_s = returned.elapsed().as_secs_f64();
    for (id, result) in answers {
        if let Some((index, decision)) = opened.remove(&id) {
            run.uploaded += 1;
            let answer = Answer::Uploaded {
                opened: decision,
                result,
            };
            if plan[index].fault == Some(Fault::DeniedInOutage)
                && decision
                && let Some(charge) = crate::check::accepted(&answer)
            {
                run.stale_bundle_rides += 1;
                run.stale_bundle_fares_minor += charge.fare;
            }
            recorder.record_unmeasured(index, plan[index].due_ms, answer);
        }
    }
    run.left_queued = opened.len();
    for (index, _) in opened.into_values() {
        let left = Answer::Failed(tonic::Code::Unavailable, "left in its gate's queue".into());
        recorder.record_unmeasured(index, plan[index].due_ms, left);
    }
    Ok(run)
}

/// The riders of [`Fault::DeniedInOutage`] rides, each with the id of its first ride:
/// taken off the deny list before the gates take their bundle (an earlier run may have
/// left them on it), under ids made from that ride's (new in every run).
async fn lift_denied_in_outage(
    engine: &Engine,
    plan: &[PlannedTap],
) -> anyhow::Result<BTreeMap<u64, Vec<u8>>> {
    let mut riders = BTreeMap::new();
    for tap in plan
        .iter()
        .filter(|tap| tap.fault == Some(Fault::DeniedInOutage))
    {
        riders
            .entry(tap.account_id)
            .or_insert_with(|| tap.request.transaction_id.clone());
    }
    set_deny_listing(engine, &riders, false).await?;
    Ok(riders)
}

/// Deny-lists `riders` (by id of their first ride, as [`lift_denied_in_outage`] made)
/// at `when`: the gates that lost their link do not hear of it.
async fn deny_at(
    engine: Engine,
    riders: BTreeMap<u64, Vec<u8>>,
    when: Instant,
) -> anyhow::Result<()> {
    tokio::time::sleep_until(when.into()).await;
    for (rider, denied) in set_deny_listing(&engine, &riders, true).await? {
        anyhow::ensure!(
            denied.accepted,
            "deny-listing rider {rider}: {}",
            denied.refusal_code
        );
    }
    Ok(())
}

/// Puts `riders` on the deny list (`deny`) or takes them off it, all at once (their
/// rides at online readers come soon after: `outage_rides`), each under an id made from
/// its ride's: the engine's receipts.
async fn set_deny_listing(
    engine: &Engine,
    riders: &BTreeMap<u64, Vec<u8>>,
    deny: bool,
) -> anyhow::Result<Vec<(u64, pb::AdminReceipt)>> {
    let call = if deny {
        AdminCall::Deny
    } else {
        AdminCall::Lift
    };
    let admin = engine.admin().await?;
    let mut calls = tokio::task::JoinSet::new();
    for (rider, ride_id) in riders {
        let mut admin = admin.clone();
        let request = pb::AccountRequest {
            transaction_id: admin_id(ride_id, call),
            account_id: *rider,
        };
        let rider = *rider;
        calls.spawn(async move {
            let receipt = if deny {
                admin.add_deny_list_entry(request).await
            } else {
                admin.remove_deny_list_entry(request).await
            };
            Ok::<_, tonic::Status>((rider, receipt?.into_inner()))
        });
    }
    let mut receipts = Vec::new();
    while let Some(call) = calls.join_next().await {
        receipts.push(call??);
    }
    Ok(receipts)
}

/// The offline gates after their taps: the gates, each tap's plan index and whether its
/// gate opened (by transaction id), and the counts so far.
struct Decided {
    gates: HashMap<u32, GateLink>,
    opened: HashMap<u128, (usize, bool)>,
    run: OfflineRun,
}

/// Decides every offline tap at its due time (blocking: a synced append each).
fn decide_all(
    mut gates: HashMap<u32, GateLink>,
    taps: &[(usize, PlannedTap)],
    start: Instant,
) -> anyhow::Result<Decided> {
    let mut run = OfflineRun {
        gates: gates.len(),
        ..OfflineRun::default()
    };
    let mut opened = HashMap::new();
    for (index, tap) in taps {
        let due = start + Duration::from_millis(tap.due_ms);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let gate = gates
            .get_mut(&tap.request.gate_id)
            .ok_or_else(|| anyhow::anyhow!("no offline gate {}", tap.request.gate_id))?;
        let decision = decide(gate, tap)?;
        run.decided += 1;
        run.opened += usize::from(decision);
        opened.insert(id_of(tap), (*index, decision));
    }
    Ok(Decided { gates, opened, run })
}

/// The engine's whole bundle, as a gate without one gets it.
pub(crate) async fn engines_bundle(engine: &Engine, link_loss: LinkLoss) -> anyhow::Result<Bundle> {
    let mut client = engine.gate().await?;
    let request = pb::GetGateBundleRequest {
        have_version: 0,
        have_positions: vec![],
    };
    let answer = client.get_gate_bundle(request).await?.into_inner();
    match bundle::open(&answer.body, &answer.signature, &link_loss.engine_key)? {
        Body::Whole(held) => Ok(held),
        Body::Delta(_) => anyhow::bail!("the engine answered a gate without a bundle with a delta"),
    }
}

/// A gate library per gate that loses its link, each with its queue file in `folder`
/// and the engine's bundle.
fn open_gates(
    taps: &[(usize, PlannedTap)],
    link_loss: LinkLoss,
    held: Bundle,
    folder: &Path,
) -> anyhow::Result<HashMap<u32, GateLink>> {
    // Queues and bundles left by an earlier run are of that run: start empty.
    if folder.exists() {
        std::fs::remove_dir_all(folder)?;
    }
    std::fs::create_dir_all(folder)?;
    let mut gates = HashMap::new();
    for (_, tap) in taps {
        let gate_id = tap.request.gate_id;
        if let std::collections::hash_map::Entry::Vacant(entry) = gates.entry(gate_id) {
            let queue = folder.join(format!("gate-{gate_id}.queue"));
            entry.insert(GateLink::open(
                gate_id,
                link_loss.engine_key,
                held.clone(),
                &queue,
            )?);
        }
    }
    Ok(gates)
}

/// A gate's own decision on a planned tap (queued before it answers): whether it opened.
fn decide(gate: &mut GateLink, tap: &PlannedTap) -> anyhow::Result<bool> {
    let request = &tap.request;
    let kind = crate::plan::kind_of(request);
    let code = request.code.as_ref().map_or("", |code| code.text.as_str());
    let decision = gate.scan(id_of(tap), kind, code, UnixMillis(request.scan_time_ms))?;
    Ok(matches!(decision, OfflineDecision::Open(_)))
}

/// Every offline gate uploads its queue at once (a connection each), again while the
/// engine asks for retries or a call fails (at most [`UPLOAD_TRIES`] times), and
/// refreshes its bundle: every tap's answer, by id. What is still queued after the tries
/// is counted as left.
async fn upload_all(
    engine: &Engine,
    gates: HashMap<u32, GateLink>,
) -> Vec<(u128, pb::OfflineTapResult)> {
    let mut uploads = tokio::task::JoinSet::new();
    for (_, mut gate) in gates {
        let engine = engine.clone();
        uploads.spawn(async move {
            let mut answers = Vec::new();
            for _ in 0..UPLOAD_TRIES {
                if let Ok(mut client) = engine.gate().await
                    && let Ok(uploaded) = gate.sync(&mut client).await
                {
                    answers.extend(uploaded.results);
                }
                if gate.pending().is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            answers
        });
    }
    let mut all = Vec::new();
    while let Some(done) = uploads.join_next().await {
        if let Ok(answers) = done {
            all.extend(answers);
        }
    }
    all
}

/// A planned tap's transaction id.
fn id_of(tap: &PlannedTap) -> u128 {
    let mut id = [0u8; 16];
    let bytes = &tap.request.transaction_id;
    id[16 - bytes.len().min(16)..].copy_from_slice(&bytes[..bytes.len().min(16)]);
    u128::from_be_bytes(id)
}
