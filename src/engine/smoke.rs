//! Readiness beyond the containers: the web check (HTTP 200 from vote and
//! result) and the smoke test (a real vote that must reach postgres).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use tracing::warn;

use crate::api::conditions::find_condition;
use crate::api::{ConditionType, Tier, VotingStack, VotingStackSpec};
use crate::host::{HostTarget, SshKey};
use crate::model::ObservedInstance;
use crate::timeline::{self, Stage};

use super::addressing::{url, web_address};
use super::conditions::smoke::{kept, smoke_finding, still_valid, waiting_for_tiers, SmokeVote};
use super::conditions::tiers::{web_check, WebAnswer};
use super::reconcile::{Engine, Run};
use super::stop::Stop;

impl Engine {
    /// HTTP 200 from vote and result, once the frontend's containers run.
    pub(super) async fn check_web(
        &self,
        spec: &VotingStackSpec,
        keepers: &BTreeMap<Tier, ObservedInstance>,
        run: &mut Run,
    ) {
        let Some(address) = keepers.get(&Tier::Frontend).and_then(|f| web_address(spec, f)) else {
            run.status.vote_url = None;
            run.status.result_url = None;
            return;
        };
        let vote_url = url(address, spec.app.ports.vote);
        let result_url = url(address, spec.app.ports.result);
        run.status.vote_url = Some(vote_url.clone());
        run.status.result_url = Some(result_url.clone());
        if !run.findings.tiers.get(&Tier::Frontend).is_some_and(|f| f.ok) {
            return;
        }
        let mut answers = Vec::new();
        for u in [vote_url, result_url] {
            let answer = self.hosts.http_status(&u).await;
            let failed = answer.as_ref().map_or(true, |code| *code != 200);
            answers.push(WebAnswer { url: u, answer });
            if failed {
                break;
            }
        }
        if let Some(finding) = web_check(&answers) {
            run.findings.tiers.insert(Tier::Frontend, finding);
        }
    }

    /// Casts a vote with a unique voter id and waits for it in postgres. Runs
    /// only when something changed; a steady stack keeps its last result.
    pub(super) async fn smoke_test(&self, stack: &VotingStack, key: &SshKey, changed_hosts: bool, run: &mut Run) {
        let all_ready = Tier::ALL.iter().all(|t| run.findings.tiers.get(t).is_some_and(|f| f.ok));
        if !all_ready {
            run.findings.smoke = Some(waiting_for_tiers());
            return;
        }
        let previous = find_condition(&run.status.conditions, ConditionType::SmokeTestPassed);
        if still_valid(previous, stack.metadata.generation, changed_hosts) || stack.spec.paused {
            run.findings.smoke = Some(kept(previous));
            return;
        }
        // The database host as reached this pass, its key pinned.
        let db = run.targets.iter().find(|t| t.tier == Tier::Database).cloned();
        let backend = run.targets.iter().find(|t| t.tier == Tier::Backend).cloned();
        let (Some(vote_url), Some(db)) = (run.status.vote_url.clone(), db) else {
            return;
        };
        let voter = smoke_voter_id();
        let began = SystemTime::now();
        let hosts = SmokeHosts { db: &db, backend: backend.as_ref() };
        let Some(vote) = self.cast_and_find(&vote_url, hosts, key, &voter, &run.stop).await else {
            run.stop_at("while the smoke test waited for its vote");
            return;
        };
        if matches!(vote, SmokeVote::Counted { .. }) {
            timeline::span(&db.stack, Stage::SmokeTest, "", began);
        }
        run.findings.smoke = Some(smoke_finding(&vote));
    }

    /// The smoke vote's fate; None when a stop was asked for while it was
    /// awaited (its vote is taken back out first).
    async fn cast_and_find(
        &self,
        vote_url: &str,
        hosts: SmokeHosts<'_>,
        key: &SshKey,
        voter: &str,
        stop: &Stop,
    ) -> Option<SmokeVote> {
        let db = hosts.db;
        if let Err(e) = self.hosts.cast_vote(vote_url, voter, "a").await {
            return Some(SmokeVote::CastFailed(e));
        }
        // Votes queued ahead of this one (a backlog after the worker was
        // held) are written first, one every 100 ms at most.
        let queued = match hosts.backend {
            Some(backend) => self.hosts.queued_votes(backend, key).await.unwrap_or_else(|e| {
                warn!("{e}");
                0
            }),
            None => 0,
        };
        let timeout = smoke_deadline(self.settings.smoke_timeout, queued);
        let deadline = Instant::now() + timeout;
        loop {
            if stop.requested() {
                self.delete_smoke_votes(db, key).await;
                return None;
            }
            match self.hosts.recorded_vote(db, key, voter).await {
                Ok(Some(v)) if v == "a" => {
                    // Counted: take it back out, so the results show only
                    // real votes, with any an earlier test left behind.
                    self.delete_smoke_votes(db, key).await;
                    return Some(SmokeVote::Counted { voter: voter.to_string() });
                }
                Ok(_) => {}
                Err(e) => return Some(SmokeVote::ReadFailed(e)),
            }
            if Instant::now() >= deadline {
                // The vote may still reach postgres: the next smoke test
                // (this one failed, so one follows) deletes it then.
                self.delete_smoke_votes(db, key).await;
                return Some(SmokeVote::TimedOut { voter: voter.to_string(), seconds: timeout.as_secs() });
            }
            tokio::time::sleep(self.settings.smoke_poll).await;
        }
    }
}

/// The hosts the smoke test reads from: postgres, and redis's queue.
#[derive(Clone, Copy)]
struct SmokeHosts<'a> {
    db: &'a HostTarget,
    backend: Option<&'a HostTarget>,
}

/// Upstream's worker writes at most one vote every 100 ms.
const WORKER_PACE: Duration = Duration::from_millis(100);
/// The longest a backlog may add to the smoke test's wait.
const BACKLOG_WAIT_CAP: Duration = Duration::from_secs(600);

/// How long the smoke test waits for its vote: `timeout`, plus the time
/// upstream's worker needs for the `queued` votes ahead of it (capped).
pub fn smoke_deadline(timeout: Duration, queued: u64) -> Duration {
    let backlog = WORKER_PACE.saturating_mul(u32::try_from(queued).unwrap_or(u32::MAX));
    timeout + backlog.min(BACKLOG_WAIT_CAP)
}

impl Engine {
    /// Deletes every smoke vote from postgres: this test's and those of
    /// earlier tests that reached postgres after their deadline.
    async fn delete_smoke_votes(&self, db: &HostTarget, key: &SshKey) {
        if let Err(e) = self.hosts.delete_smoke_votes(db, key, SMOKE_VOTER_PREFIX).await {
            warn!("smoke test votes stay in postgres until the next smoke test: {e}");
        }
    }
}

/// How every smoke test's voter id begins (and how its leftovers are found).
pub const SMOKE_VOTER_PREFIX: &str = "votingstack-smoke-";

/// A voter id no other smoke test of this process has used, whatever the
/// clock says: the time plus a process-wide sequence and a random suffix
/// (another operator process may test the same stack).
pub fn smoke_voter_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let salt: u32 = rand::random();
    format!("{SMOKE_VOTER_PREFIX}{}-{n}-{salt:08x}", chrono::Utc::now().timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backlog_in_redis_lengthens_the_wait_at_the_worker_s_pace() {
        let t = Duration::from_secs(30);
        assert_eq!(smoke_deadline(t, 0), t);
        assert_eq!(smoke_deadline(t, 250), Duration::from_secs(55));
        assert_eq!(smoke_deadline(t, u64::MAX), Duration::from_secs(630), "capped");
    }
}
