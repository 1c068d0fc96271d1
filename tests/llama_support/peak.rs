//! The peak resident set of a program a test or bench runs.
//!
//! `wait4`'s `ru_maxrss` cannot serve: Linux carries the resident set of the address space a
//! child leaves at `exec` into the new program's count, and a child of std's `Command` leaves
//! the parent's (spawned with `CLONE_VM`) or a copy of it (forked): `/bin/true` spawned by a
//! process holding 300 MiB reported 302 MiB. The program's own high-water mark is `VmHWM` of
//! its address space, read here while it is stopped at exit (ptrace `PTRACE_O_TRACEEXIT`),
//! after its last allocation and before its memory goes.
// Each test binary that includes this uses part of it.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

/// How a program run by [`run`] ended.
pub struct Exit {
    /// The raw `waitpid` status (`libc::WIFEXITED` ...).
    pub status: libc::c_int,
    /// `VmHWM` of the program's own address space at its exit, in bytes (0 if it never
    /// reached its exit: killed by a signal before, or the exec failed).
    pub peak_rss: u64,
}

impl Exit {
    pub fn success(&self) -> bool {
        libc::WIFEXITED(self.status) && libc::WEXITSTATUS(self.status) == 0
    }

    pub fn code(&self) -> Option<i32> {
        libc::WIFEXITED(self.status).then(|| libc::WEXITSTATUS(self.status))
    }

    pub fn signal(&self) -> Option<i32> {
        libc::WIFSIGNALED(self.status).then(|| libc::WTERMSIG(self.status))
    }
}

/// Runs `cmd` to its end as a traced child and reads its peak RSS. `with_child` gets the
/// child right after the spawn (to take piped output, which must be drained while it runs).
/// Other `pre_exec` hooks set on `cmd` before (a resource limit) still run.
pub fn run(cmd: &mut Command, with_child: impl FnOnce(&mut Child)) -> Exit {
    // SAFETY: ptrace(TRACEME) is async-signal-safe and touches no state of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Reaped below with waitpid (a traced child must be waited for by hand, not by `wait`).
    #[allow(clippy::zombie_processes)]
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    with_child(&mut child);
    let pid = child.id() as libc::pid_t;
    let wait = || {
        let mut status = 0;
        // SAFETY: pid is our own traced child; status is valid for writes.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(r, pid, "waitpid: {}", std::io::Error::last_os_error());
        status
    };
    // SAFETY (ptrace calls below): pid is our stopped tracee.
    let cont = |sig: i32| unsafe { libc::ptrace(libc::PTRACE_CONT, pid, 0, sig) };
    let first = wait();
    assert!(libc::WIFSTOPPED(first), "{cmd:?} did not stop at exec");
    // SAFETY: as above.
    unsafe {
        libc::ptrace(
            libc::PTRACE_SETOPTIONS,
            pid,
            0,
            // TRACEEXEC: a program that execs another (a script) stops with an event, not
            // with a SIGTRAP that would be passed on and kill it.
            libc::PTRACE_O_TRACEEXIT | libc::PTRACE_O_TRACEEXEC | libc::PTRACE_O_EXITKILL,
        )
    };
    cont(0);
    let mut peak_kib = 0u64;
    let status = loop {
        let st = wait();
        if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) {
            break st;
        }
        let sig = libc::WSTOPSIG(st);
        if st >> 8 == libc::SIGTRAP | (libc::PTRACE_EVENT_EXIT << 8) {
            peak_kib = vm_hwm_kib(&format!("/proc/{pid}")).unwrap_or(0);
            cont(0);
        } else if st >> 8 == libc::SIGTRAP | (libc::PTRACE_EVENT_EXEC << 8) {
            cont(0);
        } else {
            // A signal for the program (SIGCHLD, SIGPIPE, ...): passed on.
            cont(sig);
        }
    };
    Exit {
        status,
        peak_rss: peak_kib * 1024,
    }
}

/// `VmHWM` in KiB from `proc/status` under `proc` (`/proc/self`, `/proc/PID`): the address
/// space's peak resident set, the program's own.
pub fn vm_hwm_kib(proc: &str) -> Option<u64> {
    std::fs::read_to_string(format!("{proc}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
