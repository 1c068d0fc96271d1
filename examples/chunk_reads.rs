//! Reads `count` chunks of one tensor of a DC file, one `read_tensor` call per chunk, spread
//! over the tensor (as row lookups of a prompt do), and prints the time per chunk: a
//! harness for `perf record` of small-chunk decoding.
//! `cargo run --release --example chunk_reads FILE TENSOR [COUNT] [PASSES]`
use dcgguf::dc::DcFile;
fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("path");
    let name = args.next().expect("tensor name");
    let count: u64 = args.next().map(|s| s.parse().unwrap()).unwrap_or(53);
    let passes: usize = args.next().map(|s| s.parse().unwrap()).unwrap_or(5);
    // "cold": page cache dropped before each pass (root), reads as after a cold load
    // (chunk reads asked for, all of a pass's chunks at once first, as a lookup does).
    let cold = args.next().is_some_and(|m| m == "cold");
    let drop_caches = || {
        std::process::Command::new("sync").status().unwrap();
        std::fs::write("/proc/sys/vm/drop_caches", "1").unwrap();
    };
    if cold {
        drop_caches();
    }
    let dc = DcFile::open(std::path::Path::new(&path)).unwrap();
    if cold {
        dc.set_uncache_after_decode(true);
        dc.finish_uncache();
    }
    let t = (0..dc.tensor_count())
        .find(|&i| dc.tensor_view(i).name == name)
        .expect("no such tensor");
    let view = dc.tensor_view(t);
    let chunk = u64::from(dc.index.tensors[t].chunk_raw);
    let chunks = view.raw_bytes.div_ceil(chunk);
    let mut buf = vec![0u8; chunk as usize];
    for _ in 0..passes {
        if cold {
            drop_caches();
        }
        let started = std::time::Instant::now();
        if cold {
            let all: Vec<(usize, usize)> = (0..count)
                .map(|k| (t, (k * chunks / count) as usize))
                .collect();
            dc.prefetch_chunks(&all);
        }
        for k in 0..count {
            let c = k * chunks / count;
            let from = c * chunk;
            let n = (view.raw_bytes - from).min(chunk) as usize;
            dc.read_tensor(t, from, &mut buf[..n]).unwrap();
        }
        let s = started.elapsed().as_secs_f64();
        eprintln!(
            "{count} chunks of {chunk} bytes: {:.3} ms each, {:.0} MB/s",
            s * 1e3 / count as f64,
            (count * chunk) as f64 / s / 1e6
        );
    }
}
