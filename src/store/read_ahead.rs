//! Reading the log ahead of a fold: one task reads and decodes pages while
//! the caller folds the previous one, so a replay uses two cores instead of
//! one (`cargo bench --bench history` measures it).

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{EventStore, StoreError};
use crate::event::Event;

/// Events per page read ahead.
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
    let (sender, receiver) = mpsc::channel(PAGES_AHEAD);
    tokio::spawn(async move {
        let mut cursor = after;
        while cursor < until {
            let limit = PAGE.min(usize::try_from(until - cursor).unwrap_or(PAGE));
            let page = store.read(cursor, limit).await;
            let last = match &page {
                Ok(events) => events.last().map(|event| event.seq),
                Err(_) => None,
            };
            let failed = page.is_err();
            if sender.send(page).await.is_err() || failed {
                return;
            }
            match last {
                Some(seq) => cursor = seq,
                None => return,
            }
        }
    });
    receiver
}
