//! Request bodies are parsed and checked on threads of their own, a few at
//! once, at a lower CPU priority than the runtime's workers.
//!
//! A body is the one thing an unauthenticated or hostile client controls
//! that costs CPU in proportion to what it sends. Parsing it here, not on the
//! runtime's workers, keeps `/healthz` and every other request's task from
//! waiting behind it; running these threads at nice [`BODY_WORK_NICENESS`]
//! lets the kernel give the workers the cores first when both want them.
//! At most one thread per core but one parses at once (`slots`), and a request
//! whose client goes away while it waits for a slot never starts its work.
//! A small body is parsed inline (`run_sized`): its cost is bounded by its
//! size, and below the hand-off's own.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, Semaphore};

/// How much lower than the daemon's the body threads' priority is.
pub const BODY_WORK_NICENESS: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

/// The body threads and the slots that bound them.
pub struct BodyWork {
    slots: Semaphore,
    jobs: std::sync::mpsc::Sender<Job>,
}

/// The work did not finish: it panicked.
#[derive(Debug, thiserror::Error)]
#[error("the request body's check stopped unexpectedly")]
pub struct WorkFailed;

impl BodyWork {
    /// Starts `threads` body threads (at least one). They end when the
    /// `BodyWork` is dropped.
    pub fn start(threads: usize) -> BodyWork {
        let threads = threads.max(1);
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..threads {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name("cairn-body-work".into())
                .spawn(move || {
                    lower_this_threads_priority(BODY_WORK_NICENESS);
                    loop {
                        let job = queue.lock().expect("the job queue lock").recv();
                        match job {
                            // A panic is the job's own (its answer reports it).
                            Ok(job) => {
                                let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                            }
                            Err(_) => return,
                        }
                    }
                })
                .expect("a body thread starts");
        }
        BodyWork {
            slots: Semaphore::new(threads),
            jobs,
        }
    }

    /// Runs `work` on a body thread, once a slot is free.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, WorkFailed> {
        let _slot = self
            .slots
            .acquire()
            .await
            .expect("the slots are never closed");
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = reply.send(work());
        });
        self.jobs.send(job).map_err(|_| WorkFailed)?;
        answer.await.map_err(|_| WorkFailed)
    }

    /// Runs `work` for a body of `body_len` bytes: on the calling thread when
    /// the body is at most `inline_up_to` bytes, else as [`BodyWork::run`]
    /// does. A panic is [`WorkFailed`] either way.
    pub async fn run_sized<T: Send + 'static>(
        &self,
        body_len: usize,
        inline_up_to: usize,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, WorkFailed> {
        if body_len <= inline_up_to {
            return std::panic::catch_unwind(AssertUnwindSafe(work)).map_err(|_| WorkFailed);
        }
        self.run(work).await
    }
}

/// Linux keeps a nice value per thread: this one's, raised by `niceness`.
/// Raising it needs no privilege; if it fails, the thread runs as it is.
fn lower_this_threads_priority(niceness: i32) {
    // SAFETY: plain syscalls on this thread's own id, with no pointers.
    unsafe {
        let thread = libc::syscall(libc::SYS_gettid) as libc::id_t;
        let current = libc::getpriority(libc::PRIO_PROCESS, thread);
        libc::setpriority(libc::PRIO_PROCESS, thread, (current + niceness).min(19));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_on_a_lower_priority_thread_and_a_panic_is_an_error() {
        let work = BodyWork::start(1);
        let (name, nice) = work
            .run(|| {
                let name = std::thread::current().name().map(str::to_string);
                // SAFETY: getpriority of this thread, no pointers.
                let nice = unsafe {
                    let thread = libc::syscall(libc::SYS_gettid) as libc::id_t;
                    libc::getpriority(libc::PRIO_PROCESS, thread)
                };
                (name, nice)
            })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("cairn-body-work"));
        // SAFETY: getpriority of the test's thread, no pointers.
        let own = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        assert_eq!(nice, (own + BODY_WORK_NICENESS).min(19));
        assert!(work.run(|| panic!("a bad body")).await.is_err());
        // The thread goes on after a panic.
        assert_eq!(work.run(|| 7).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn a_small_body_is_checked_inline_and_a_large_one_on_a_body_thread() {
        let work = BodyWork::start(1);
        let thread_name = || std::thread::current().name().map(str::to_string);
        let inline = work.run_sized(100, 100, thread_name).await.unwrap();
        assert_eq!(inline, std::thread::current().name().map(str::to_string));
        let large = work.run_sized(101, 100, thread_name).await.unwrap();
        assert_eq!(large.as_deref(), Some("cairn-body-work"));
        assert!(work
            .run_sized(1, 100, || panic!("a bad small body"))
            .await
            .is_err());
    }
}
