//! Outputs are written to a temporary file next to the target and renamed into place only
//! once complete, so readers never see a half-written file and failures leave nothing behind.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::dc::{DcError, Result};

/// A file being written; becomes `target` on [`AtomicOutput::commit`], vanishes on drop.
pub struct AtomicOutput {
    tmp: PathBuf,
    target: PathBuf,
    file: Option<File>,
}

impl AtomicOutput {
    /// Starts writing `target`. Refuses an existing target unless `force`, and refuses a
    /// target that is the same file as `input`.
    pub fn create(target: &Path, input: Option<&Path>, force: bool) -> Result<AtomicOutput> {
        if let (Some(input), Ok(t)) = (input, fs::canonicalize(target))
            && fs::canonicalize(input).is_ok_and(|i| i == t)
        {
            return Err(DcError::OutputIsInput(target.to_path_buf()));
        }
        if !force && target.exists() {
            return Err(DcError::OutputExists(target.to_path_buf()));
        }
        let name = target
            .file_name()
            .ok_or_else(|| DcError::Usage(format!("{}: not a file path", target.display())))?;
        let tmp = target.with_file_name(format!(
            ".{}.tmp-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(DcError::io(&tmp))?;
        Ok(AtomicOutput {
            tmp,
            target: target.to_path_buf(),
            file: Some(file),
        })
    }

    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("file is present until commit")
    }

    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Flushes to disk and renames into place.
    pub fn commit(mut self) -> Result<()> {
        let file = self.file.take().expect("commit is called once");
        file.sync_all().map_err(DcError::io(&self.tmp))?;
        drop(file);
        fs::rename(&self.tmp, &self.target).map_err(DcError::io(&self.target))?;
        Ok(())
    }
}

impl Drop for AtomicOutput {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}
