//! The DC file that llama.cpp's fitting pass opened, handed to the full load that follows.
//!
//! llama-completion, llama-embedding, llama-server and every tool built on llama.cpp's
//! `common` load a model twice: first without allocating (`no_alloc`: `llama_params_fit`
//! reads the metadata to size the context), then for real. Opening a DC file maps it, checks
//! its header, index and blobs against their checksums and decodes the original header (the
//! vocabulary, mostly); the fitting pass keeps what it opened here and the next load of the
//! same path takes it instead of opening the file again, if the path still names the file
//! that was opened (same device, inode, size, modification and change times). Any other
//! load ends the hand-over, so at most one file is held, and only between two loads.
//!
//! Nothing is trusted for longer than before: the checks the open made covered the bytes it
//! kept (headers, index, original header), and each chunk is checked as it is decoded.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::dc::DcFile;

/// What identifies the file behind a path: a rename or a rewrite changes one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileIdentity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
    ctime: i64,
    ctime_nsec: i64,
}

impl FileIdentity {
    fn of(m: &std::fs::Metadata) -> FileIdentity {
        FileIdentity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
            ctime: m.ctime(),
            ctime_nsec: m.ctime_nsec(),
        }
    }
}

struct Kept {
    path: PathBuf,
    identity: FileIdentity,
    dc: Arc<DcFile>,
}

static KEPT: Mutex<Option<Kept>> = Mutex::new(None);

fn kept() -> std::sync::MutexGuard<'static, Option<Kept>> {
    KEPT.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keeps `dc`, which a fitting pass (a load with `no_alloc`) opened at `path`, for the next
/// load. Files held in memory are not kept (nothing to check their identity against).
pub(crate) fn keep(path: &Path, dc: Arc<DcFile>) {
    let Some(identity) = dc.file_metadata().map(|m| FileIdentity::of(&m)) else {
        return;
    };
    dc.rewind_for_another_load();
    *kept() = Some(Kept {
        path: path.to_path_buf(),
        identity,
        dc,
    });
}

/// The DC file a fitting pass kept, if it was opened at `path` and `path` still names that
/// file. Whatever was kept is let go either way: the hand-over is for the very next load.
pub(crate) fn take(path: &Path) -> Option<Arc<DcFile>> {
    let k = kept().take()?;
    if k.path != path {
        return None;
    }
    let now = std::fs::metadata(path).ok()?;
    (FileIdentity::of(&now) == k.identity).then_some(k.dc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dc::test_files::small_dc;
    use crate::gguf::GgmlType;
    use std::io::Write;

    // The tests share the one hand-over slot: run them in one test, in order.
    #[test]
    fn the_next_load_of_the_same_unchanged_file_takes_what_the_fitting_pass_kept() {
        let tensors = [("w".into(), vec![1024], GgmlType::F32, vec![7u8; 4096])];
        let (_, dir, path, dc) = small_dc("fit-pass", &tensors, 4096);

        keep(&path, dc.clone());
        let taken = take(&path).expect("same path, same file");
        assert!(Arc::ptr_eq(&taken, &dc));
        assert!(take(&path).is_none(), "handed over once");

        // Another path ends the hand-over.
        keep(&path, dc.clone());
        assert!(take(&dir.join("other.dc.gguf")).is_none());
        assert!(take(&path).is_none());

        // A file replaced at the same path (a new inode) is opened again.
        keep(&path, dc.clone());
        let replacement = dir.join("new.dc.gguf");
        std::fs::copy(&path, &replacement).unwrap();
        std::fs::rename(&replacement, &path).unwrap();
        assert!(take(&path).is_none());

        // So is a file written in place since it was opened.
        let dc = Arc::new(DcFile::open_without_arrays(&path).unwrap());
        keep(&path, dc.clone());
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&[0])
            .unwrap();
        assert!(take(&path).is_none());

        // And a file that is gone.
        keep(&path, dc);
        std::fs::remove_file(&path).unwrap();
        assert!(take(&path).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
