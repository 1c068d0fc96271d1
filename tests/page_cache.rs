//! A model load from a cold DC file drops its compressed bytes from the page cache as they are
//! decoded (a memory limit that counts the page cache would otherwise charge the model
//! twice); a cached or partly cached file stays cached.

mod common;

use std::path::PathBuf;

use common::*;
use dcgguf::dc::{DcFile, compress_file};
use dcgguf::gguf::GgmlType;

/// Bytes of `path` in the page cache.
fn cached_bytes(path: &std::path::Path) -> u64 {
    let (_f, map) = dcgguf::io::map_readonly(path).unwrap();
    let page = dcgguf::io::page_size() as u64;
    dcgguf::io::resident_pages(&map)
        .iter()
        .filter(|&&r| r)
        .count() as u64
        * page
}

fn evict(path: &std::path::Path) {
    let f = std::fs::File::open(path).unwrap();
    f.sync_all().unwrap();
    dcgguf::io::drop_cached(&f, 0, f.metadata().unwrap().len());
}

/// A load without a budget: opens `path` and reads the whole model, uncaching as a load does.
fn load(path: &std::path::Path) {
    drop(loaded(path));
}

/// [`load`], keeping the reader open for what a model does after its load.
fn loaded(path: &std::path::Path) -> DcFile {
    let dc = DcFile::open(path).unwrap();
    dc.set_release_after_decode(true);
    dc.set_uncache_after_decode(true);
    decode_all(&dc);
    dc
}

/// Reads the whole model as a load does, finishing as it does.
fn decode_all(dc: &DcFile) {
    let mut buf = vec![0u8; 4 << 20];
    let mut off = 0;
    while off < dc.original_size() {
        off += dc.read_at(off, &mut buf).unwrap() as u64;
    }
    dc.release_mapped_pages();
    dc.finish_uncache();
}

/// A DC file of random 4096x2048 tensors "a", "b", ... of `types` (chunks of 256 KiB) in a
/// new folder `name` of the target directory: on the build's disk, never a tmpfs whose pages
/// cannot leave. Returns the folder and the file.
fn dc_model(name: &str, seed: u64, types: &[GgmlType]) -> (PathBuf, PathBuf) {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = Rng::new(seed);
    let mut model = GgufBuilder::new();
    for (i, &ty) in types.iter().enumerate() {
        let name = char::from(b'a' + i as u8).to_string();
        model = model.tensor(Tensor::random(&name, &[4096, 2048], ty, &mut rng));
    }
    let input = dir.join("m.gguf");
    std::fs::write(&input, model.build()).unwrap();
    let path = dir.join("m.dc.gguf");
    compress_file(&input, &path, &opts_chunk(256 << 10), &|_| {}).unwrap();
    (dir, path)
}

#[test]
fn a_cold_load_drops_what_it_read_and_a_warm_one_keeps_it() {
    let (dir, path) = dc_model("page-cache", 5, &[GgmlType::Q8_0, GgmlType::F16]);
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size > 16 << 20, "{size}");

    // Cold: only what opening reads (headers, index) may stay.
    evict(&path);
    assert!(
        cached_bytes(&path) < size / 10,
        "the file could not be evicted"
    );
    let dc = DcFile::open(&path).unwrap();
    dc.set_release_after_decode(true);
    dc.set_uncache_after_decode(true);
    let at_open = cached_bytes(&path);
    decode_all(&dc);
    let after = cached_bytes(&path);
    assert!(
        after <= at_open + (256 << 10),
        "cold file: {at_open} cached at open, {after} after"
    );

    // Without uncaching, the same load leaves the file cached (so the test above can fail).
    evict(&path);
    let dc = DcFile::open(&path).unwrap();
    dc.set_release_after_decode(true);
    decode_all(&dc);
    assert!(
        cached_bytes(&path) > size * 9 / 10,
        "plain read did not cache"
    );

    // Partly warm (a third cached): left alone, so the load caches it all for the next one
    // (dropping only the uncached part would send that part to disk on every load).
    evict(&path);
    let f = std::fs::File::open(&path).unwrap();
    let mut third = vec![0u8; (size / 3) as usize];
    std::io::Read::read_exact(&mut &f, &mut third).unwrap();
    load(&path);
    assert!(
        cached_bytes(&path) > size * 9 / 10,
        "partly warm file lost its cache"
    );

    // Warm: the load keeps it all cached for the next one.
    let _ = std::fs::read(&path).unwrap();
    load(&path);
    assert!(
        cached_bytes(&path) > size * 9 / 10,
        "warm file lost its cache"
    );

    // A budget that starts after the load brings one tensor's stored bytes back (tensor "b",
    // the F16 one: 14 of the 22 MB).
    evict(&path);
    let dc = DcFile::open(&path).unwrap();
    let before = cached_bytes(&path);
    dc.warm_stored(1);
    let stored = dc.tensor_view(1).stored_bytes;
    let after = cached_bytes(&path);
    assert!(
        after >= before + stored * 9 / 10,
        "warming {stored} stored bytes: {before} cached before, {after} after (file {size})"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A pass over the metadata alone (llama.cpp's fitting pass before its load) keeps the
/// metadata cached for the load after it and drops the chunks read along with it: left
/// cached, they made that load take the file for warm and keep all of it cached (MiniLM BF16
/// under llama-embedding: 14 MiB more at the run's peak); dropped with the metadata, the
/// load read the metadata back a page fault at a time.
#[test]
fn a_metadata_pass_keeps_the_metadata_cached_and_drops_the_chunks_read_with_it() {
    let (dir, path) = dc_model("metadata-pass", 6, &[GgmlType::Q8_0, GgmlType::F16]);
    let size = std::fs::metadata(&path).unwrap().len();
    let first_page_cached = || {
        let (_f, map) = dcgguf::io::map_readonly(&path).unwrap();
        dcgguf::io::resident_pages(&map)[0]
    };
    evict(&path);
    let dc = DcFile::open(&path).unwrap();
    dc.set_release_after_decode(true);
    dc.set_uncache_after_decode(true);
    // What the disk's readahead brings in past the metadata, and more.
    let _ = std::fs::read(&path).unwrap();
    dc.release_mapped_pages();
    dc.finish_uncache_keeping_metadata();
    drop(dc);
    let after_pass = cached_bytes(&path);
    assert!(first_page_cached(), "the metadata left the page cache");
    assert!(
        after_pass < size / 10,
        "{after_pass} of {size} bytes still cached after the metadata pass"
    );

    // The load after it finds the file cold, so drops what it reads.
    load(&path);
    let after_load = cached_bytes(&path);
    assert!(
        after_load <= after_pass,
        "{after_load} bytes cached after the load, {after_pass} before it"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A pass over the metadata whose reads end inside the first tensor (llama.cpp reads the
/// header through 256 KiB reads) decodes that tensor's first chunk and drops it, but not the
/// page that chunk shares with the metadata: dropped with it, the load after the pass read
/// that page back while opening the file, with a major fault and the readaround around it
/// (MiniLM F16 under llama-embedding: 11-14 ms of a 96 ms load).
#[test]
fn a_metadata_pass_reading_into_the_first_chunk_keeps_the_metadata_whole() {
    let (dir, path) = dc_model("metadata-into-chunk", 8, &[GgmlType::F16]);
    evict(&path);
    let dc = DcFile::open(&path).unwrap();
    dc.set_release_after_decode(true);
    dc.set_uncache_after_decode(true);
    let first_chunk = dc.next_chunk_range(0).expect("a chunk");
    let mut header_and_more = vec![0u8; (first_chunk.start + 4096) as usize];
    dc.read_at(0, &mut header_and_more).unwrap();
    dc.release_mapped_pages();
    dc.finish_uncache_keeping_metadata();
    drop(dc);
    let before = major_faults();
    let reopened = DcFile::open(&path).unwrap();
    let faults = major_faults() - before;
    drop(reopened);
    assert_eq!(
        faults, 0,
        "opening the file again read {faults} page(s) back from the disk"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// Major page faults of this thread so far.
fn major_faults() -> i64 {
    // SAFETY: rusage is plain integers, for which zero is valid; getrusage writes one
    // rusage struct, which we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) }, 0);
    ru.ru_majflt
}

#[test]
fn after_a_cold_load_an_evicted_chunk_is_read_back_in_one_request() {
    let (dir, path) = dc_model("page-cache-chunk", 6, &[GgmlType::F16]);
    evict(&path);
    let dc = loaded(&path);
    // Later (a budget decoding from the file after the load), the first chunk again, evicted.
    evict(&path);
    let before = cached_bytes(&path);
    let faults = major_faults();
    let mut chunk = vec![0u8; 256 << 10];
    dc.read_tensor(0, 0, &mut chunk).unwrap();
    let faults = major_faults() - faults;
    let read = cached_bytes(&path) - before;
    let view = dc.tensor_view(0);
    let stored = view.stored_bytes / view.raw_bytes.div_ceil(256 << 10);
    let pages = stored / dcgguf::io::page_size() as u64;
    // Its bytes came in one request, not a page per fault...
    assert!(
        (faults as u64) < pages / 4,
        "{faults} major faults for a chunk of {pages} pages"
    );
    // ...and only its bytes, not the kernel's readahead of the chunks after it.
    assert!(
        read >= stored * 9 / 10 && read <= stored + (256 << 10),
        "read {read} bytes into the cache for a chunk of about {stored}"
    );
    drop(dc);
    std::fs::remove_dir_all(&dir).ok();
}

/// After a cold load, a lookup's chunk read again (the default's lookup tables decode rows
/// per lookup) leaves the page cache once decoded (but for the pages it may share with the
/// chunks around it, which a lookup may still need): kept, a MiniLM BF16 batch's chunks were
/// its run's peak. Read from a file that was warm when opened, it stays cached.
#[test]
fn after_a_cold_load_a_looked_up_chunk_leaves_the_cache_and_a_warm_file_keeps_it() {
    let (dir, path) = dc_model("page-cache-lookup", 7, &[GgmlType::F16]);
    evict(&path);
    let dc = loaded(&path);
    let mut chunk = vec![0u8; 256 << 10];
    let before = cached_bytes(&path);
    dc.read_tensor(0, 0, &mut chunk).unwrap();
    let read = cached_bytes(&path) - before;
    assert!(read >= 64 << 10, "only {read} bytes came into the cache");
    dc.release_and_uncache_chunks(&[(0, 0)]);
    let after = cached_bytes(&path);
    // All but the chunk's first and last page, which it may share with its neighbours.
    let shared = 2 * dcgguf::io::page_size() as u64;
    assert!(
        after <= before + shared,
        "{after} bytes cached after the drop, {before} before the read"
    );
    drop(dc);

    // Warm when opened: the same read and release leave it cached.
    let _ = std::fs::read(&path).unwrap();
    let dc = loaded(&path);
    let warm = cached_bytes(&path);
    dc.read_tensor(0, 0, &mut chunk).unwrap();
    dc.release_and_uncache_chunks(&[(0, 0)]);
    assert_eq!(cached_bytes(&path), warm, "a warm file lost pages");
    drop(dc);
    std::fs::remove_dir_all(&dir).ok();
}
