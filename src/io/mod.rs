//! File and OS plumbing shared by every layer: atomic outputs, read-only memory maps, the page
//! size, anonymous mappings in /proc/self/maps, thread limits, whole-line stderr writes and the
//! process memory report.

mod atomic;
pub mod hash;
mod own_mappings;

pub(crate) use atomic::TempPath;
pub use atomic::{AtomicOutput, TEMP_TAG, check_output, remove_live_temp_files};
pub use own_mappings::OwnMappings;

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

/// Maps `path` read-only. The input is never written through this map.
pub fn map_readonly(path: &Path) -> std::io::Result<(File, Mmap)> {
    let file = File::open(path)?;
    // SAFETY: the map is read-only and private to this process. Another process truncating
    // the file while we read is outside what any mmap-based reader (llama.cpp included) can
    // defend against; we document that inputs must not change during a run.
    let map = unsafe { Mmap::map(&file)? };
    Ok((file, map))
}

/// The system page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as usize } else { 4096 }
}

/// Which pages of `map` are in the page cache now, one entry per page (`mincore(2)`); all
/// `true` where the kernel will not say (then nothing is ever dropped on the strength of it).
pub fn resident_pages(map: &Mmap) -> Vec<bool> {
    let pages = map.len().div_ceil(page_size());
    let mut vec = vec![0u8; pages];
    if pages == 0 {
        return Vec::new();
    }
    // SAFETY: the range is exactly the live mapping (page-aligned start, as every mmap is),
    // and `vec` has one byte per page of it, which is what mincore writes.
    let rc = unsafe {
        libc::mincore(
            map.as_ptr() as *mut libc::c_void,
            map.len(),
            vec.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return vec![true; pages];
    }
    vec.iter().map(|b| b & 1 == 1).collect()
}

/// Bytes of this process's memory `[at, at + len)` in no page yet: whole pages inside the
/// range that were never written (or read) since they were mapped (`mincore(2)`). 0 where the
/// kernel will not say (a range not mapped, for one).
pub fn unwritten_bytes(at: usize, len: usize) -> u64 {
    let page = page_size();
    let (start, end) = (
        at.next_multiple_of(page),
        (at.saturating_add(len)) / page * page,
    );
    let mut vec = vec![0u8; 1024];
    let mut missing = 0u64;
    let mut from = start;
    while from < end {
        let n = (end - from).min(vec.len() * page);
        // SAFETY: mincore only reads the page tables of `[from, from + n)` (page-aligned) and
        // writes one byte per page of it into `vec`, which has n / page bytes or more; an
        // unmapped range is an error (ENOMEM), not a fault.
        let rc = unsafe { libc::mincore(from as *mut libc::c_void, n, vec.as_mut_ptr()) };
        if rc != 0 {
            return 0;
        }
        missing += vec[..n / page].iter().filter(|&&b| b & 1 == 0).count() as u64 * page as u64;
        from += n;
    }
    missing
}

/// Asks the kernel to read `len` bytes of `file` at `offset` into the page cache now, in the
/// background (`POSIX_FADV_WILLNEED`: a hint, so failures are ignored).
pub fn prefetch_cached(file: &File, offset: u64, len: u64) {
    fadvise(file, offset, len, libc::POSIX_FADV_WILLNEED);
}

/// Turns off readahead for reads through `file`'s descriptor (`POSIX_FADV_RANDOM`: a hint).
pub fn no_readahead(file: &File) {
    fadvise(file, 0, 0, libc::POSIX_FADV_RANDOM);
}

fn fadvise(file: &File, offset: u64, len: u64, advice: libc::c_int) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return;
    };
    // SAFETY: posix_fadvise only reads its integer arguments; the descriptor is open for the
    // duration of the call (`file` is borrowed).
    let _ = unsafe { libc::posix_fadvise(file.as_raw_fd(), offset, len, advice) };
}

/// Asks the kernel to drop `len` bytes of `file` at `offset` from the page cache
/// (`POSIX_FADV_DONTNEED`: clean pages no process maps go; a hint, so failures are ignored).
pub fn drop_cached(file: &File, offset: u64, len: u64) {
    fadvise(file, offset, len, libc::POSIX_FADV_DONTNEED);
}

/// The kernel's read-ahead window, in bytes, for reads of `file`: its disk's
/// `read_ahead_kb` (`/sys/class/bdi/MAJ:MIN`, the backing device of its file system; a
/// partition's is its disk's), which a fault in a `MADV_SEQUENTIAL` mapping reads at once,
/// and the next window as that one is used. The kernel's default (128 KiB) where sysfs does
/// not say.
pub fn read_ahead_bytes(file: &File) -> u64 {
    use std::os::unix::fs::MetadataExt;
    const KERNEL_DEFAULT: u64 = 128 << 10;
    let Ok(meta) = file.metadata() else {
        return KERNEL_DEFAULT;
    };
    let dev = meta.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let kib = |path: String| -> Option<u64> {
        std::fs::read_to_string(path)
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()
    };
    kib(format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb"))
        .or_else(|| {
            kib(format!(
                "/sys/dev/block/{major}:{minor}/queue/read_ahead_kb"
            ))
        })
        .or_else(|| {
            kib(format!(
                "/sys/dev/block/{major}:{minor}/../queue/read_ahead_kb"
            ))
        })
        .map_or(KERNEL_DEFAULT, |k| k << 10)
}

/// Page faults of this process so far that had to wait for a read from the disk
/// (`getrusage`'s `ru_majflt`, every thread's); 0 where it cannot be read.
pub fn major_faults() -> u64 {
    disk_reads().major_faults
}

/// What this process has had read from the disk so far, every thread's, from one
/// `getrusage` (zeros where it cannot be read).
#[derive(Clone, Copy, Debug, Default)]
pub struct DiskReads {
    /// Page faults that had to wait for a read (`ru_majflt`).
    pub major_faults: u64,
    /// 512-byte blocks read (`ru_inblock`): the reads it submitted, readahead that a fault
    /// or `madvise(MADV_WILLNEED)` started included, which no major fault counts where the
    /// page is in the page cache, under I/O, by the time it is touched.
    pub blocks: u64,
}

pub fn disk_reads() -> DiskReads {
    usage().map_or(DiskReads::default(), |ru| DiskReads {
        major_faults: u64::try_from(ru.ru_majflt).unwrap_or(0),
        blocks: u64::try_from(ru.ru_inblock).unwrap_or(0),
    })
}

fn usage() -> Option<libc::rusage> {
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage struct, which we own.
    (unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } == 0).then_some(ru)
}

/// This process's current and peak resident set (VmRSS, VmHWM from /proc/self/status).
pub fn rss_report() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .map(|l| l[k.len()..].trim().to_string())
            .unwrap_or_else(|| "?".into())
    };
    format!(
        "RSS {} (file-backed {}), peak {}",
        field("VmRSS:"),
        field("RssFile:"),
        field("VmHWM:")
    )
}

/// This process's private anonymous memory: what of it is in memory, and how much address
/// space it holds, written or not (`RssAnon` and `VmData` of /proc/self/status, in bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnonymousMemory {
    pub resident: u64,
    pub reserved: u64,
}

/// [`AnonymousMemory`] now; `None` where /proc/self/status cannot be read or lacks a field.
pub fn anonymous_memory() -> Option<AnonymousMemory> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    anonymous_memory_of(&status)
}

fn anonymous_memory_of(status: &str) -> Option<AnonymousMemory> {
    let kib = |key: &str| -> Option<u64> {
        let rest = status.lines().find_map(|l| l.strip_prefix(key))?;
        let n: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
        n.checked_mul(1024)
    };
    Some(AnonymousMemory {
        resident: kib("RssAnon:")?,
        reserved: kib("VmData:")?,
    })
}

/// For a test that measures the whole process (its memory, the C library's counters): true
/// in a child process that runs the test `name` (its full path) alone, where no other test
/// allocates meanwhile; otherwise runs that child, asserts that it passed, and returns false
/// (the caller returns).
#[cfg(test)]
pub(crate) fn alone_in_a_child(name: &str) -> bool {
    const CHILD: &str = "DCGGUF_TEST_ALONE";
    if std::env::var_os(CHILD).is_some_and(|v| v == name) {
        return true;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD, name)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the child failed:\n{text}");
    assert!(text.contains("1 passed"), "the child ran no test:\n{text}");
    false
}

/// Most worker threads a caller may ask for: 4 per CPU (at least 4, at most 1024). Asking
/// for 100,000 threads is a mistake; starting them would take minutes and gigabytes.
pub fn max_threads() -> usize {
    (cpus() * 4).clamp(4, 1024)
}

/// The CPUs this process may run on, read once: `std::thread::available_parallelism` reads
/// the affinity mask and the cgroup's CPU quota files on every call, which took 0.1 ms
/// (1-1.4 ms the first times) inside a llama.cpp host, where a budget asks before each
/// decode: every row lookup of a generated token (session 25, Qwen2.5-Coder's token table).
pub fn cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// A pool of `n` threads named `{prefix}-{i}` that end when it is dropped: the library's
/// decode threads, where rayon's global pool would stay idle in the host for its whole life.
pub fn thread_pool(
    n: usize,
    prefix: &'static str,
) -> std::result::Result<rayon::ThreadPool, rayon::ThreadPoolBuildError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(move |i| format!("{prefix}-{i}"))
        .build()
}

/// Writes `line` and a newline to stderr in one `write(2)`. `eprintln!` issues one write
/// per formatted piece, and inside a llama.cpp host its logging thread writes to stderr at
/// the same time, so its lines landed in the middle of ours.
pub fn write_stderr_line(line: &str) {
    let mut buf = String::with_capacity(line.len() + 1);
    buf.push_str(line);
    buf.push('\n');
    let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), buf.as_bytes());
}

/// `eprintln!` that reaches stderr in one piece (see [`write_stderr_line`]).
#[macro_export]
macro_rules! log_line {
    ($($arg:tt)*) => {
        $crate::io::write_stderr_line(&format!($($arg)*))
    };
}

/// Why an output could not be written: the I/O itself, or a target that must not be replaced.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: output exists (use --force to overwrite)")]
    Exists(PathBuf),
    #[error("{0}: output would overwrite the input")]
    IsInput(PathBuf),
    #[error("{path}: output is {kind}; --force replaces only regular files")]
    NotRegular { path: PathBuf, kind: String },
    #[error("{0}: not a file path")]
    NotAFilePath(PathBuf),
}

impl OutputError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> OutputError {
        let path = path.into();
        move |source| OutputError::Io { path, source }
    }
}

pub type Result<T> = std::result::Result<T, OutputError>;

/// The one size parser: a byte count with an optional k/K, m/M or g/G suffix, in powers of
/// 1024 (`1M` = 1 MiB = 1048576 bytes), as README's CLI section uses it for `--chunk-size`,
/// `--target-size` and `--cov-budget`.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&s[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|e| format!("{s:?}: {e}"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?}: too large"))
}

/// The private, anonymous, writable mapping holding `addr`; otherwise the range to skip
/// (the mapping of another kind holding it, if any).
pub fn anonymous_mapping_at(
    addr: usize,
) -> std::result::Result<Range<usize>, Option<Range<usize>>> {
    let maps = std::fs::read_to_string("/proc/self/maps").map_err(|_| None)?;
    for line in maps.lines() {
        let mut fields = line.split_ascii_whitespace();
        let (Some(range), Some(perms), Some(_offset), Some(_dev), Some(inode)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        if !(start..end).contains(&addr) {
            continue;
        }
        let path = fields.next().unwrap_or("");
        // Not [heap]: the brk heap holds the host's small allocations next to its free
        // memory, pages no caller may move or populate as a whole.
        let anonymous = inode == "0" && path.is_empty();
        return if perms.starts_with("rw-p") && anonymous {
            Ok(start..end)
        } else {
            Err(Some(start..end))
        };
    }
    Err(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_ahead_of_a_file_is_its_disks() {
        use std::os::unix::fs::MetadataExt;
        let file = File::open("Cargo.toml").unwrap();
        let dev = file.metadata().unwrap().dev();
        let bdi = format!(
            "/sys/class/bdi/{}:{}/read_ahead_kb",
            libc::major(dev),
            libc::minor(dev)
        );
        let got = read_ahead_bytes(&file);
        match std::fs::read_to_string(&bdi) {
            Ok(kb) => assert_eq!(got, kb.trim().parse::<u64>().unwrap() << 10),
            // A file system without a backing device of its own (overlay, tmpfs): a block
            // device's window, whole KiB, or the kernel's default.
            Err(_) => assert!(got >= 4 << 10 && got.is_multiple_of(1024), "{got} bytes"),
        }
    }

    #[test]
    fn anonymous_memory_counts_reserved_space_and_the_pages_written() {
        if !alone_in_a_child(
            "io::tests::anonymous_memory_counts_reserved_space_and_the_pages_written",
        ) {
            return;
        }
        // The test harness's own allocations: a margin of 4 MiB either way.
        const SLACK: i64 = 4 << 20;
        let delta = |a: u64, b: u64| b as i64 - a as i64;
        let before = anonymous_memory().expect("/proc/self/status");
        let mut anon = memmap2::MmapMut::map_anon(64 << 20).unwrap();
        let reserved = anonymous_memory().unwrap();
        anon[..16 << 20].fill(1);
        let written = anonymous_memory().unwrap();
        let reserved_grew = delta(before.reserved, reserved.reserved);
        assert!(
            (reserved_grew - (64 << 20)).abs() < SLACK,
            "{reserved_grew}"
        );
        let resident_grew = delta(reserved.resident, written.resident);
        assert!(
            (resident_grew - (16 << 20)).abs() < SLACK,
            "{resident_grew}"
        );
        assert_eq!(
            anonymous_memory_of("VmData:\t  2048 kB\nRssAnon:\t 512 kB\n"),
            Some(AnonymousMemory {
                resident: 512 << 10,
                reserved: 2 << 20
            })
        );
        assert_eq!(anonymous_memory_of("VmData:\t2048 kB\n"), None);
    }

    #[test]
    fn finds_anonymous_memory_and_rejects_file_mappings() {
        let anon = memmap2::MmapMut::map_anon(8 << 20).unwrap();
        let a = anon.as_ptr() as usize;
        let r = anonymous_mapping_at(a + 4096).expect("an anonymous mapping");
        assert!(r.start <= a && r.end >= a + (8 << 20));

        let path = std::env::temp_dir().join(format!("dcgguf-anon-map-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; 1 << 16]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: a read-only map of our own temporary file.
        let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
        let f = map.as_ptr() as usize;
        assert!(matches!(anonymous_mapping_at(f), Err(Some(r)) if r.contains(&f)));
        std::fs::remove_file(&path).unwrap();
    }
}
