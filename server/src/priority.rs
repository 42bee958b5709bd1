//! Model work yields the CPU to request handling: threads that run the
//! engine get a lower scheduling priority (nice 10), so on a small machine a
//! busy worker does not push API latency up.

/// Nice value of threads doing model work.
const MODEL_WORK_NICE: libc::c_int = 10;

/// Lowers the calling thread's priority (Linux: per thread).
pub fn lower_current_thread() {
    // SAFETY: plain syscalls on the calling thread's id; failure only means
    // the priority stays as it was.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, MODEL_WORK_NICE);
    }
}

/// Makes the global rayon pool, where the engine's kernels run, a pool of
/// low-priority threads. Call once, before any model work.
pub fn lower_model_threads() {
    let built = rayon::ThreadPoolBuilder::new().start_handler(|_| lower_current_thread()).build_global();
    if let Err(e) = built {
        tracing::debug!(error = %e, "the model thread pool was already set up");
    }
}

/// Runs blocking model work on a low-priority thread.
pub async fn spawn_model_work<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    tokio::task::spawn_blocking(move || {
        lower_current_thread();
        work()
    })
    .await
}
