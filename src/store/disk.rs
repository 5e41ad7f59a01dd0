//! Every file and directory operation of the log, behind one small trait, so
//! that a simulated disk can stand in for the real one in tests.
//!
//! # Layout
//!
//! - `Disk` and `DiskFile`: the operations the log needs, and nothing more.
//! - `RealDisk`: `std::fs` and positioned reads and writes (`pread`, `pwrite`).
//! - `sim.rs`: `SimDisk`, an in-memory disk that keeps what was synced and,
//!   at a simulated power loss, drops, keeps or tears what was not.
//!
//! # What a caller may rely on (the POSIX rules the simulation enforces)
//!
//! - Data written to a file is durable only after `sync_data` (or `sync_all`)
//!   on that file returned `Ok`.
//! - A file's creation, a rename and a removal are durable only after
//!   `sync_dir` on the directory that holds the name returned `Ok`.
//! - A failed `sync_data` says nothing about which writes reached the disk.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub mod sim;

/// How to open a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// An existing file, for reading only.
    Read,
    /// An existing file, for reading and writing.
    ReadWrite,
    /// A new file for reading and writing; fails if the name exists.
    CreateNew,
}

/// An open file. Reads and writes are positioned, so one handle can be
/// shared by a writer and many readers at once.
// A file of length zero is not "empty" in any sense the log uses.
#[allow(clippy::len_without_is_empty)]
pub trait DiskFile: Send + Sync + std::fmt::Debug {
    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of
    /// the file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`, growing the file if needed.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// fdatasync: the file's data, and its size if that changed.
    fn sync_data(&self) -> io::Result<()>;
    /// fsync: data and metadata.
    fn sync_all(&self) -> io::Result<()>;
    /// The file's current length.
    fn len(&self) -> io::Result<u64>;
    /// Cuts or extends the file (extension reads as zeros).
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// The whole file mapped into memory, read-only, or `None` where files
    /// are not mapped (the simulated disk reads instead). The caller keeps the
    /// file from being written or cut while any part of the mapping lives:
    /// the log maps only sealed segments, which nothing writes (see
    /// `segment/reader.rs`).
    fn map(&self) -> io::Result<Option<Mapping>> {
        Ok(None)
    }
}

/// A file mapped into memory, read-only (`DiskFile::map`); unmapped when the
/// last reference is dropped.
pub type Mapping = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// The file-system operations the log uses.
pub trait Disk: Send + Sync + std::fmt::Debug + 'static {
    /// Creates a directory and its parents, like `mkdir -p`.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// The names (not paths) of the entries of a directory, sorted.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Whether a file or directory exists at `path`.
    fn exists(&self, path: &Path) -> bool;
    /// Opens a file.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn DiskFile>>;
    /// Renames a file within the same directory or across directories,
    /// replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// fsync on a directory: makes the creations, renames and removals of
    /// names in it durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealDisk;

#[derive(Debug)]
struct RealFile {
    file: File,
    path: PathBuf,
}

impl DiskFile for RealFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut read = 0;
        while read < buf.len() {
            match self.file.read_at(&mut buf[read..], offset + read as u64) {
                Ok(0) => break,
                Ok(n) => read += n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(with_path(error, &self.path)),
            }
        }
        Ok(read)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file
            .write_all_at(buf, offset)
            .map_err(|error| with_path(error, &self.path))
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file
            .sync_data()
            .map_err(|error| with_path(error, &self.path))
    }

    fn sync_all(&self) -> io::Result<()> {
        self.file
            .sync_all()
            .map_err(|error| with_path(error, &self.path))
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file
            .set_len(len)
            .map_err(|error| with_path(error, &self.path))
    }

    fn map(&self) -> io::Result<Option<Mapping>> {
        // SAFETY: the mapping is read-only, and the caller keeps the file
        // from being written or cut while the mapping lives (the trait's
        // contract). A removal by name leaves the mapping valid.
        let mapping = unsafe { memmap2::Mmap::map(&self.file) }
            .map_err(|error| with_path(error, &self.path))?;
        // Read front to back: the kernel may read ahead and drop behind.
        let _ = mapping.advise(memmap2::Advice::Sequential);
        Ok(Some(Arc::new(mapping)))
    }
}

/// Adds the path to an error that is not the operating system's own. An OS
/// error is returned as it is, so that `raw_os_error()` still tells ENOSPC
/// from EIO (the simulated disk returns them the same way); the log adds
/// the path to its own error messages.
fn with_path(error: io::Error, path: &Path) -> io::Error {
    if error.raw_os_error().is_some() {
        return error;
    }
    io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

impl Disk for RealDisk {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path).map_err(|error| with_path(error, path))
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|error| with_path(error, dir))? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn DiskFile>> {
        let mut options = OpenOptions::new();
        match mode {
            OpenMode::Read => options.read(true),
            OpenMode::ReadWrite => options.read(true).write(true),
            OpenMode::CreateNew => options.read(true).write(true).create_new(true),
        };
        let file = options.open(path).map_err(|error| with_path(error, path))?;
        Ok(Arc::new(RealFile {
            file,
            path: path.to_path_buf(),
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to).map_err(|error| with_path(error, from))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path).map_err(|error| with_path(error, path))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)
            .and_then(|directory| directory.sync_all())
            .map_err(|error| with_path(error, dir))
    }
}
