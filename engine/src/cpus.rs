//! CPUs of the ledger's own (`[cpus] ledger` in the configuration, docs/configuration.md).
//!
//! Every tap waits for the ledger's writer (its group's decision and write) and then for
//! the syncer (the sync and the answers). Sharing cores with the gRPC workers, those two
//! threads are preempted mid-group and woken behind a worker's time slice: at half of
//! saturation on two cores a request's queue and decision took about 230 us, against
//! 50-100 us with a core of their own (docs/PERFORMANCE.md, issue 16, thirteenth
//! session). Given CPUs of their own, the writer and the syncer run there, and
//! every other thread of the process (the gRPC workers, RocksDB's flushes and compactions)
//! runs on the CPUs left.
//!
//! The plan is made once, before the process starts any other thread: threads inherit
//! their creator's CPUs, so the main thread moves to the CPUs left first, and each ledger
//! thread moves itself to the ledger's CPUs when it starts.

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// The ledger's CPUs and the CPUs left for everything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuPlan {
    /// Where the ledger's writer and syncer run.
    pub ledger: CpuSet,
    /// Where every other thread runs.
    pub others: CpuSet,
}

/// A plan that cannot be followed on this machine, said in the configuration's terms.
#[derive(Debug, thiserror::Error)]
pub enum CpuPlanError {
    /// A CPU the process may not run on.
    #[error(
        "cpus.ledger lists CPU {cpu}, which this process may not run on (it may run on {allowed})"
    )]
    NotAllowed {
        /// The CPU listed.
        cpu: usize,
        /// The CPUs the process may run on.
        allowed: String,
    },
    /// No CPU left for the gRPC workers.
    #[error(
        "cpus.ledger takes every CPU this process may run on ({allowed}): leave at least one \
         for the gRPC workers"
    )]
    NothingLeft {
        /// The CPUs the process may run on.
        allowed: String,
    },
    /// The system refused to say or set a thread's CPUs.
    #[error("cannot {doing} a thread's CPUs: {cause}")]
    System {
        /// What was asked.
        doing: &'static str,
        /// The system's answer.
        cause: nix::Error,
    },
}

impl CpuPlan {
    /// The plan for `ledger` (CPU numbers as the system counts them) on the CPUs this
    /// thread may run on now; `None` when `ledger` is empty (no CPUs of the ledger's own).
    pub fn new(ledger: &[usize]) -> Result<Option<CpuPlan>, CpuPlanError> {
        if ledger.is_empty() {
            return Ok(None);
        }
        let allowed = this_thread_cpus()?;
        let mut plan = CpuPlan {
            ledger: CpuSet::new(),
            others: allowed,
        };
        for &cpu in ledger {
            if !allowed.is_set(cpu).unwrap_or(false) {
                let allowed = describe(&allowed);
                return Err(CpuPlanError::NotAllowed { cpu, allowed });
            }
            // Both succeed: `cpu` is in range, as `is_set` just said.
            let _ = plan.ledger.set(cpu);
            let _ = plan.others.unset(cpu);
        }
        if cpus_in(&plan.others).next().is_none() {
            let allowed = describe(&allowed);
            return Err(CpuPlanError::NothingLeft { allowed });
        }
        Ok(Some(plan))
    }

    /// Moves the calling thread, and so every thread it starts from now on, off the
    /// ledger's CPUs.
    pub fn keep_this_thread_off_ledger(&self) -> Result<(), CpuPlanError> {
        run_this_thread_on(&self.others)
    }

    /// Moves the calling thread (a ledger thread, as it starts) to the ledger's CPUs. A
    /// refusal is logged and the thread runs where it was: slower answers, not wrong ones.
    pub fn move_this_thread_to_ledger(&self) {
        if let Err(err) = run_this_thread_on(&self.ledger) {
            tracing::warn!(cause = %err, cpus = %describe(&self.ledger), "a ledger thread stays off the ledger's CPUs");
        }
    }
}

fn this_thread_cpus() -> Result<CpuSet, CpuPlanError> {
    sched_getaffinity(Pid::from_raw(0)).map_err(|cause| CpuPlanError::System {
        doing: "read",
        cause,
    })
}

fn run_this_thread_on(cpus: &CpuSet) -> Result<(), CpuPlanError> {
    sched_setaffinity(Pid::from_raw(0), cpus).map_err(|cause| CpuPlanError::System {
        doing: "set",
        cause,
    })
}

/// The CPUs in `set`, lowest first.
fn cpus_in(set: &CpuSet) -> impl Iterator<Item = usize> + '_ {
    (0..CpuSet::count()).filter(|&cpu| set.is_set(cpu).unwrap_or(false))
}

/// The CPUs the calling thread may run on now, lowest first (for tests that must name
/// one of them).
#[cfg(test)]
pub(crate) fn this_thread_cpu_list() -> Vec<usize> {
    cpus_in(&this_thread_cpus().expect("the thread's CPUs")).collect()
}

/// `set` as a list for messages: "0, 1".
fn describe(set: &CpuSet) -> String {
    let cpus: Vec<String> = cpus_in(set).map(|cpu| cpu.to_string()).collect();
    cpus.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `check` on a thread of its own, so that moving it does not move the test
    /// harness's threads.
    fn on_own_thread<T: Send + 'static>(check: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(check)
            .join()
            .expect("the check's thread panicked")
    }

    #[test]
    fn no_ledger_cpus_is_no_plan() {
        assert_eq!(CpuPlan::new(&[]).expect("an empty list is no plan"), None);
    }

    #[test]
    fn a_cpu_the_process_may_not_use_is_refused_by_number() {
        let err = CpuPlan::new(&[CpuSet::count() - 1]).expect_err("the last CPU is not ours");
        let allowed = describe(&this_thread_cpus().expect("our CPUs"));
        assert_eq!(
            err.to_string(),
            format!(
                "cpus.ledger lists CPU {}, which this process may not run on (it may run on \
                 {allowed})",
                CpuSet::count() - 1
            )
        );
    }

    #[test]
    fn every_cpu_for_the_ledger_is_refused() {
        let first = this_thread_cpu_list()[0];
        let message = on_own_thread(move || {
            let mut only = CpuSet::new();
            only.set(first).expect("a CPU in range");
            run_this_thread_on(&only).expect("a thread may move to a CPU of its own");
            CpuPlan::new(&[first])
                .expect_err("nothing left")
                .to_string()
        });
        assert_eq!(
            message,
            format!(
                "cpus.ledger takes every CPU this process may run on ({first}): leave at least \
                 one for the gRPC workers"
            )
        );
    }

    #[test]
    fn threads_started_after_the_plan_run_where_it_says() {
        let ours = this_thread_cpu_list();
        let [first, ..] = ours[..] else {
            unreachable!("a thread runs on some CPU")
        };
        if ours.len() < 2 {
            return; // One CPU: no plan can be made (the refusal has its own test).
        }
        let (ledger_thread, later_thread) = on_own_thread(move || {
            let plan = CpuPlan::new(&[first])
                .expect("a plan")
                .expect("a CPU listed");
            plan.keep_this_thread_off_ledger().expect("moved off");
            let cpus_of_a_thread = |body: fn(&CpuPlan), plan: CpuPlan| {
                std::thread::spawn(move || {
                    body(&plan);
                    describe(&this_thread_cpus().expect("its CPUs"))
                })
                .join()
                .expect("the thread")
            };
            (
                cpus_of_a_thread(CpuPlan::move_this_thread_to_ledger, plan),
                cpus_of_a_thread(|_| {}, plan),
            )
        });
        let rest: Vec<String> = ours[1..].iter().map(usize::to_string).collect();
        assert_eq!(ledger_thread, first.to_string());
        assert_eq!(later_thread, rest.join(", "));
    }
}
