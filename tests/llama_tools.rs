//! Unmodified llama.cpp tools run a `.dc.gguf` exactly as the original, through
//! `LD_PRELOAD=libdcgguf_preload.so` (real llama.cpp, no mocks; see tests/llama_support for the
//! environment and the ignored policy).

mod llama_support;

use std::path::Path;
use std::process::{Command, Output};

use llama_support::*;

const PROMPT: &str = "The capital of France is";

fn tool(l: &Llama, name: &str, preload: bool) -> Command {
    let mut c = Command::new(l.bin(name));
    c.env("LD_PRELOAD", llama_support::preload(l, preload));
    if preload {
        c.env("DCGGUF_VERBOSE", "1");
    }
    c.env_remove("DCGGUF_THROTTLE_BPS");
    c
}

fn completion(l: &Llama, model: &Path, preload: bool, n: u32) -> Output {
    run(tool(l, "llama-completion", preload)
        .arg("-m")
        .arg(model)
        .args([
            "--temp", "0", "--seed", "1", "-no-cnv", "-t", "2", "-c", "256",
        ])
        .args(["-n", &n.to_string(), "-p", PROMPT]))
}

#[test]
#[cfg_attr(
    not(all(dcgguf_llama, dcgguf_smollm2)),
    ignore = "needs llama.cpp and SmolLM2: run scripts/build-llama.sh and scripts/fetch-models.sh"
)]
fn completion_dc_matches_original_64_tokens() {
    let t = "completion_dc_matches_original_64_tokens";
    let (l, m) = (require_llama(t), require_smollm2(t));
    let dc = dc_of(&m);
    let plain = completion(&l, &m, false, 64);
    assert_exit(&plain, true, "llama-completion on the original");
    let via_dc = completion(&l, &dc, true, 64);
    assert_exit(
        &via_dc,
        true,
        "llama-completion on the DC-GGUF with LD_PRELOAD",
    );
    let (a, b) = (
        String::from_utf8_lossy(&plain.stdout),
        String::from_utf8_lossy(&via_dc.stdout),
    );
    assert!(
        a.starts_with(PROMPT) && a.len() > PROMPT.len() + 20,
        "unexpected output: {a:?}"
    );
    assert_eq!(a, b, "generated text differs");
    // It really went through the DC path.
    let err = String::from_utf8_lossy(&via_dc.stderr);
    assert!(
        err.contains("dcgguf: loading") && err.contains("DC-GGUF"),
        "{err}"
    );
    // And decoded ahead of llama.cpp while it parsed the metadata (src/llama/early.rs).
    assert!(err.contains("dcgguf: early decode: "), "{err}");
    // The full load took the file that llama.cpp's fitting pass opened (src/llama/fit_pass.rs).
    assert!(
        err.contains("reusing the file that llama.cpp's fitting pass opened and checked"),
        "{err}"
    );
}

#[test]
#[cfg_attr(
    not(all(dcgguf_llama, dcgguf_minilm)),
    ignore = "needs llama.cpp (scripts/build-llama.sh) and the MiniLM models (scripts/fetch-models.sh)"
)]
fn stock_llama_rejects_dc_without_preload() {
    let t = "stock_llama_rejects_dc_without_preload";
    let (l, m) = (
        require_llama(t),
        require_shared_model(t, "all-MiniLM-L6-v2-f16.gguf"),
    );
    let dc = dc_of(&m);
    // llama-bench -v logs synchronously (llama-completion's async logger may drop the last
    // lines when it exits early).
    let o = run(tool(&l, "llama-bench", false)
        .arg("-m")
        .arg(&dc)
        .args(["-v", "-p", "8", "-n", "0", "-r", "1"]));
    assert_exit(&o, false, "stock llama-bench on a DC-GGUF");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("unknown model architecture: 'dcgguf'"),
        "stderr:\n{err}"
    );
}

#[test]
#[cfg_attr(
    not(all(dcgguf_llama, dcgguf_smollm2)),
    ignore = "needs llama.cpp and SmolLM2: run scripts/build-llama.sh and scripts/fetch-models.sh"
)]
fn corrupt_dc_fails_naming_tensor_and_chunk() {
    let t = "corrupt_dc_fails_naming_tensor_and_chunk";
    let (l, m) = (require_llama(t), require_smollm2(t));
    let bad = corrupted_copy(&dc_of(&m), "smollm2-corrupt.dc.gguf");
    let o = completion(&l, &bad, true, 4);
    assert_exit(&o, false, "llama-completion on a corrupt DC-GGUF");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("dcgguf: error:") && err.contains("tensor \"") && err.contains("chunk "),
        "stderr:\n{err}"
    );
}

fn perplexity_text() -> String {
    // Deterministic, varied English-like text, long enough for 3 chunks of 128 tokens.
    let subj = [
        "The old farmer",
        "A young engineer",
        "My neighbour",
        "The committee",
        "Every student",
        "The small dog",
        "Our teacher",
    ];
    let verb = [
        "carefully repaired",
        "quickly painted",
        "proudly described",
        "slowly examined",
        "happily shared",
        "quietly measured",
    ];
    let obj = [
        "the wooden bridge",
        "a long letter",
        "the broken clock",
        "an old map of the valley",
        "the garden behind the school",
        "a recipe for bread",
    ];
    let tail = [
        "before the storm arrived.",
        "while the town was asleep.",
        "during the summer festival.",
        "after a long day at work.",
        "because nobody else would.",
    ];
    let mut s = String::new();
    let mut x: u32 = 7;
    for _ in 0..120 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let r = (x >> 8) as usize;
        s += &format!(
            "{} {} {} {} ",
            subj[r % 7],
            verb[(r / 7) % 6],
            obj[(r / 42) % 6],
            tail[(r / 252) % 5]
        );
    }
    s
}

/// The "Final estimate" line.
fn ppl_line(o: &Output) -> String {
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let line = all
        .lines()
        .find(|l| l.contains("Final estimate: PPL = "))
        .unwrap_or_else(|| panic!("llama-perplexity printed no final estimate:\n{all}"));
    line[line.find("Final estimate").unwrap()..].to_string()
}

#[test]
#[cfg_attr(
    not(all(dcgguf_llama, dcgguf_smollm2)),
    ignore = "needs llama.cpp and SmolLM2: run scripts/build-llama.sh and scripts/fetch-models.sh"
)]
fn perplexity_dc_matches_original() {
    let t = "perplexity_dc_matches_original";
    let (l, m) = (require_llama(t), require_smollm2(t));
    let dc = dc_of(&m);
    let text = tmp_dir().join("ppl.txt");
    std::fs::write(&text, perplexity_text()).unwrap();
    let ppl = |model: &Path, preload: bool| {
        let o = run(tool(&l, "llama-perplexity", preload)
            .arg("-m")
            .arg(model)
            .arg("-f")
            .arg(&text)
            .args(["-c", "128", "--chunks", "3", "-t", "2", "-b", "128"]));
        assert_exit(&o, true, "llama-perplexity");
        ppl_line(&o)
    };
    let (a, b) = (ppl(&m, false), ppl(&dc, true));
    eprintln!("original: {a}\nDC-GGUF:  {b}");
    assert_eq!(a, b);
}

/// The embedding vector llama-embedding prints for a fixed sentence.
fn embedding(l: &Llama, model: &Path, preload: bool) -> Vec<f64> {
    sentence_embedding(&mut tool(l, "llama-embedding", preload), model).0
}

fn check_embedding(t: &str, name: &str) {
    let (l, m) = (require_llama(t), require_shared_model(t, name));
    let dc = dc_of(&m);
    let plain = embedding(&l, &m, false);
    assert_eq!(
        plain,
        embedding(&l, &dc, true),
        "{name}: DC embedding differs"
    );
    // A plain GGUF passes straight through the interposer.
    assert_eq!(
        plain,
        embedding(&l, &m, true),
        "{name}: plain GGUF under LD_PRELOAD differs"
    );
}

/// The tools' log-draining shim (tests/llama_support/drain_log.c) waits for room in llama.cpp's
/// log queue before pausing it, reading the queue at its offsets in the pinned llama.cpp; a
/// layout it does not recognise would skip that wait, and a full queue at exit would hang the
/// tool again.
#[test]
#[cfg_attr(
    not(all(dcgguf_llama, dcgguf_minilm)),
    ignore = "needs llama.cpp (scripts/build-llama.sh) and the MiniLM models (scripts/fetch-models.sh)"
)]
fn drain_shim_recognises_the_loggers_queue() {
    let t = "drain_shim_recognises_the_loggers_queue";
    let (l, m) = (
        require_llama(t),
        require_shared_model(t, "all-MiniLM-L6-v2-q8_0.gguf"),
    );
    let o = run(tool(&l, "llama-embedding", false)
        .env("DCGGUF_DRAIN_LOG_CHECK", "1")
        .arg("-m")
        .arg(&m)
        .args(["-p", PROMPT, "-t", "2", "--no-warmup"]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("drain_log: logger queue layout recognised"),
        "{err}"
    );
}

#[test]
#[cfg_attr(
    not(all(dcgguf_llama, dcgguf_minilm)),
    ignore = "needs llama.cpp (scripts/build-llama.sh) and the MiniLM models (scripts/fetch-models.sh)"
)]
fn embedding_minilm_f32_dc_matches_original() {
    check_embedding(
        "embedding_minilm_f32_dc_matches_original",
        "all-MiniLM-L6-v2-f32.gguf",
    );
}

#[test]
#[cfg_attr(
    not(all(dcgguf_llama, dcgguf_minilm)),
    ignore = "needs llama.cpp (scripts/build-llama.sh) and the MiniLM models (scripts/fetch-models.sh)"
)]
fn embedding_minilm_f16_dc_matches_original() {
    check_embedding(
        "embedding_minilm_f16_dc_matches_original",
        "all-MiniLM-L6-v2-f16.gguf",
    );
}

#[test]
#[cfg_attr(
    not(all(dcgguf_llama, dcgguf_minilm)),
    ignore = "needs llama.cpp (scripts/build-llama.sh) and the MiniLM models (scripts/fetch-models.sh)"
)]
fn split_dc_is_refused_with_merge_hint() {
    let t = "split_dc_is_refused_with_merge_hint";
    let (l, m) = (
        require_llama(t),
        require_shared_model(t, "all-MiniLM-L6-v2-f16.gguf"),
    );
    let dir = tmp_dir().join("split");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let o = run(Command::new(l.bin("llama-gguf-split"))
        .args(["--split", "--split-max-tensors", "60"])
        .arg(&m)
        .arg(dir.join("minilm")));
    assert_exit(&o, true, "llama-gguf-split --split");
    let first = dir.join("minilm-00001-of-00002.gguf");
    let o = run(Command::new(env!("CARGO_BIN_EXE_dcgguf"))
        .args(["-q", "compress", "--level", "1"])
        .arg(&first)
        .arg(dir.join("minilm.dc.gguf")));
    assert_exit(&o, true, "dcgguf compress (split)");
    let dc_first = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.contains("00001-of-00002") && n.ends_with(".dc.gguf")
        })
        .expect("split DC output");
    let o = run(tool(&l, "llama-embedding", true)
        .arg("-m")
        .arg(&dc_first)
        .args(["-t", "2", "-p", "hello world"]));
    assert_exit(&o, false, "llama-embedding on a split DC-GGUF");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("split DC-GGUF") && err.contains("--merge"),
        "stderr:\n{err}"
    );
}

/// A DC file damaged where it says what it is (architecture value, header metadata, a blob):
/// the hook reports the DC damage; llama.cpp never sees the file as a plain model
/// ("unknown model architecture") nor computes on it.
#[test]
#[cfg_attr(
    not(all(dcgguf_llama, dcgguf_smollm2)),
    ignore = "needs llama.cpp and SmolLM2: run scripts/build-llama.sh and scripts/fetch-models.sh"
)]
fn damaged_dc_header_is_a_dc_error_not_unknown_architecture() {
    let t = "damaged_dc_header_is_a_dc_error_not_unknown_architecture";
    let (l, m) = (require_llama(t), require_smollm2(t));
    let good = std::fs::read(dc_of(&m)).unwrap();
    let find = |pat: &[u8]| {
        good.windows(pat.len())
            .position(|w| w == pat)
            .unwrap_or_else(|| panic!("{:?} not found", String::from_utf8_lossy(pat)))
    };
    // (what, byte to flip, word the message must contain)
    let cases = [
        ("architecture value", find(b"dcgguf") + 5, "header"),
        (
            "rope frequency base (clear metadata)",
            find(b"llama.rope.freq_base") + 24,
            "header",
        ),
        (
            "dc.format_version key name",
            find(b"dc.format_version") + 3,
            "damaged",
        ),
    ];
    for (what, at, word) in cases {
        let mut bytes = good.clone();
        bytes[at] ^= 0x02;
        let bad = tmp_dir().join("smollm2-damaged.dc.gguf");
        std::fs::write(&bad, &bytes).unwrap();
        let o = completion(&l, &bad, true, 4);
        assert_exit(&o, false, what);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("dcgguf: error:") && err.contains(word),
            "{what}: stderr:\n{err}"
        );
        assert!(
            !err.contains("unknown model architecture"),
            "{what}: reached llama.cpp as a plain model:\n{err}"
        );
    }
}

/// The harness's own time limit: a program that hangs (a deadlocked load) is killed and the
/// test fails with its stderr, in seconds, not after CI's whole run.
#[test]
fn a_program_that_outlives_its_time_limit_is_killed_and_fails_the_test() {
    let started = std::time::Instant::now();
    let hung = std::panic::catch_unwind(|| {
        output_within(
            Command::new("sh").args(["-c", "echo waiting >&2; exec sleep 60"]),
            std::time::Duration::from_secs(1),
        )
    });
    let msg = hung
        .expect_err("a program that outlives its limit fails the test")
        .downcast::<String>()
        .expect("a formatted message");
    assert!(msg.contains("still ran after 1 s"), "{msg}");
    assert!(msg.contains("waiting"), "its stderr is shown: {msg}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    // In time: the output as usual.
    let o = output_within(
        Command::new("sh").args(["-c", "echo done"]),
        std::time::Duration::from_secs(60),
    );
    assert!(o.status.success());
    assert_eq!(o.stdout, b"done\n");
}
