//! The tokio runtime of the core, native futures handed to Python, and the signal mask of the
//! core's threads. Python counterpart: `_runtime.py` (which awaits these futures) and the
//! `atexit` hook in `__init__.py` that calls [`quiesce`].

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

/// The process in which the runtime's threads were started (0: not started yet).
static STARTED_IN: AtomicU32 = AtomicU32::new(0);

/// The core's multi-threaded tokio runtime (built on first use, see [`init`]); an error in a
/// process forked from one where it had started (see [`check_fork`]).
pub fn runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    check_fork()?;
    Ok(pyo3_async_runtimes::tokio::get_runtime())
}

/// `fork()` copies only the calling thread: in a child forked after the runtime started, its
/// worker threads, timers and connections do not exist, and every native future would wait
/// forever. The runtime cannot be rebuilt there (the clients, servers and drivers created
/// before the fork point into the parent's), so each native entry point raises this error
/// instead, on first use. Records the current process as the runtime's on the first call
/// (docs/semantics.md, section 17).
pub fn check_fork() -> PyResult<()> {
    let me = std::process::id();
    match STARTED_IN.compare_exchange(0, me, SeqCst, SeqCst) {
        Ok(_) => Ok(()),
        Err(owner) if owner == me => Ok(()),
        Err(owner) => Err(PyRuntimeError::new_err(format!(
            "memory_service_processor cannot run in this process (pid {me}): it was forked from \
             process {owner} after the native runtime had started there, and a forked child does \
             not inherit its threads. Start worker processes with the 'spawn' or 'forkserver' \
             method (multiprocessing.get_context(\"spawn\")), or fork before the first Runtime, \
             client or LocalMemoryService is used"
        ))),
    }
}

/// True in a process forked from the one where the runtime started.
fn forked() -> bool {
    let owner = STARTED_IN.load(SeqCst);
    owner != 0 && owner != std::process::id()
}

/// `os.register_at_fork(after_in_child=...)`: the futures the parent had in flight will never
/// resolve here, so [`quiesce`] must not wait for them.
#[pyfunction]
pub fn after_fork_in_child() {
    if forked() {
        INFLIGHT.store(0, SeqCst);
    }
}

/// Builds the runtime: `MEMORY_SERVICE_PROCESSOR_THREADS` worker threads (default 2), named
/// `msp-core`, each blocking the process signals (see [`block_process_signals`]).
pub fn init() {
    let workers = std::env::var("MEMORY_SERVICE_PROCESSOR_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(2);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .worker_threads(workers)
        .thread_name("msp-core")
        .on_thread_start(block_process_signals)
        .enable_all();
    pyo3_async_runtimes::tokio::init(builder);
}

/// A poisoned lock still holds consistent data here (no invariant spans a panic): use it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Native futures handed to Python that have not resolved yet, and when the last one did:
/// Python's `atexit` waits for them (see [`quiesce`]) so that no runtime thread completes an
/// asyncio future while the interpreter finalizes.
static INFLIGHT: AtomicUsize = AtomicUsize::new(0);
static LAST_DONE: Mutex<Option<Instant>> = Mutex::new(None);

/// `future_into_py`, counted in [`INFLIGHT`].
pub fn py_future<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: std::future::Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    check_fork()?;
    INFLIGHT.fetch_add(1, SeqCst);
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            *lock(&LAST_DONE) = Some(Instant::now());
            INFLIGHT.fetch_sub(1, SeqCst);
        }
    }
    let done = Done;
    pyo3_async_runtimes::tokio::future_into_py(py, async move {
        let _done = done;
        fut.await
    })
}

/// Waits (GIL released, at most `timeout` seconds) until no native future is pending and the
/// last one resolved a moment ago. Registered with `atexit`.
#[pyfunction]
#[pyo3(signature = (timeout=1.0))]
pub fn quiesce(py: Python<'_>, timeout: f64) {
    if forked() {
        // Nothing of ours runs in a forked child (and a lock held at the fork stays held).
        return;
    }
    let deadline = Instant::now() + Duration::from_secs_f64(timeout.clamp(0.0, 60.0));
    py.detach(|| loop {
        let pending = INFLIGHT.load(SeqCst);
        let recent = lock(&LAST_DONE)
            .map(|t| t.elapsed() < Duration::from_millis(50))
            .unwrap_or(false);
        if (pending == 0 && !recent) || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    });
}

/// Our threads never take SIGINT/SIGTERM: the kernel then delivers them to a Python thread,
/// which runs the Python-level handler promptly (a signal caught by one of our threads would
/// only set Python's flag while the main thread sleeps in the event loop).
fn block_process_signals() {
    // SAFETY: plain libc calls on a zeroed, initialised signal set owned by this frame.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGUSR1,
            libc::SIGUSR2,
        ] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}
