//! The spare segment: `spare.tmp`, zero-filled and fsynced ahead of use, made
//! by a background thread or by the writer (see [`SpareMaker`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use super::{io_error, Disk, DiskFile, LogError, OpenMode, SpareMaker, SPARE_NAME};

/// Zeros are written in chunks of this size.
const ZERO_CHUNK_BYTES: u64 = 1 << 20;

/// Where and how big spares are made.
#[derive(Debug, Clone)]
pub(super) struct SpareTarget {
    pub disk: Arc<dyn Disk>,
    pub dir: PathBuf,
    pub segment_bytes: u64,
}

impl SpareTarget {
    pub fn path(&self) -> PathBuf {
        self.dir.join(SPARE_NAME)
    }

    /// Makes `spare.tmp`: removes a leftover one, creates the file, writes
    /// zeros to its full size in large chunks, fdatasyncs it and fsyncs the
    /// directory. Returns the open file.
    pub fn make(&self) -> Result<Arc<dyn DiskFile>, LogError> {
        let path = self.path();
        if self.disk.exists(&path) {
            self.disk
                .remove_file(&path)
                .map_err(io_error("remove the leftover", &path))?;
        }
        let file = self
            .disk
            .open(&path, OpenMode::CreateNew)
            .map_err(io_error("create", &path))?;
        let zeros = vec![0u8; ZERO_CHUNK_BYTES.min(self.segment_bytes) as usize];
        let mut offset = 0;
        while offset < self.segment_bytes {
            let len = (self.segment_bytes - offset).min(zeros.len() as u64);
            file.write_at(&zeros[..len as usize], offset)
                .map_err(io_error(
                    format_args!("zero-fill at offset {offset}"),
                    &path,
                ))?;
            offset += len;
        }
        file.sync_data().map_err(io_error("fdatasync", &path))?;
        self.disk
            .sync_dir(&self.dir)
            .map_err(io_error("fsync the directory", &self.dir))?;
        Ok(file)
    }
}

/// The writer's source of spares.
#[derive(Debug)]
pub(super) struct Spares {
    target: SpareTarget,
    kind: SpareKind,
}

#[derive(Debug)]
enum SpareKind {
    Thread {
        slot: Arc<Slot>,
        handle: Option<JoinHandle<()>>,
    },
    Writer {
        ready: Option<Arc<dyn DiskFile>>,
    },
}

/// The background thread's mailbox.
#[derive(Debug, Default)]
struct Slot {
    state: Mutex<SlotState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
enum SlotState {
    /// No spare, and none asked for.
    #[default]
    Idle,
    /// The writer asked for a spare; the thread has not started it.
    Requested,
    /// The thread is making a spare.
    Making,
    /// A spare is ready to take.
    Ready(Arc<dyn DiskFile>),
    /// Making the last spare failed; the writer will try once itself.
    Failed,
    /// The writer is gone; the thread must end.
    Stopping,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, SlotState>) -> MutexGuard<'a, SlotState> {
        self.changed
            .wait(guard)
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Spares {
    /// Starts making the first spare: on a new thread, or now.
    pub fn start(target: SpareTarget, maker: SpareMaker) -> Spares {
        let kind = match maker {
            SpareMaker::BackgroundThread => {
                let slot = Arc::new(Slot::default());
                *slot.lock() = SlotState::Requested;
                let thread_slot = slot.clone();
                let thread_target = target.clone();
                let handle = std::thread::Builder::new()
                    .name("cairn-spare-segment".to_string())
                    .spawn(move || run_thread(&thread_slot, &thread_target))
                    .ok();
                SpareKind::Thread { slot, handle }
            }
            SpareMaker::Writer => SpareKind::Writer {
                // An error here is not the writer's yet: the roll that
                // needs a spare tries again and fails the writer then.
                ready: target.make().ok(),
            },
        };
        Spares { target, kind }
    }

    /// The spare for the next segment: the ready one, waiting while the
    /// thread is making it, or one made now when there is none.
    pub fn take(&mut self) -> Result<Arc<dyn DiskFile>, LogError> {
        match &mut self.kind {
            SpareKind::Thread { slot, handle } => {
                let mut state = slot.lock();
                loop {
                    match std::mem::take(&mut *state) {
                        SlotState::Ready(file) => return Ok(file),
                        waiting @ (SlotState::Requested | SlotState::Making)
                            if handle.is_some() =>
                        {
                            *state = waiting;
                            state = slot.wait(state);
                        }
                        // Idle, Failed, or no thread could be started: the
                        // thread is not touching the spare, so make it here.
                        _ => break,
                    }
                }
            }
            SpareKind::Writer { ready } => {
                if let Some(file) = ready.take() {
                    return Ok(file);
                }
            }
        }
        self.target.make()
    }

    /// Asks for the next spare, once the previous one got its segment name
    /// (so `spare.tmp` is free). With [`SpareMaker::Writer`] this makes it
    /// now; an error is kept for the next `take` to meet again.
    pub fn make_next(&mut self) {
        match &mut self.kind {
            SpareKind::Thread { slot, .. } => {
                *slot.lock() = SlotState::Requested;
                slot.changed.notify_all();
            }
            SpareKind::Writer { ready } => {
                if ready.is_none() {
                    *ready = self.target.make().ok();
                }
            }
        }
    }

    /// The path of `spare.tmp`.
    pub fn path(&self) -> PathBuf {
        self.target.path()
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.target.dir
    }
}

impl Drop for Spares {
    fn drop(&mut self) {
        if let SpareKind::Thread { slot, handle } = &mut self.kind {
            *slot.lock() = SlotState::Stopping;
            slot.changed.notify_all();
            if let Some(handle) = handle.take() {
                // A panic on the thread has nothing left to report to.
                let _ = handle.join();
            }
        }
    }
}

fn run_thread(slot: &Slot, target: &SpareTarget) {
    loop {
        let mut state = slot.lock();
        while !matches!(*state, SlotState::Requested | SlotState::Stopping) {
            state = slot.wait(state);
        }
        if matches!(*state, SlotState::Stopping) {
            return;
        }
        *state = SlotState::Making;
        drop(state);
        let made = target.make();
        let mut state = slot.lock();
        if matches!(*state, SlotState::Stopping) {
            return;
        }
        *state = match made {
            Ok(file) => SlotState::Ready(file),
            Err(_) => SlotState::Failed,
        };
        slot.changed.notify_all();
    }
}
