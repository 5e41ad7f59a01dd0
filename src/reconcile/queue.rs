//! A level-triggered work queue of cluster names, and the backoff policy.
//!
//! Like client-go's work queue: a name is queued at most once however often
//! it is added; a name being worked on is never handed to a second worker,
//! and if it is added meanwhile it is queued again when the first worker is
//! done. `add_after` schedules an add (the earliest schedule of a name wins).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Default)]
struct QueueState {
    ready: VecDeque<String>,
    queued: HashSet<String>,
    active: HashSet<String>,
    /// Added while active: queue again on `done`.
    dirty: HashSet<String>,
    /// The pending `add_after` deadline of each name.
    timers: HashMap<String, Instant>,
    /// The first seq of an event about a name that no pass has begun to
    /// handle yet (`add_event`), and of the events a running pass handles.
    unhandled_since: HashMap<String, u64>,
    handling_since: HashMap<String, u64>,
    closed: bool,
}

#[derive(Default)]
pub struct WorkQueue {
    state: Mutex<QueueState>,
    notify: Notify,
}

impl WorkQueue {
    pub fn new() -> Arc<WorkQueue> {
        Arc::new(WorkQueue::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().expect("work queue lock")
    }

    /// Queues a name now.
    pub fn add(&self, name: &str) {
        let mut state = self.lock();
        if state.closed {
            return;
        }
        if state.active.contains(name) {
            state.dirty.insert(name.to_string());
        } else if state.queued.insert(name.to_string()) {
            state.ready.push_back(name.to_string());
            drop(state);
            self.notify.notify_one();
        }
    }

    /// Queues a name because of the event at `seq`; `oldest_unreconciled`
    /// reports the seq until a pass that began after it has finished.
    pub fn add_event(&self, name: &str, seq: u64) {
        {
            let mut state = self.lock();
            let since = state.unhandled_since.entry(name.to_string()).or_insert(seq);
            *since = (*since).min(seq);
        }
        self.add(name);
    }

    /// The first seq of an event whose cluster has not been reconciled since,
    /// if any.
    pub fn oldest_unreconciled(&self) -> Option<u64> {
        let state = self.lock();
        state
            .unhandled_since
            .values()
            .chain(state.handling_since.values())
            .min()
            .copied()
    }

    /// Queues a name after `delay`, unless it is already due earlier.
    pub fn add_after(self: &Arc<Self>, name: &str, delay: Duration) {
        if delay.is_zero() {
            self.add(name);
            return;
        }
        let deadline = Instant::now() + delay;
        {
            let mut state = self.lock();
            if state.closed {
                return;
            }
            match state.timers.get(name) {
                Some(existing) if *existing <= deadline => return,
                _ => {
                    state.timers.insert(name.to_string(), deadline);
                }
            }
        }
        let queue = Arc::clone(self);
        let name = name.to_string();
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            let due = {
                let mut state = queue.lock();
                if state.timers.get(&name) == Some(&deadline) {
                    state.timers.remove(&name);
                    true
                } else {
                    false
                }
            };
            if due {
                queue.add(&name);
            }
        });
    }

    /// The next name to work on; None once the queue is closed.
    pub async fn next(&self) -> Option<String> {
        loop {
            let notified = self.notify.notified();
            {
                let mut state = self.lock();
                if state.closed {
                    return None;
                }
                if let Some(name) = state.ready.pop_front() {
                    state.queued.remove(&name);
                    state.active.insert(name.clone());
                    // The pass that begins now handles every event so far.
                    if let Some(since) = state.unhandled_since.remove(&name) {
                        state.handling_since.insert(name.clone(), since);
                    }
                    if !state.ready.is_empty() {
                        // Wake another worker for the rest.
                        self.notify.notify_one();
                    }
                    return Some(name);
                }
            }
            notified.await;
        }
    }

    /// Marks a name as no longer worked on; queues it again if it was added
    /// meanwhile.
    pub fn done(&self, name: &str) {
        let again = {
            let mut state = self.lock();
            state.active.remove(name);
            state.handling_since.remove(name);
            state.dirty.remove(name)
        };
        if again {
            self.add(name);
        }
    }

    /// Names waiting to be worked on.
    pub fn depth(&self) -> usize {
        self.lock().ready.len()
    }

    /// Wakes every waiting worker with None.
    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_waiters();
    }
}

/// Exponential backoff with jitter: the n-th consecutive failure waits
/// between half and all of `base * 2^(n-1)`, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The delay after `failures` consecutive failures (at least 1), for a
    /// `jitter` drawn uniformly from [0, 1).
    pub fn delay(&self, failures: u32, jitter: f64) -> Duration {
        let exponent = failures.saturating_sub(1).min(31);
        let full = self.base.saturating_mul(1u32 << exponent).min(self.max);
        full / 2 + full.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_name_is_queued_once_and_never_handed_to_two_workers() {
        let queue = WorkQueue::new();
        queue.add("prod");
        queue.add("prod");
        queue.add("staging");
        assert_eq!(queue.depth(), 2);
        assert_eq!(queue.next().await.as_deref(), Some("prod"));
        // Added while active: not handed out again until done.
        queue.add("prod");
        assert_eq!(queue.next().await.as_deref(), Some("staging"));
        assert_eq!(queue.depth(), 0);
        queue.done("prod");
        assert_eq!(queue.depth(), 1);
        assert_eq!(queue.next().await.as_deref(), Some("prod"));
        queue.done("prod");
        queue.done("staging");
        assert_eq!(queue.depth(), 0);
    }

    #[tokio::test]
    async fn an_event_counts_as_unreconciled_until_a_pass_begun_after_it_ends() {
        let queue = WorkQueue::new();
        queue.add_event("prod", 7);
        queue.add_event("prod", 9);
        assert_eq!(queue.oldest_unreconciled(), Some(7));
        let name = queue.next().await.unwrap();
        assert_eq!(queue.oldest_unreconciled(), Some(7), "the pass is running");
        // An event during the pass may be missed by it: it stays unreconciled.
        queue.add_event("prod", 12);
        queue.done(&name);
        assert_eq!(queue.oldest_unreconciled(), Some(12));
        let name = queue.next().await.unwrap();
        queue.done(&name);
        assert_eq!(queue.oldest_unreconciled(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn add_after_fires_at_the_earliest_deadline() {
        let queue = WorkQueue::new();
        let start = Instant::now();
        queue.add_after("prod", Duration::from_secs(10));
        queue.add_after("prod", Duration::from_secs(3));
        queue.add_after("prod", Duration::from_secs(20));
        assert_eq!(queue.next().await.as_deref(), Some("prod"));
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        queue.done("prod");
        // The superseded 10 s timer does not fire again.
        let waited = tokio::time::timeout(Duration::from_secs(60), queue.next()).await;
        assert!(waited.is_err(), "nothing else was scheduled");
    }

    #[tokio::test(start_paused = true)]
    async fn close_wakes_waiting_workers() {
        let queue = WorkQueue::new();
        let waiter = tokio::spawn({
            let queue = queue.clone();
            async move { queue.next().await }
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        queue.close();
        assert_eq!(waiter.await.unwrap(), None);
    }

    /// A worker whose every pass fails requeues with the backoff; on a paused
    /// clock the passes come exactly at the growing delays, then recover.
    #[tokio::test(start_paused = true)]
    async fn a_failing_cluster_is_retried_at_growing_intervals() {
        let queue = WorkQueue::new();
        let backoff = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_millis(800),
        };
        let start = Instant::now();
        queue.add("prod");
        let mut pass_times = Vec::new();
        for failures in 1..=6u32 {
            let name = queue.next().await.unwrap();
            pass_times.push(start.elapsed());
            queue.done(&name);
            queue.add_after(&name, backoff.delay(failures, 0.0));
        }
        let gaps: Vec<u128> = pass_times
            .windows(2)
            .map(|pair| (pair[1] - pair[0]).as_millis())
            .collect();
        // Half of 100, 200, 400, 800, then capped at 800.
        assert_eq!(gaps, [50, 100, 200, 400, 400]);
        // An event meanwhile does not wait for the timer.
        let name = queue.next().await.unwrap();
        queue.done(&name);
        queue.add_after(&name, backoff.delay(7, 0.0));
        let before = start.elapsed();
        queue.add(&name);
        queue.next().await.unwrap();
        assert_eq!(start.elapsed(), before);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let backoff = Backoff {
            base: Duration::from_millis(200),
            max: Duration::from_secs(10),
        };
        assert_eq!(backoff.delay(1, 0.0), Duration::from_millis(100));
        assert_eq!(backoff.delay(1, 1.0), Duration::from_millis(200));
        assert_eq!(backoff.delay(2, 0.5), Duration::from_millis(300));
        assert_eq!(backoff.delay(3, 0.0), Duration::from_millis(400));
        assert_eq!(backoff.delay(10, 1.0), Duration::from_secs(10));
        assert_eq!(backoff.delay(u32::MAX, 0.0), Duration::from_secs(5));
    }
}
