//! `dcgguf compress` keeps its memory bounded whatever the input's size: the input is
//! streamed (its pages released behind the writer), chunks are encoded in a bounded window,
//! nothing holds the whole file. Measured as the peak resident set of a child process
//! (its own `VmHWM`, which counts the input's mapped pages) compressing a synthetic model
//! several times larger than the bound.

mod common;
#[path = "llama_support/peak.rs"]
mod peak;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use dcgguf::gguf::{GgmlType, HeaderWriter};

/// Peak resident set (bytes) of `cmd`, which must exit 0; its stderr goes to `log`.
fn peak_rss(cmd: &mut Command, log: &std::path::Path) -> u64 {
    cmd.stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    let exit = peak::run(cmd, |_| {});
    assert!(
        exit.success(),
        "dcgguf failed (status {:#x}): {}",
        exit.status,
        std::fs::read_to_string(log).unwrap_or_default()
    );
    exit.peak_rss
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "needs a release build (cargo test --release): unoptimized builds compress about 10x slower"
)]
fn compress_memory_does_not_grow_with_the_input() {
    const TENSORS: usize = 24;
    const BOUND: u64 = 128 << 20;
    let dir = TempDir::new("compress-memory");
    // Written piece by piece: the child's peak RSS includes its parent's at spawn (Linux
    // carries the high-water mark across the vfork + exec that spawns it), so this process
    // must stay small too.
    let input = dir.join("big.gguf");
    {
        // One realistic 16 MiB F16 tensor's bytes, repeated: 384 MiB of tensor data.
        let mut rng = Rng::new(5);
        let dims = [4096u64, 2048];
        let data = tensor_data(GgmlType::F16, dims[0] * dims[1], &mut rng);
        let mut w = HeaderWriter::new(3);
        for i in 0..TENSORS {
            let name = format!("blk.{i}.weight");
            w.tensor(&name, &dims, GgmlType::F16, (i * data.len()) as u64);
        }
        let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
        f.write_all(&w.finish(32)).unwrap();
        for _ in 0..TENSORS {
            f.write_all(&data).unwrap();
        }
        f.flush().unwrap();
    }
    let input_len = std::fs::metadata(&input).unwrap().len();
    assert!(input_len > 3 * BOUND, "{input_len}");
    let out = dir.join("big.dc.gguf");
    let peak = peak_rss(
        Command::new(env!("CARGO_BIN_EXE_dcgguf"))
            .args(["-q", "--threads", "2", "compress"])
            .arg(&input)
            .arg(&out),
        &dir.join("stderr.txt"),
    );
    eprintln!("input {input_len} bytes, peak RSS {peak} bytes");
    assert!(
        peak < BOUND,
        "peak RSS {peak} bytes compressing {input_len} bytes (bound {BOUND})"
    );
    // And the output is right: every chunk and the original's checksum (hashed as the input
    // streamed through) check out, and the decoded bytes are the input's.
    let verify = Command::new(env!("CARGO_BIN_EXE_dcgguf"))
        .args(["-q", "verify", "--against"])
        .arg(&input)
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

/// The peak these tests (and the budget bench, tests/llama_budget.rs, tests/hostile.rs) read
/// is the measured program's own: not this process's resident set, which `wait4`'s
/// ru_maxrss would count in it, and not lost when the program execs another.
#[test]
fn the_peak_is_the_programs_own() {
    let held: Vec<u8> = (0..200usize << 20).map(|i| i as u8).collect();
    let small = peak::run(Command::new("true").stdout(Stdio::null()), |_| {});
    assert!(small.success());
    assert!(
        small.peak_rss > 0 && small.peak_rss < 20 << 20,
        "true: {} bytes",
        small.peak_rss
    );
    // A 120 MiB buffer behind a shell's exec.
    let big = peak::run(
        Command::new("sh").args([
            "-c",
            "exec python3 -c 'b = bytearray(120 << 20); b[::4096] = b\"x\" * len(b[::4096])'",
        ]),
        |_| {},
    );
    assert!(big.success(), "status {:#x}", big.status);
    assert!(
        (120 << 20..200 << 20).contains(&big.peak_rss),
        "python: {} bytes",
        big.peak_rss
    );
    std::hint::black_box(&held);
}
