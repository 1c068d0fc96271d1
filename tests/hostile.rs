//! Crafted files, as an attacker writes them: every checksum recomputed (XXH3 is no MAC), so
//! only the readers' caps and their order of checks stand between a tiny file and gigabytes.
//! Each case runs the real `dcgguf` binary and checks exit code, message and peak RSS (of the
//! child, from `wait4`), also under an address-space limit (`ulimit -v`), where an infallible
//! allocation would abort. The table these tests print is README's bad-input table.

mod common;
mod llama_support;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use dcgguf::dc::{DcError, DcFile, Index};
use dcgguf::gguf::GgufHeader;
use xxhash_rust::xxh3::xxh3_64;

const BIN: &str = env!("CARGO_BIN_EXE_dcgguf");

/// What one run of the CLI did.
struct Outcome {
    /// Exit code, or `None` when a signal ended it.
    code: Option<i32>,
    signal: Option<i32>,
    stderr: String,
    peak_rss_mib: f64,
}

/// Runs `dcgguf ARGS`, optionally under an address-space limit, and reads its peak RSS
/// (its own: [`llama_support::peak`]).
fn run_cli(args: &[&std::ffi::OsStr], limit_as: Option<u64>) -> Outcome {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    run_measured(cmd, limit_as)
}

/// [`run_cli`] for any command.
fn run_measured(mut cmd: Command, limit_as: Option<u64>) -> Outcome {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    if let Some(limit) = limit_as {
        // SAFETY: setrlimit is async-signal-safe; the closure touches no other state of the
        // parent.
        unsafe {
            cmd.pre_exec(move || {
                let r = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &r) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut reader = None;
    let exit = llama_support::peak::run(&mut cmd, |child| {
        let mut stderr = child.stderr.take().expect("stderr piped");
        reader = Some(std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
            s
        }));
    });
    let stderr = reader.unwrap().join().unwrap();
    Outcome {
        code: exit.code(),
        signal: exit.signal(),
        stderr,
        peak_rss_mib: exit.peak_rss as f64 / (1024.0 * 1024.0),
    }
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

/// A DC file taken apart far enough to rebuild it with changed pieces and every checksum
/// recomputed.
struct Parts {
    bytes: Vec<u8>,
    index: Index,
    header_end: usize,
    index_at: usize,
    data_at: usize,
    data_len: usize,
    alignment: usize,
}

impl Parts {
    fn of(path: &Path) -> Parts {
        let dc = DcFile::open(path).unwrap();
        let bytes = std::fs::read(path).unwrap();
        let ir = dc_index_range(&dc);
        let dr = dc_data_range(&dc);
        Parts {
            header_end: dc.dc_header.data_offset as usize,
            index: dc.index.clone(),
            index_at: ir.start as usize,
            data_at: dr.start as usize,
            data_len: (dr.end - dr.start) as usize,
            alignment: dc.dc_header.alignment as usize,
            bytes,
        }
    }

    /// The file with a zstd frame of `raw` zero bytes appended to `dc.data` and made the
    /// original-header blob (`header`) or the gap blob, declaring `raw_len` decoded bytes
    /// and checksum `hash` (checksums of header and index recomputed).
    fn with_zero_blob(&self, header: bool, raw: usize, raw_len: u64, hash: Option<u64>) -> Vec<u8> {
        let frame = zero_bomb(raw);
        let blob = dcgguf::dc::BlobRef {
            offset: self.data_len as u64,
            stored_len: frame.len() as u64,
            raw_len,
            hash,
        };
        self.craft(&frame, |i| match header {
            true => i.header = blob,
            false => i.gaps = blob,
        })
    }

    /// The file with `extra` appended to `dc.data` (at offset `self.data_len` of it), the
    /// index edited by `edit`, and the header (dc.data's size), header checksum and index
    /// checksum recomputed: what an attacker with a hex editor and xxh3 produces.
    fn craft(&self, extra: &[u8], edit: impl FnOnce(&mut Index)) -> Vec<u8> {
        let mut head = self.bytes[..self.header_end].to_vec();
        let new_len = (self.data_len + extra.len()) as u64;
        let mut pat = 7u64.to_le_bytes().to_vec();
        pat.extend_from_slice(b"dc.data");
        let at = find(&head, &pat).expect("dc.data tensor info") + pat.len();
        // n_dims (u32 = 1), then the one dimension.
        head[at + 4..at + 12].copy_from_slice(&new_len.to_le_bytes());
        let mut index = self.index.clone();
        edit(&mut index);
        index.dc_header_hash = Some(xxh3_64(&head));
        let enc = index.encode();
        let mut out = head;
        out.extend_from_slice(&enc);
        out.resize(self.data_at, 0);
        out.extend_from_slice(&self.bytes[self.data_at..self.data_at + self.data_len]);
        out.extend_from_slice(extra);
        let end = out.len().div_ceil(self.alignment) * self.alignment;
        out.resize(end, 0);
        assert_eq!(self.index_at, self.header_end);
        out
    }
}

/// A zstd frame of `n` zero bytes (content size set): ~32000:1.
fn zero_bomb(n: usize) -> Vec<u8> {
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 19).unwrap();
    enc.set_pledged_src_size(Some(n as u64)).unwrap();
    let block = vec![0u8; 1 << 20];
    let mut left = n;
    while left > 0 {
        let k = left.min(block.len());
        std::io::Write::write_all(&mut enc, &block[..k]).unwrap();
        left -= k;
    }
    enc.finish().unwrap()
}

/// The real model every crafted file starts from, compressed once per test binary.
fn real_dc(dir: &TempDir) -> PathBuf {
    let src = shared_model("all-MiniLM-L6-v2-q8_0.gguf");
    let out = dir.join("real.dc.gguf");
    compress(require_model(&src), &out, &Default::default());
    out
}

/// One row of the bad-input table.
struct Row {
    input: &'static str,
    tool: &'static str,
    outcome: Outcome,
    limited: Outcome,
}

fn print_table(rows: &[Row], real: &[(&str, f64)]) {
    let mut t = String::from(
        "\n| input | command | exit | message | peak RSS | exit under ulimit -v 1.1G |\n\
         |---|---|---|---|---|---|\n",
    );
    for r in rows {
        let msg = r
            .outcome
            .stderr
            .lines()
            .last()
            .unwrap_or("")
            .replace("dcgguf: error: ", "");
        let msg = msg
            .rsplit_once(".dc.gguf: ")
            .map_or(msg.as_str(), |(_, m)| m);
        t += &format!(
            "| {} | `{}` | {} | {} | {:.1} MiB | {} |\n",
            r.input,
            r.tool,
            r.outcome.code.map_or("signal".into(), |c| c.to_string()),
            msg.chars().take(110).collect::<String>(),
            r.outcome.peak_rss_mib,
            r.limited.code.map_or("signal".into(), |c| c.to_string()),
        );
    }
    for (tool, rss) in real {
        t += &format!("| the real file | `{tool}` | 0 | | {rss:.1} MiB | 0 |\n");
    }
    eprintln!("{t}");
}

#[test]
#[cfg_attr(
    not(dcgguf_minilm),
    ignore = "needs the MiniLM models (scripts/fetch-models.sh)"
)]
fn crafted_dc_files_fail_cleanly_in_bounded_memory() {
    let dir = TempDir::new("hostile");
    let real = real_dc(&dir);
    let parts = Parts::of(&real);
    let giant: u64 = 1 << 30;
    let cases: Vec<(&'static str, Vec<u8>, &str)> = vec![
        (
            "D1 header blob `raw_len` 1 GiB, tiny frame",
            parts.craft(&[], |i| i.header.raw_len = giant),
            "original header",
        ),
        (
            "D1 gap blob `raw_len` 1 GiB, tiny frame",
            parts.craft(&[], |i| i.gaps.raw_len = giant),
            "gap",
        ),
        (
            "D2 header blob: a 1 GiB zstd bomb (33 KB)",
            parts.with_zero_blob(true, giant as usize, giant, Some(0)),
            "original header",
        ),
        (
            "D2 gap blob: a 1 GiB zstd bomb (33 KB)",
            parts.with_zero_blob(false, giant as usize, giant, Some(0)),
            "gap",
        ),
        // Within the ratio cap: decoded (4 MiB), checked, refused.
        (
            "D2 header blob: 4 MiB of zeros, checksum recomputed",
            parts.with_zero_blob(true, 4 << 20, 4 << 20, Some(xxh3_64(&vec![0u8; 4 << 20]))),
            "original header",
        ),
        (
            "D8 one bit flipped in the DC header",
            {
                let mut b = parts.bytes.clone();
                let at = value_offset(&b, "dc.original_xxh3");
                b[at] ^= 4;
                b
            },
            "header",
        ),
    ];
    let commands: [(&str, &[&str]); 3] = [
        ("inspect", &["inspect"]),
        ("verify", &["verify"]),
        ("decompress", &["decompress"]),
    ];
    // What each command needs on the real file.
    let mut real_rss = Vec::new();
    for (tool, args) in commands {
        let out = dir.join("real-out.gguf");
        let _ = std::fs::remove_file(&out);
        let mut a: Vec<&std::ffi::OsStr> = args.iter().map(|s| os(s)).collect();
        a.push(real.as_os_str());
        if tool == "decompress" {
            a.push(out.as_os_str());
        }
        let o = run_cli(&a, None);
        assert_eq!(o.code, Some(0), "{tool} on the real file: {}", o.stderr);
        real_rss.push((tool, o.peak_rss_mib));
    }
    let mut rows = Vec::new();
    for (what, bytes, region) in &cases {
        let bad = dir.write("bad.dc.gguf", bytes);
        assert!(
            bytes.len() < parts.bytes.len() + (64 << 10),
            "{what}: crafted file should be small"
        );
        for (k, (tool, args)) in commands.iter().enumerate() {
            let out = dir.join("bad-out.gguf");
            let mut a: Vec<&std::ffi::OsStr> = args.iter().map(|s| os(s)).collect();
            a.push(bad.as_os_str());
            if *tool == "decompress" {
                a.push(out.as_os_str());
            }
            let o = run_cli(&a, None);
            let limited = run_cli(&a, Some(1100 << 20));
            for (o, how) in [(&o, "plain"), (&limited, "ulimit -v 1.1G")] {
                assert!(
                    matches!(o.code, Some(3 | 4)),
                    "{what}, {tool}, {how}: exit {:?} signal {:?}: {}",
                    o.code,
                    o.signal,
                    o.stderr
                );
                assert!(
                    o.stderr.contains(region),
                    "{what}, {tool}: message does not name {region:?}: {}",
                    o.stderr
                );
            }
            let bound = (2.0 * real_rss[k].1).max(64.0);
            assert!(
                o.peak_rss_mib <= bound,
                "{what}, {tool}: peak RSS {:.1} MiB > {bound:.1} MiB",
                o.peak_rss_mib
            );
            assert!(!out.exists(), "{what}: decompress wrote an output");
            assert!(dir.tmp_leftovers().is_empty(), "{what}: temp file left");
            rows.push(Row {
                input: what,
                tool,
                outcome: o,
                limited,
            });
        }
    }
    print_table(&rows, &real_rss);
}

/// A version-1 file (tests/data/tiny-v1.dc.gguf, written by dcgguf before format 2, from
/// tests/data/tiny.gguf): its header and blobs have no checksum of their own, so only
/// `decompress` and `verify` (whole-file checksum first) read it; others say how to upgrade.
#[test]
fn version_1_files_decompress_and_nothing_else_trusts_them() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let v1 = data.join("tiny-v1.dc.gguf");
    match DcFile::open(&v1) {
        Err(e @ DcError::LegacyVersion(_)) => {
            let msg = e.to_string();
            assert!(
                msg.contains("decompress") && msg.contains("compress again"),
                "{msg}"
            );
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    let dir = TempDir::new("v1");
    let out = dir.join("tiny.gguf");
    let o = run_cli(&[os("decompress"), v1.as_os_str(), out.as_os_str()], None);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(data.join("tiny.gguf")).unwrap()
    );
    let o = run_cli(&[os("verify"), v1.as_os_str()], None);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let o = run_cli(&[os("inspect"), v1.as_os_str()], None);
    assert_eq!(o.code, Some(3), "{}", o.stderr);
    assert!(o.stderr.contains("version 1"), "{}", o.stderr);
    // A damaged version-1 file: decompress fails on the whole-file checksum, writes nothing.
    let mut bytes = std::fs::read(&v1).unwrap();
    let at = value_offset(&bytes, "dc.original_xxh3");
    bytes[at] ^= 1;
    let bad = dir.write("bad-v1.dc.gguf", &bytes);
    let out = dir.join("bad.gguf");
    let o = run_cli(&[os("decompress"), bad.as_os_str(), out.as_os_str()], None);
    assert_eq!(o.code, Some(4), "{}", o.stderr);
    assert!(!out.exists() && dir.tmp_leftovers().is_empty());
}

/// A 102-byte GGUF declaring `general.alignment` = 2^31: the DC file must stay small (its
/// alignment is capped), and decompress gives the input back.
#[test]
fn huge_alignment_does_not_inflate_the_output() {
    let dir = TempDir::new("align");
    for (align, with_tensor) in [(1u64 << 31, false), (1 << 20, true)] {
        let mut r = Raw::header(3, u64::from(with_tensor), 1);
        r.kv_u32("general.alignment", align as u32);
        if with_tensor {
            r.tensor_info(b"t", &[8], 0, 0).pad(align).zeros(32);
        }
        let input = dir.write("a.gguf", &r.0);
        let out = dir.join("a.dc.gguf");
        let _ = std::fs::remove_file(&out);
        let o = run_cli(&[os("compress"), input.as_os_str(), out.as_os_str()], None);
        assert_eq!(o.code, Some(0), "{}", o.stderr);
        let (inp, outp) = (r.0.len() as u64, std::fs::metadata(&out).unwrap().len());
        assert!(
            outp <= inp + (64 << 10),
            "alignment {align}: {inp} -> {outp} bytes"
        );
        let back = dir.join("a.back.gguf");
        let _ = std::fs::remove_file(&back);
        let o = run_cli(&[os("decompress"), out.as_os_str(), back.as_os_str()], None);
        assert_eq!(o.code, Some(0), "{}", o.stderr);
        assert_eq!(std::fs::read(&back).unwrap(), r.0);
        let h = GgufHeader::parse(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(h.alignment, align.min(4096));
    }
}

/// 200,000 zero-size tensors (a 7.7 MB input): per-tensor bookkeeping must stay small.
#[test]
fn many_empty_tensors_compress_in_bounded_memory() {
    let dir = TempDir::new("many");
    let n = 200_000u64;
    let mut r = Raw::header(3, n, 0);
    for i in 0..n {
        r.tensor_info(format!("t{i}").as_bytes(), &[0], 0, 0); // type 0 = F32
    }
    r.pad(32);
    let input = dir.write("many.gguf", &r.0);
    let out = dir.join("many.dc.gguf");
    let o = run_cli(&[os("compress"), input.as_os_str(), out.as_os_str()], None);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    eprintln!(
        "200,000 empty tensors ({} bytes): compress peak RSS {:.1} MiB",
        r.0.len(),
        o.peak_rss_mib
    );
    assert!(o.peak_rss_mib < 100.0, "{:.1} MiB", o.peak_rss_mib);
    let o = run_cli(&[os("verify"), out.as_os_str()], None);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
}

/// Thread counts are capped with a clear message (100,000 threads would take minutes).
#[test]
fn absurd_thread_counts_are_refused() {
    let dir = TempDir::new("threads");
    let input = dir.write("t.gguf", &small_model(3).build());
    let out = dir.join("t.dc.gguf");
    let started = std::time::Instant::now();
    let o = run_cli(
        &[
            os("--threads"),
            os("100000"),
            os("compress"),
            input.as_os_str(),
            out.as_os_str(),
        ],
        None,
    );
    assert_eq!(o.code, Some(2), "{}", o.stderr);
    assert!(o.stderr.contains("at most"), "{}", o.stderr);
    assert!(started.elapsed().as_secs() < 10);
    assert!(!out.exists());
}

/// Garbage where an imatrix belongs is invalid input (exit 3), not a usage error.
#[test]
#[cfg_attr(
    not(dcgguf_minilm),
    ignore = "needs the MiniLM models (scripts/fetch-models.sh)"
)]
fn garbage_imatrix_is_invalid_input() {
    let src = shared_model("all-MiniLM-L6-v2-f32.gguf");
    require_model(&src);
    let dir = TempDir::new("imatrix");
    let garbage = dir.write(
        "garbage.imatrix.gguf",
        b"this is not an imatrix file at all",
    );
    let out = dir.join("q.dc.gguf");
    let o = run_cli(
        &[
            os("compress"),
            src.as_os_str(),
            out.as_os_str(),
            os("--quantize"),
            os("int8"),
            os("--imatrix"),
            garbage.as_os_str(),
        ],
        None,
    );
    assert_eq!(o.code, Some(3), "{}", o.stderr);
    assert!(!out.exists());
}

/// The same crafted files through llama.cpp's own tool under the preload hook: the host gets
/// a clean error from dcgguf, in no more memory than it needs for the real model.
#[test]
#[cfg_attr(
    not(all(dcgguf_llama, dcgguf_minilm)),
    ignore = "needs llama.cpp (scripts/build-llama.sh) and the MiniLM models (scripts/fetch-models.sh)"
)]
fn crafted_dc_files_fail_cleanly_inside_llama_cpp() {
    let t = "crafted_dc_files_fail_cleanly_inside_llama_cpp";
    let l = llama_support::require_llama(t);
    let dir = TempDir::new("hostile-llama");
    let real = real_dc(&dir);
    let parts = Parts::of(&real);
    let giant: u64 = 1 << 30;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "header blob raw_len 1 GiB",
            parts.craft(&[], |i| i.header.raw_len = giant),
            "original header",
        ),
        (
            "header blob bomb",
            parts.with_zero_blob(true, giant as usize, giant, Some(0)),
            "original header",
        ),
        (
            "gap blob bomb",
            parts.with_zero_blob(false, giant as usize, giant, Some(0)),
            "gap",
        ),
    ];
    let embed = |model: &Path| {
        let mut c = Command::new(l.bin("llama-embedding"));
        c.env("LD_PRELOAD", llama_support::preload(&l, true))
            .env_remove("LD_LIBRARY_PATH")
            .arg("-m")
            .arg(model)
            .args([
                "-p",
                "hello world",
                "-t",
                "2",
                "--embd-output-format",
                "json",
            ]);
        c
    };
    let good = run_measured(embed(&real), None);
    assert_eq!(good.code, Some(0), "real file: {}", good.stderr);
    for (what, bytes, region) in cases {
        let bad = dir.write("bad.dc.gguf", &bytes);
        for limit in [None, Some(4u64 << 30)] {
            let o = run_measured(embed(&bad), limit);
            assert!(
                o.code.is_some_and(|c| c != 0),
                "{what} ({limit:?}): exit {:?} signal {:?}: {}",
                o.code,
                o.signal,
                o.stderr
            );
            assert!(
                o.stderr.contains("dcgguf: error:") && o.stderr.contains(region),
                "{what}: {}",
                o.stderr
            );
            let bound = (2.0 * good.peak_rss_mib).max(64.0);
            assert!(
                o.peak_rss_mib <= bound,
                "{what}: {:.1} MiB > {bound:.1} MiB",
                o.peak_rss_mib
            );
            eprintln!(
                "llama-embedding, {what}: exit {:?}, peak RSS {:.1} MiB (real file {:.1} MiB)",
                o.code, o.peak_rss_mib, good.peak_rss_mib
            );
        }
    }
}

/// The C API caps thread counts the same way: a clear error code, quickly.
#[test]
fn c_api_refuses_absurd_thread_counts() {
    use dcgguf::ffi::api::{dcgguf_file, dcgguf_free, dcgguf_open, dcgguf_set_threads};
    use dcgguf::ffi::dcgguf_result;
    let dir = TempDir::new("c-threads");
    let input = dir.write("t.gguf", &small_model(4).build());
    let dc = dir.join("t.dc.gguf");
    compress(&input, &dc, &Default::default());
    let path = std::ffi::CString::new(dc.to_str().unwrap()).unwrap();
    let mut f: *mut dcgguf_file = std::ptr::null_mut();
    assert_eq!(dcgguf_open(path.as_ptr(), &mut f), dcgguf_result::DCGGUF_OK);
    let started = std::time::Instant::now();
    assert_eq!(
        dcgguf_set_threads(f, 100_000),
        dcgguf_result::DCGGUF_ERR_INVALID_ARGUMENT
    );
    assert!(started.elapsed().as_secs() < 5);
    assert_eq!(dcgguf_set_threads(f, 2), dcgguf_result::DCGGUF_OK);
    dcgguf_free(f);
}
