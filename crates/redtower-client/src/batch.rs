//! [`Coalescer`]: concurrent calls that arrive while one batch is in flight leave together as
//! the next batch.
//!
//! Under load a Redis round trip costs more CPU in the client, the kernel and redis-server
//! than the command itself, and on the same few cores that CPU is the application's
//! throughput. fred pipelines what is queued on its connection, but every command still has its
//! own frame, reply, response channel and (for `EVALSHA`) its own socket flush. A coalescer
//! turns the calls that concurrent requests make during one round trip into one command for
//! the next: one `MGET` for many `GET`s, one script call for many checks.
//!
//! There is no timer: a lone call leaves at once (one task hop and one pass of the scheduler
//! later, which lets the calls that are ready in that pass join it), and batches otherwise
//! form while a batch is on the wire, so an idle service pays nothing in latency and a busy
//! one at most the round trip ahead of it. By default one batch is on the wire at a time
//! ([`Coalescer::in_flight`] allows more).

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
};

use tokio::sync::{Semaphore, mpsc, oneshot};

type SendFn<T, R> = dyn Fn(Vec<T>) -> Pin<Box<dyn Future<Output = Vec<R>> + Send>> + Send + Sync;

struct Pending<T, R> {
    item: T,
    tx: oneshot::Sender<R>,
}

/// Batches concurrent calls: `send` receives the items queued while the previous batch was in
/// flight (at most `max_batch`, in arrival order) and returns one result per item, in the same
/// order.
///
/// Cheap to share behind an `Arc`; the batching task starts on the first call, on the Tokio
/// runtime of that call, and ends when the coalescer is dropped.
///
/// ```
/// use redtower_client::batch::Coalescer;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // One "round trip" doubles every number of a batch.
/// let doubler = Coalescer::new(64, |batch: Vec<u32>| async move {
///     batch.into_iter().map(|n| n * 2).collect::<Vec<_>>()
/// });
/// let (a, b) = tokio::join!(doubler.call(1), doubler.call(20));
/// assert_eq!((a.ok(), b.ok()), (Some(2), Some(40)));
/// # }
/// ```
pub struct Coalescer<T, R> {
    send: Arc<SendFn<T, R>>,
    max_batch: usize,
    in_flight: usize,
    queue: OnceLock<mpsc::UnboundedSender<Pending<T, R>>>,
}

impl<T, R> fmt::Debug for Coalescer<T, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coalescer")
            .field("max_batch", &self.max_batch)
            .field("in_flight", &self.in_flight)
            .field("started", &self.queue.get().is_some())
            .finish_non_exhaustive()
    }
}

/// Why a [`Coalescer::call`] has no result.
#[derive(Debug)]
pub enum Uncoalesced<T> {
    /// The batching task is gone (its runtime shut down), or no Tokio runtime runs here: the
    /// item comes back unsent, so the caller can send it on its own.
    NotSent(T),
    /// The item was sent, but its batch was dropped before answering it (its runtime shut
    /// down mid-call, or `send` returned fewer results than items). Whether it ran is unknown.
    Dropped,
}

impl<T, R> Coalescer<T, R>
where
    T: Send + 'static,
    R: Send + 'static,
{
    /// A coalescer whose batches `send` carries (`max_batch` is at least 1).
    pub fn new<F, Fut>(max_batch: usize, send: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<R>> + Send + 'static,
    {
        Self {
            send: Arc::new(move |batch| Box::pin(send(batch))),
            max_batch: max_batch.max(1),
            in_flight: 1,
            queue: OnceLock::new(),
        }
    }

    /// How many batches may be on the wire at once (default 1, at least 1). More lowers the
    /// wait of a call that arrives while a batch is in flight, at light load; fewer makes
    /// larger batches under load.
    #[must_use]
    pub fn in_flight(mut self, n: usize) -> Self {
        self.in_flight = n.max(1);
        self
    }

    /// Queues `item` for the next batch and waits for its result.
    ///
    /// # Errors
    ///
    /// [`Uncoalesced`] when the item could not be sent or its batch did not answer it.
    pub async fn call(&self, item: T) -> Result<R, Uncoalesced<T>> {
        self.queue(item)?.await.ok_or(Uncoalesced::Dropped)
    }

    /// Queues `item` for the next batch at once and returns what to wait on for its result:
    /// [`call`](Self::call) without a future of its own, for callers that keep the wait in a
    /// future they already have. The result is `None` when the batch did not answer the item
    /// ([`Uncoalesced::Dropped`]).
    ///
    /// ```
    /// use redtower_client::batch::Coalescer;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let doubler = Coalescer::new(64, |batch: Vec<u32>| async move {
    ///     batch.into_iter().map(|n| n * 2).collect::<Vec<_>>()
    /// });
    /// let queued = doubler.queue(21).ok().expect("a runtime runs here");
    /// assert_eq!(queued.await, Some(42));
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Uncoalesced::NotSent`] with the item when it could not be queued.
    pub fn queue(&self, item: T) -> Result<Queued<R>, Uncoalesced<T>> {
        self.submit(item).map(Queued)
    }

    fn submit(&self, item: T) -> Result<oneshot::Receiver<R>, Uncoalesced<T>> {
        let queue = match self.queue.get() {
            Some(q) => q,
            None => {
                let Ok(rt) = tokio::runtime::Handle::try_current() else {
                    return Err(Uncoalesced::NotSent(item));
                };
                self.queue.get_or_init(|| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    rt.spawn(run(rx, self.send.clone(), self.max_batch, self.in_flight));
                    tx
                })
            }
        };
        let (tx, rx) = oneshot::channel();
        match queue.send(Pending { item, tx }) {
            Ok(()) => Ok(rx),
            Err(mpsc::error::SendError(p)) => Err(Uncoalesced::NotSent(p.item)),
        }
    }
}

/// A call queued with [`Coalescer::queue`]: resolves to its result, or `None` when its batch
/// did not answer it.
#[derive(Debug)]
#[must_use = "the result arrives only when awaited"]
pub struct Queued<R>(oneshot::Receiver<R>);

impl<R> Future for Queued<R> {
    type Output = Option<R>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<R>> {
        Pin::new(&mut self.0).poll(cx).map(Result::ok)
    }
}

/// Sends a batch whose items may live in different Cluster slots: one `send` per slot (in the
/// items' order within it), all concurrently, and the results back in the items' order. A
/// batch of one slot (always, on a standalone server) is one `send`. `send` returns one
/// result per item; `missing` stands in for any it left out.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // Items are (slot, value); each "script call" sums its slot's values into every item.
/// let items = vec![(7u16, 1), (3, 10), (7, 2), (3, 20)];
/// let out = redtower_client::batch::per_slot(
///     items,
///     |item| item.0,
///     |group: Vec<(u16, i32)>| async move {
///         let sum: i32 = group.iter().map(|i| i.1).sum();
///         vec![sum; group.len()]
///     },
///     || -1,
/// )
/// .await;
/// assert_eq!(out, vec![3, 30, 3, 30]);
/// # }
/// ```
pub async fn per_slot<T, R, F, Fut>(
    items: Vec<T>,
    slot_of: impl Fn(&T) -> u16,
    send: F,
    missing: impl Fn() -> R,
) -> Vec<R>
where
    F: Fn(Vec<T>) -> Fut,
    Fut: Future<Output = Vec<R>>,
{
    let n = items.len();
    let first = items.first().map(&slot_of);
    if items.iter().all(|i| Some(slot_of(i)) == first) {
        let mut out = send(items).await;
        out.truncate(n);
        out.extend((out.len()..n).map(|_| missing()));
        return out;
    }
    let mut groups: Vec<(u16, Vec<usize>, Vec<T>)> = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let slot = slot_of(&item);
        match groups.iter_mut().find(|g| g.0 == slot) {
            Some(g) => {
                g.1.push(i);
                g.2.push(item);
            }
            None => groups.push((slot, vec![i], vec![item])),
        }
    }
    let send = &send;
    let sent = groups
        .into_iter()
        .map(|(_, idx, group)| async move { (idx, send(group).await) });
    let mut out: Vec<Option<R>> = (0..n).map(|_| None).collect();
    for (idx, results) in futures::future::join_all(sent).await {
        for (i, r) in idx.into_iter().zip(results) {
            out[i] = Some(r);
        }
    }
    out.into_iter()
        .map(|r| r.unwrap_or_else(&missing))
        .collect()
}

async fn run<T, R>(
    mut rx: mpsc::UnboundedReceiver<Pending<T, R>>,
    send: Arc<SendFn<T, R>>,
    max_batch: usize,
    in_flight: usize,
) where
    T: Send + 'static,
    R: Send + 'static,
{
    let permits = Arc::new(Semaphore::new(in_flight));
    let mut queued = Vec::with_capacity(max_batch);
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        // Every handle is gone when the channel closes and nothing is queued.
        if rx.recv_many(&mut queued, max_batch).await == 0 {
            return;
        }
        if queued.len() < max_batch {
            // Before the batch leaves, let the tasks that can run now (and the I/O that is
            // ready now) add their calls: one pass of the scheduler, no timer, so a lone call
            // waits for nothing while a busy service sends fewer, larger batches.
            tokio::task::yield_now().await;
            while queued.len() < max_batch {
                match rx.try_recv() {
                    Ok(p) => queued.push(p),
                    Err(_) => break,
                }
            }
        }
        // Calls whose callers gave up (their futures dropped, e.g. by a timeout) are not sent.
        // (Sized once: a batch's items can be kilobytes, which `unzip` would grow step by step.)
        let mut items = Vec::with_capacity(queued.len());
        let mut replies = Vec::with_capacity(queued.len());
        for p in queued.drain(..).filter(|p| !p.tx.is_closed()) {
            items.push(p.item);
            replies.push(p.tx);
        }
        if items.is_empty() {
            continue;
        }
        let batch = send(items);
        let answer = async move {
            let results = batch.await;
            drop(permit);
            for (tx, r) in replies.into_iter().zip(results) {
                // The caller may have given up (its future dropped).
                let _ = tx.send(r);
            }
        };
        if in_flight == 1 {
            answer.await;
        } else {
            tokio::spawn(answer);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_calls_share_batches_and_get_their_own_results() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let seen = batches.clone();
        let c = Arc::new(Coalescer::new(16, move |batch: Vec<usize>| {
            seen.lock().unwrap().push(batch.len());
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                batch.into_iter().map(|n| n * 10).collect::<Vec<_>>()
            }
        }));
        let calls = (0..200).map(|i| {
            let c = c.clone();
            tokio::spawn(async move { (i, c.call(i).await.ok()) })
        });
        for r in futures::future::join_all(calls).await {
            let (i, got) = r.unwrap();
            assert_eq!(got, Some(i * 10));
        }
        let sizes = batches.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 200);
        assert!(sizes.iter().all(|&n| (1..=16).contains(&n)), "{sizes:?}");
        assert!(
            sizes.len() < 200,
            "calls during a round trip share a batch: {sizes:?}"
        );
    }

    #[tokio::test]
    async fn a_lone_call_leaves_at_once() {
        let c = Coalescer::new(8, |batch: Vec<u8>| async move { batch });
        for i in 0..3 {
            assert_eq!(c.call(i).await.ok(), Some(i));
        }
    }

    #[tokio::test]
    async fn calls_ready_in_the_same_scheduler_pass_share_the_first_batch() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let seen = batches.clone();
        let c = Arc::new(Coalescer::new(8, move |batch: Vec<u8>| {
            seen.lock().unwrap().push(batch.clone());
            async move { batch }
        }));
        let first = tokio::spawn({
            let c = c.clone();
            async move {
                let call = c.call(1);
                tokio::pin!(call);
                // The item is queued and the batching task woken; a second caller becomes
                // ready after it, in the same pass of the scheduler.
                assert!(futures::poll!(call.as_mut()).is_pending());
                let second = tokio::spawn({
                    let c = c.clone();
                    async move { c.call(2).await.ok() }
                });
                (call.await.ok(), second.await.unwrap())
            }
        });
        assert_eq!(first.await.unwrap(), (Some(1), Some(2)));
        assert_eq!(*batches.lock().unwrap(), vec![vec![1, 2]]);
    }

    #[tokio::test]
    async fn an_item_without_a_result_is_dropped() {
        let c = Coalescer::new(8, |_batch: Vec<u8>| async move { Vec::<u8>::new() });
        assert!(matches!(c.call(1).await, Err(Uncoalesced::Dropped)));
    }

    #[tokio::test]
    async fn calls_given_up_before_their_batch_are_not_sent() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let (s, g) = (seen.clone(), gate.clone());
        let c = Arc::new(Coalescer::new(8, move |batch: Vec<u8>| {
            s.lock().unwrap().extend(batch.iter().copied());
            let g = g.clone();
            async move {
                g.acquire().await.unwrap().forget();
                batch
            }
        }));
        let call = |n: u8| {
            let c = c.clone();
            tokio::spawn(async move { c.call(n).await.ok() })
        };
        let first = call(1);
        while seen.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        // Queued behind the batch on the wire, then given up.
        let gave_up = tokio::time::timeout(std::time::Duration::from_millis(20), c.call(2)).await;
        assert!(gave_up.is_err());
        gate.add_permits(1);
        assert_eq!(first.await.unwrap(), Some(1));
        let third = call(3);
        gate.add_permits(1);
        // Had 2 been sent, its batch would take this permit and 3 would wait for ever.
        let third = tokio::time::timeout(std::time::Duration::from_secs(10), third).await;
        assert_eq!(third.expect("3 answered").unwrap(), Some(3));
        assert_eq!(*seen.lock().unwrap(), vec![1, 3], "2 was never sent");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn in_flight_allows_that_many_batches_on_the_wire() {
        // Each batch waits until two batches are on the wire: only possible with in_flight(2).
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let c = Arc::new(
            Coalescer::new(1, move |batch: Vec<u8>| {
                let barrier = barrier.clone();
                async move {
                    barrier.wait().await;
                    batch
                }
            })
            .in_flight(2),
        );
        let (a, b) = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            tokio::join!(c.call(1), c.call(2))
        })
        .await
        .expect("two batches in flight at once");
        assert_eq!((a.ok(), b.ok()), (Some(1), Some(2)));
    }

    #[test]
    fn a_call_after_its_runtime_ended_comes_back_unsent() {
        let c = Coalescer::new(8, |batch: Vec<u8>| async move { batch });
        let first = tokio::runtime::Runtime::new().unwrap();
        assert_eq!(first.block_on(c.call(1)).ok(), Some(1));
        drop(first);
        let second = tokio::runtime::Runtime::new().unwrap();
        match second.block_on(c.call(2)) {
            Err(Uncoalesced::NotSent(2)) => {}
            other => panic!("expected the item back, got {other:?}"),
        }
    }

    #[test]
    fn no_runtime_no_batch() {
        let c = Coalescer::new(8, |batch: Vec<u8>| async move { batch });
        // Polled by a bare executor: there is no Tokio runtime to start the task on.
        match futures::executor::block_on(c.call(7)) {
            Err(Uncoalesced::NotSent(7)) => {}
            other => panic!("expected the item back, got {other:?}"),
        }
    }
}
