//! Any bytes as a covariance file (`compress --quantize int8 --gptq`): `Covariances::parse`
//! (what `Covariances::load` runs on a file, one matrix at a time) returns square, finite
//! matrices with a non-negative diagonal or an error, never panics or over-allocates.
#![no_main]

use dcgguf::quant::Covariances;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(cov) = Covariances::parse(data) else {
        return;
    };
    assert!(!cov.is_empty());
    for (name, n) in cov.weights() {
        let m = cov.matrix(name).expect("checked by parse");
        assert_eq!(n.checked_mul(n), Some(m.len()), "{name}: not n x n");
        assert!(m.iter().all(|v| v.is_finite()), "{name}: non-finite value");
        assert!(
            (0..n).all(|i| m[i * n + i] >= 0.0),
            "{name}: negative diagonal"
        );
    }
    let needed: Vec<(String, usize)> = cov.weights().map(|(k, n)| (k.to_string(), n)).collect();
    assert!(cov.check_against(&needed).is_ok());
});
