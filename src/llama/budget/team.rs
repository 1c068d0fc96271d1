//! Parallel loops on the host's OpenMP threads, for work done between ggml graph ranges.
//!
//! When ggml is built with OpenMP, its compute threads wait in libgomp between two graph
//! computations, spinning on their cores. Work we start on threads of our own in that gap
//! (decoding the next layer under a memory budget) has to share those cores with the
//! spinners. Handing the loop to libgomp (`GOMP_parallel`, found with `dlsym`) runs it on the
//! very threads that were spinning: on 2 cores, SmolLM2's layers decoded at 1.04 GB/s on
//! rayon's two threads and at 1.42 GB/s on the OpenMP team (page faults included in both).
//! Without libgomp (or libomp's GOMP-compatible entry point) in the process, or with
//! `DCGGUF_NO_OPENMP=1`, rayon runs it.

use std::ffi::{c_uint, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

type ParallelFn = unsafe extern "C" fn(
    f: unsafe extern "C" fn(*mut c_void),
    data: *mut c_void,
    num_threads: c_uint,
    flags: c_uint,
);

/// The process's `GOMP_parallel`, if an OpenMP runtime is loaded.
fn gomp_parallel() -> Option<ParallelFn> {
    static F: OnceLock<Option<usize>> = OnceLock::new();
    let addr = *F.get_or_init(|| {
        // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name has no preconditions.
        let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"GOMP_parallel".as_ptr()) };
        (!p.is_null() && std::env::var_os("DCGGUF_NO_OPENMP").is_none()).then_some(p as usize)
    });
    // SAFETY: the symbol is libgomp's (or libomp's compatible) `GOMP_parallel`, whose C
    // signature is `void (void (*)(void *), void *, unsigned, unsigned)` since GCC 4.9.
    addr.map(|a| unsafe { std::mem::transmute::<usize, ParallelFn>(a) })
}

/// Whether [`for_each`] runs on OpenMP threads.
pub fn uses_openmp() -> bool {
    gomp_parallel().is_some()
}

struct Loop<'a> {
    next: AtomicUsize,
    n: usize,
    body: &'a (dyn Fn(usize) + Sync),
    panicked: AtomicBool,
}

/// Runs on every thread of the OpenMP team: takes indices until none are left.
unsafe extern "C" fn team_member(data: *mut c_void) {
    // SAFETY: `data` is the `Loop` that `for_each` passed to GOMP_parallel; it outlives the
    // parallel region, which ends before GOMP_parallel returns.
    let l = unsafe { &*(data as *const Loop<'_>) };
    loop {
        let i = l.next.fetch_add(1, Ordering::Relaxed);
        if i >= l.n {
            return;
        }
        // A panic must not unwind into libgomp (C): stop handing out work and report it.
        if catch_unwind(AssertUnwindSafe(|| (l.body)(i))).is_err() {
            l.panicked.store(true, Ordering::Relaxed);
            l.next.store(l.n, Ordering::Relaxed);
        }
    }
}

/// Calls `body(i)` for `i` in `0..n`, in parallel on up to `threads` threads. Returns false
/// if a call panicked (the remaining indices may then not have run).
pub fn for_each(n: usize, threads: usize, body: &(dyn Fn(usize) + Sync)) -> bool {
    run(gomp_parallel(), n, threads, body)
}

fn run(gomp: Option<ParallelFn>, n: usize, threads: usize, body: &(dyn Fn(usize) + Sync)) -> bool {
    let threads = threads.clamp(1, n.max(1));
    match gomp {
        Some(parallel) if threads > 1 => {
            let l = Loop {
                next: AtomicUsize::new(0),
                n,
                body,
                panicked: AtomicBool::new(false),
            };
            // SAFETY: `team_member` matches the callback type, `l` lives until the region
            // ends (GOMP_parallel returns only then), and the body is Sync, so running it
            // from several threads at once is sound.
            unsafe {
                parallel(
                    team_member,
                    &l as *const Loop<'_> as *mut c_void,
                    threads as c_uint,
                    0,
                )
            };
            !l.panicked.load(Ordering::Relaxed)
        }
        // One thread's worth (a generated token's row lookup decodes at most one chunk):
        // on this thread, without waking a pool thread of rayon's beside ggml's spinning
        // OpenMP threads (or starting the pool).
        _ if threads == 1 => catch_unwind(AssertUnwindSafe(|| (0..n).for_each(body))).is_ok(),
        _ => {
            use rayon::prelude::*;
            catch_unwind(AssertUnwindSafe(|| (0..n).into_par_iter().for_each(body))).is_ok()
        }
    }
}

/// Threads worth using for decoding: the CPUs this process may run on.
pub fn decode_threads() -> usize {
    crate::io::cpus()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_runs_once() {
        let hits: Vec<AtomicUsize> = (0..1000).map(|_| AtomicUsize::new(0)).collect();
        assert!(for_each(hits.len(), 4, &|i| {
            hits[i].fetch_add(1, Ordering::Relaxed);
        }));
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
    }

    #[test]
    fn a_panic_is_reported_not_unwound() {
        let ran = AtomicUsize::new(0);
        let ok = for_each(64, 2, &|i| {
            ran.fetch_add(1, Ordering::Relaxed);
            assert!(i != 7, "index 7 fails");
        });
        assert!(!ok);
        assert!(ran.load(Ordering::Relaxed) >= 1);
    }

    /// libgomp's `GOMP_parallel`, loaded into the test process.
    fn libgomp() -> ParallelFn {
        // SAFETY: dlopen/dlsym with NUL-terminated names; the library stays loaded.
        let p = unsafe {
            let h = libc::dlopen(c"libgomp.so.1".as_ptr(), libc::RTLD_NOW);
            assert!(
                !h.is_null(),
                "libgomp.so.1 is not installed (it comes with gcc)"
            );
            libc::dlsym(h, c"GOMP_parallel".as_ptr())
        };
        assert!(!p.is_null());
        // SAFETY: as in gomp_parallel.
        unsafe { std::mem::transmute::<*mut c_void, ParallelFn>(p) }
    }

    #[test]
    fn openmp_team_shares_the_work() {
        let hits: Vec<AtomicUsize> = (0..16).map(|_| AtomicUsize::new(0)).collect();
        let threads = std::sync::Mutex::new(std::collections::HashSet::new());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        assert!(run(Some(libgomp()), hits.len(), 2, &|i| {
            threads.lock().unwrap().insert(std::thread::current().id());
            // Each item waits (20 s at most in all) until both team threads have taken one:
            // with a fixed sleep, a loaded machine could start the second thread after the
            // first had taken every item.
            while threads.lock().unwrap().len() < 2 && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            hits[i].fetch_add(1, Ordering::Relaxed);
        }));
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        assert_eq!(
            threads.lock().unwrap().len(),
            2,
            "both team threads took work"
        );
    }

    #[test]
    fn openmp_panic_is_reported_not_unwound() {
        let ok = run(Some(libgomp()), 64, 2, &|i| {
            assert!(i != 7, "index 7 fails")
        });
        assert!(!ok);
    }

    #[test]
    fn no_work_is_fine() {
        assert!(for_each(0, 8, &|_| unreachable!()));
    }
}
