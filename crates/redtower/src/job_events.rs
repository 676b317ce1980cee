//! Job events over pub/sub: [`PubSubJobEvents`] (features `jobs` and `pubsub`).

use std::fmt;

use redtower_jobs::{JobEvent, JobEvents, JobId};
use redtower_pubsub::{Channel, PubSub};

/// Publishes a [`Worker`](redtower_jobs::Worker)'s job events through pub/sub, each job on a
/// channel of its own, `<prefix>:<queue>:<job id>` (prefix `job` by default): the channel's
/// history lets a browser's SSE stream resume from `Last-Event-ID` without gaps, and an
/// authorizer (or your own route) decides who may read which job's channel.
///
/// Each event's data is the [`JobEvent`] as JSON, for example
/// `{"queue":"orders","id":"7","name":"ship-order","attempt":1,"type":"progress","value":"packed"}`
/// (`type`: `progress`, `completed`, `retried` or `failed`). A publish that fails is logged
/// (`warn`, target `redtower::job_events`) and the job goes on; the job's state in its queue
/// stays the truth. Bounds are pub/sub's: a history per channel (1,000 events by default) that
/// expires an hour after its last event. Queue names must be valid in channel names
/// (`[A-Za-z0-9_.:@=+/-]`, with the prefix and id at most
/// [`Channel::MAX_LEN`] bytes); events of other queues are not published (logged at `debug`).
///
/// ```
/// use std::time::Duration;
/// use redtower::{job_events::PubSubJobEvents, jobs::{self, Job, JobContext, JobError}};
/// use redtower::pubsub::PubSub;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Ship;
/// impl Job for Ship { const NAME: &'static str = "ship"; }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pubsub = PubSub::memory();
/// let events = PubSubJobEvents::new(pubsub.clone());
/// let store = jobs::MemoryStore::new();
/// let queue = jobs::Queue::<Ship>::new(store.clone(), "ship");
/// let worker = jobs::Worker::new(store, "ship")
///     .events(events.clone())
///     .handle::<Ship>(|_: Ship, ctx: JobContext| async move {
///         ctx.progress("packed").await?;
///         Ok::<_, JobError>(())
///     })
///     .start();
///
/// let id = queue.add(Ship).await?;
/// let channel = events.channel("ship", &id)?; // "job:ship:<id>": serve it over SSE
/// queue.wait::<()>(&id, Duration::from_secs(5)).await?;
/// # let mut latest = None;
/// # for _ in 0..100 { // the completion event is published just after the job settled
/// #     latest = pubsub.latest(channel.as_str()).await?;
/// #     if latest.as_ref().is_some_and(|l| l.offset() >= 2) { break; }
/// #     tokio::time::sleep(Duration::from_millis(10)).await;
/// # }
/// // The channel's history, from its start: what an SSE stream replays.
/// let start = redtower::pubsub::EventId::new(latest.unwrap().epoch(), 0)?;
/// let redtower::pubsub::Replay::Events(history) = pubsub.replay(channel.as_str(), &start, 10).await? else {
///     panic!("no history");
/// };
/// let types: Vec<String> = history
///     .iter()
///     .map(|e| e.json::<serde_json::Value>().unwrap()["type"].as_str().unwrap().to_owned())
///     .collect();
/// assert_eq!(types, ["progress", "completed"]);
/// worker.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PubSubJobEvents {
    pubsub: PubSub,
    prefix: String,
}

impl fmt::Debug for PubSubJobEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PubSubJobEvents")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl PubSubJobEvents {
    /// Publishes on `pubsub`, on channels `job:<queue>:<id>`.
    pub fn new(pubsub: PubSub) -> Self {
        Self {
            pubsub,
            prefix: "job".to_owned(),
        }
    }

    /// The first part of every channel name. Defaults to `job`.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The channel of job `id` of `queue`: where its events are published.
    ///
    /// # Errors
    ///
    /// When the name is not a valid channel (see [`Channel::new`]).
    pub fn channel(
        &self,
        queue: &str,
        id: &JobId,
    ) -> Result<Channel, redtower_pubsub::ChannelError> {
        Channel::new(format!("{}:{queue}:{id}", self.prefix))
    }
}

#[async_trait::async_trait]
impl JobEvents for PubSubJobEvents {
    async fn publish(&self, event: &JobEvent) {
        let channel = match self.channel(&event.queue, &event.id) {
            Ok(c) => c,
            Err(error) => {
                tracing::debug!(target: "redtower::job_events", %error, "job events of this queue are not published");
                return;
            }
        };
        if let Err(error) = self.pubsub.publish(channel.as_str(), event).await {
            tracing::warn!(target: "redtower::job_events", %error, "publishing a job event failed");
        }
    }
}
