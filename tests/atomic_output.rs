//! Outputs never clobber by surprise: without `--force` a target that appears while we write
//! is kept (exit 5), `--force` replaces only regular files (not devices, directories, FIFOs,
//! symlinks), SIGINT/SIGTERM remove the temporary file (exit 130/143), a cancelled
//! [`dcgguf::dc::Job`] leaves nothing, and a temporary file left by a killed run is removed by
//! the next run writing the same target.

mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use dcgguf::dc::DcFile;
use dcgguf::gguf::GgmlType;
use dcgguf::io::{AtomicOutput, OutputError, TEMP_TAG};
use std::io::Write;

/// Temporary outputs in `dir` (`.NAME.dcgguf-tmp-PID`).
fn temps(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(TEMP_TAG))
        .collect()
}

fn write_and_commit(target: &Path, force: bool, bytes: &[u8]) -> Result<(), OutputError> {
    let mut out = AtomicOutput::create(target, None, force)?;
    out.file().write_all(bytes).unwrap();
    out.commit()
}

#[test]
fn temp_name_is_recognisable() {
    let dir = TempDir::new("atomic-name");
    let target = dir.join("out.dc.gguf");
    let out = AtomicOutput::create(&target, None, false).unwrap();
    assert_eq!(
        out.path(),
        dir.join(&format!(".out.dc.gguf.dcgguf-tmp-{}", std::process::id()))
    );
    assert!(out.path().exists());
    drop(out);
    assert!(temps(dir.path()).is_empty(), "dropped output left its temp");
    assert!(!target.exists());
}

#[test]
fn target_appearing_meanwhile_is_kept_without_force() {
    let dir = TempDir::new("atomic-race");
    let target = dir.join("out.bin");
    let mut out = AtomicOutput::create(&target, None, false).unwrap();
    out.file().write_all(b"ours").unwrap();
    // Another run (or program) finishes first.
    std::fs::write(&target, b"theirs, finished first").unwrap();
    match out.commit() {
        Err(OutputError::Exists(p)) => assert_eq!(p, target),
        other => panic!("expected OutputExists, got {other:?}"),
    }
    assert_eq!(std::fs::read(&target).unwrap(), b"theirs, finished first");
    assert!(
        temps(dir.path()).is_empty(),
        "temp left: {:?}",
        temps(dir.path())
    );

    // A dangling symlink appearing is something that exists too.
    let link = dir.join("link.bin");
    let mut out = AtomicOutput::create(&link, None, false).unwrap();
    out.file().write_all(b"ours").unwrap();
    std::os::unix::fs::symlink(dir.join("nowhere"), &link).unwrap();
    assert!(matches!(out.commit(), Err(OutputError::Exists(_))));
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert!(!dir.join("nowhere").exists());
    assert!(temps(dir.path()).is_empty());

    // Nothing in the way: committed, no temp.
    let fresh = dir.join("fresh.bin");
    write_and_commit(&fresh, false, b"ours").unwrap();
    assert_eq!(std::fs::read(&fresh).unwrap(), b"ours");
    assert!(temps(dir.path()).is_empty());
}

#[test]
fn force_replaces_regular_files() {
    let dir = TempDir::new("atomic-force");
    let target = dir.write("out.bin", b"old");
    assert!(matches!(
        write_and_commit(&target, false, b"new"),
        Err(OutputError::Exists(_))
    ));
    assert_eq!(std::fs::read(&target).unwrap(), b"old");
    write_and_commit(&target, true, b"new").unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"new");
    assert!(temps(dir.path()).is_empty());
}

fn expect_not_regular(r: Result<(), OutputError>, what: &str, kind_has: &str) {
    match r {
        Err(e @ OutputError::NotRegular { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(kind_has), "{what}: message {msg:?}");
            assert!(msg.contains("regular file"), "{what}: message {msg:?}");
        }
        other => panic!("{what}: expected OutputNotRegular, got {other:?}"),
    }
}

fn mkfifo(p: &Path) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

#[test]
fn force_refuses_what_is_not_a_regular_file() {
    let dir = TempDir::new("atomic-notreg");

    let sub = dir.join("subdir");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("inside"), b"keep").unwrap();
    expect_not_regular(
        write_and_commit(&sub, true, b"x"),
        "directory",
        "a directory",
    );
    assert_eq!(std::fs::read(sub.join("inside")).unwrap(), b"keep");

    let fifo = dir.join("fifo");
    mkfifo(&fifo);
    expect_not_regular(write_and_commit(&fifo, true, b"x"), "fifo", "a FIFO");
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );

    let real = dir.write("real.bin", b"pointed to");
    let link = dir.join("link.bin");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    expect_not_regular(
        write_and_commit(&link, true, b"x"),
        "symlink",
        &format!("a symbolic link to {}", real.display()),
    );
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert_eq!(std::fs::read(&real).unwrap(), b"pointed to");
    // The path it points to is accepted.
    write_and_commit(&real, true, b"replaced").unwrap();
    assert_eq!(std::fs::read(&link).unwrap(), b"replaced");

    // A character device like /dev/null (1:3), made here; needs root (CAP_MKNOD).
    let dev = dir.join("null");
    let c = CString::new(dev.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
    if rc != 0 {
        println!(
            "skipping the character device case: mknod failed ({})",
            std::io::Error::last_os_error()
        );
    } else {
        expect_not_regular(
            write_and_commit(&dev, true, b"x"),
            "char device",
            "a character device",
        );
        let t = std::fs::symlink_metadata(&dev).unwrap().file_type();
        assert!(t.is_char_device(), "device node replaced");
    }
    assert!(temps(dir.path()).is_empty(), "{:?}", temps(dir.path()));
}

#[test]
fn force_checks_again_before_the_rename() {
    let dir = TempDir::new("atomic-swap");
    let target = dir.join("out.bin");
    let mut out = AtomicOutput::create(&target, None, true).unwrap();
    out.file().write_all(b"ours").unwrap();
    // Swapped for a symlink while we were writing.
    let real = dir.write("elsewhere.bin", b"elsewhere");
    std::os::unix::fs::symlink(&real, &target).unwrap();
    expect_not_regular(out.commit(), "swapped symlink", "symbolic link");
    assert!(std::fs::symlink_metadata(&target).unwrap().is_symlink());
    assert_eq!(std::fs::read(&real).unwrap(), b"elsewhere");
    assert!(temps(dir.path()).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Through the CLI
// ---------------------------------------------------------------------------------------------

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dcgguf"))
}

/// An input that `compress --level 19 --threads 1` takes several seconds on.
fn slow_input(dir: &TempDir) -> std::path::PathBuf {
    let mut rng = Rng::new(77);
    let mut m = small_model(77);
    m.tensors.push(Tensor::random(
        "big.f32",
        &[4096, 2048],
        GgmlType::F32,
        &mut rng,
    ));
    dir.write("big.gguf", &m.build())
}

fn slow_compress(input: &Path, output: &Path) -> Child {
    bin()
        .args(["--quiet", "--threads", "1", "compress", "--level", "19"])
        .arg(input)
        .arg(output)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run dcgguf")
}

/// Waits until `child` has created its temporary file in `dir`.
fn wait_for_temp(child: &mut Child, dir: &Path) {
    let t = Instant::now();
    while temps(dir).is_empty() {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("dcgguf exited ({st}) before its temp file appeared");
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no temp file appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn interrupted_run_cleans_up(sig: libc::c_int, code: i32) {
    let dir = TempDir::new(&format!("atomic-sig{sig}"));
    let input = slow_input(&dir);
    let output = dir.join("out.dc.gguf");
    let mut child = slow_compress(&input, &output);
    wait_for_temp(&mut child, dir.path());
    // SAFETY: sending a signal to our own child, which has not been waited for (its PID is
    // still ours).
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
    let t = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(code),
        "status {} stderr {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(t.elapsed() < Duration::from_secs(10), "slow to exit");
    assert!(temps(dir.path()).is_empty(), "{:?}", temps(dir.path()));
    assert!(!output.exists(), "an interrupted run left an output");
}

#[test]
fn sigint_removes_the_temp_file() {
    interrupted_run_cleans_up(libc::SIGINT, 130);
}

#[test]
fn sigterm_removes_the_temp_file() {
    interrupted_run_cleans_up(libc::SIGTERM, 143);
}

/// A job cancelled from the progress callback, at each of its calls in turn, stops the
/// conversion with `Cancelled` and leaves neither the output nor a temporary file; a cancel
/// from the last call still counts (checked before the commit).
#[test]
fn cancelled_jobs_leave_nothing() {
    use dcgguf::dc::{self, CompressOptions, DcError, Job};
    let dir = TempDir::new("atomic-cancel");
    let input = dir.write("in.gguf", &small_model(5).build());
    let size = std::fs::metadata(&input).unwrap().len();
    let dc_path = dir.join("in.dc.gguf");
    let back = dir.join("back.gguf");
    let opts = |job: &Job| CompressOptions {
        chunk_size: 4096,
        job: job.clone(),
        ..CompressOptions::default()
    };
    // Progress calls of a full run, and the total the job reports.
    let job = Job::new();
    let calls = std::sync::Mutex::new(0usize);
    dc::compress_parts(&input, &dc_path, &opts(&job), &|_| {
        *calls.lock().unwrap() += 1;
    })
    .unwrap();
    assert_eq!(job.total(), Some(size));
    let n = *calls.lock().unwrap();
    assert!(n > 2, "{n} progress calls");
    std::fs::remove_file(&dc_path).unwrap();

    let cancel_at = |k: usize, job: &Job| {
        let job = job.clone();
        let seen = std::sync::atomic::AtomicUsize::new(0);
        move |_: u64| {
            if seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 == k {
                job.cancel();
            }
        }
    };
    for k in [1, n / 2, n] {
        let job = Job::new();
        let r = dc::compress_parts(&input, &dc_path, &opts(&job), &cancel_at(k, &job));
        assert!(matches!(r, Err(DcError::Cancelled)), "call {k}: {r:?}");
        assert!(
            !dc_path.exists() && temps(dir.path()).is_empty(),
            "call {k}"
        );
    }
    dc::compress_parts(&input, &dc_path, &opts(&Job::new()), &|_| {}).unwrap();
    let job = Job::new();
    let r = dc::decompress_parts(&dc_path, &back, false, &cancel_at(1, &job), &job);
    assert!(matches!(r, Err(DcError::Cancelled)), "{r:?}");
    assert!(!back.exists() && temps(dir.path()).is_empty());
    let job = Job::new();
    let r = dc::verify_file(&dc_path, Some(&input), &cancel_at(1, &job), &job);
    assert!(matches!(r, Err(DcError::Cancelled)), "{r:?}");
}

/// A lossy compression reports its quantization too (the job's total is twice the quantized
/// file: written, then compressed), and a cancel at any of its calls, the first ones made
/// while it quantizes included, leaves only the input behind.
#[test]
fn lossy_jobs_report_the_quantization_and_cancel_anywhere() {
    use dcgguf::dc::{CompressOptions, DcError, Job};
    use dcgguf::gguf::Value;
    use dcgguf::quant::{self, QuantError, QuantOptions};
    let dir = TempDir::new("atomic-lossy-cancel");
    let mut rng = Rng::new(7);
    let mut model = GgufBuilder::new().kv("general.architecture", Value::string("llama"));
    for i in 0..4 {
        let name = format!("blk.{i}.ffn_up.weight");
        model = model.tensor(Tensor::random(&name, &[64, 16], GgmlType::F16, &mut rng));
    }
    let model = model.tensor(Tensor::random(
        "output_norm.weight",
        &[64],
        GgmlType::F32,
        &mut rng,
    ));
    let input = dir.write("in.gguf", &model.build());
    let dc_path = dir.join("in.dc.gguf");
    let opts = |job: &Job| CompressOptions {
        chunk_size: 1024,
        job: job.clone(),
        ..CompressOptions::default()
    };
    let only_the_input = |what: &str| {
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["in.gguf"], "{what}");
    };

    let job = Job::new();
    let calls = std::sync::Mutex::new(Vec::new());
    let (q, _) = quant::compress_lossy(
        &input,
        &dc_path,
        &QuantOptions::default(),
        &opts(&job),
        &|n| calls.lock().unwrap().push(n),
    )
    .unwrap();
    assert_eq!(q.quantized_tensors, 4);
    let quantized = dir.join("quantized.gguf");
    dcgguf::dc::decompress_file(&dc_path, &quantized, false, &|_| {}).unwrap();
    let quantized_len = std::fs::metadata(&quantized).unwrap().len();
    let calls = calls.into_inner().unwrap();
    assert_eq!(job.total(), Some(2 * quantized_len));
    assert_eq!(calls.iter().sum::<u64>(), 2 * quantized_len, "{calls:?}");
    // The header and each of the five tensors while quantizing, then the compression's.
    assert!(calls.len() > 6, "{calls:?}");
    std::fs::remove_file(&dc_path).unwrap();
    std::fs::remove_file(&quantized).unwrap();

    for k in [1, 2, 6, calls.len() / 2, calls.len()] {
        let job = Job::new();
        let seen = std::sync::atomic::AtomicUsize::new(0);
        let r = quant::compress_lossy(
            &input,
            &dc_path,
            &QuantOptions::default(),
            &opts(&job),
            &|_| {
                if seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 == k {
                    job.cancel();
                }
            },
        );
        assert!(
            matches!(r, Err(QuantError::Dc(DcError::Cancelled))),
            "call {k}: {r:?}"
        );
        if k <= 6 {
            // Quantizing runs on this thread: a cancel stops it at the call that asked.
            assert_eq!(
                seen.load(std::sync::atomic::Ordering::Relaxed),
                k,
                "call {k}"
            );
        }
        only_the_input(&format!("cancel at call {k}"));
    }
}

#[test]
fn second_run_to_the_same_output_does_not_clobber_the_first() {
    let dir = TempDir::new("atomic-two-runs");
    let slow = slow_input(&dir);
    let small = dir.write("small.gguf", &small_model(5).build());
    let output = dir.join("out.dc.gguf");
    let mut first = slow_compress(&slow, &output);
    wait_for_temp(&mut first, dir.path());
    // A second run starts after the first and finishes before it.
    let second = bin()
        .args(["--quiet", "compress"])
        .arg(&small)
        .arg(&output)
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(0), "{second:?}");
    let finished = std::fs::read(&output).unwrap();
    let first = first.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert_eq!(first.status.code(), Some(5), "stderr {stderr}");
    assert!(stderr.contains("output exists"), "{stderr}");
    assert_eq!(
        std::fs::read(&output).unwrap(),
        finished,
        "the finished output was replaced"
    );
    DcFile::open(&output).unwrap();
    assert!(temps(dir.path()).is_empty(), "{:?}", temps(dir.path()));
}

#[test]
fn cli_force_onto_a_fifo_or_symlink_exits_5() {
    let dir = TempDir::new("atomic-cli-notreg");
    let input = dir.write("m.gguf", &small_model(9).build());
    let dc = dir.join("m.dc.gguf");
    let ok = bin().arg("compress").arg(&input).arg(&dc).output().unwrap();
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");

    let fifo = dir.join("fifo");
    mkfifo(&fifo);
    let out = bin()
        .args(["decompress", "--force"])
        .arg(&dc)
        .arg(&fifo)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("a FIFO"), "{stderr}");
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );

    let real = dir.write("real.gguf", b"old");
    let link = dir.join("link.gguf");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let out = bin()
        .args(["decompress", "--force"])
        .arg(&dc)
        .arg(&link)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("symbolic link"), "{stderr}");
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert_eq!(std::fs::read(&real).unwrap(), b"old");
    assert!(temps(dir.path()).is_empty());
}

/// A PID no process has now.
fn dead_pid() -> u32 {
    (999_999..)
        .find(|&p| {
            // SAFETY: signal 0 only checks whether the process exists.
            let rc = unsafe { libc::kill(p as libc::pid_t, 0) };
            rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
        })
        .unwrap()
}

#[test]
fn stale_temp_of_a_killed_run_is_removed() {
    let dir = TempDir::new("atomic-stale");
    let input = dir.write("m.gguf", &small_model(11).build());
    let output = dir.join("out.dc.gguf");
    let pid = dead_pid();
    let stale = dir.write(&format!(".out.dc.gguf.dcgguf-tmp-{pid}"), b"half written");
    // A live process's temp (ours) and a dead one's for another output stay.
    let live = dir.write(
        &format!(".out.dc.gguf.dcgguf-tmp-{}", std::process::id()),
        b"in progress",
    );
    let other = dir.write(&format!(".other.gguf.dcgguf-tmp-{pid}"), b"not ours");

    let out = bin()
        .arg("compress")
        .arg(&input)
        .arg(&output)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stale.exists(), "stale temp kept");
    assert!(
        stderr.contains(&format!(
            "dcgguf: removed stale temporary file {} (left by an interrupted run, pid {pid})",
            stale.display()
        )),
        "{stderr}"
    );
    assert_eq!(stderr.matches("removed stale").count(), 1, "{stderr}");
    assert_eq!(std::fs::read(&live).unwrap(), b"in progress");
    assert_eq!(std::fs::read(&other).unwrap(), b"not ours");
    DcFile::open(&output).unwrap();
}
