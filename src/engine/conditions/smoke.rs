//! `SmokeTestPassed`: a vote cast through the vote page reached postgres.

#[cfg(test)]
use crate::api::ConditionStatus;
use crate::api::{Condition, Reason};
use crate::host::HostError;

use super::Finding;

/// What casting the smoke test's vote and reading it back gave.
#[derive(Debug)]
pub enum SmokeVote {
    /// The vote page refused the vote.
    CastFailed(HostError),
    /// Reading the vote back from postgres failed.
    ReadFailed(HostError),
    /// The vote was not in postgres within the deadline.
    TimedOut { voter: String, seconds: u64 },
    /// The vote reached postgres.
    Counted { voter: String },
}

/// The smoke test's finding from its vote.
pub fn smoke_finding(vote: &SmokeVote) -> Finding {
    match vote {
        SmokeVote::CastFailed(e) => Finding::not(Reason::VoteNotCounted, format!("casting a vote failed: {e}")),
        SmokeVote::ReadFailed(e) => Finding::not(Reason::VoteNotCounted, format!("reading the vote back failed: {e}")),
        SmokeVote::TimedOut { voter, seconds } => Finding::not(
            Reason::VoteNotCounted,
            format!(
                "vote of {voter} did not reach postgres within {seconds} s: is the worker running and can it resolve redis and db?"
            ),
        ),
        SmokeVote::Counted { voter } => Finding::ok(Reason::VoteCounted, format!("vote of {voter} reached postgres")),
    }
}

/// The smoke test waits until all three tiers are ready.
pub fn waiting_for_tiers() -> Finding {
    Finding::not(Reason::WaitingForTiers, "waits for all three tiers")
}

/// Whether the last smoke test still stands: it passed for this generation
/// and no host changed since.
pub fn still_valid(previous: Option<&Condition>, generation: Option<i64>, changed_hosts: bool) -> bool {
    previous.is_some_and(|c| c.is_true() && c.observed_generation == generation && !changed_hosts)
}

/// The finding kept without a new vote (the last test still stands, or the
/// stack is paused): the previous pass's result.
pub fn kept(previous: Option<&Condition>) -> Finding {
    match previous.filter(|c| c.is_true()) {
        Some(c) => Finding::ok(Reason::VoteCounted, c.message.clone()),
        None => Finding::not(Reason::WaitingForTiers, "paused before a smoke test ran"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(status: ConditionStatus, generation: i64) -> Condition {
        Condition {
            type_: "SmokeTestPassed".into(),
            status,
            reason: "VoteCounted".into(),
            message: "vote of v reached postgres".into(),
            last_transition_time: "2026-01-01T00:00:00Z".into(),
            observed_generation: Some(generation),
        }
    }

    #[test]
    fn each_vote_outcome_has_its_reason() {
        let e = || HostError::Http { url: "http://f/".into(), message: "refused".into() };
        assert_eq!(smoke_finding(&SmokeVote::CastFailed(e())).reason, Reason::VoteNotCounted);
        assert!(smoke_finding(&SmokeVote::ReadFailed(e())).message.starts_with("reading the vote back failed"));
        let f = smoke_finding(&SmokeVote::TimedOut { voter: "v".into(), seconds: 30 });
        assert!(f.message.contains("within 30 s"), "{}", f.message);
        let f = smoke_finding(&SmokeVote::Counted { voter: "v".into() });
        assert_eq!((f.ok, f.reason), (true, Reason::VoteCounted));
        assert_eq!(waiting_for_tiers().reason, Reason::WaitingForTiers);
    }

    #[test]
    fn a_passed_test_stands_for_its_generation_until_a_host_changes() {
        let passed = condition(ConditionStatus::True, 2);
        assert!(still_valid(Some(&passed), Some(2), false));
        assert!(!still_valid(Some(&passed), Some(3), false));
        assert!(!still_valid(Some(&passed), Some(2), true));
        assert!(!still_valid(Some(&condition(ConditionStatus::False, 2)), Some(2), false));
        assert!(!still_valid(None, Some(2), false));
        assert_eq!(kept(Some(&passed)).message, "vote of v reached postgres");
        assert_eq!(kept(Some(&condition(ConditionStatus::False, 2))).reason, Reason::WaitingForTiers);
        assert_eq!(kept(None).message, "paused before a smoke test ran");
    }
}
