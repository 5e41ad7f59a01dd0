//! Catch-up subscriptions: every event from a seq on, first from the store,
//! then live, with no gap and no duplicate at the switch.
//!
//! The subscription listens to the store's broadcast *before* it reads, so an
//! event committed while it reads is both in what it reads and in what it
//! hears; it keeps a cursor (`next_seq`) and drops what it has already passed.
//! When it falls behind the broadcast buffer (`Lagged`), or hears an event past
//! its cursor, it reads the store again from the cursor. The store is the
//! source of truth; the broadcast only saves a read when the subscriber keeps up.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::broadcast;

use super::{EventStore, StoreError};
use crate::event::Event;

/// How many events one catch-up read takes.
const READ_BATCH: usize = 1024;

/// Every event with `seq >= from_seq`, in order. See the module docs.
pub struct Subscription {
    store: Arc<dyn EventStore>,
    /// The seq of the next event to yield.
    next_seq: u64,
    live: broadcast::Receiver<Arc<Event>>,
    /// Events read from the store and not yet yielded.
    buffered: VecDeque<Arc<Event>>,
}

impl Subscription {
    pub fn new(store: Arc<dyn EventStore>, from_seq: u64) -> Subscription {
        // Listen first, then read: nothing committed in between is missed.
        let live = store.subscribe_committed();
        Subscription {
            store,
            next_seq: from_seq.max(1),
            live,
            buffered: VecDeque::new(),
        }
    }

    /// The seq the next event will have.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The next event; waits for it when the subscriber is at the head. `None`
    /// once the store has closed and every committed event was yielded. After
    /// an error, calling again retries from the same place.
    pub async fn next(&mut self) -> Result<Option<Arc<Event>>, StoreError> {
        loop {
            if let Some(event) = self.buffered.pop_front() {
                return Ok(Some(self.advance(event)));
            }
            if self.next_seq <= self.store.head().seq {
                let events = self.store.read(self.next_seq - 1, READ_BATCH).await?;
                self.buffered.extend(events);
                continue;
            }
            match self.live.recv().await {
                Ok(event) if event.seq < self.next_seq => {}
                Ok(event) if event.seq == self.next_seq => return Ok(Some(self.advance(event))),
                // Past the cursor: something was missed; the store has it.
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => {
                    if self.next_seq > self.store.head().seq {
                        return Ok(None);
                    }
                }
            }
        }
    }

    fn advance(&mut self, event: Arc<Event>) -> Arc<Event> {
        self.next_seq = event.seq + 1;
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support;
    use crate::store::{AppendRequest, ExpectedVersion};

    fn request(stream: &str, count: usize) -> AppendRequest {
        test_support::request(stream, ExpectedVersion::Any, &vec!["payload"; count])
    }

    /// Subscribers that start at the beginning, in the middle and at the head,
    /// while writers keep appending, each see exactly the log from their start:
    /// no gap, no duplicate, in order. A broadcast buffer of 4 makes the slow
    /// ones lag and fall back to reading the store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn subscribers_see_every_event_once_while_appends_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::store::StoreConfig::new(dir.path());
        config.broadcast_capacity = 4;
        let store: Arc<dyn EventStore> = crate::store::open(config).unwrap();
        for _ in 0..20 {
            store.append(request("before", 5)).await.unwrap();
        }
        let total: u64 = 100 + 8 * 40 * 3;
        let writers: Vec<_> = (0..8)
            .map(|writer| {
                let store = store.clone();
                tokio::spawn(async move {
                    for _ in 0..40 {
                        store
                            .append(request(&format!("w{writer}"), 3))
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        let subscribers: Vec<_> = [1, 50, 101]
            .into_iter()
            .map(|from| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut subscription = Subscription::new(store, from);
                    let mut seen = Vec::new();
                    while subscription.next_seq() <= total {
                        let event = subscription.next().await.unwrap().unwrap();
                        seen.push(event.seq);
                        if seen.len() % 64 == 0 {
                            // A slow consumer: let the broadcast overflow.
                            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                        }
                    }
                    (from, seen)
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
        for subscriber in subscribers {
            let (from, seen) = subscriber.await.unwrap();
            let expected: Vec<u64> = (from..=total).collect();
            assert_eq!(seen, expected, "the subscriber from seq {from}");
        }
        let all = store.read(0, usize::MAX).await.unwrap();
        assert_eq!(all.len() as u64, total);
    }

    #[tokio::test]
    async fn a_subscription_ends_when_the_store_closes() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::open(crate::store::StoreConfig::new(dir.path())).unwrap();
        store.append(request("a", 2)).await.unwrap();
        let mut subscription = Subscription::new(store.clone(), 1);
        assert_eq!(subscription.next().await.unwrap().unwrap().seq, 1);
        assert_eq!(subscription.next().await.unwrap().unwrap().seq, 2);
        store.close().await;
        drop(store);
        assert!(subscription.next().await.unwrap().is_none());
    }
}
