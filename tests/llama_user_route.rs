//! `DCGGUF_LOAD_ROUTE=user` (llama.cpp's `llama_model_init_from_user`, src/llama/user_load.rs):
//! unmodified llama.cpp tools under `LD_PRELOAD=libdcgguf_preload.so` compute exactly what
//! they compute on the original GGUF (real llama.cpp; see tests/llama_support for the
//! environment and the ignored policy).

mod llama_support;

use std::path::Path;
use std::process::{Command, Output};

use llama_support::*;

const PROMPT: &str = "The capital of France is";

/// A llama.cpp tool; `route` = Some("user"/"stream") runs it on a DC file under the preload.
fn tool(l: &Llama, name: &str, route: Option<&str>) -> Command {
    let mut c = Command::new(l.bin(name));
    c.env("LD_PRELOAD", preload(l, route.is_some()));
    c.env_remove("DCGGUF_THROTTLE_BPS")
        .env_remove("DCGGUF_MEM_BUDGET");
    match route {
        Some(r) => {
            c.env("DCGGUF_VERBOSE", "1").env("DCGGUF_LOAD_ROUTE", r);
        }
        None => {
            c.env_remove("DCGGUF_LOAD_ROUTE");
        }
    }
    c
}

fn completion(l: &Llama, model: &Path, route: Option<&str>) -> Output {
    run(tool(l, "llama-completion", route)
        .arg("-m")
        .arg(model)
        .args([
            "--temp", "0", "--seed", "1", "-no-cnv", "-t", "2", "-c", "256", "-n", "32", "-p",
            PROMPT,
        ]))
}

/// The user route really ran (it did not fall back to the stream).
fn assert_user_route(o: &Output) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("llama_model_init_from_user") && err.contains("dcgguf: user route: decoded"),
        "the user route was not taken:\n{err}"
    );
    assert!(!err.contains("user route not possible"), "{err}");
}

#[test]
#[cfg_attr(
    not(all(dcgguf_llama, dcgguf_smollm2)),
    ignore = "needs llama.cpp and SmolLM2: run scripts/build-llama.sh and scripts/fetch-models.sh"
)]
fn user_route_completion_matches_original_32_tokens() {
    let t = "user_route_completion_matches_original_32_tokens";
    let (l, m) = (require_llama(t), require_smollm2(t));
    let dc = dc_of(&m);
    let plain = completion(&l, &m, None);
    assert_exit(&plain, true, "llama-completion on the original");
    let user = completion(&l, &dc, Some("user"));
    assert_exit(&user, true, "llama-completion on the DC-GGUF, user route");
    assert_user_route(&user);
    let (a, b) = (
        String::from_utf8_lossy(&plain.stdout),
        String::from_utf8_lossy(&user.stdout),
    );
    assert!(
        a.starts_with(PROMPT) && a.len() > PROMPT.len() + 20,
        "unexpected output: {a:?}"
    );
    assert_eq!(a, b, "generated text differs (user route)");
    // SmolLM2 ties its output to the token embedding: the user route must have handled it.
    let err = String::from_utf8_lossy(&user.stderr);
    assert!(err.contains("output.weight (Tied)"), "{err}");
}

/// The embedding vector llama-embedding prints for a fixed sentence, and its output.
fn embedding(l: &Llama, model: &Path, route: Option<&str>) -> (Vec<f64>, Output) {
    sentence_embedding(&mut tool(l, "llama-embedding", route), model)
}

#[test]
#[cfg_attr(
    not(all(dcgguf_llama, dcgguf_minilm)),
    ignore = "needs llama.cpp and MiniLM: run scripts/build-llama.sh; MiniLM comes from ../shared/models"
)]
fn user_route_embedding_minilm_f16_matches_original() {
    let t = "user_route_embedding_minilm_f16_matches_original";
    let (l, m) = (
        require_llama(t),
        require_shared_model(t, "all-MiniLM-L6-v2-f16.gguf"),
    );
    let dc = dc_of(&m);
    let (plain, _) = embedding(&l, &m, None);
    let (user, o) = embedding(&l, &dc, Some("user"));
    assert_user_route(&o);
    assert_eq!(plain, user, "MiniLM F16: user-route embedding differs");
}

#[test]
#[cfg_attr(
    not(all(dcgguf_llama, dcgguf_minilm)),
    ignore = "needs llama.cpp and MiniLM: run scripts/build-llama.sh; MiniLM comes from ../shared/models"
)]
fn unknown_route_value_falls_back_to_stream() {
    let t = "unknown_route_value_falls_back_to_stream";
    let (l, m) = (
        require_llama(t),
        require_shared_model(t, "all-MiniLM-L6-v2-f16.gguf"),
    );
    let dc = dc_of(&m);
    let (plain, _) = embedding(&l, &m, None);
    let (v, o) = embedding(&l, &dc, Some("bogus"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("ignoring DCGGUF_LOAD_ROUTE=\"bogus\"") && err.contains("FILE* loader"),
        "{err}"
    );
    assert_eq!(plain, v);
}

/// `llama-perplexity`'s final estimate line for `model` over the eval sentences.
fn perplexity(l: &Llama, model: &Path, route: Option<&str>) -> String {
    let o = run(tool(l, "llama-perplexity", route)
        .arg("-m")
        .arg(model)
        .arg("-f")
        .arg(eval_sentences_file())
        .args(["-c", "128", "--chunks", "3", "-t", "2", "-b", "128"]));
    assert_exit(&o, true, "llama-perplexity");
    let err = String::from_utf8_lossy(&o.stderr);
    let at = err
        .find("Final estimate: PPL = ")
        .unwrap_or_else(|| panic!("llama-perplexity printed no final estimate:\n{err}"));
    err[at..].lines().next().unwrap().to_string()
}

/// Why the stream stays the default: for a type llama.cpp repacks for this CPU (Q4_0 here,
/// SmolLM2 requantized), the stream route computes exactly what plain llama.cpp computes,
/// while `llama_model_init_from_user` turns repacking off and so runs other kernels (README,
/// "Load routes", records what it gave).
#[test]
#[cfg_attr(
    not(all(dcgguf_llama, dcgguf_smollm2)),
    ignore = "needs llama.cpp and SmolLM2: run scripts/build-llama.sh and scripts/fetch-models.sh"
)]
fn repacked_type_stream_route_matches_plain_perplexity() {
    let t = "repacked_type_stream_route_matches_plain_perplexity";
    let (l, m) = (require_llama(t), require_smollm2(t));
    let q4_0 = tmp_dir().join("smollm2-q4_0.gguf");
    if !q4_0.exists() {
        let part = tmp_dir().join("smollm2-q4_0.gguf.part");
        let o = run(Command::new(l.bin("llama-quantize"))
            .arg("--allow-requantize")
            .arg(&m)
            .arg(&part)
            .args(["Q4_0", "2"]));
        assert_exit(&o, true, "llama-quantize Q4_0");
        std::fs::rename(&part, &q4_0).unwrap();
    }
    let dc = dc_of(&q4_0);
    let plain = perplexity(&l, &q4_0, None);
    let stream = perplexity(&l, &dc, Some("stream"));
    let user = perplexity(&l, &dc, Some("user"));
    eprintln!("Q4_0 plain:  {plain}\nQ4_0 stream: {stream}\nQ4_0 user:   {user}");
    assert_eq!(
        plain, stream,
        "the default route must compute what plain llama.cpp does"
    );
}
