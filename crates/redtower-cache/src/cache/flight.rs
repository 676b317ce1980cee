//! One fill per key in this instance: the first caller of a key leads its fill, the others
//! wait on a watch channel for what it publishes.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::watch;

use super::{Cache, Inner};
use crate::{envelope::Entry, store::EntryKey};

/// What a fill publishes: `None` until done, then the shared entry (or `None`: not shareable).
pub(super) type FlightRx = watch::Receiver<Option<Option<Arc<Entry>>>>;

/// The fills in flight in this instance, by key.
#[derive(Default)]
pub(super) struct Flights {
    by_key: Mutex<HashMap<EntryKey, (u64, FlightRx)>>,
    next_id: AtomicU64,
}

impl Flights {
    fn lock(&self) -> MutexGuard<'_, HashMap<EntryKey, (u64, FlightRx)>> {
        self.by_key.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A caller's part in the fill of a key.
pub(super) enum Role {
    /// It fills the key, and publishes through the guard.
    Leader(FlightGuard),
    /// Another caller fills it: wait for what it publishes.
    Waiter(FlightRx),
}

/// The leader's handle: publishes the fill's result, and ends the flight when dropped (also
/// when the leader is cancelled: its waiters then try again).
pub(super) struct FlightGuard {
    cache: Arc<Inner>,
    key: EntryKey,
    id: u64,
    tx: watch::Sender<Option<Option<Arc<Entry>>>>,
}

impl FlightGuard {
    /// Hands the fill's entry (or `None`: nothing shareable) to the waiters.
    pub(super) fn publish(&self, entry: Option<Arc<Entry>>) {
        self.tx.send_replace(Some(entry));
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let mut flights = self.cache.flights.lock();
        if flights.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            flights.remove(&self.key);
        }
    }
}

impl Cache {
    /// Joins the flight of `key`: as its leader when none is in flight, else as a waiter.
    pub(super) fn join(&self, key: &EntryKey) -> Role {
        let flights = &self.inner.flights;
        let mut by_key = flights.lock();
        if let Some((_, rx)) = by_key.get(key) {
            return Role::Waiter(rx.clone());
        }
        let id = flights.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        by_key.insert(key.clone(), (id, rx));
        Role::Leader(FlightGuard {
            cache: self.inner.clone(),
            key: key.clone(),
            id,
            tx,
        })
    }
}
