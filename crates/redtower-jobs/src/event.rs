//! Queue events, for other processes (and local listeners).

use std::fmt;

use crate::job::JobId;

/// What happened to a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    /// Added (ready or scheduled).
    Added,
    /// Completed.
    Completed,
    /// An attempt failed; another is scheduled.
    Retrying,
    /// Failed for good.
    Dead,
    /// Its worker lost the lease (crashed or too slow); it is ready again.
    Stalled,
    /// Handed back by a worker shutting down.
    Released,
}

impl EventKind {
    pub(crate) fn code(self) -> &'static str {
        match self {
            EventKind::Added => "added",
            EventKind::Completed => "completed",
            EventKind::Retrying => "retrying",
            EventKind::Dead => "dead",
            EventKind::Stalled => "stalled",
            EventKind::Released => "released",
        }
    }

    pub(crate) fn from_code(s: &str) -> Option<Self> {
        [
            EventKind::Added,
            EventKind::Completed,
            EventKind::Retrying,
            EventKind::Dead,
            EventKind::Stalled,
            EventKind::Released,
        ]
        .into_iter()
        .find(|k| k.code() == s)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// One event of a queue's stream ([`Queue::events`](crate::Queue::events)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueEvent {
    /// What happened.
    pub kind: EventKind,
    /// The job.
    pub id: JobId,
    /// The job type's name.
    pub name: String,
    /// The attempt it concerns: for `Completed`, `Retrying` and `Dead` after a failure, the
    /// attempt that ended (from 1); for `Stalled`, `Released` and a job dead of lost leases,
    /// the attempts counted so far (a lost or handed-back attempt does not count); `0` for
    /// `Added`.
    pub attempt: u32,
    /// The error, for `Retrying` and `Dead`.
    pub error: Option<String>,
}
