//! How a running reconcile is told to stop early: the controller asks (on
//! shutdown, once its deadline has passed), and the engine looks at its
//! step boundaries only: between phases, before each EC2 step of the plan,
//! before each data volume step, before a host's changes and while the smoke
//! test waits. A call already made (an EC2 call, a host's container
//! changes) is never interrupted.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A request to stop, shared by whoever asks and every reconcile that looks.
/// Once made it stays made.
#[derive(Clone, Debug, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    /// Asks every reconcile that shares this to stop at its next step boundary.
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// A reconcile that stopped at a step boundary: it wrote nothing back, and
/// the next reconcile starts from what EC2 and the hosts show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the reconcile stopped {at}: the operator is shutting down")]
pub struct Stopped {
    /// The boundary it stopped at, such as "before the hosts phase".
    pub at: &'static str,
}
