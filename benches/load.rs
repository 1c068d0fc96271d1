//! Model load time and peak RSS through llama.cpp: plain GGUF (mmap, no-mmap) vs DC-GGUF,
//! page cache warm, plus simulated slow storage (`DCGGUF_THROTTLE_BPS`, charged on stored
//! bytes for DC and on file bytes for a plain GGUF read through the same FILE* stream). DC
//! loads go through both routes: the FILE* stream (default) and `DCGGUF_LOAD_ROUTE=user`
//! (`llama_model_init_from_user`, throttled per tensor the same way).
//!
//!   cargo bench --features bench-throttle --bench load     # SmolLM2 Q4_1 from $DCGGUF_CACHE/models
//!   DCGGUF_BENCH_MODEL=x.gguf DCGGUF_BENCH_REPS=5 cargo bench --features bench-throttle --bench load
//!   DCGGUF_BENCH_LARGE=1 cargo bench --features bench-throttle --bench load   # the >1 GB Qwen2.5-Coder
//!
//! The simulated storage is compiled in only with the `bench-throttle` feature (this bench
//! requires it, and builds libdcgguf_preload.so with it).
//!
//! Each measurement is a fresh child process (this binary with DCGGUF_BENCH_CHILD set, run
//! under `LD_PRELOAD=libdcgguf_preload.so` as a llama.cpp tool would be) that dlopens the
//! built llama.cpp ($DCGGUF_LLAMA_PREFIX/lib/libllama.so), loads the model once through the
//! preload library's `dcgguf_llama_model_load` (so that its `fread` serves the reads, as in a
//! tool) and reports wall time and its peak RSS (VmHWM). The table shows the
//! median over DCGGUF_BENCH_REPS runs (default 3) after one warm-up run per model.

use std::ffi::{CString, c_char, c_void};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[path = "../tests/llama_support/mod.rs"]
mod llama_support;
#[path = "support/mod.rs"]
mod support;

/// This process's peak RSS in KiB: `VmHWM` of its own address space, not getrusage's
/// ru_maxrss, into which Linux carries the bench process's RSS at the spawn.
fn max_rss_kb() -> u64 {
    llama_support::peak::vm_hwm_kib("/proc/self").expect("VmHWM in /proc/self/status")
}

unsafe extern "C" fn quiet(_level: i32, _text: *const c_char, _ud: *mut c_void) {}

/// Child: load once, print "RESULT <seconds> <baseline_kb> <peak_kb>".
fn child(mode: &str, model: &Path) {
    let lib = CString::new(
        llama_support::llama_prefix()
            .join("lib/libllama.so")
            .to_str()
            .unwrap(),
    )
    .unwrap();
    // SAFETY: loading the built libllama (and its ggml deps via rpath) into this process.
    let h = unsafe { libc::dlopen(lib.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    assert!(!h.is_null(), "cannot dlopen {lib:?}");
    let sym = |n: &std::ffi::CStr| {
        // SAFETY: looking up a named symbol in the handle we own.
        let p = unsafe { libc::dlsym(h, n.as_ptr()) };
        assert!(!p.is_null(), "{n:?} missing");
        p
    };
    type LogSet =
        unsafe extern "C" fn(unsafe extern "C" fn(i32, *const c_char, *mut c_void), *mut c_void);
    type Init = unsafe extern "C" fn();
    type Free = unsafe extern "C" fn(*mut dcgguf::llama::sys::llama_model);
    type Load = unsafe extern "C" fn(
        *const c_char,
        dcgguf::llama::sys::llama_model_params,
    ) -> *mut dcgguf::llama::sys::llama_model;
    // The preloaded libdcgguf_preload.so's C API (this binary exports no dynamic symbols).
    // SAFETY: dlsym with RTLD_DEFAULT and a C string.
    let load = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"dcgguf_llama_model_load".as_ptr()) };
    assert!(
        !load.is_null(),
        "dcgguf_llama_model_load not found: run under LD_PRELOAD=libdcgguf_preload.so"
    );
    // SAFETY: these are llama.h's llama_log_set, llama_backend_init and llama_model_free, and
    // dcgguf.h's dcgguf_llama_model_load.
    let (log_set, init, free, load) = unsafe {
        (
            std::mem::transmute::<*mut c_void, LogSet>(sym(c"llama_log_set")),
            std::mem::transmute::<*mut c_void, Init>(sym(c"llama_backend_init")),
            std::mem::transmute::<*mut c_void, Free>(sym(c"llama_model_free")),
            std::mem::transmute::<*mut c_void, Load>(load),
        )
    };
    // SAFETY: valid callback / no-argument init.
    unsafe {
        log_set(quiet, std::ptr::null_mut());
        init();
    }
    let mut p = dcgguf::llama::default_params().expect("host llama.cpp");
    p.load_mode = if mode == "mmap" {
        dcgguf::llama::sys::llama_load_mode_LLAMA_LOAD_MODE_MMAP
    } else {
        dcgguf::llama::sys::llama_load_mode_LLAMA_LOAD_MODE_NONE
    };
    let base = max_rss_kb();
    let t = Instant::now();
    let path = CString::new(model.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path and the host's default params.
    let m = unsafe { load(path.as_ptr(), p) };
    assert!(!m.is_null(), "load of {} failed", model.display());
    let secs = t.elapsed().as_secs_f64();
    let peak = max_rss_kb();
    // SAFETY: freeing the model we loaded.
    unsafe { free(m) };
    println!("RESULT {secs} {base} {peak}");
}

struct Row {
    label: String,
    secs: f64,
    extra_mb: f64,
    peak_mb: f64,
}

fn measure(label: &str, mode: &str, model: &Path, throttle: Option<u64>, reps: usize) -> Row {
    measure_route(label, mode, model, throttle, reps, "stream")
}

/// [`measure`] with `DCGGUF_LOAD_ROUTE=route` (`stream` or `user`, src/llama/user_load.rs).
fn measure_route(
    label: &str,
    mode: &str,
    model: &Path,
    throttle: Option<u64>,
    reps: usize,
    route: &str,
) -> Row {
    let mut runs = Vec::new();
    for _ in 0..reps {
        let mut c = Command::new(std::env::current_exe().unwrap());
        c.env("DCGGUF_BENCH_CHILD", mode)
            .env("DCGGUF_BENCH_PATH", model)
            .env("DCGGUF_LOAD_ROUTE", route)
            .env("LD_PRELOAD", llama_support::libdcgguf_preload());
        match throttle {
            Some(b) => c.env("DCGGUF_THROTTLE_BPS", b.to_string()),
            None => c.env_remove("DCGGUF_THROTTLE_BPS"),
        };
        let o = c.output().unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        let line = out
            .lines()
            .find(|l| l.starts_with("RESULT "))
            .unwrap_or_else(|| {
                panic!(
                    "{label}: child failed:\n{out}\n{}",
                    String::from_utf8_lossy(&o.stderr)
                )
            });
        let v: Vec<f64> = line[7..].split(' ').map(|x| x.parse().unwrap()).collect();
        runs.push((v[0], (v[2] - v[1]) / 1024.0, v[2] / 1024.0));
    }
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (secs, extra_mb, peak_mb) = runs[runs.len() / 2];
    Row {
        label: label.to_string(),
        secs,
        extra_mb,
        peak_mb,
    }
}

fn main() {
    if let Ok(mode) = std::env::var("DCGGUF_BENCH_CHILD") {
        child(
            &mode,
            Path::new(&std::env::var_os("DCGGUF_BENCH_PATH").unwrap()),
        );
        return;
    }
    let model = match std::env::var_os("DCGGUF_BENCH_MODEL") {
        Some(p) => PathBuf::from(p),
        None if support::env_flag("DCGGUF_BENCH_LARGE") => {
            match llama_support::large_model("load bench, large model") {
                Some(p) => p,
                None => return,
            }
        }
        None => llama_support::cache_dir().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
    };
    if !model.exists()
        || !llama_support::llama_prefix()
            .join("lib/libllama.so")
            .exists()
    {
        eprintln!(
            "SKIPPED: load bench needs {} and llama.cpp at {} (scripts/fetch-models.sh, scripts/build-llama.sh)",
            model.display(),
            llama_support::llama_prefix().display()
        );
        return;
    }
    let reps: usize = support::env_or("DCGGUF_BENCH_REPS", 3);
    let dc = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-load.dc.gguf");
    let chunk = std::env::var("DCGGUF_BENCH_CHUNK").unwrap_or_else(|_| "1M".into());
    let o = Command::new(env!("CARGO_BIN_EXE_dcgguf"))
        .args(["-q", "compress", "--force", "--chunk-size", &chunk])
        .arg(&model)
        .arg(&dc)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "compress: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let (plain_len, dc_len) = (
        std::fs::metadata(&model).unwrap().len(),
        std::fs::metadata(&dc).unwrap().len(),
    );
    // Warm the page cache (and the dynamic loader) once per file.
    measure("warm-up", "nommap", &model, None, 1);
    measure("warm-up", "nommap", &dc, None, 1);

    let mut rows = vec![
        measure("plain .gguf, mmap", "mmap", &model, None, reps),
        measure("plain .gguf, no-mmap", "nommap", &model, None, reps),
        measure(".dc.gguf (FILE* stream)", "nommap", &dc, None, reps),
        measure_route(".dc.gguf (user route)", "nommap", &dc, None, reps, "user"),
    ];
    for (bps, name) in support::SIMULATED_STORAGE {
        rows.push(measure(
            &format!("plain .gguf via FILE* @ {name}"),
            "nommap",
            &model,
            Some(bps),
            reps,
        ));
        rows.push(measure(
            &format!(".dc.gguf @ {name}"),
            "nommap",
            &dc,
            Some(bps),
            reps,
        ));
        rows.push(measure_route(
            &format!(".dc.gguf user route @ {name}"),
            "nommap",
            &dc,
            Some(bps),
            reps,
            "user",
        ));
    }
    println!(
        "\nload bench: {} ({plain_len} bytes) vs DC ({dc_len} bytes, ratio {:.3}); median of {reps}\n{}",
        model.file_name().unwrap().to_string_lossy(),
        plain_len as f64 / dc_len as f64,
        support::machine_line(),
    );
    println!(
        "{:<34} {:>9} {:>13} {:>11}",
        "configuration", "load (s)", "load RSS (MB)", "peak (MB)"
    );
    for r in &rows {
        println!(
            "{:<34} {:>9.3} {:>13.1} {:>11.1}",
            r.label, r.secs, r.extra_mb, r.peak_mb
        );
    }
    let nommap = rows[1].secs;
    println!(
        "\nDC warm load / plain no-mmap load = {:.2}x (target <= 1.3x); user route {:.2}x",
        rows[2].secs / nommap,
        rows[3].secs / nommap
    );
    for k in [4, 7] {
        println!(
            "{}: DC/plain = {:.2}x (target < 1); user route {:.2}x",
            &rows[k + 1].label[11..],
            rows[k + 1].secs / rows[k].secs,
            rows[k + 2].secs / rows[k].secs
        );
    }
}
