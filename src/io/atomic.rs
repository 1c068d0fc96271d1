//! Outputs are written to a temporary file next to the target and moved into place only once
//! complete, so readers never see a half-written file and failures leave nothing behind.
//!
//! - Without `force` the final step never replaces anything: if the target appeared while we
//!   were writing (another run, another program), it fails with [`OutputError::Exists`] and
//!   the temporary file is removed (Linux: `renameat2(RENAME_NOREPLACE)`; elsewhere, or on
//!   filesystems without it, `link` + `unlink`).
//! - With `force` only a regular file is replaced: a device node, directory, FIFO, socket or
//!   symbolic link is refused ([`OutputError::NotRegular`]), checked when the output is
//!   created and again right before the rename.
//! - Temporary files are named `.NAME.dcgguf-tmp-PID`. Live ones are kept in a process-wide
//!   registry so that a program's signal handling can remove them before it exits
//!   ([`remove_live_temp_files`]; the library itself installs no signal handlers). One left by
//!   a run that was killed outright (SIGKILL, power loss) is removed by the next run writing
//!   the same target once its PID no longer exists.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use super::{OutputError, Result};

/// What follows `.NAME` in a temporary file's name, before the PID.
pub const TEMP_TAG: &str = ".dcgguf-tmp-";

/// Temporary files this process is writing; see [`remove_live_temp_files`].
struct Registry {
    paths: Vec<PathBuf>,
    /// Set by [`remove_live_temp_files`]: the process is exiting, create no more.
    closing: bool,
}

static LIVE: Mutex<Registry> = Mutex::new(Registry {
    paths: Vec::new(),
    closing: false,
});

fn live() -> MutexGuard<'static, Registry> {
    // A panic elsewhere while holding the lock leaves the list itself consistent.
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes every temporary file this process is still writing (outputs not yet committed and
/// scratch files). Meant for a program's SIGINT/SIGTERM handling right before it exits: from
/// then on no new temporary file is created in this process (creating one fails).
///
/// Not async-signal-safe (it takes a lock and allocates): call it from a normal thread, such
/// as a `signal_hook::iterator::Signals` loop, not from inside a signal handler.
pub fn remove_live_temp_files() {
    let mut r = live();
    r.closing = true;
    for p in r.paths.drain(..) {
        let _ = fs::remove_file(&p);
    }
}

fn closing_error(path: &Path) -> OutputError {
    OutputError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::Interrupted, "the process is exiting"),
    }
}

fn unregister(path: &Path) {
    live().paths.retain(|p| p != path);
}

/// A scratch file path (written by other code) that is removed on drop and by
/// [`remove_live_temp_files`].
pub(crate) struct TempPath(PathBuf);

impl TempPath {
    pub(crate) fn new(path: PathBuf) -> Result<TempPath> {
        let mut r = live();
        if r.closing {
            return Err(closing_error(&path));
        }
        r.paths.push(path.clone());
        Ok(TempPath(path))
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
        unregister(&self.0);
    }
}

/// A file being written; becomes `target` on [`AtomicOutput::commit`], vanishes on drop.
pub struct AtomicOutput {
    tmp: PathBuf,
    target: PathBuf,
    force: bool,
    file: Option<File>,
    committed: bool,
}

impl AtomicOutput {
    /// Starts writing `target`. Refuses an existing target unless `force`, a target that is
    /// not a regular file even with `force`, and a target that is the same file as `input`.
    /// Removes temporary files for the same target left by runs that no longer exist.
    pub fn create(target: &Path, input: Option<&Path>, force: bool) -> Result<AtomicOutput> {
        check_output(target, input, force)?;
        let name = target
            .file_name()
            .ok_or_else(|| OutputError::NotAFilePath(target.to_path_buf()))?;
        let mut prefix = OsString::from(".");
        prefix.push(name);
        prefix.push(TEMP_TAG);
        remove_stale_temps(target, &prefix);
        let mut tmp_name = prefix;
        tmp_name.push(std::process::id().to_string());
        let tmp = target.with_file_name(tmp_name);
        // Created and registered under the registry's lock, so remove_live_temp_files either
        // sees it or has already stopped its creation.
        let file = {
            let mut r = live();
            if r.closing {
                return Err(closing_error(&tmp));
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(OutputError::io(&tmp))?;
            r.paths.push(tmp.clone());
            file
        };
        Ok(AtomicOutput {
            tmp,
            target: target.to_path_buf(),
            force,
            file: Some(file),
            committed: false,
        })
    }

    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("file is present until commit")
    }

    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Flushes to disk and moves into place: without `force` only if the target still does
    /// not exist, with `force` only if it is (still) absent or a regular file. On failure the
    /// temporary file is removed.
    pub fn commit(mut self) -> Result<()> {
        let file = self.file.take().expect("commit is called once");
        file.sync_all().map_err(OutputError::io(&self.tmp))?;
        drop(file);
        if self.force {
            if let Ok(m) = fs::symlink_metadata(&self.target) {
                check_regular(&self.target, &m)?;
            }
            fs::rename(&self.tmp, &self.target).map_err(OutputError::io(&self.target))?;
        } else {
            place_new(&self.tmp, &self.target)?;
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for AtomicOutput {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
        unregister(&self.tmp);
    }
}

/// The checks [`AtomicOutput::create`] makes before writing anything, for callers that check
/// several outputs before starting (split models).
pub fn check_output(target: &Path, input: Option<&Path>, force: bool) -> Result<()> {
    if let (Some(input), Ok(t)) = (input, fs::canonicalize(target))
        && fs::canonicalize(input).is_ok_and(|i| i == t)
    {
        return Err(OutputError::IsInput(target.to_path_buf()));
    }
    // symlink_metadata: a symbolic link (even a dangling one) is something that exists.
    match fs::symlink_metadata(target) {
        Ok(_) if !force => Err(OutputError::Exists(target.to_path_buf())),
        Ok(m) => check_regular(target, &m),
        Err(_) => Ok(()),
    }
}

/// `--force` replaces regular files only.
fn check_regular(target: &Path, m: &fs::Metadata) -> Result<()> {
    let t = m.file_type();
    let kind = if t.is_file() {
        return Ok(());
    } else if t.is_symlink() {
        match fs::read_link(target) {
            Ok(to) => format!(
                "a symbolic link to {} (give the path it points to instead)",
                to.display()
            ),
            Err(_) => "a symbolic link (give the path it points to instead)".to_string(),
        }
    } else if t.is_dir() {
        "a directory".to_string()
    } else if t.is_char_device() {
        "a character device".to_string()
    } else if t.is_block_device() {
        "a block device".to_string()
    } else if t.is_fifo() {
        "a FIFO".to_string()
    } else if t.is_socket() {
        "a socket".to_string()
    } else {
        "not a regular file".to_string()
    };
    Err(OutputError::NotRegular {
        path: target.to_path_buf(),
        kind,
    })
}

/// Moves `tmp` to `target` unless `target` exists.
fn place_new(tmp: &Path, target: &Path) -> Result<()> {
    #[cfg(target_os = "linux")]
    match rename_noreplace(tmp, target) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(OutputError::Exists(target.to_path_buf()));
        }
        // Kernel or filesystem without RENAME_NOREPLACE: fall back to link + unlink.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {}
        Err(e) => return Err(OutputError::io(target)(e)),
    }
    link_noreplace(tmp, target)
}

/// `link` + `unlink`: fails if `target` exists, like `RENAME_NOREPLACE`.
fn link_noreplace(tmp: &Path, target: &Path) -> Result<()> {
    let exists = || OutputError::Exists(target.to_path_buf());
    match fs::hard_link(tmp, target) {
        Ok(()) => {
            // The target is complete; the second name goes (Drop is not needed any more).
            let _ = fs::remove_file(tmp);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(exists()),
        // No hard links here (FAT, some FUSE filesystems): check, then rename. A target that
        // appears between the two is replaced; nothing better is possible there.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EPERM | libc::EOPNOTSUPP | libc::ENOSYS | libc::EMLINK)
            ) =>
        {
            if fs::symlink_metadata(target).is_ok() {
                return Err(exists());
            }
            fs::rename(tmp, target).map_err(OutputError::io(target))
        }
        Err(e) => Err(OutputError::io(target)(e)),
    }
}

#[cfg(target_os = "linux")]
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    let cstr = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    };
    let (from, to) = (cstr(from)?, cstr(to)?);
    // The raw system call, not glibc's wrapper (which needs glibc 2.28).
    // SAFETY: both pointers are valid NUL-terminated strings that outlive the call;
    // AT_FDCWD makes relative paths relative to the working directory like rename(2); the
    // kernel only reads them.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether a process with this PID exists (conservatively true when unsure).
fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return true;
    };
    if pid <= 0 {
        return true;
    }
    // SAFETY: signal 0 sends nothing; kill only checks that the process exists and that we
    // may signal it. No memory is involved.
    if unsafe { libc::kill(pid, 0) } == 0 {
        return true;
    }
    // EPERM: it exists but belongs to someone else.
    std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

fn same_file(a: &Path, b: &fs::Metadata) -> bool {
    fs::symlink_metadata(a).is_ok_and(|m| m.dev() == b.dev() && m.ino() == b.ino())
}

/// Removes `PREFIX` + PID files next to `target` whose process is gone: left by a run that
/// was killed before it could clean up. One line on stderr per removed file.
fn remove_stale_temps(target: &Path, prefix: &OsStr) {
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let me = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .as_bytes()
            .strip_prefix(prefix.as_bytes())
            .filter(|d| !d.is_empty() && d.len() <= 10 && d.iter().all(u8::is_ascii_digit))
            .and_then(|d| std::str::from_utf8(d).ok()?.parse::<u32>().ok())
        else {
            continue;
        };
        let path = target.with_file_name(&name);
        let stale = if pid == me {
            // Our PID, reused after a killed run: stale unless it is one of ours.
            let Ok(m) = fs::symlink_metadata(&path) else {
                continue;
            };
            !live().paths.iter().any(|p| same_file(p, &m))
        } else {
            !process_exists(pid)
        };
        if stale && fs::remove_file(&path).is_ok() {
            eprintln!(
                "dcgguf: removed stale temporary file {} (left by an interrupted run, pid {pid})",
                path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_fallback_never_replaces() {
        let dir = std::env::temp_dir().join(format!("dcgguf-link-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let (tmp, target) = (dir.join(".t.tmp"), dir.join("t"));
        fs::write(&tmp, b"new").unwrap();
        fs::write(&target, b"old").unwrap();
        assert!(matches!(
            link_noreplace(&tmp, &target),
            Err(OutputError::Exists(_))
        ));
        assert_eq!(fs::read(&target).unwrap(), b"old");
        fs::remove_file(&target).unwrap();
        link_noreplace(&tmp, &target).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new");
        assert!(!tmp.exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
