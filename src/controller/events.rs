//! Kubernetes Events: a condition that flipped, and the outcome of a
//! deletion.

use kube::runtime::events::{Event, EventType};
use kube::Resource;
use tracing::warn;

use crate::api::{ConditionType, VotingStack};
use crate::engine::Outcome;

use super::Context;

/// Longest Event note, in bytes (the API server's limit is 1 KiB).
pub const EVENT_NOTE_LIMIT: usize = 1024;

pub(super) async fn publish_transitions(ctx: &Context, stack: &VotingStack, outcome: &Outcome) {
    for t in &outcome.transitions {
        // A condition turning False is worth a warning when it needs a
        // person: a terminal reason, or the stack as a whole not Ready.
        let needs_attention = !t.status && (t.reason.is_terminal() || t.type_ == ConditionType::Ready);
        let type_ = if needs_attention { EventType::Warning } else { EventType::Normal };
        let note = format!("{} is {}: {}", t.type_, if t.status { "True" } else { "False" }, t.message);
        // The action names the condition, so the Recorder keeps one event
        // series per condition and reason.
        publish_as(ctx, stack, type_, t.reason.as_str(), t.type_.as_str(), &note).await;
    }
}

pub(super) async fn publish(ctx: &Context, stack: &VotingStack, type_: EventType, reason: &str, note: &str) {
    publish_as(ctx, stack, type_, reason, "Delete", note).await
}

/// `note` cut to at most `limit` bytes, on a character boundary.
pub fn cut_note(note: &str, limit: usize) -> &str {
    if note.len() <= limit {
        return note;
    }
    let mut end = limit;
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    &note[..end]
}

async fn publish_as(ctx: &Context, stack: &VotingStack, type_: EventType, reason: &str, action: &str, note: &str) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(cut_note(note, EVENT_NOTE_LIMIT).to_string()),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &stack.object_ref(&())).await {
        warn!(stack = %stack.key(), error = %e, "could not record an Event");
    }
}
