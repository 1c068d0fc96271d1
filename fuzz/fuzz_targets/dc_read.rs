//! A crafted DC-GGUF file served at fuzzer-chosen offsets, as the llama.cpp load stream does:
//! the input is `PARAMS` bytes of read parameters followed by the DC file. If the file opens,
//! `read_at` runs for four (offset, len) pairs (len up to 4 MiB; offsets inside, at the end
//! of and far past the original file), the chunk lookups run at those offsets, and
//! `read_tensor` decodes a range of one tensor. Any `Err` is fine; a panic, an abort or an
//! unbounded allocation is a bug. A byte range that both `read_tensor` and `read_at` serve
//! must come out the same.
#![no_main]

use dcgguf::dc::DcFile;
use libfuzzer_sys::fuzz_target;

/// flags(1) + 4 x (offset u32, len u16) + tensor u16 + tensor offset u32 + tensor len u16.
const PARAMS: usize = 1 + 4 * 6 + 2 + 4 + 2;
const MAX_LEN: usize = 4 << 20;

/// A u16 length: the low 15 bits as bytes, or (top bit set) in 128-byte units, up to 4 MiB.
fn len_of(raw: u16) -> usize {
    let v = usize::from(raw & 0x7fff);
    let n = if raw & 0x8000 != 0 { v << 7 } else { v };
    n.min(MAX_LEN)
}

fn open(flags: u8, file: &[u8]) -> Option<DcFile> {
    if flags & 1 == 0 {
        return DcFile::from_bytes("fuzz.dc.gguf", file.to_vec()).ok();
    }
    // The llama.cpp hook's way: a mapped file, arrays not kept, pages released after decode.
    let path = std::env::temp_dir().join(format!(
        "dcgguf-fuzz-dc-read-{}.dc.gguf",
        std::process::id()
    ));
    std::fs::write(&path, file).ok()?;
    let dc = DcFile::open_without_arrays(&path).ok();
    let _ = std::fs::remove_file(&path);
    let dc = dc?;
    dc.set_release_after_decode(true);
    Some(dc)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < PARAMS {
        return;
    }
    let (p, file) = data.split_at(PARAMS);
    let u16_at = |i: usize| u16::from_le_bytes([p[i], p[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
    let flags = p[0];
    let Some(dc) = open(flags, file) else {
        return;
    };
    let size = dc.original_size();
    for k in 0..4 {
        let raw = u64::from(u32_at(1 + 6 * k));
        let len = len_of(u16_at(5 + 6 * k));
        // Two reads inside (or just past) the file, two counted back from its end (wrapping
        // far past it when raw > size).
        let offset = if k < 2 {
            raw % size.saturating_add(64)
        } else {
            size.wrapping_sub(raw)
        };
        let _ = dc.chunk_range_at(offset);
        let _ = dc.next_chunk_range(offset);
        let _ = dc.tensor_starting_at(offset);
        let mut buf = vec![0u8; len];
        if let Ok(n) = dc.read_at(offset, &mut buf) {
            let want = if offset >= size {
                0
            } else {
                (len as u64).min(size - offset) as usize
            };
            assert_eq!(n, want, "read_at({offset}, {len}) of a {size}-byte file");
        }
    }
    let count = dc.tensor_count();
    if count == 0 {
        return;
    }
    let traw = u16_at(25);
    let i = usize::from(traw & 0x7fff) % count;
    let (t_off, t_nbytes) = {
        let t = dc.tensor_info(i);
        (dc.original.data_offset.checked_add(t.offset), t.nbytes)
    };
    let off_raw = u64::from(u32_at(27));
    let len = len_of(u16_at(31));
    // Top bit of the tensor index: ranges may run past the tensor (must be an error);
    // otherwise they are clamped into it.
    let (off, len) = if traw & 0x8000 != 0 {
        (off_raw, len)
    } else {
        let off = off_raw % t_nbytes.saturating_add(1);
        (off, len.min((t_nbytes - off).min(MAX_LEN as u64) as usize))
    };
    let mut buf = vec![0u8; len];
    let tensor_ok = dc.read_tensor(i, off, &mut buf).is_ok();
    if tensor_ok {
        assert!(off.checked_add(len as u64).is_some_and(|e| e <= t_nbytes));
        if let Some(start) = t_off.and_then(|s| s.checked_add(off)) {
            let mut via_file = vec![0u8; len];
            if let Ok(n) = dc.read_at(start, &mut via_file) {
                if n == len {
                    assert!(buf == via_file, "read_tensor and read_at disagree");
                }
            }
        }
    }
});
