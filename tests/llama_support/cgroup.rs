//! Memory cgroups of either version, created under the cgroup the caller runs in (for runs
//! under a hard memory limit: benches/memcap.rs, tests/llama_budget.rs).

use std::ffi::CString;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Version {
    V1,
    V2,
}

/// Where runs get their cgroups: a directory whose children have the memory controller.
pub struct Parent {
    pub version: Version,
    pub dir: PathBuf,
}

/// One run's cgroup; removed by [`Cgroup::remove`].
pub struct Cgroup {
    pub version: Version,
    pub dir: PathBuf,
}

/// What a cgroup saw, read after its process exited.
#[derive(Default, Clone, Copy)]
pub struct Usage {
    /// Highest charge (page cache included), None where the kernel does not report it.
    pub peak: Option<u64>,
    /// Processes the OOM killer killed in it.
    pub oom_kills: u64,
    /// Times the charge hit the limit (v1 memory.failcnt; v2 memory.events max).
    pub limit_hits: u64,
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

fn write(p: &Path, v: &str) -> Result<(), String> {
    std::fs::write(p, v).map_err(|e| format!("write {v:?} to {}: {e}", p.display()))
}

/// The value of `key` in a "key value" file (memory.events, memory.oom_control).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next()? == key).then(|| it.next()?.parse().ok())?
    })
}

/// Mounts from /proc/self/mountinfo: (root within the hierarchy, mount point, fs type,
/// super options).
fn mounts() -> Vec<(String, PathBuf, String, String)> {
    let text = read(Path::new("/proc/self/mountinfo")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            Some((
                f.get(3)?.to_string(),
                PathBuf::from(f.get(4)?),
                r.first()?.to_string(),
                r.get(2).unwrap_or(&"").to_string(),
            ))
        })
        .collect()
}

/// Our cgroup's directory on a mount whose hierarchy root is `root`.
fn own_dir(mount: &Path, root: &str, path: &str) -> PathBuf {
    let rel = if root == "/" {
        path
    } else {
        path.strip_prefix(root).unwrap_or(path)
    };
    mount.join(rel.trim_start_matches('/'))
}

fn v2() -> Result<Parent, String> {
    let (root, mount, _, _) = mounts()
        .into_iter()
        .find(|m| m.2 == "cgroup2")
        .ok_or("no cgroup2 mount")?;
    let own = read(Path::new("/proc/self/cgroup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        .ok_or("not in a cgroup v2 hierarchy")?;
    let dir = own_dir(&mount, &root, &own);
    let has =
        |f: &str| read(&dir.join(f)).is_some_and(|t| t.split_whitespace().any(|c| c == "memory"));
    if !has("cgroup.controllers") {
        return Err(format!(
            "{}: the memory controller is not available here (cgroup.controllers)",
            dir.display()
        ));
    }
    if !has("cgroup.subtree_control") {
        // Fails (EBUSY) where this cgroup holds processes and is not the root: cgroup v2
        // gives controllers only to cgroups without processes of their own.
        write(&dir.join("cgroup.subtree_control"), "+memory")
            .map_err(|e| format!("cannot enable the memory controller for child cgroups: {e}"))?;
    }
    Ok(Parent {
        version: Version::V2,
        dir,
    })
}

fn v1() -> Result<Parent, String> {
    let (root, mount, _, _) = mounts()
        .into_iter()
        .find(|m| m.2 == "cgroup" && m.3.split(',').any(|o| o == "memory"))
        .ok_or("no cgroup v1 memory mount")?;
    let own = read(Path::new("/proc/self/cgroup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let _ = f.next()?;
            let ctrl = f.next()?;
            let path = f.next()?;
            ctrl.split(',')
                .any(|c| c == "memory")
                .then(|| path.to_string())
        })
        .ok_or("not in a cgroup v1 memory hierarchy")?;
    let dir = own_dir(&mount, &root, &own);
    if !dir.join("memory.limit_in_bytes").exists() {
        return Err(format!("{}: no memory.limit_in_bytes", dir.display()));
    }
    Ok(Parent {
        version: Version::V1,
        dir,
    })
}

/// cgroup v2 where its memory controller is ours to use, else v1; or why neither.
pub fn detect() -> Result<Parent, String> {
    v2().or_else(|e2| v1().map_err(|e1| format!("cgroup v2: {e2}; cgroup v1: {e1}")))
}

impl Parent {
    /// A new child cgroup, capped at `limit` bytes with no swap when `limit` is set.
    pub fn create(&self, name: &str, limit: Option<u64>) -> Result<Cgroup, String> {
        let dir = self.dir.join(name);
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let cg = Cgroup {
            version: self.version,
            dir,
        };
        if let Some(limit) = limit
            && let Err(e) = cg.set_limit(limit)
        {
            cg.remove();
            return Err(e);
        }
        Ok(cg)
    }
}

impl Cgroup {
    fn set_limit(&self, limit: u64) -> Result<(), String> {
        let v = limit.to_string();
        match self.version {
            Version::V2 => {
                write(&self.dir.join("memory.max"), &v)?;
                let swap = self.dir.join("memory.swap.max");
                if swap.exists() {
                    write(&swap, "0")?;
                }
            }
            Version::V1 => {
                write(&self.dir.join("memory.limit_in_bytes"), &v)?;
                // memory+swap at the same value: no swap. (The memory limit first: v1
                // refuses a memsw limit below the memory limit.)
                let memsw = self.dir.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    write(&memsw, &v)?;
                }
            }
        }
        Ok(())
    }

    /// Makes `c`'s process move itself into this cgroup between fork and exec, so that
    /// everything it execs, loads and reads is charged here.
    pub fn enter_on_exec(&self, c: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        let procs = self.procs_file();
        // SAFETY: the closure runs in the forked child before exec and only calls open,
        // write and close on a path allocated before the fork (async-signal-safe, no
        // allocation). Writing "0" to cgroup.procs moves the writing process (v1 and v2).
        unsafe {
            c.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let w = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if w != 1 {
                    return Err(err);
                }
                Ok(())
            })
        };
    }

    /// The file a process writes "0" to in order to move itself here.
    pub fn procs_file(&self) -> CString {
        CString::new(
            self.dir
                .join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .expect("no NUL in a cgroup path")
    }

    pub fn usage(&self) -> Usage {
        let get = |f: &str| read(&self.dir.join(f));
        match self.version {
            Version::V2 => {
                let events = get("memory.events").unwrap_or_default();
                Usage {
                    peak: get("memory.peak").and_then(|t| t.trim().parse().ok()),
                    oom_kills: keyed(&events, "oom_kill").unwrap_or(0),
                    limit_hits: keyed(&events, "max").unwrap_or(0),
                }
            }
            Version::V1 => Usage {
                peak: get("memory.max_usage_in_bytes").and_then(|t| t.trim().parse().ok()),
                oom_kills: get("memory.oom_control")
                    .and_then(|t| keyed(&t, "oom_kill"))
                    .unwrap_or(0),
                limit_hits: get("memory.failcnt")
                    .and_then(|t| t.trim().parse().ok())
                    .unwrap_or(0),
            },
        }
    }

    /// Removes the (empty) cgroup. On v1 its charged page cache is reclaimed first
    /// (memory.force_empty), so that no offline cgroup lingers holding it.
    pub fn remove(self) {
        if self.version == Version::V1 {
            let _ = std::fs::write(self.dir.join("memory.force_empty"), "0");
        }
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        eprintln!("memcap: could not remove cgroup {}", self.dir.display());
    }
}

/// Drops the page cache (as root), so that the files a run reads are charged to its cgroup
/// and not left over from an earlier run.
pub fn drop_caches() -> Result<(), String> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3")
        .map_err(|e| format!("echo 3 > /proc/sys/vm/drop_caches: {e}"))
}

/// This kernel's count of free memory handed back to the hypervisor (free page reporting);
/// a stock kernel has the `page_reporting` module without it.
const REPORTED_KIB: &str = "/sys/module/page_reporting/parameters/reported_kib";
/// Present where the kernel can report free pages (built with free page reporting), whether
/// or not a device does.
const REPORTING: &str = "/sys/module/page_reporting";
/// The devices that report free pages to the host through the kernel's free page reporting.
const VIRTIO_DEVICES: &str = "/sys/bus/virtio/devices";
const HYPERV_BALLOON: &str = "/sys/bus/vmbus/drivers/hv_balloon";
/// virtio's device id for a memory balloon, as `/sys/bus/virtio/devices/*/device` says it.
const VIRTIO_ID_BALLOON: &str = "0x0005";
/// VIRTIO_BALLOON_F_REPORTING, a bit of the features the driver negotiated.
const VIRTIO_BALLOON_F_REPORTING: usize = 5;

/// Whether a virtio device with this `device` id and negotiated `features` (sysfs's string of
/// '0'/'1', bit 0 first) is a balloon that reports free pages.
fn virtio_device_reports(device: &str, features: &str) -> bool {
    device.trim() == VIRTIO_ID_BALLOON
        && features.as_bytes().get(VIRTIO_BALLOON_F_REPORTING) == Some(&b'1')
}

/// Whether a device reports this kernel's free pages to a hypervisor: a virtio balloon that
/// negotiated free page reporting, or a bound Hyper-V balloon (which reports where its host
/// supports it; sysfs does not say, so it counts).
fn free_page_reporting_device() -> bool {
    let virtio = std::fs::read_dir(VIRTIO_DEVICES)
        .into_iter()
        .flatten()
        .flatten()
        .any(|d| {
            let read = |f: &str| std::fs::read_to_string(d.path().join(f)).unwrap_or_default();
            virtio_device_reports(&read("device"), &read("features"))
        });
    let hyperv = std::fs::read_dir(HYPERV_BALLOON)
        .into_iter()
        .flatten()
        .flatten()
        // Bound devices are links named by their id; the only other link is `module`.
        .any(|e| e.file_type().is_ok_and(|t| t.is_symlink()) && e.file_name() != "module");
    virtio || hyperv
}

/// How the memory freed before a run was left to settle.
#[derive(Clone, Copy, Debug, Default)]
pub struct Settled {
    pub waited: std::time::Duration,
    /// Bytes the kernel reported to the hypervisor meanwhile, where it counts them.
    pub reported: Option<u64>,
}

/// Waits, after [`drop_caches`], until the freed memory has settled, at most `max`.
///
/// Why: in a VM with free page reporting the guest hands free memory back to the host about
/// 2 s after it was freed, and the host's work then takes CPU time from the guest (steal).
/// Without waiting, the page cache the previous run left, dropped just before this run,
/// was handed back in the middle of this run: Qwen2.5-1.5B's DC run right after a plain
/// mmap run (whose 1 GB of page cache the drop frees) saw 512 MiB reported during its
/// load and ~10 ticks of steal, plain mmap's run after DC's (which had dropped its own page
/// cache) none, and the prompt that follows the load ran 6% slower (AMD EPYC VM,
/// 2026-12-05). A user's run starts on memory that has long settled. Where the kernel
/// counts reported memory, waits until that count has not moved for a second (and 2.5 s
/// have passed); where it does not count (stock kernels) but a device reports, waits 3 s;
/// elsewhere not at all.
pub fn settle_after_drop(max: std::time::Duration) -> Settled {
    use std::time::{Duration, Instant};
    let started = Instant::now();
    let read = || -> Option<u64> {
        std::fs::read_to_string(REPORTED_KIB)
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let Some(first) = read() else {
        if Path::new(REPORTING).exists() && free_page_reporting_device() {
            let wait = Duration::from_secs(3).min(max);
            std::thread::sleep(wait);
            return Settled {
                waited: wait,
                reported: None,
            };
        }
        return Settled::default();
    };
    let (mut last, mut moved) = (first, started);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = Instant::now();
        let count = read().unwrap_or(last);
        if count != last {
            (last, moved) = (count, now);
        }
        let quiet =
            now - moved >= Duration::from_secs(1) && now - started >= Duration::from_millis(2500);
        if quiet || now - started >= max {
            return Settled {
                waited: now - started,
                reported: Some(last.saturating_sub(first) * 1024),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    // No `use`: a bench (no test harness) compiles this module without its tests.
    #[test]
    fn only_a_balloon_that_negotiated_reporting_reports() {
        // This VM's balloon (virtio0): bits 1, 2, 5 and 7.
        let reporting = "0110010100000000000000000000000010000000";
        assert!(super::virtio_device_reports("0x0005\n", reporting));
        // The same balloon without bit 5; a block device (id 2) with bit 5 set.
        assert!(!super::virtio_device_reports("0x0005", "0110000100000000"));
        assert!(!super::virtio_device_reports("0x0002", reporting));
        assert!(!super::virtio_device_reports("0x0005", "0110"));
    }
}
