//! Reading the log ahead of a fold: one task reads pages while the caller
//! folds the previous one, so a replay uses two cores instead of one
//! (`cargo bench --bench history` measures it).

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{EventStore, StoreError};
use crate::event::Event;

/// Events (or records) per page read ahead.
const PAGE: usize = 4096;

/// Pages read ahead of the consumer, at most.
const PAGES_AHEAD: usize = 4;

/// Every event with `after < seq <= until`, in pages, read by a task of its
/// own. The channel ends after the last page, or after an error.
pub fn read_ahead(
    store: Arc<dyn EventStore>,
    after: u64,
    until: u64,
) -> mpsc::Receiver<Result<Vec<Arc<Event>>, StoreError>> {
    pages_ahead(store, after, until, |store, cursor, limit| async move {
        store.read(cursor, limit).await
    })
}

/// The stored records of every event with `after < seq <= until`
/// (`EventLog::read_records`), in pages, read by a task of its own.
pub fn read_records_ahead(
    store: Arc<dyn EventStore>,
    after: u64,
    until: u64,
) -> mpsc::Receiver<Result<Vec<Bytes>, StoreError>> {
    pages_ahead(store, after, until, |store, cursor, limit| async move {
        store.read_records(cursor, limit).await
    })
}

/// Pages of what `read(store, after, limit)` answers, from `after` to
/// `until`. Seqs have no gaps, so a page of n items moves the cursor by n.
fn pages_ahead<T, Read, Answer>(
    store: Arc<dyn EventStore>,
    after: u64,
    until: u64,
    read: Read,
) -> mpsc::Receiver<Result<Vec<T>, StoreError>>
where
    T: Send + 'static,
    Read: Fn(Arc<dyn EventStore>, u64, usize) -> Answer + Send + 'static,
    Answer: Future<Output = Result<Vec<T>, StoreError>> + Send,
{
    let (sender, receiver) = mpsc::channel(PAGES_AHEAD);
    tokio::spawn(async move {
        let mut cursor = after;
        while cursor < until {
            let limit = PAGE.min(usize::try_from(until - cursor).unwrap_or(PAGE));
            let page = read(store.clone(), cursor, limit).await;
            let read_count = page.as_ref().map_or(0, Vec::len) as u64;
            let failed = page.is_err();
            if sender.send(page).await.is_err() || failed || read_count == 0 {
                return;
            }
            cursor += read_count;
        }
    });
    receiver
}
