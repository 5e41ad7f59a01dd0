//! `SimDisk`: an in-memory disk for seeded power-loss tests, in the manner of
//! TigerBeetle's and FoundationDB's simulators.
//!
//! Every random choice comes from one `StdRng` seeded with the `u64` given to
//! [`SimDisk::new`], so the same seed and the same sequence of calls give the
//! same files, byte for byte. Calls from several threads at once are
//! serialized by a mutex; their order, and so the result, is then up to the
//! scheduler.
//!
//! # The model
//!
//! - **Files.** A file (an inode) has *durable* contents, what a power loss
//!   cannot take away, and *current* contents, what reads see. Every
//!   `write_at` and `set_len` since the last sync is also kept in a list of
//!   pending changes. `sync_data` and `sync_all` (the same thing here) replay
//!   the pending changes onto the durable contents and clear the list.
//! - **Names.** The disk keeps a *current* and a *durable* map from path to
//!   inode. Every creation (`open` with [`OpenMode::CreateNew`]), rename and
//!   removal changes the current map at once and is appended, in order, to
//!   one journal of pending name operations. `sync_dir(dir)` makes durable
//!   every pending operation on a name in `dir`, together with the earlier
//!   operations they depend on through a shared directory (so a rename from
//!   `a/` to `b/` is made durable as a whole by a sync of either directory,
//!   and with it every earlier pending operation in `a/` and `b/`). Open
//!   handles follow the inode, not the name, as in POSIX: a renamed or
//!   removed file stays readable and writable through them.
//! - **Directories** are created durably: [`Disk::create_dir_all`] adds the
//!   directory and its ancestors to both the current and the durable state at
//!   once, and no crash takes them away. Directories cannot be removed or
//!   renamed.
//! - **Power loss** ([`SimDisk::crash`]). A random prefix of the pending name
//!   operations is kept, in order (a journaling file system commits metadata
//!   in order), and the rest are forgotten: a forgotten creation means the
//!   file is gone, a forgotten rename means the file is back under its old
//!   name with whatever data it had, a forgotten removal means the file is
//!   back. Then, for every file still named, each pending change is replayed
//!   onto the durable contents in order, with a fate of its own:
//!   - a write is dropped, kept, or torn (one chance in three each). A torn
//!     write keeps each of its 512-byte sectors (aligned on the file's
//!     offsets) independently, new or old; and its growth of the file's size
//!     reaches the disk or not, by a coin of its own: when it does, sectors
//!     past the old end that kept their old state read as zeros, and when it
//!     does not, the file ends at the last new sector (or where it ended).
//!   - a `set_len` is kept or dropped, one chance in two.
//!
//!   The result becomes both the durable and the current contents. Files no
//!   name refers to any more are forgotten. Every handle opened before the
//!   crash fails with `EIO` on every call from then on; callers reopen.
//! - **Kill -9** ([`SimDisk::crash_keep_all`]): the process dies, the kernel
//!   does not. Every handle fails with `EIO` as after a crash, but nothing is
//!   lost and nothing becomes durable: the pending changes stay pending, so a
//!   later [`SimDisk::crash`] may still drop them.
//! - **Sync as a no-op** ([`SimDisk::set_sync_is_noop`]): `sync_data`,
//!   `sync_all` and `sync_dir` return `Ok` (and count as syncs) but make
//!   nothing durable, so a test can prove that its durability check fails.
//! - **Faults** ([`SimDisk::inject`]): `ENOSPC` or `EIO` from `write_at`,
//!   from `sync_data`/`sync_all` ([`FaultOp::SyncData`]) and from `sync_dir`,
//!   as `io::Error::from_raw_os_error`, so `raw_os_error()` tells them apart.
//!   A failed write applies nothing. A failed `sync_dir` makes nothing
//!   durable; the name operations stay pending and a later successful
//!   `sync_dir` makes them durable. A failed file sync makes nothing durable
//!   and, as Linux does since "fsyncgate" (it marks the pages clean after
//!   reporting the error), the changes it covered are no longer certain to
//!   ever reach the disk: reads still see them, but the next successful sync
//!   replays each of them with a random fate, as a crash would, and a crash
//!   before that sync does the same. Faults and the no-op mode survive
//!   crashes; [`SimDisk::clear_faults`] and `set_sync_is_noop(false)` end
//!   them.
//!
//! # Errors for misuse (as POSIX gives them)
//!
//! `ENOENT` for opening (read or read-write), renaming or removing a missing
//! file, or for a name in a missing directory; `EEXIST` for `CreateNew` on an
//! existing name; `EISDIR` for opening, renaming or removing a directory as a
//! file; `ENOTDIR` when a path goes through a file; `EBADF` for writing
//! through a handle opened with [`OpenMode::Read`] and `EINVAL` for `set_len`
//! through one; `EFBIG` for a file longer than [`MAX_FILE_LEN`]. Every error
//! carries its raw OS error and no path.
//!
//! # Limits of the model
//!
//! - No page cache eviction, no reordering of data between files beyond what
//!   the per-write fates give, no bit rot, no misdirected writes, and a failed
//!   write never applies part of itself.
//! - `set_len` and `CreateNew` never fail by injection; `rename` and
//!   `remove_file` neither.
//! - `sync_all` makes no more durable than `sync_data`: in particular it does
//!   not make the file's name durable (POSIX does not promise it; ext4 does).
//! - A torn sector is never half written: sectors are atomic.
//!
//! # Layout
//!
//! - [`SimDisk`]: the public face; a clone shares the same disk. It holds
//!   `State` behind an `Arc<Mutex<_>>` and implements [`Disk`].
//! - [`Fault`], [`FaultOp`], [`FaultError`]: what [`SimDisk::inject`] arms.
//! - [`SyncCounts`]: how many syncs succeeded, for tests that count them.
//! - `State`: the names (current, durable, and the journal of `NameOp`s in
//!   between), the inodes, the faults, the random generator and the
//!   generation that crashes bump.
//! - `Inode`: a file's durable and current contents and its list of
//!   `PendingChange`s; `apply_change` replays a change for certain and
//!   `settle_change` with a random fate.
//! - `SimFile`: a handle; it remembers the generation it was opened in and
//!   fails with `EIO` once the disk crashed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Disk, DiskFile, OpenMode};

/// The unit in which a write not yet synced is torn at a crash.
pub const SECTOR_SIZE: u64 = 512;

/// The largest length a simulated file may reach (1 GiB): a write or
/// `set_len` beyond it fails with `EFBIG` instead of exhausting the memory of
/// the test.
pub const MAX_FILE_LEN: u64 = 1 << 30;

/// The operations a fault can hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    /// `DiskFile::write_at`.
    Write,
    /// `DiskFile::sync_data` and `DiskFile::sync_all`.
    SyncData,
    /// `Disk::sync_dir`.
    SyncDir,
    /// Any of the above.
    Any,
}

impl FaultOp {
    /// Whether a fault armed for `self` hits the operation `op`.
    fn matches(self, op: FaultOp) -> bool {
        self == FaultOp::Any || self == op
    }
}

/// The error a fault returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultError {
    /// `ENOSPC`: no space left on the device.
    NoSpace,
    /// `EIO`: an input/output error.
    Io,
}

impl FaultError {
    /// The `io::Error` of this fault, with its raw OS error set.
    fn to_io_error(self) -> io::Error {
        match self {
            FaultError::NoSpace => os_error(libc::ENOSPC),
            FaultError::Io => os_error(libc::EIO),
        }
    }
}

/// A fault to inject with [`SimDisk::inject`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// The operations the fault hits.
    pub op: FaultOp,
    /// The error those operations return.
    pub error: FaultError,
    /// How many matching operations succeed before the fault fires.
    pub after: u64,
    /// Whether the fault keeps firing until [`SimDisk::clear_faults`]; if
    /// not, it fires once and is gone.
    pub sticky: bool,
}

/// How many syncs returned `Ok` since the disk was made (including those
/// made while sync was a no-op; failed ones do not count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyncCounts {
    /// Successful `sync_data` and `sync_all` calls.
    pub files: u64,
    /// Successful `sync_dir` calls.
    pub dirs: u64,
}

/// An in-memory disk whose power can be cut; see the module documentation.
/// A clone shares the same disk.
#[derive(Clone)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for SimDisk {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = lock(&self.state);
        formatter
            .debug_struct("SimDisk")
            .field("seed", &state.seed)
            .field("generation", &state.generation)
            .field("files", &state.current_names.len())
            .field("pending_name_ops", &state.pending_name_ops.len())
            .finish()
    }
}

impl SimDisk {
    /// An empty disk whose random choices all come from `seed`.
    pub fn new(seed: u64) -> SimDisk {
        SimDisk {
            state: Arc::new(Mutex::new(State {
                seed,
                rng: StdRng::seed_from_u64(seed),
                generation: 0,
                directories: BTreeSet::new(),
                current_names: BTreeMap::new(),
                durable_names: BTreeMap::new(),
                pending_name_ops: Vec::new(),
                inodes: BTreeMap::new(),
                next_inode: 0,
                faults: Vec::new(),
                sync_is_noop: false,
                sync_counts: SyncCounts::default(),
            })),
        }
    }

    /// The seed the disk was made with.
    pub fn seed(&self) -> u64 {
        lock(&self.state).seed
    }

    /// Simulates a power loss and reboots in place: what was not made
    /// durable is dropped, kept or torn at random, and every open handle
    /// fails from now on.
    pub fn crash(&self) {
        lock(&self.state).lose_power();
    }

    /// Simulates `kill -9`: every open handle fails from now on, but every
    /// write, creation, rename and removal stays as it was, durable or not.
    pub fn crash_keep_all(&self) {
        lock(&self.state).generation += 1;
    }

    /// Makes every sync return `Ok` without making anything durable (`true`),
    /// or do its work again (`false`).
    pub fn set_sync_is_noop(&self, noop: bool) {
        lock(&self.state).sync_is_noop = noop;
    }

    /// Arms a fault. Faults are checked in the order they were injected; an
    /// operation that fails does not count toward the `after` of the others.
    pub fn inject(&self, fault: Fault) {
        lock(&self.state).faults.push(fault);
    }

    /// Disarms every fault.
    pub fn clear_faults(&self) {
        lock(&self.state).faults.clear();
    }

    /// The current names of the files (not subdirectories) in `dir`, sorted.
    pub fn file_names(&self, dir: &Path) -> Vec<String> {
        names_in(&lock(&self.state).current_names, dir)
    }

    /// The durable names of the files in `dir`, sorted: those a crash now
    /// cannot take away.
    pub fn durable_file_names(&self, dir: &Path) -> Vec<String> {
        names_in(&lock(&self.state).durable_names, dir)
    }

    /// The durable length of the file currently named `path`, or `None` if
    /// no file has that name. The name itself may not be durable yet.
    pub fn durable_len(&self, path: &Path) -> Option<u64> {
        self.durable_contents(path)
            .map(|contents| contents.len() as u64)
    }

    /// The durable contents of the file currently named `path`, or `None` if
    /// no file has that name.
    pub fn durable_contents(&self, path: &Path) -> Option<Vec<u8>> {
        let state = lock(&self.state);
        let inode = state.current_names.get(path)?;
        state.inodes.get(inode).map(|inode| inode.durable.clone())
    }

    /// How many syncs have succeeded so far.
    pub fn sync_counts(&self) -> SyncCounts {
        lock(&self.state).sync_counts
    }
}

impl Disk for SimDisk {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        let ancestors: Vec<&Path> = path.ancestors().collect();
        for ancestor in &ancestors {
            if state.current_names.contains_key(*ancestor) {
                return Err(if *ancestor == path {
                    os_error(libc::EEXIST)
                } else {
                    os_error(libc::ENOTDIR)
                });
            }
        }
        for ancestor in ancestors {
            state.directories.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = lock(&self.state);
        state.check_directory(dir)?;
        let mut names = names_in(&state.current_names, dir);
        names.extend(
            state
                .directories
                .iter()
                .filter(|child| child.parent() == Some(dir))
                .filter_map(|child| child.file_name())
                .map(|name| name.to_string_lossy().into_owned()),
        );
        names.sort();
        Ok(names)
    }

    fn exists(&self, path: &Path) -> bool {
        let state = lock(&self.state);
        state.directories.contains(path) || state.current_names.contains_key(path)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn DiskFile>> {
        let mut state = lock(&self.state);
        state.check_file_path(path)?;
        let existing = state.current_names.get(path).copied();
        let inode = match (mode, existing) {
            (OpenMode::Read | OpenMode::ReadWrite, Some(inode)) => inode,
            (OpenMode::Read | OpenMode::ReadWrite, None) => return Err(os_error(libc::ENOENT)),
            (OpenMode::CreateNew, Some(_)) => return Err(os_error(libc::EEXIST)),
            (OpenMode::CreateNew, None) => {
                let inode = InodeId(state.next_inode);
                state.next_inode += 1;
                state.inodes.insert(inode, Inode::default());
                state.record_name_op(NameOp::Create {
                    path: path.to_path_buf(),
                    inode,
                });
                inode
            }
        };
        Ok(Arc::new(SimFile {
            state: Arc::clone(&self.state),
            path: path.to_path_buf(),
            inode,
            writable: mode != OpenMode::Read,
            generation: state.generation,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.check_file_path(from)?;
        state.check_file_path(to)?;
        let Some(inode) = state.current_names.get(from).copied() else {
            return Err(os_error(libc::ENOENT));
        };
        if from == to {
            return Ok(());
        }
        state.record_name_op(NameOp::Rename {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            inode,
        });
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.check_file_path(path)?;
        if !state.current_names.contains_key(path) {
            return Err(os_error(libc::ENOENT));
        }
        state.record_name_op(NameOp::Remove {
            path: path.to_path_buf(),
        });
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.check_directory(dir)?;
        state.take_fault(FaultOp::SyncDir)?;
        if !state.sync_is_noop {
            state.make_directory_durable(dir);
        }
        state.sync_counts.dirs += 1;
        Ok(())
    }
}

/// Everything behind a [`SimDisk`]'s mutex.
struct State {
    seed: u64,
    rng: StdRng,
    /// Bumped by every crash; a handle from an older generation fails.
    generation: u64,
    /// Every directory; directories are always durable.
    directories: BTreeSet<PathBuf>,
    current_names: BTreeMap<PathBuf, InodeId>,
    durable_names: BTreeMap<PathBuf, InodeId>,
    /// The name operations between `durable_names` and `current_names`, in
    /// the order they were made.
    pending_name_ops: Vec<NameOp>,
    /// Every file a name or an open handle may refer to.
    inodes: BTreeMap<InodeId, Inode>,
    next_inode: u64,
    /// The armed faults, in the order they were injected.
    faults: Vec<Fault>,
    sync_is_noop: bool,
    sync_counts: SyncCounts,
}

impl State {
    /// Fails with the error of the first armed fault that fires for `op`,
    /// or counts `op` toward every matching fault's `after`.
    fn take_fault(&mut self, op: FaultOp) -> io::Result<()> {
        let firing = self
            .faults
            .iter()
            .position(|fault| fault.op.matches(op) && fault.after == 0);
        if let Some(index) = firing {
            let fault = self.faults[index];
            if !fault.sticky {
                self.faults.remove(index);
            }
            return Err(fault.error.to_io_error());
        }
        for fault in self.faults.iter_mut().filter(|fault| fault.op.matches(op)) {
            fault.after -= 1;
        }
        Ok(())
    }

    /// Fails unless `dir` is a directory.
    fn check_directory(&self, dir: &Path) -> io::Result<()> {
        if self.directories.contains(dir) {
            Ok(())
        } else if self.current_names.contains_key(dir) {
            Err(os_error(libc::ENOTDIR))
        } else {
            Err(os_error(libc::ENOENT))
        }
    }

    /// Fails unless `path` can name a file: it is not a directory, it has a
    /// file name, and its parent is a directory.
    fn check_file_path(&self, path: &Path) -> io::Result<()> {
        if self.directories.contains(path) {
            return Err(os_error(libc::EISDIR));
        }
        if path.file_name().is_none() {
            return Err(os_error(libc::EINVAL));
        }
        self.check_directory(parent_of(path))
    }

    /// Applies `op` to the current names and journals it.
    fn record_name_op(&mut self, op: NameOp) {
        op.apply(&mut self.current_names);
        self.pending_name_ops.push(op);
    }

    /// Makes durable every pending name operation in `dir` and the earlier
    /// ones they depend on through a shared directory.
    ///
    /// Walking the journal backwards, an operation is made durable if it
    /// touches a directory in the set, and then its directories join the set
    /// for the operations before it. So for every directory, the durable
    /// operations in it are a prefix of its operations, which is what lets
    /// them be applied to the durable names ahead of the pending ones (the
    /// pending operations before them touch other directories only).
    fn make_directory_durable(&mut self, dir: &Path) {
        let mut synced_directories = BTreeSet::from([dir.to_path_buf()]);
        let mut durable = vec![false; self.pending_name_ops.len()];
        for (index, op) in self.pending_name_ops.iter().enumerate().rev() {
            let directories = op.directories();
            if directories
                .iter()
                .any(|directory| synced_directories.contains(*directory))
            {
                durable[index] = true;
                synced_directories
                    .extend(directories.iter().map(|directory| directory.to_path_buf()));
            }
        }
        let ops = std::mem::take(&mut self.pending_name_ops);
        for (op, is_durable) in ops.into_iter().zip(durable) {
            if is_durable {
                op.apply(&mut self.durable_names);
            } else {
                self.pending_name_ops.push(op);
            }
        }
    }

    /// The power loss of [`SimDisk::crash`].
    fn lose_power(&mut self) {
        self.generation += 1;
        let kept = self.rng.random_range(0..=self.pending_name_ops.len());
        for op in self.pending_name_ops.drain(..).take(kept) {
            op.apply(&mut self.durable_names);
        }
        self.current_names = self.durable_names.clone();
        let named: BTreeSet<InodeId> = self.durable_names.values().copied().collect();
        self.inodes.retain(|inode, _| named.contains(inode));
        for inode in self.inodes.values_mut() {
            inode.lose_power(&mut self.rng);
        }
    }
}

/// The identity of a file, which open handles and names refer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct InodeId(u64);

/// A change to the names of a directory (two directories for a rename).
#[derive(Debug)]
enum NameOp {
    Create {
        path: PathBuf,
        inode: InodeId,
    },
    /// Replaces `to` if it exists.
    Rename {
        from: PathBuf,
        to: PathBuf,
        inode: InodeId,
    },
    Remove {
        path: PathBuf,
    },
}

impl NameOp {
    /// The directories whose names the operation changes.
    fn directories(&self) -> Vec<&Path> {
        match self {
            NameOp::Create { path, .. } | NameOp::Remove { path } => vec![parent_of(path)],
            NameOp::Rename { from, to, .. } => vec![parent_of(from), parent_of(to)],
        }
    }

    fn apply(&self, names: &mut BTreeMap<PathBuf, InodeId>) {
        match self {
            NameOp::Create { path, inode } => {
                names.insert(path.clone(), *inode);
            }
            NameOp::Rename { from, to, inode } => {
                names.remove(from);
                names.insert(to.clone(), *inode);
            }
            NameOp::Remove { path } => {
                names.remove(path);
            }
        }
    }
}

/// A file's contents.
#[derive(Debug, Default)]
struct Inode {
    /// What a power loss cannot take away.
    durable: Vec<u8>,
    /// What reads see.
    current: Vec<u8>,
    /// The changes since the last successful sync, in order.
    pending: Vec<PendingChange>,
}

#[derive(Debug)]
struct PendingChange {
    change: Change,
    /// Whether a sync failed after this change was made: it is then no
    /// longer certain to reach the disk, even by a later successful sync.
    after_failed_sync: bool,
}

#[derive(Debug)]
enum Change {
    Write { offset: u64, data: Vec<u8> },
    SetLen { len: u64 },
}

impl Inode {
    fn change(&mut self, change: Change) {
        apply_change(&mut self.current, &change);
        self.pending.push(PendingChange {
            change,
            after_failed_sync: false,
        });
    }

    /// A successful sync: replays the pending changes onto the durable
    /// contents, each for certain unless a sync failed after it.
    fn sync(&mut self, rng: &mut StdRng) {
        for pending in self.pending.drain(..) {
            if pending.after_failed_sync {
                settle_change(&mut self.durable, &pending.change, rng);
            } else {
                apply_change(&mut self.durable, &pending.change);
            }
        }
    }

    /// A failed sync: makes nothing durable, and the pending changes lose
    /// their certainty of ever becoming durable.
    fn fail_sync(&mut self) {
        for pending in &mut self.pending {
            pending.after_failed_sync = true;
        }
    }

    /// A power loss: replays each pending change with a random fate; the
    /// result is what reads see from now on.
    fn lose_power(&mut self, rng: &mut StdRng) {
        for pending in self.pending.drain(..) {
            settle_change(&mut self.durable, &pending.change, rng);
        }
        self.current = self.durable.clone();
    }
}

/// Applies `change` to `contents` as it was made.
fn apply_change(contents: &mut Vec<u8>, change: &Change) {
    match change {
        Change::Write { offset, data } => {
            let start = *offset as usize;
            let end = start + data.len();
            if contents.len() < end {
                contents.resize(end, 0);
            }
            contents[start..end].copy_from_slice(data);
        }
        Change::SetLen { len } => contents.resize(*len as usize, 0),
    }
}

/// Applies `change` to `contents` with a random fate: a write is dropped,
/// kept or torn per sector, a `set_len` kept or dropped.
fn settle_change(contents: &mut Vec<u8>, change: &Change, rng: &mut StdRng) {
    match change {
        Change::Write { offset, data } => match rng.random_range(0..3u8) {
            0 => {}
            1 => apply_change(contents, change),
            _ => tear_write(contents, *offset, data, rng),
        },
        Change::SetLen { .. } => {
            if rng.random_bool(0.5) {
                apply_change(contents, change);
            }
        }
    }
}

/// Applies a torn write: each sector it touches is new or old by a coin, and
/// its growth of the file reaches the disk or not by another.
fn tear_write(contents: &mut Vec<u8>, offset: u64, data: &[u8], rng: &mut StdRng) {
    let end = offset + data.len() as u64;
    let size_reached_disk = rng.random_bool(0.5);
    let mut new_sectors = Vec::new();
    let mut sector_start = offset;
    while sector_start < end {
        let sector_end = ((sector_start / SECTOR_SIZE + 1) * SECTOR_SIZE).min(end);
        if rng.random_bool(0.5) {
            new_sectors.push((sector_start, sector_end));
        }
        sector_start = sector_end;
    }
    let old_len = contents.len() as u64;
    let new_len = if size_reached_disk {
        old_len.max(end)
    } else {
        new_sectors
            .last()
            .map_or(old_len, |&(_, last_end)| old_len.max(last_end))
    };
    contents.resize(new_len as usize, 0);
    for (start, end) in new_sectors {
        let source = (start - offset) as usize..(end - offset) as usize;
        contents[start as usize..end as usize].copy_from_slice(&data[source]);
    }
}

/// A handle on a simulated file.
struct SimFile {
    state: Arc<Mutex<State>>,
    path: PathBuf,
    inode: InodeId,
    writable: bool,
    /// The disk's generation when the handle was opened.
    generation: u64,
}

impl fmt::Debug for SimFile {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("SimFile")
            .field("path", &self.path)
            .field("inode", &self.inode)
            .field("writable", &self.writable)
            .field("generation", &self.generation)
            .finish()
    }
}

impl SimFile {
    /// Locks the disk and finds the handle's inode, or fails with `EIO` if
    /// the disk crashed since the handle was opened.
    fn with_inode<T>(
        &self,
        body: impl FnOnce(&mut State, InodeId) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut state = lock(&self.state);
        if state.generation != self.generation || !state.inodes.contains_key(&self.inode) {
            return Err(os_error(libc::EIO));
        }
        body(&mut state, self.inode)
    }

    fn sync(&self) -> io::Result<()> {
        self.with_inode(|state, inode| {
            if let Err(error) = state.take_fault(FaultOp::SyncData) {
                if let Some(inode) = state.inodes.get_mut(&inode) {
                    inode.fail_sync();
                }
                return Err(error);
            }
            if !state.sync_is_noop {
                let State { inodes, rng, .. } = state;
                if let Some(inode) = inodes.get_mut(&inode) {
                    inode.sync(rng);
                }
            }
            state.sync_counts.files += 1;
            Ok(())
        })
    }
}

impl DiskFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.with_inode(|state, inode| {
            let current = &state.inodes[&inode].current;
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(current.len());
            let count = buf.len().min(current.len() - start);
            buf[..count].copy_from_slice(&current[start..start + count]);
            Ok(count)
        })
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.with_inode(|state, inode| {
            if !self.writable {
                return Err(os_error(libc::EBADF));
            }
            state.take_fault(FaultOp::Write)?;
            if buf.is_empty() {
                return Ok(());
            }
            check_len(offset.checked_add(buf.len() as u64))?;
            if let Some(inode) = state.inodes.get_mut(&inode) {
                inode.change(Change::Write {
                    offset,
                    data: buf.to_vec(),
                });
            }
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.sync()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync()
    }

    fn len(&self) -> io::Result<u64> {
        self.with_inode(|state, inode| Ok(state.inodes[&inode].current.len() as u64))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with_inode(|state, inode| {
            if !self.writable {
                return Err(os_error(libc::EINVAL));
            }
            check_len(Some(len))?;
            if let Some(inode) = state.inodes.get_mut(&inode) {
                inode.change(Change::SetLen { len });
            }
            Ok(())
        })
    }
}

/// Fails with `EFBIG` unless `len` is known and at most [`MAX_FILE_LEN`].
fn check_len(len: Option<u64>) -> io::Result<()> {
    match len {
        Some(len) if len <= MAX_FILE_LEN => Ok(()),
        _ => Err(os_error(libc::EFBIG)),
    }
}

/// The directory that holds the name `path`.
fn parent_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new(""))
}

/// The names in `dir` among the keys of `names`, sorted.
fn names_in(names: &BTreeMap<PathBuf, InodeId>, dir: &Path) -> Vec<String> {
    let mut found = names
        .keys()
        .filter(|path| parent_of(path) == dir)
        .filter_map(|path| path.file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    found.sort();
    found
}

fn os_error(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// Locks the state; a panic in another test thread does not make the disk
/// unusable.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many seeds the statistical tests try.
    const SEEDS: u64 = 200;

    fn log_dir() -> PathBuf {
        PathBuf::from("/data/log")
    }

    fn in_log(name: &str) -> PathBuf {
        log_dir().join(name)
    }

    /// A disk with the log directory made.
    fn disk_with_log_dir(seed: u64) -> SimDisk {
        let disk = SimDisk::new(seed);
        disk.create_dir_all(&log_dir()).unwrap();
        disk
    }

    /// Creates `name` in the log directory with `contents`, and makes both
    /// durable.
    fn create_durable(disk: &SimDisk, name: &str, contents: &[u8]) -> Arc<dyn DiskFile> {
        let file = disk.open(&in_log(name), OpenMode::CreateNew).unwrap();
        file.write_at(contents, 0).unwrap();
        file.sync_data().unwrap();
        disk.sync_dir(&log_dir()).unwrap();
        file
    }

    /// The whole current contents of the file at `path`, or `None` if there
    /// is no such file.
    fn read_file(disk: &SimDisk, path: &Path) -> Option<Vec<u8>> {
        let file = match disk.open(path, OpenMode::Read) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return None,
            Err(error) => panic!("open {}: {error}", path.display()),
        };
        let mut contents = vec![0; file.len().unwrap() as usize];
        assert_eq!(file.read_at(&mut contents, 0).unwrap(), contents.len());
        Some(contents)
    }

    /// Every file of the log directory and its contents.
    fn snapshot(disk: &SimDisk) -> BTreeMap<String, Vec<u8>> {
        disk.list_dir(&log_dir())
            .unwrap()
            .into_iter()
            .map(|name| {
                let contents = read_file(disk, &in_log(&name)).unwrap();
                (name, contents)
            })
            .collect()
    }

    fn assert_os_error<T: fmt::Debug>(result: io::Result<T>, code: i32) {
        let error = result.expect_err("the call should have failed");
        assert_eq!(error.raw_os_error(), Some(code), "{error}");
    }

    #[test]
    fn synced_data_survives_every_crash() {
        let durable: Vec<u8> = (0..1000u32).map(|index| (index % 251) as u8).collect();
        for seed in 0..SEEDS {
            let disk = disk_with_log_dir(seed);
            let file = create_durable(&disk, "segment", &durable);
            // Unsynced work around the synced data: growth, a new file, a
            // rename of another file.
            file.write_at(&[7; 3000], 1000).unwrap();
            create_durable(&disk, "old", b"old");
            disk.open(&in_log("new"), OpenMode::CreateNew).unwrap();
            disk.rename(&in_log("old"), &in_log("renamed")).unwrap();
            disk.crash();

            let contents = read_file(&disk, &in_log("segment")).unwrap();
            assert_eq!(&contents[..1000], &durable[..], "seed {seed}");
            let file = disk.open(&in_log("segment"), OpenMode::ReadWrite).unwrap();
            file.write_at(b"more", 1000).unwrap();
            file.sync_all().unwrap();
            disk.crash();
            disk.crash();
            let contents = read_file(&disk, &in_log("segment")).unwrap();
            assert_eq!(&contents[..1000], &durable[..], "seed {seed}");
            assert_eq!(&contents[1000..1004], b"more", "seed {seed}");
        }
    }

    #[test]
    fn unsynced_overwrites_are_dropped_kept_or_torn() {
        let sectors = 4 * SECTOR_SIZE as usize;
        let (mut dropped, mut kept, mut torn) = (0, 0, 0);
        for seed in 0..SEEDS {
            let disk = disk_with_log_dir(seed);
            let file = create_durable(&disk, "segment", &vec![0xAA; sectors]);
            file.write_at(&vec![0xBB; sectors], 0).unwrap();
            assert_eq!(
                read_file(&disk, &in_log("segment")).unwrap(),
                vec![0xBB; sectors]
            );
            disk.crash();

            let contents = read_file(&disk, &in_log("segment")).unwrap();
            assert_eq!(contents.len(), sectors, "seed {seed}");
            for sector in contents.chunks(SECTOR_SIZE as usize) {
                assert!(
                    sector.iter().all(|&byte| byte == 0xAA)
                        || sector.iter().all(|&byte| byte == 0xBB),
                    "seed {seed}: a sector is all old or all new"
                );
            }
            if contents.iter().all(|&byte| byte == 0xAA) {
                dropped += 1;
            } else if contents.iter().all(|&byte| byte == 0xBB) {
                kept += 1;
            } else {
                torn += 1;
            }
        }
        let counts = format!("dropped {dropped}, kept {kept}, torn {torn}");
        assert!(dropped > 0 && kept > 0 && torn > 0, "{counts}");
    }

    #[test]
    fn unsynced_growth_can_revert_or_leave_zeros() {
        let sector = SECTOR_SIZE as usize;
        let (mut reverted, mut partly_grown, mut grown, mut zero_filled) = (0, 0, 0, 0);
        for seed in 0..SEEDS {
            let disk = disk_with_log_dir(seed);
            let file = create_durable(&disk, "segment", &vec![0xAA; sector]);
            file.write_at(&vec![0xBB; 2 * sector], sector as u64)
                .unwrap();
            disk.crash();

            let contents = read_file(&disk, &in_log("segment")).unwrap();
            assert_eq!(&contents[..sector], &vec![0xAA; sector][..], "seed {seed}");
            for chunk in contents[sector..].chunks(sector) {
                assert!(
                    chunk.iter().all(|&byte| byte == 0xBB) || chunk.iter().all(|&byte| byte == 0),
                    "seed {seed}: a grown sector is new or zeros"
                );
            }
            if contents.len() == sector {
                reverted += 1;
            } else if contents.len() < 3 * sector {
                // A torn write whose size did not reach the disk ends at its
                // last new sector.
                assert!(!contents.contains(&0), "seed {seed}");
                partly_grown += 1;
            } else if contents[sector..].contains(&0) {
                zero_filled += 1;
            } else {
                grown += 1;
            }
        }
        let counts = format!(
            "reverted {reverted}, partly grown {partly_grown}, grown {grown}, zero-filled {zero_filled}"
        );
        assert!(
            reverted > 0 && partly_grown > 0 && grown > 0 && zero_filled > 0,
            "{counts}"
        );
    }

    #[test]
    fn unsynced_set_len_can_revert_and_synced_one_cannot() {
        let (mut reverted, mut applied) = (0, 0);
        for seed in 0..SEEDS {
            let disk = disk_with_log_dir(seed);
            let file = create_durable(&disk, "segment", &[1; 1024]);
            file.set_len(100).unwrap();
            assert_eq!(file.len().unwrap(), 100);
            disk.crash();
            match read_file(&disk, &in_log("segment")).unwrap().len() {
                1024 => reverted += 1,
                100 => applied += 1,
                other => panic!("seed {seed}: length {other}"),
            }

            let file = disk.open(&in_log("segment"), OpenMode::ReadWrite).unwrap();
            file.set_len(10).unwrap();
            file.sync_data().unwrap();
            assert_eq!(disk.durable_len(&in_log("segment")), Some(10));
            disk.crash();
            assert_eq!(read_file(&disk, &in_log("segment")).unwrap(), vec![1; 10]);
        }
        assert!(
            reverted > 0 && applied > 0,
            "reverted {reverted}, applied {applied}"
        );
    }

    #[test]
    fn unsynced_creation_can_vanish_and_synced_one_never_does() {
        let (mut vanished, mut survived) = (0, 0);
        for seed in 0..SEEDS {
            let disk = disk_with_log_dir(seed);
            let file = disk.open(&in_log("segment"), OpenMode::CreateNew).unwrap();
            file.write_at(b"data", 0).unwrap();
            file.sync_data().unwrap();
            assert_eq!(disk.durable_file_names(&log_dir()), Vec::<String>::new());
            disk.crash();
            match read_file(&disk, &in_log("segment")) {
                None => vanished += 1,
                Some(contents) => {
                    assert_eq!(contents, b"data", "seed {seed}");
                    survived += 1;
                }
            }

            let disk = disk_with_log_dir(seed);
            create_durable(&disk, "segment", b"data");
            assert_eq!(disk.durable_file_names(&log_dir()), vec!["segment"]);
            disk.crash();
            assert_eq!(
                read_file(&disk, &in_log("segment")).unwrap(),
                b"data",
                "seed {seed}"
            );
        }
        assert!(
            vanished > 0 && survived > 0,
            "vanished {vanished}, survived {survived}"
        );
    }

    #[test]
    fn unsynced_rename_can_revert_with_its_data_and_synced_one_never_does() {
        let (mut reverted, mut renamed) = (0, 0);
        for seed in 0..SEEDS {
            let disk = disk_with_log_dir(seed);
            create_durable(&disk, "segment.tmp", b"data");
            disk.rename(&in_log("segment.tmp"), &in_log("segment"))
                .unwrap();
            assert_eq!(disk.file_names(&log_dir()), vec!["segment"]);
            disk.crash();
            let files = snapshot(&disk);
            if files.contains_key("segment.tmp") {
                reverted += 1;
                assert_eq!(
                    files,
                    BTreeMap::from([("segment.tmp".to_owned(), b"data".to_vec())])
                );
            } else {
                renamed += 1;
                assert_eq!(
                    files,
                    BTreeMap::from([("segment".to_owned(), b"data".to_vec())])
                );
            }

            let disk = disk_with_log_dir(seed);
            create_durable(&disk, "segment.tmp", b"data");
            disk.rename(&in_log("segment.tmp"), &in_log("segment"))
                .unwrap();
            disk.sync_dir(&log_dir()).unwrap();
            disk.crash();
            let files = snapshot(&disk);
            assert_eq!(
                files,
                BTreeMap::from([("segment".to_owned(), b"data".to_vec())]),
                "seed {seed}"
            );
        }
        assert!(
            reverted > 0 && renamed > 0,
            "reverted {reverted}, renamed {renamed}"
        );
    }

    #[test]
    fn unsynced_rename_over_a_file_can_bring_the_old_file_back() {
        let (mut old_back, mut replaced) = (0, 0);
        for seed in 0..SEEDS {
            let disk = disk_with_log_dir(seed);
            create_durable(&disk, "manifest", b"old");
            create_durable(&disk, "manifest.tmp", b"new");
            disk.rename(&in_log("manifest.tmp"), &in_log("manifest"))
                .unwrap();
            assert_eq!(read_file(&disk, &in_log("manifest")).unwrap(), b"new");
            disk.crash();
            let files = snapshot(&disk);
            if files["manifest"] == b"old" {
                old_back += 1;
                assert_eq!(files["manifest.tmp"], b"new", "seed {seed}");
            } else {
                replaced += 1;
                assert_eq!(
                    files,
                    BTreeMap::from([("manifest".to_owned(), b"new".to_vec())])
                );
            }
        }
        assert!(
            old_back > 0 && replaced > 0,
            "old back {old_back}, replaced {replaced}"
        );
    }

    #[test]
    fn unsynced_removal_can_come_back() {
        let (mut back, mut gone) = (0, 0);
        for seed in 0..SEEDS {
            let disk = disk_with_log_dir(seed);
            create_durable(&disk, "segment", b"data");
            disk.remove_file(&in_log("segment")).unwrap();
            assert!(!disk.exists(&in_log("segment")));
            disk.crash();
            match read_file(&disk, &in_log("segment")) {
                Some(contents) => {
                    assert_eq!(contents, b"data", "seed {seed}");
                    back += 1;
                }
                None => gone += 1,
            }
        }
        assert!(back > 0 && gone > 0, "back {back}, gone {gone}");
    }

    #[test]
    fn unsynced_name_operations_survive_as_a_prefix_in_order() {
        let names = ["a", "b", "c"];
        let mut seen_prefixes = BTreeSet::new();
        for seed in 0..SEEDS {
            let disk = disk_with_log_dir(seed);
            for name in names {
                disk.open(&in_log(name), OpenMode::CreateNew).unwrap();
            }
            disk.crash();
            let survivors = disk.file_names(&log_dir());
            assert_eq!(survivors, names[..survivors.len()], "seed {seed}");
            seen_prefixes.insert(survivors.len());
        }
        assert_eq!(seen_prefixes, BTreeSet::from([0, 1, 2, 3]));
    }

    #[test]
    fn sync_dir_makes_only_its_own_directory_durable() {
        let (mut other_lost, mut other_kept) = (0, 0);
        for seed in 0..SEEDS {
            let disk = SimDisk::new(seed);
            disk.create_dir_all(Path::new("/a")).unwrap();
            disk.create_dir_all(Path::new("/b")).unwrap();
            disk.open(Path::new("/b/y"), OpenMode::CreateNew).unwrap();
            disk.open(Path::new("/a/x"), OpenMode::CreateNew).unwrap();
            disk.sync_dir(Path::new("/a")).unwrap();
            disk.crash();
            assert!(disk.exists(Path::new("/a/x")), "seed {seed}");
            if disk.exists(Path::new("/b/y")) {
                other_kept += 1;
            } else {
                other_lost += 1;
            }
        }
        assert!(
            other_lost > 0 && other_kept > 0,
            "lost {other_lost}, kept {other_kept}"
        );
    }

    #[test]
    fn with_sync_as_a_noop_synced_data_is_lost_at_some_crash() {
        let mut lost = 0;
        for seed in 0..SEEDS {
            let disk = disk_with_log_dir(seed);
            disk.set_sync_is_noop(true);
            create_durable(&disk, "segment", &[9; 2048]);
            assert_eq!(disk.durable_len(&in_log("segment")), Some(0));
            assert_eq!(disk.durable_file_names(&log_dir()), Vec::<String>::new());
            disk.crash();
            if read_file(&disk, &in_log("segment")) != Some(vec![9; 2048]) {
                lost += 1;
            }

            disk.set_sync_is_noop(false);
            create_durable(&disk, "second", &[9; 2048]);
            disk.crash();
            assert_eq!(
                read_file(&disk, &in_log("second")),
                Some(vec![9; 2048]),
                "seed {seed}"
            );
        }
        assert!(lost > 0, "never lost");
    }

    #[test]
    fn injected_faults_return_enospc_and_eio_until_cleared() {
        let disk = disk_with_log_dir(1);
        let file = disk.open(&in_log("segment"), OpenMode::CreateNew).unwrap();

        // A one-shot ENOSPC on the second write; the failed write applies
        // nothing.
        disk.inject(Fault {
            op: FaultOp::Write,
            error: FaultError::NoSpace,
            after: 1,
            sticky: false,
        });
        file.write_at(b"first", 0).unwrap();
        let error = file.write_at(b"second", 5).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(error.kind(), io::ErrorKind::StorageFull);
        assert_eq!(read_file(&disk, &in_log("segment")).unwrap(), b"first");
        file.write_at(b"third", 5).unwrap();
        assert_eq!(read_file(&disk, &in_log("segment")).unwrap(), b"firstthird");

        // A sticky EIO on file syncs; nothing becomes durable.
        disk.inject(Fault {
            op: FaultOp::SyncData,
            error: FaultError::Io,
            after: 0,
            sticky: true,
        });
        assert_os_error(file.sync_data(), libc::EIO);
        assert_os_error(file.sync_all(), libc::EIO);
        assert_eq!(disk.durable_len(&in_log("segment")), Some(0));
        assert_eq!(disk.sync_counts().files, 0);
        file.write_at(b"fourth", 10).unwrap();

        // A sync_dir fault leaves the creation pending.
        disk.inject(Fault {
            op: FaultOp::SyncDir,
            error: FaultError::NoSpace,
            after: 0,
            sticky: false,
        });
        assert_os_error(disk.sync_dir(&log_dir()), libc::ENOSPC);
        assert_eq!(disk.durable_file_names(&log_dir()), Vec::<String>::new());

        // Any: hits the next write, then is gone.
        disk.inject(Fault {
            op: FaultOp::Any,
            error: FaultError::Io,
            after: 0,
            sticky: false,
        });
        assert_os_error(file.write_at(b"x", 0), libc::EIO);

        disk.clear_faults();
        file.write_at(b"fifth", 16).unwrap();
        file.sync_data().unwrap();
        disk.sync_dir(&log_dir()).unwrap();
        assert_eq!(disk.durable_len(&in_log("segment")), Some(21));
        assert_eq!(disk.durable_file_names(&log_dir()), vec!["segment"]);
        assert_eq!(disk.sync_counts(), SyncCounts { files: 1, dirs: 1 });
    }

    #[test]
    fn failed_sync_leaves_its_writes_uncertain_even_after_a_later_sync() {
        let (mut lost, mut kept) = (0, 0);
        for seed in 0..SEEDS {
            let disk = disk_with_log_dir(seed);
            let file = create_durable(&disk, "segment", b"");
            file.write_at(&[5; 1024], 0).unwrap();
            disk.inject(Fault {
                op: FaultOp::SyncData,
                error: FaultError::Io,
                after: 0,
                sticky: false,
            });
            assert_os_error(file.sync_data(), libc::EIO);
            // The retry succeeds, but the pages were marked clean.
            file.sync_data().unwrap();
            file.write_at(&[6; 10], 1024).unwrap();
            file.sync_data().unwrap();
            let contents = read_file(&disk, &in_log("segment")).unwrap();
            assert_eq!(
                &contents[..1024],
                &[5; 1024][..],
                "reads still see the writes"
            );
            disk.crash();
            let contents = read_file(&disk, &in_log("segment")).unwrap();
            assert_eq!(
                contents.len(),
                1034,
                "seed {seed}: the later synced write holds"
            );
            assert_eq!(&contents[1024..], &[6; 10][..], "seed {seed}");
            if contents[..1024] == [5; 1024] {
                kept += 1;
            } else {
                lost += 1;
            }
        }
        assert!(lost > 0 && kept > 0, "lost {lost}, kept {kept}");
    }

    #[test]
    fn handles_from_before_a_crash_fail_after_it() {
        for crash in [SimDisk::crash, SimDisk::crash_keep_all] {
            let disk = disk_with_log_dir(3);
            let writer = create_durable(&disk, "segment", b"data");
            let reader = disk.open(&in_log("segment"), OpenMode::Read).unwrap();
            crash(&disk);
            for file in [&writer, &reader] {
                assert_os_error(file.read_at(&mut [0; 4], 0), libc::EIO);
                assert_os_error(file.write_at(b"x", 0), libc::EIO);
                assert_os_error(file.sync_data(), libc::EIO);
                assert_os_error(file.sync_all(), libc::EIO);
                assert_os_error(file.len(), libc::EIO);
                assert_os_error(file.set_len(0), libc::EIO);
            }
            let reopened = disk.open(&in_log("segment"), OpenMode::ReadWrite).unwrap();
            let mut buf = [0; 4];
            assert_eq!(reopened.read_at(&mut buf, 0).unwrap(), 4);
            assert_eq!(&buf, b"data");
        }
    }

    #[test]
    fn kill_keeps_everything_and_a_later_power_loss_can_still_drop_it() {
        let mut lost = 0;
        for seed in 0..SEEDS {
            let disk = disk_with_log_dir(seed);
            let file = disk.open(&in_log("segment"), OpenMode::CreateNew).unwrap();
            file.write_at(&[3; 1500], 0).unwrap();
            disk.crash_keep_all();
            assert_eq!(read_file(&disk, &in_log("segment")), Some(vec![3; 1500]));
            disk.crash();
            if read_file(&disk, &in_log("segment")) != Some(vec![3; 1500]) {
                lost += 1;
            }
        }
        assert!(lost > 0, "never lost");
    }

    /// Creations, writes, syncs, renames and crashes, then the files.
    fn run_scenario(seed: u64) -> BTreeMap<String, Vec<u8>> {
        let disk = disk_with_log_dir(seed);
        for round in 0..4u8 {
            let name = format!("file{round}");
            let file = disk.open(&in_log(&name), OpenMode::CreateNew).unwrap();
            file.write_at(&vec![round; 1500], 0).unwrap();
            file.sync_data().unwrap();
            file.write_at(&vec![round + 100; 2000], 700).unwrap();
            disk.rename(&in_log(&name), &in_log(&format!("renamed{round}")))
                .unwrap();
            if round % 2 == 0 {
                disk.sync_dir(&log_dir()).unwrap();
            }
            file.set_len(3000).unwrap();
            disk.crash();
        }
        snapshot(&disk)
    }

    #[test]
    fn the_same_seed_and_calls_give_the_same_bytes() {
        let mut outcomes = BTreeSet::new();
        for seed in 0..20 {
            let first = run_scenario(seed);
            assert_eq!(first, run_scenario(seed), "seed {seed}");
            outcomes.insert(first);
        }
        assert!(outcomes.len() > 1, "the seed changes nothing");
    }

    #[test]
    fn misuse_fails_as_posix_does() {
        let disk = disk_with_log_dir(0);
        let missing = in_log("missing");
        assert_os_error(disk.open(&missing, OpenMode::Read), libc::ENOENT);
        assert_os_error(disk.open(&missing, OpenMode::ReadWrite), libc::ENOENT);
        assert_eq!(
            disk.open(&missing, OpenMode::Read).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_os_error(disk.rename(&missing, &in_log("other")), libc::ENOENT);
        assert_os_error(disk.remove_file(&missing), libc::ENOENT);
        assert_os_error(
            disk.open(Path::new("/nowhere/file"), OpenMode::CreateNew),
            libc::ENOENT,
        );
        assert_os_error(disk.list_dir(Path::new("/nowhere")), libc::ENOENT);
        assert_os_error(disk.sync_dir(Path::new("/nowhere")), libc::ENOENT);

        let file = disk.open(&in_log("segment"), OpenMode::CreateNew).unwrap();
        let error = disk
            .open(&in_log("segment"), OpenMode::CreateNew)
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(error.raw_os_error(), Some(libc::EEXIST));
        assert_os_error(disk.open(&log_dir(), OpenMode::ReadWrite), libc::EISDIR);
        assert_os_error(
            disk.open(&in_log("segment/inner"), OpenMode::CreateNew),
            libc::ENOTDIR,
        );
        assert_os_error(disk.create_dir_all(&in_log("segment")), libc::EEXIST);

        let reader = disk.open(&in_log("segment"), OpenMode::Read).unwrap();
        assert_os_error(reader.write_at(b"x", 0), libc::EBADF);
        assert_os_error(reader.set_len(1), libc::EINVAL);
        assert_os_error(file.write_at(b"x", MAX_FILE_LEN), libc::EFBIG);
        assert_os_error(file.write_at(b"x", u64::MAX), libc::EFBIG);
    }

    #[test]
    fn directories_files_and_handles_behave_like_a_file_system() {
        let disk = SimDisk::new(0);
        disk.create_dir_all(&log_dir()).unwrap();
        disk.create_dir_all(&log_dir()).unwrap();
        assert!(disk.exists(Path::new("/data")));
        disk.create_dir_all(&in_log("archive")).unwrap();
        let file = disk.open(&in_log("b"), OpenMode::CreateNew).unwrap();
        disk.open(&in_log("a"), OpenMode::CreateNew).unwrap();
        assert_eq!(
            disk.list_dir(&log_dir()).unwrap(),
            vec!["a", "archive", "b"]
        );
        assert_eq!(disk.file_names(&log_dir()), vec!["a", "b"]);

        // A handle follows its file across a rename, and reads past the end
        // return what there is.
        disk.rename(&in_log("b"), &in_log("archive/b")).unwrap();
        file.write_at(b"hello", 2).unwrap();
        assert_eq!(
            read_file(&disk, &in_log("archive/b")).unwrap(),
            b"\0\0hello"
        );
        let mut buf = [0; 8];
        assert_eq!(file.read_at(&mut buf, 4).unwrap(), 3);
        assert_eq!(file.read_at(&mut buf, 100).unwrap(), 0);

        // A clone is the same disk, and counts the same syncs.
        let clone = disk.clone();
        file.sync_data().unwrap();
        clone.sync_dir(&log_dir()).unwrap();
        assert_eq!(disk.sync_counts(), SyncCounts { files: 1, dirs: 1 });
        assert_eq!(clone.durable_len(&in_log("archive/b")), Some(7));
        clone.crash();
        assert_os_error(file.len(), libc::EIO);
        assert_eq!(format!("{:?}", disk.seed()), "0");
    }
}
