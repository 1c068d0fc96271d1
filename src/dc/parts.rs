//! Whole conversions as the CLI and the C API run them: a file, or every part of a split
//! model, with all outputs checked before any is written, one progress total and one
//! [`Job`] for the lot.

use std::path::{Path, PathBuf};

use super::{
    CompressOptions, CompressReport, DcError, DcFile, Job, Result, compress_file,
    decompress_file_with, verify_against_with,
};
use crate::gguf::split::part_pairs;

/// Checks every input/output pair of a (split) job before any output is written, so a refused
/// run leaves nothing behind: each input exists, each output may be written
/// ([`crate::io::check_output`]).
pub fn precheck(jobs: &[(PathBuf, PathBuf)], force: bool) -> Result<()> {
    for (i, o) in jobs {
        std::fs::metadata(i).map_err(DcError::io(i))?;
        crate::io::check_output(o, Some(i), force)?;
    }
    Ok(())
}

/// Compresses `input` into `output`, or, when `input` is part 1 of a split model, every part
/// into its own DC file (named by [`crate::gguf::split::output_part`]). Progress adds up to
/// the inputs' sizes, recorded in `opts.job` first. A cancel or an error stops at the part
/// being written, which leaves nothing; parts finished before it stay.
pub fn compress_parts(
    input: &Path,
    output: &Path,
    opts: &CompressOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<CompressReport>> {
    let jobs = part_pairs(input, output);
    precheck(&jobs, opts.force)?;
    let mut total = 0;
    for (i, _) in &jobs {
        total += std::fs::metadata(i).map_err(DcError::io(i))?.len();
    }
    opts.job.set_total(total);
    jobs.iter()
        .map(|(i, o)| compress_file(i, o, opts, progress))
        .collect()
}

/// One decompressed file.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DecompressReport {
    pub input: PathBuf,
    pub output: PathBuf,
    pub bytes: u64,
}

/// Rebuilds the original GGUF (every part of a split DC model, as [`compress_parts`] names
/// them). Progress adds up to the original sizes, recorded in `job` first; cancelled or
/// failing, the part being written leaves nothing.
pub fn decompress_parts(
    input: &Path,
    output: &Path,
    force: bool,
    progress: &dyn Fn(u64),
    job: &Job,
) -> Result<Vec<DecompressReport>> {
    let jobs = part_pairs(input, output);
    precheck(&jobs, force)?;
    let mut total = 0;
    for (i, _) in &jobs {
        total += DcFile::open_for_full_check(i)?.original_size();
    }
    job.set_total(total);
    jobs.into_iter()
        .map(|(input, output)| {
            let bytes = decompress_file_with(&input, &output, force, progress, job)?;
            Ok(DecompressReport {
                input,
                output,
                bytes,
            })
        })
        .collect()
}

/// Decodes all of `input`, checking every chunk checksum and the whole-file checksum, and
/// with `against` compares the decoded bytes with that file. Returns the original size.
/// Progress adds up to it (recorded in `job` first).
pub fn verify_file(
    input: &Path,
    against: Option<&Path>,
    progress: &dyn Fn(u64),
    job: &Job,
) -> Result<u64> {
    let dc = DcFile::open_for_full_check(input)?;
    job.set_total(dc.original_size());
    match against {
        Some(orig) => verify_against_with(&dc, orig, progress, job)?,
        None => {
            dc.for_each_block(64 << 20, progress, |_, _| job.check())?;
            job.check()?;
        }
    }
    Ok(dc.original_size())
}
