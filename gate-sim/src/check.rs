//! After the load: what each tap got against what it had to get, and the invariants
//! checked against the engine through its APIs: every accepted tap charged exactly once
//! (riders' statements), every valid tap accepted, every fault answered as expected, and
//! settlement batches whose totals per provider equal the fares charged.

use std::collections::{BTreeMap, HashMap, HashSet};

use fareway_proto::v1 as pb;
use serde_json::json;

use crate::client::{AdminClient, Engine, SettlementClient};
use crate::plan::{Expected, Fault, PlannedTap};
use crate::run::{Answer, RunResult};

/// The name of an answer in the decision table.
pub fn decision_name(answer: &Answer) -> String {
    match answer {
        Answer::NotSent => "not_sent_simulator_busy".into(),
        Answer::Response(response) if response.decision == pb::TapDecision::Accepted as i32 => {
            "accepted".into()
        }
        Answer::Response(response) => response.reason_code.clone(),
        Answer::Failed(code, _) => format!("status_{}", format!("{code:?}").to_lowercase()),
        Answer::Uploaded { result, .. } => {
            let status = pb::OfflineTapStatus::try_from(result.status).map_or_else(
                |_| "unknown".into(),
                |status| format!("{status:?}").to_lowercase(),
            );
            match result.reason_code.as_str() {
                "" => format!("offline_{status}"),
                reason => format!("offline_{status}_{reason}"),
            }
        }
    }
}

/// What an accepted tap charged: its fare, and whether the answer repeated an earlier
/// one (a replay charges nothing of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Charge {
    pub(crate) fare: i64,
    replay: bool,
}

/// The charge of an answer that accepted its tap: online, or uploaded by an offline gate
/// and charged (or corrected) by the engine.
pub(crate) fn accepted(answer: &Answer) -> Option<Charge> {
    match answer {
        Answer::Response(response) if response.decision == pb::TapDecision::Accepted as i32 => {
            Some(Charge {
                fare: response.fare_minor,
                replay: response.replay,
            })
        }
        // A duplicate without a reason was charged by an earlier upload of the same tap
        // whose answer its gate lost: that is the tap's charge (the simulator saw no
        // other answer to it).
        Answer::Uploaded { result, .. } => match pb::OfflineTapStatus::try_from(result.status) {
            Ok(pb::OfflineTapStatus::Charged | pb::OfflineTapStatus::Corrected) => Some(Charge {
                fare: result.fare_minor,
                replay: false,
            }),
            Ok(pb::OfflineTapStatus::Duplicate) if result.reason_code.is_empty() => Some(Charge {
                fare: result.fare_minor,
                replay: false,
            }),
            _ => None,
        },
        _ => None,
    }
}

/// Whether a tap got what it had to.
pub fn as_expected(plan: &[PlannedTap], run: &RunResult, index: usize) -> bool {
    let answer = &run.results[index].answer;
    match plan[index].expected {
        Expected::Accepted => accepted(answer).is_some(),
        Expected::Rejected(reason) => {
            matches!(answer, Answer::Response(response) if response.reason_code == reason)
        }
        Expected::Status(code) => matches!(answer, Answer::Failed(got, _) if *got == code),
        Expected::SameAsOriginal => {
            let Some(original) = plan[index].repeats else {
                return false;
            };
            match (answer, &run.results[original].answer) {
                (Answer::Response(repeat), Answer::Response(first)) => {
                    repeat.replay
                        && repeat.decision == first.decision
                        && repeat.reason_code == first.reason_code
                        && repeat.fare_minor == first.fare_minor
                        && repeat.journey_id == first.journey_id
                }
                _ => false,
            }
        }
    }
}

/// Per fault kind: injected, and how many got exactly the expected outcome.
pub fn faults(plan: &[PlannedTap], run: &RunResult) -> BTreeMap<Fault, (u64, u64)> {
    let mut counts: BTreeMap<Fault, (u64, u64)> = Fault::ALL.iter().map(|f| (*f, (0, 0))).collect();
    for (index, tap) in plan.iter().enumerate() {
        let Some(fault) = tap.fault else { continue };
        if matches!(run.results[index].answer, Answer::NotSent) {
            continue;
        }
        let entry = counts.entry(fault).or_default();
        entry.0 += 1;
        if as_expected(plan, run, index) {
            entry.1 += 1;
        }
    }
    counts
}

/// What the simulator saw charged: per transaction id, the first answer "accepted" in
/// plan order, and its fare. Usually that is the planned tap itself, and its repeats are
/// replays: a gate retry (same id) gets the recorded answer, and a duplicate scan (new id,
/// same code) is answered from the original's record and charges nothing of its own. But
/// when the engine refused the first try at once (`RESOURCE_EXHAUSTED` under overload),
/// the repeat is the first tap the engine saw: recorded and charged (a fresh answer, not a
/// replay). An answer to the planned tap itself may be a replay too: a gate that lost the
/// first answer to a crash retries and gets the recorded one, still one charge.
fn charged_taps(plan: &[PlannedTap], run: &RunResult) -> Vec<(usize, i64)> {
    let mut seen = HashSet::new();
    plan.iter()
        .enumerate()
        .filter_map(|(index, tap)| {
            let response = accepted(&run.results[index].answer)?;
            let under_a_new_id = tap.repeats.is_some_and(|original| {
                plan[original].request.transaction_id != tap.request.transaction_id
            });
            if under_a_new_id && response.replay {
                return None;
            }
            seen.insert(&tap.request.transaction_id)
                .then_some((index, response.fare))
        })
        .collect()
}

/// Most problems a finding lists: enough to start from, few enough to read.
const PROBLEMS_MAX: usize = 20;

/// What the riders' statements say besides each tap's own line: per rider, the fare
/// corrections the engine made (late taps re-pricing a day), as settlement amounts
/// (positive when the rider paid more), and what each service day cost the rider in all.
#[derive(Debug, Default)]
pub struct Statements {
    /// Per rider, the sum of the fare corrections.
    pub corrections: BTreeMap<u64, i64>,
    /// Per rider, the taps' charges and the corrections of them, each at its time
    /// (ms since the epoch): grouped into the fares file's service days by the check.
    pub charges: BTreeMap<u64, Vec<(u64, i64)>>,
    /// Riders whose statements hold travel from before this run (a rerun of a seed on
    /// one engine): their days began before the simulator saw them, so their scan-order
    /// pricing cannot be checked.
    pub earlier_travel: HashSet<u64>,
}

/// Every accepted tap appears exactly once in its rider's statement with minus its fare
/// (a tap that charged nothing may have no line), and no rider's statement has a tap the
/// simulator did not see accepted. Also returns what else the statements say.
pub async fn charged_exactly_once(
    admin: &AdminClient,
    plan: &[PlannedTap],
    run: &RunResult,
) -> anyhow::Result<(serde_json::Value, Statements)> {
    let charged = charged_taps(plan, run);
    let by_rider = charges_by_rider(plan, &charged);
    let sim_ids: HashSet<Vec<u8>> = plan
        .iter()
        .map(|tap| tap.request.transaction_id.clone())
        .collect();
    // A fare correction takes the time of the fare it corrects: this run's are at or
    // after its first scan.
    let run_start = plan
        .iter()
        .map(|tap| tap.request.scan_time_ms)
        .min()
        .unwrap_or(0);
    let mut problems = Vec::new();
    let mut lines_checked = 0u64;
    let mut statements = Statements::default();
    for (account_id, expected) in &by_rider {
        let read = statement_of(admin, *account_id, &sim_ids, run_start).await?;
        lines_checked += read.lines;
        note_wrong_charges(&mut problems, *account_id, expected, &read.seen);
        note_unseen_charges(&mut problems, *account_id, expected, &read.seen, plan, run);
        statements.corrections.insert(*account_id, read.corrections);
        statements.charges.insert(*account_id, read.charges);
        if read.earlier_travel {
            statements.earlier_travel.insert(*account_id);
        }
    }
    let json = json!({
        "ok": problems.is_empty(),
        "accepted_taps": charged.len(),
        "riders_checked": by_rider.len(),
        "statement_lines_checked": lines_checked,
        "problems": problems,
    });
    Ok((json, statements))
}

/// Every rider's day costs what pricing the rider's accepted taps in scan order costs
/// (`reprice`, the simulator's own pricing from the fares file), whatever order the taps
/// reached the engine in (offline gates upload theirs late).
pub fn scan_order_prices(
    fares: &fareway_gate::fares::FareTable,
    plan: &[PlannedTap],
    run: &RunResult,
    statements: &Statements,
) -> serde_json::Value {
    let mut taps_by_rider: BTreeMap<u64, Vec<_>> = BTreeMap::new();
    for (index, _) in charged_taps(plan, run) {
        let tap = &plan[index];
        let scan = fareway_gate::clock::UnixMillis(tap.request.scan_time_ms);
        taps_by_rider
            .entry(tap.account_id)
            .or_default()
            .push((scan, crate::plan::kind_of(&tap.request)));
    }
    let mut problems = Vec::new();
    for (account_id, taps) in &taps_by_rider {
        if statements.earlier_travel.contains(account_id) {
            continue;
        }
        let mut expected = crate::reprice::day_totals(fares, taps);
        expected.retain(|_, total| *total != 0);
        let mut charged: BTreeMap<u64, i64> = BTreeMap::new();
        for (time_ms, amount) in statements.charges.get(account_id).into_iter().flatten() {
            let day = fares.periods(fareway_gate::clock::UnixMillis(*time_ms)).day;
            *charged.entry(u64::from(day)).or_default() += amount;
        }
        charged.retain(|_, total| *total != 0);
        if expected != charged && problems.len() < PROBLEMS_MAX {
            problems.push(format!(
                "rider {account_id}: days cost {charged:?} but their taps in scan order cost {expected:?}"
            ));
        }
    }
    let skipped = statements.earlier_travel.len();
    json!({
        "ok": problems.is_empty(),
        "riders_checked": taps_by_rider.len() - skipped.min(taps_by_rider.len()),
        "riders_with_earlier_travel_not_checked": skipped,
        "fare_corrections_minor": statements.corrections.values().sum::<i64>(),
        "problems": problems,
    })
}

/// Per rider, the fare of each tap the simulator saw charged, by transaction id.
fn charges_by_rider(
    plan: &[PlannedTap],
    charged: &[(usize, i64)],
) -> BTreeMap<u64, HashMap<Vec<u8>, i64>> {
    let mut by_rider: BTreeMap<u64, HashMap<Vec<u8>, i64>> = BTreeMap::new();
    for (index, fare) in charged {
        by_rider
            .entry(plan[*index].account_id)
            .or_default()
            .insert(plan[*index].request.transaction_id.clone(), *fare);
    }
    by_rider
}

/// A broke rider let through by an offline gate is charged into debt when the tap is
/// uploaded: the engine's next bundle deny-lists the rider, and a top-up that clears
/// the debt lifts it (made here, after the window, so that the run's other taps of the
/// rider are decided as planned). `Null` without the link-loss fault.
pub async fn debts(
    engine: &Engine,
    link_loss: Option<crate::offline::LinkLoss>,
    plan: &[PlannedTap],
    run: &RunResult,
) -> anyhow::Result<serde_json::Value> {
    let Some(link_loss) = link_loss else {
        return Ok(serde_json::Value::Null);
    };
    let riders: BTreeMap<u64, Vec<u8>> = plan
        .iter()
        .enumerate()
        .filter(|(_, tap)| tap.offline && tap.fault == Some(Fault::OverCreditLimit))
        .filter(|(index, _)| accepted(&run.results[*index].answer).is_some())
        .map(|(_, tap)| (tap.account_id, tap.request.transaction_id.clone()))
        .collect();
    let mut problems = Vec::new();
    let denied = crate::offline::engines_bundle(engine, link_loss)
        .await?
        .denied;
    for rider in riders.keys().filter(|rider| !denied.contains(rider)) {
        problems.push(format!(
            "rider {rider} in debt is not on the next bundle's deny list"
        ));
    }
    let mut admin = engine.admin().await?;
    for (rider, tap_id) in &riders {
        let balance = admin
            .get_balance(pb::GetBalanceRequest { account_id: *rider })
            .await?
            .into_inner()
            .balance_minor;
        if balance >= 0 {
            problems.push(format!(
                "rider {rider} let through offline is not in debt ({balance})"
            ));
            continue;
        }
        // One top-up per rider, its id derived from the rider's offline tap.
        let top_up = pb::TopUpRequest {
            transaction_id: crate::plan::admin_id(tap_id, crate::plan::AdminCall::TopUp),
            account_id: *rider,
            amount_minor: -balance,
        };
        admin.top_up(top_up).await?;
    }
    let denied = crate::offline::engines_bundle(engine, link_loss)
        .await?
        .denied;
    for rider in riders.keys().filter(|rider| denied.contains(rider)) {
        problems.push(format!(
            "rider {rider} is still deny-listed after a top-up cleared the debt"
        ));
    }
    Ok(json!({
        "ok": problems.is_empty(),
        "riders_in_debt": riders.len(),
        "problems": problems,
    }))
}

/// A rider's statement, as the checks read it.
#[derive(Debug, Default)]
struct StatementRead {
    /// Per transaction id of the simulator's taps, the lines and the sum of their amounts.
    seen: HashMap<Vec<u8>, (u32, i64)>,
    /// How many lines of the simulator's taps there are.
    lines: u64,
    /// The fare corrections' sum, as a settlement amount.
    corrections: i64,
    /// What the simulator's taps and their corrections cost, each at its time.
    charges: Vec<(u64, i64)>,
    /// Whether the statement holds travel from before this run.
    earlier_travel: bool,
}

impl StatementRead {
    /// Takes in one statement line: a line of the simulator's taps (`sim_ids`), a fare
    /// correction of this run's fares (at or after `run_start`), or anything else (a top
    /// up, or travel from before the run).
    fn add(&mut self, line: &pb::StatementLine, sim_ids: &HashSet<Vec<u8>>, run_start: u64) {
        if sim_ids.contains(&line.transaction_id) {
            let entry = self.seen.entry(line.transaction_id.clone()).or_default();
            entry.0 += 1;
            entry.1 += line.amount_minor;
            self.lines += 1;
        } else if line.kind == "fare_correction" && line.time_ms >= run_start {
            // A correction of a fare of this run, by a late tap of this run. It may come
            // before the rider's first charged tap: a late entry makes an entry that
            // charged nothing charge the journey it left unexited. An earlier run's were
            // settled before this run's baseline close.
            self.corrections -= line.amount_minor;
        } else {
            self.earlier_travel |= line.kind != "top_up";
            return;
        }
        self.charges.push((line.time_ms, -line.amount_minor));
    }
}

/// A rider's statement lines of the simulator's taps (`sim_ids`) and of fare
/// corrections, read page by page.
async fn statement_of(
    admin: &AdminClient,
    account_id: u64,
    sim_ids: &HashSet<Vec<u8>>,
    run_start: u64,
) -> anyhow::Result<StatementRead> {
    let mut admin = admin.clone();
    let mut read = StatementRead::default();
    let mut after_sequence = 0;
    loop {
        let page = admin
            .get_statement(pb::GetStatementRequest {
                account_id,
                after_sequence,
                limit: 1_000,
            })
            .await?
            .into_inner();
        if page.lines.is_empty() {
            break;
        }
        for line in &page.lines {
            read.add(line, sim_ids, run_start);
        }
        // 0 marks the last page.
        if page.next_after_sequence == 0 {
            break;
        }
        after_sequence = page.next_after_sequence;
    }
    Ok(read)
}

/// Notes each tap the simulator saw charged whose statement lines are not one line of
/// minus its fare (or none, for a fare of 0).
fn note_wrong_charges(
    problems: &mut Vec<String>,
    account_id: u64,
    expected: &HashMap<Vec<u8>, i64>,
    seen: &HashMap<Vec<u8>, (u32, i64)>,
) {
    for (id, fare) in expected {
        let ok = match seen.get(id) {
            Some((1, amount)) => *amount == -fare,
            None => *fare == 0,
            Some(_) => false,
        };
        if !ok && problems.len() < PROBLEMS_MAX {
            problems.push(format!(
                "rider {account_id}: tap {} charged {fare} but the statement has {:?}",
                fareway_gate::hex::encode(id),
                seen.get(id)
            ));
        }
    }
}

/// Notes each statement line of a tap the simulator did not see accepted, with what it
/// sent under that id and what it heard back.
fn note_unseen_charges(
    problems: &mut Vec<String>,
    account_id: u64,
    expected: &HashMap<Vec<u8>, i64>,
    seen: &HashMap<Vec<u8>, (u32, i64)>,
    plan: &[PlannedTap],
    run: &RunResult,
) {
    for (id, (count, amount)) in seen {
        if !expected.contains_key(id) && problems.len() < PROBLEMS_MAX {
            // What the simulator sent under that id, and what it heard back.
            let sent: Vec<String> = plan
                .iter()
                .enumerate()
                .filter(|(_, tap)| &tap.request.transaction_id == id)
                .map(|(index, tap)| {
                    format!(
                        "#{index} {:?} {}",
                        tap.fault,
                        decision_name(&run.results[index].answer)
                    )
                })
                .collect();
            problems.push(format!(
                "rider {account_id}: statement has {count} line(s) of {amount} for tap {} the simulator did not see accepted (sent: {})",
                fareway_gate::hex::encode(id),
                sent.join(", ")
            ));
        }
    }
}

/// Closes a batch per provider (after the baseline close made before the run) and pulls
/// them into `folder`: their totals per provider must equal the fares the simulator saw
/// charged.
pub async fn settlement(
    engine: &Engine,
    settlement: &mut SettlementClient,
    close_id: u128,
    plan: &[PlannedTap],
    run: &RunResult,
    statements: &Statements,
    folder: &std::path::Path,
) -> anyhow::Result<serde_json::Value> {
    let closed = settlement
        .close_batches(pb::CloseBatchesRequest {
            close_id: close_id.to_be_bytes().to_vec(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let key = settlement
        .get_signing_key(pb::GetSigningKeyRequest {})
        .await?
        .into_inner();
    let public_key: [u8; 32] = key
        .public_key
        .as_slice()
        .try_into()
        .map_err(|_| anyhow::anyhow!("the settlement key is not 32 bytes"))?;
    std::fs::create_dir_all(folder)?;
    let pulled = pull_batches(engine, &closed.batches, folder, &public_key).await?;
    let mut charged: BTreeMap<u16, i64> = BTreeMap::new();
    let mut provider_of = HashMap::new();
    for (index, fare) in charged_taps(plan, run) {
        *charged.entry(plan[index].provider_id).or_default() += fare;
        provider_of.insert(plan[index].account_id, plan[index].provider_id);
    }
    // Late taps corrected fares: the corrections settle like the fares they correct.
    for (account_id, corrected) in &statements.corrections {
        if let Some(provider) = provider_of.get(account_id) {
            *charged.entry(*provider).or_default() += corrected;
        }
    }
    let (by_provider, ok) = compare_by_provider(&pulled.netted, &charged);
    Ok(json!({
        "ok": ok,
        "by_provider": by_provider,
        "files": pulled.files,
        "signing_key_id": key.key_id,
    }))
}

/// The batches pulled: their net totals per provider, and the files written.
#[derive(Debug, Default)]
struct PulledBatches {
    netted: BTreeMap<u16, i64>,
    files: Vec<String>,
}

/// Pulls each batch into `folder`, checking its signature with `public_key`.
async fn pull_batches(
    engine: &Engine,
    batches: &[pb::Batch],
    folder: &std::path::Path,
    public_key: &[u8; 32],
) -> anyhow::Result<PulledBatches> {
    let mut pulled_batches = PulledBatches::default();
    for batch in batches {
        let mut client = engine.settlement().await?;
        let stream = client
            .pull_batch(pb::PullBatchRequest {
                batch_id: batch.batch_id,
            })
            .await?
            .into_inner();
        let pulled = fareway_gate::settlement::pull::pull_to_folder(
            stream,
            batch.batch_id,
            folder,
            public_key,
            |_, _| {},
        )
        .await?;
        *pulled_batches
            .netted
            .entry(batch.provider_id as u16)
            .or_default() += pulled.manifest.net_minor;
        pulled_batches.files.push(pulled.file.display().to_string());
    }
    Ok(pulled_batches)
}

/// Per provider, the batches' net total against the fares charged; and whether they are
/// equal for every provider.
fn compare_by_provider(
    netted: &BTreeMap<u16, i64>,
    charged: &BTreeMap<u16, i64>,
) -> (Vec<serde_json::Value>, bool) {
    let providers: std::collections::BTreeSet<u16> =
        netted.keys().chain(charged.keys()).copied().collect();
    let by_provider: Vec<serde_json::Value> = providers
        .iter()
        .map(|provider| {
            json!({
                "provider": provider,
                "batches_net_minor": netted.get(provider).copied().unwrap_or(0),
                "fares_charged_minor": charged.get(provider).copied().unwrap_or(0),
            })
        })
        .collect();
    let ok = providers
        .iter()
        .all(|p| netted.get(p).copied().unwrap_or(0) == charged.get(p).copied().unwrap_or(0));
    (by_provider, ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Fault;
    use crate::plan::tests::planned;
    use crate::run::TapResult;

    /// A run whose taps got these answers, in plan order.
    fn run_of<const N: usize>(answers: [Answer; N]) -> RunResult {
        let results = answers.into_iter().map(|answer| TapResult {
            answer,
            latency_us: 1,
            due_ms: 0,
        });
        RunResult {
            results: results.collect(),
            elapsed: std::time::Duration::ZERO,
            offline: None,
        }
    }

    fn accepted_with(fare_minor: i64, replay: bool) -> Answer {
        Answer::Response(pb::TapResponse {
            decision: pb::TapDecision::Accepted as i32,
            fare_minor,
            replay,
            ..Default::default()
        })
    }

    /// A regression: under 3x overload the engine shed first tries, the gates' retries
    /// with the same ids were recorded, and the run reported those charges as taps "the
    /// simulator did not see accepted".
    #[test]
    fn a_retry_accepted_after_its_first_try_was_shed_is_the_charge() {
        let plan = [planned(7, None), planned(7, Some(0))];
        let shed = Answer::Failed(tonic::Code::ResourceExhausted, "overloaded".into());
        let run = run_of([shed, accepted_with(200, false)]);
        assert_eq!(charged_taps(&plan, &run), vec![(1, 200)]);
    }

    #[test]
    fn a_duplicate_scan_under_a_new_id_charges_only_when_the_original_was_shed() {
        let mut duplicate = planned(7, Some(0));
        duplicate.request.transaction_id = 8u128.to_be_bytes().to_vec();
        duplicate.fault = Some(Fault::DuplicateScan);
        let plan = [planned(7, None), duplicate];
        // The engine answers the duplicate with the original's record.
        let run = run_of([accepted_with(200, false), accepted_with(200, true)]);
        assert_eq!(charged_taps(&plan, &run), vec![(0, 200)]);
        // The original was shed: the duplicate is a new tap, recorded and charged.
        let shed = Answer::Failed(tonic::Code::ResourceExhausted, "overloaded".into());
        let run = run_of([shed, accepted_with(200, false)]);
        assert_eq!(charged_taps(&plan, &run), vec![(1, 200)]);
    }

    /// A regression: in a cluster demo a resent entry arrived after the rider's next
    /// entry, which then charged the first journey as unexited: the correction was the
    /// rider's first line of the run, and was taken for travel from an earlier run (the
    /// settlement check failed by its amount).
    #[test]
    fn a_correction_before_the_riders_first_charged_tap_is_this_runs() {
        let sim_ids: HashSet<Vec<u8>> = [vec![7u8]].into();
        let line = |transaction_id: Vec<u8>, kind: &str, time_ms: u64, amount_minor: i64| {
            pb::StatementLine {
                transaction_id,
                kind: kind.into(),
                time_ms,
                amount_minor,
                ..Default::default()
            }
        };
        let mut read = StatementRead::default();
        read.add(&line(vec![1], "top_up", 10, 5_000), &sim_ids, 1_000);
        read.add(
            &line(vec![2], "fare_correction", 1_500, -900),
            &sim_ids,
            1_000,
        );
        read.add(&line(vec![7], "metro_exit", 1_600, -300), &sim_ids, 1_000);
        assert_eq!(read.corrections, 900);
        assert!(!read.earlier_travel);
        assert_eq!(read.charges, vec![(1_500, 900), (1_600, 300)]);
        // Travel before the run's first scan: an earlier run's.
        read.add(&line(vec![3], "bus", 500, -200), &sim_ids, 1_000);
        assert!(read.earlier_travel);
    }

    #[test]
    fn a_tap_and_its_replayed_retry_are_one_charge() {
        let plan = [planned(7, None), planned(7, Some(0))];
        let run = run_of([accepted_with(200, false), accepted_with(200, true)]);
        assert_eq!(charged_taps(&plan, &run), vec![(0, 200)]);
    }
}
