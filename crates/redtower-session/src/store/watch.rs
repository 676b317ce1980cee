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
        let mut st = self.lock();
        if st.entries.len() >= self.max {
            return Err(Error::TooManyWatches { max: self.max });
        }
        if !st.running {
            let Ok(rt) = tokio::runtime::Handle::try_current() else {
                return Err(Error::NoRuntime);
            };
            rt.spawn(run(Arc::downgrade(self), check(), self.interval));
            st.running = true;
        }
        let key = st.next;
        st.next += 1;
        st.entries.insert(key, (id, tx));
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
async fn run(watches: Weak<Watches>, check: Check, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let watched: Vec<(u64, Id)> = {
            let Some(w) = watches.upgrade() else { return };
            let mut st = w.lock();
            st.entries.retain(|_, (_, tx)| !tx.is_closed());
            if st.entries.is_empty() {
                st.running = false;
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
            if !live {
                if let Some((_, tx)) = st.entries.remove(&key) {
                    let _ = tx.send(());
                }
            }
        }
    }
}

/// A future that resolves when a session ends: revoked, logged out, revoked by "log out
/// everywhere" (or "log out other sessions"), evicted by the per-user cap, or expired, on any
/// instance. Returned by [`UserSessions::watch`](crate::UserSessions::watch).
///
/// It is cheap: the store checks all its watched sessions together, in one batched round trip
/// per [watch interval](crate::RedisStore::watch_interval), and a watch is removed when this
/// future is dropped. It also resolves when the store is dropped. While Redis is unreachable
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
