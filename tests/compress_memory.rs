//! `dcgguf compress` keeps its memory bounded whatever the input's size: the input is
//! streamed (its pages released behind the writer), chunks are encoded in a bounded window,
//! nothing holds the whole file. Measured as the peak resident set of a child process
//! (`wait4`'s `ru_maxrss`, which counts the input's mapped pages) compressing a synthetic
//! model several times larger than the bound.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use dcgguf::gguf::{GgmlType, HeaderWriter};

/// Peak resident set (bytes) of `cmd`, which must exit 0; its stderr goes to `log`.
fn peak_rss(cmd: &mut Command, log: &std::path::Path) -> u64 {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("spawn dcgguf");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, not yet waited for (std's `Child` only waits when
    // asked, and is dropped unwaited); both out-pointers are live locals.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    drop(child);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "dcgguf failed (status {status:#x}): {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    // Linux reports ru_maxrss in KiB.
    usage.ru_maxrss as u64 * 1024
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
