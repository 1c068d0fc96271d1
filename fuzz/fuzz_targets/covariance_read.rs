//! Any bytes as a covariance file (`compress --quantize int8 --gptq`): `Covariances::parse`
//! (what `Covariances::load` runs on the file's bytes) returns square, finite matrices with a
//! non-negative diagonal or an error, never panics or over-allocates.
#![no_main]

use dcgguf::quant::Covariances;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(cov) = Covariances::parse(data) else {
        return;
    };
    assert!(!cov.tensors.is_empty());
    for (name, (n, m)) in &cov.tensors {
        assert_eq!(n.checked_mul(*n), Some(m.len()), "{name}: not n x n");
        assert!(m.iter().all(|v| v.is_finite()), "{name}: non-finite value");
        assert!(
            (0..*n).all(|i| m[i * n + i] >= 0.0),
            "{name}: negative diagonal"
        );
    }
    let needed: Vec<(String, usize)> = cov.tensors.iter().map(|(k, v)| (k.clone(), v.0)).collect();
    assert!(cov.check_against(&needed).is_ok());
});
