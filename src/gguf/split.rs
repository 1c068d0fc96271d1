//! Names of split models (`name-00001-of-00003.gguf`, llama.cpp's `llama_split_path` scheme).

use std::path::{Path, PathBuf};

/// Where a split marker `-NNNNN-of-MMMMM` sits in a file name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitName {
    pub prefix: String,
    pub index: u32,
    pub count: u32,
    pub suffix: String,
}

impl SplitName {
    /// Finds the last `-NNNNN-of-MMMMM` marker in `file_name` (1 <= NNNNN <= MMMMM).
    pub fn parse(file_name: &str) -> Option<SplitName> {
        let b = file_name.as_bytes();
        // "-" 5 digits "-of-" 5 digits = 15 bytes
        (0..b.len().saturating_sub(14)).rev().find_map(|i| {
            let m = &b[i..i + 15];
            let digits = |r: std::ops::Range<usize>| m[r].iter().all(u8::is_ascii_digit);
            if m[0] != b'-' || &m[6..10] != b"-of-" || !digits(1..6) || !digits(10..15) {
                return None;
            }
            let index: u32 = file_name[i + 1..i + 6].parse().ok()?;
            let count: u32 = file_name[i + 10..i + 15].parse().ok()?;
            (index >= 1 && index <= count).then(|| SplitName {
                prefix: file_name[..i].to_string(),
                index,
                count,
                suffix: file_name[i + 15..].to_string(),
            })
        })
    }

    pub fn file_name(&self, index: u32) -> String {
        format!(
            "{}-{:05}-of-{:05}{}",
            self.prefix, index, self.count, self.suffix
        )
    }
}

/// All parts of the split set that `first` (part 1) starts, or `None` if `first` is not part 1
/// of a split set.
pub fn split_parts(first: &Path) -> Option<(SplitName, Vec<PathBuf>)> {
    let name = SplitName::parse(first.file_name()?.to_str()?)?;
    if name.index != 1 || name.count < 2 {
        return None;
    }
    let dir = first.parent().unwrap_or(Path::new(""));
    let parts = (1..=name.count)
        .map(|i| dir.join(name.file_name(i)))
        .collect();
    Some((name, parts))
}

/// Input/output pairs of a conversion: one, or one per part when `input` is part 1 of a split
/// model (outputs named by [`output_part`]).
pub fn part_pairs(input: &Path, output: &Path) -> Vec<(PathBuf, PathBuf)> {
    match split_parts(input) {
        Some((name, inputs)) => inputs
            .into_iter()
            .enumerate()
            .map(|(k, i)| (i, output_part(output, k as u32 + 1, name.count)))
            .collect(),
        None => vec![(input.to_path_buf(), output.to_path_buf())],
    }
}

/// The output path for part `index` of `count`: the output name's own marker is replaced, or
/// one is inserted before the first `.` (`out.dc.gguf` -> `out-00002-of-00003.dc.gguf`).
pub fn output_part(out: &Path, index: u32, count: u32) -> PathBuf {
    let file = out
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = SplitName::parse(&file)
        .map(|n| SplitName { count, ..n })
        .unwrap_or_else(|| {
            let dot = file.find('.').unwrap_or(file.len());
            SplitName {
                prefix: file[..dot].to_string(),
                index: 1,
                count,
                suffix: file[dot..].to_string(),
            }
        });
    out.with_file_name(name.file_name(index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rebuilds_split_names() {
        let n = SplitName::parse("model-00002-of-00003.gguf").unwrap();
        assert_eq!((n.prefix.as_str(), n.index, n.count), ("model", 2, 3));
        assert_eq!(n.file_name(3), "model-00003-of-00003.gguf");
        assert!(SplitName::parse("model.gguf").is_none());
        assert!(SplitName::parse("m-00004-of-00003.gguf").is_none());
        assert_eq!(
            output_part(Path::new("/x/out.dc.gguf"), 2, 3),
            Path::new("/x/out-00002-of-00003.dc.gguf")
        );
        assert_eq!(
            output_part(Path::new("o-00001-of-00009.dc.gguf"), 2, 3),
            Path::new("o-00002-of-00003.dc.gguf")
        );
    }
}
