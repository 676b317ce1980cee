//! Revocation watches: futures that resolve when a session ends, all checked by one task per
//! store, in one batched round trip per interval.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, Weak},
    task::{Context, Poll},
    time::Duration,
};

use futures::future::BoxFuture;
use tokio::sync::oneshot;
use tower_sessions_core::session::Id;

use crate::{Error, Result};

/// Checks which of a batch of sessions are live: one answer per id, in order, or `None` when
/// the check could not be made (Redis down): the watches then keep waiting.
pub(crate) type Check = Box<dyn Fn(Vec<Id>) -> BoxFuture<'static, Option<Vec<bool>>> + Send + Sync>;

/// The watches of one store.
#[derive(Debug)]
pub(crate) struct Watches {
    state: Mutex<State>,
    max: usize,
    interval: Duration,
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    entries: HashMap<u64, (Id, oneshot::Sender<()>)>,
    /// Whether the checking task runs (it stops when no watch is left).
    running: bool,
}

impl Watches {
    pub(crate) fn new(max: usize, interval: Duration) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            max,
            interval,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A watch of `id`; starts the checking task (with `check`) when none runs.
    pub(crate) fn watch(
        self: &Arc<Self>,
        id: Id,
        check: impl FnOnce() -> Check,
    ) -> Result<SessionWatch> {
        let (tx, rx) = oneshot::channel();
        let rt = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let (key, start) = {
            let mut st = self.lock();
            if st.entries.len() >= self.max {
                return Err(Error::TooManyWatches { max: self.max });
            }
            let key = st.next;
            st.next += 1;
            st.entries.insert(key, (id, tx));
            let start = !std::mem::replace(&mut st.running, true);
            (key, start)
        };
        // Spawned without the lock held: a runtime that is shutting down drops the task (and
        // its `Running`, which takes the lock) at once.
        if start {
            let running = Running {
                watches: Arc::downgrade(self),
                armed: true,
            };
            rt.spawn(run(running, check(), self.interval));
        }
        Ok(SessionWatch {
            rx,
            key,
            watches: Arc::downgrade(self),
            done: false,
        })
    }

    /// How many watches are registered.
    pub(crate) fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

/// The checking task: every `interval`, one check of every watched session; ends when no watch
/// is left or the store is dropped.
///
/// `running` is dropped however the task ends (no watch left, store dropped, or its runtime
/// shut down, even before the task first ran), so the next watch starts a new one.
async fn run(mut running: Running, check: Check, interval: Duration) {
    let watches = running.watches.clone();
    loop {
        tokio::time::sleep(interval).await;
        let watched: Vec<(u64, Id)> = {
            let Some(w) = watches.upgrade() else { return };
            let mut st = w.lock();
            st.entries.retain(|_, (_, tx)| !tx.is_closed());
            if st.entries.is_empty() {
                // Under the lock, so a watch registered from now on starts a new task.
                st.running = false;
                running.armed = false;
                return;
            }
            st.entries.iter().map(|(k, (id, _))| (*k, *id)).collect()
        };
        // One check per session, however many watch it.
        let mut position: HashMap<Id, usize> = HashMap::with_capacity(watched.len());
        let mut unique = Vec::with_capacity(watched.len());
        for (_, id) in &watched {
            position.entry(*id).or_insert_with(|| {
                unique.push(*id);
                unique.len() - 1
            });
        }
        let Some(alive) = check(unique).await else {
            continue;
        };
        let Some(w) = watches.upgrade() else { return };
        let mut st = w.lock();
        for (key, id) in watched {
            let live = position
                .get(&id)
                .and_then(|&i| alive.get(i))
                .copied()
                .unwrap_or(true);
            if !live && let Some((_, tx)) = st.entries.remove(&key) {
                let _ = tx.send(());
            }
        }
    }
}

/// Marks the checking task stopped when it ends (unless it did so itself).
struct Running {
    watches: Weak<Watches>,
    armed: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(w) = self.watches.upgrade() {
            w.lock().running = false;
        }
    }
}

/// A future that resolves when a session ends: revoked, logged out, revoked by "log out
/// everywhere" (or "log out other sessions"), evicted by the per-user cap, or expired, on any
/// instance. Returned by [`UserSessions::watch`](crate::UserSessions::watch).
///
/// It is cheap: the store checks all its watched sessions together, in one batched check per
/// [watch interval](crate::RedisStore::watch_interval) (one round trip on a standalone server,
/// two on a Cluster), and a watch is removed when this future is dropped. It also resolves when the store is dropped. While Redis is unreachable
/// it keeps waiting (an outage ends no session).
#[derive(Debug)]
#[must_use = "a watch does nothing unless awaited"]
pub struct SessionWatch {
    rx: oneshot::Receiver<()>,
    key: u64,
    watches: Weak<Watches>,
    done: bool,
}

impl Future for SessionWatch {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.done {
            return Poll::Ready(());
        }
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(_) => {
                self.done = true;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for SessionWatch {
    fn drop(&mut self) {
        if let Some(w) = self.watches.upgrade() {
            w.lock().entries.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_is_a_send_static_future() {
        fn check<T: Future<Output = ()> + Send + Sync + Unpin + 'static>() {}
        check::<SessionWatch>();
    }

    /// A checking task dropped with its runtime does not leave the store thinking one runs.
    #[test]
    fn a_new_runtime_restarts_the_checks() {
        let watches = Watches::new(10, Duration::from_millis(10));
        let dead_check = || -> Check {
            Box::new(|ids: Vec<Id>| Box::pin(async move { Some(vec![false; ids.len()]) }))
        };
        let first = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let entered = first.enter();
        let pending = watches.watch(Id(1), dead_check).unwrap();
        drop(entered);
        drop(first);
        let second = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        second.block_on(async {
            let w = watches.watch(Id(2), dead_check).unwrap();
            tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .unwrap();
            tokio::time::timeout(Duration::from_secs(5), pending)
                .await
                .unwrap();
        });
    }
}
