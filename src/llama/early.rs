//! Early decoding: uses the core llama.cpp leaves idle while it parses the model's metadata.
//!
//! llama.cpp reads the GGUF header, then builds its vocabulary and the model's tensors on one
//! thread before it reads any tensor data (about 75 ms of a 175 ms SmolLM2 load on our 2-core
//! machine). Meanwhile one thread of ours decodes tensor chunks in file order: llama.cpp
//! creates, and so reads, the token embedding and the first layers first, and that is also
//! how converters order the file. Decoded chunks wait here until the stream serves them.
//! Once llama.cpp reads, the thread keeps decoding ahead of it while llama.cpp's own thread
//! copies chunks into its tensors; a chunk the stream reaches first is claimed by the stream
//! (which decodes it itself) and skipped here, so no chunk is decoded twice.
//!
//! Memory: a waiting chunk belongs to a tensor llama.cpp has not read yet, whose pages in
//! llama.cpp's buffer are still untouched, so waiting bytes plus loaded bytes stay within the
//! decoded model's size; [`Limits::pending_bytes`] bounds them anyway (a tensor llama.cpp
//! never reads would otherwise wait until the load ends).

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use super::throttle::Throttle;
use crate::dc::DcFile;

/// How far the early thread may go.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Decoded bytes waiting to be served.
    pub pending_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            pending_bytes: 256 << 20,
        }
    }
}

enum Slot {
    Decoding,
    Ready(memmap2::MmapMut),
}

#[derive(Default)]
struct State {
    /// Chunks this thread decodes or has decoded, by their start offset in the original file.
    slots: BTreeMap<u64, Slot>,
    /// Original-file ranges the stream decodes itself, by start.
    claimed: BTreeMap<u64, u64>,
    stop: bool,
    /// The stream is inside a tensor read, decoding on every core: this thread waits, so
    /// that it only uses a core llama.cpp leaves idle (while it repacks or allocates).
    reader_busy: bool,
    /// Decoded bytes not taken yet.
    pending: u64,
    /// Totals, for the verbose report.
    decoded: u64,
    taken: u64,
    started: Option<Instant>,
    first_take: Option<Instant>,
}

impl State {
    fn is_claimed(&self, chunk: &Range<u64>) -> bool {
        self.claimed
            .range(..chunk.end)
            .next_back()
            .is_some_and(|(_, &end)| end > chunk.start)
    }
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, g: std::sync::MutexGuard<'a, State>) -> std::sync::MutexGuard<'a, State> {
        self.changed.wait(g).unwrap_or_else(|e| e.into_inner())
    }
}

/// The early-decoding thread and the chunks it decoded.
pub struct EarlyDecode {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl EarlyDecode {
    /// Starts decoding `dc`'s chunks in file order, but those inside `skip` (original-file
    /// ranges the load does not read); reads are charged to `throttle` (bench mode).
    pub fn start(
        dc: Arc<DcFile>,
        throttle: Option<Arc<Throttle>>,
        limits: Limits,
        skip: &[Range<u64>],
    ) -> EarlyDecode {
        let shared = Arc::new(Shared::default());
        shared
            .lock()
            .claimed
            .extend(skip.iter().map(|r| (r.start, r.end)));
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("dcgguf-early".into())
            .spawn(move || run(&dc, &worker, throttle.as_deref(), limits))
            .ok();
        EarlyDecode { shared, thread }
    }

    /// Serves the chunk `chunk`: its decoded bytes if this thread decoded it (waiting for a
    /// decode in progress), else `None`, and the chunk is the stream's to decode.
    pub fn take(&self, chunk: Range<u64>) -> Option<memmap2::MmapMut> {
        let mut st = self.shared.lock();
        st.first_take.get_or_insert_with(Instant::now);
        loop {
            match st.slots.get(&chunk.start) {
                None => {
                    st.claimed.insert(chunk.start, chunk.end);
                    return None;
                }
                Some(Slot::Decoding) => st = self.shared.wait(st),
                Some(Slot::Ready(_)) => {
                    let Some(Slot::Ready(buf)) = st.slots.remove(&chunk.start) else {
                        unreachable!("the slot was just seen ready")
                    };
                    st.pending -= buf.len() as u64;
                    st.taken += buf.len() as u64;
                    self.shared.changed.notify_all();
                    return Some(buf);
                }
            }
        }
    }

    /// The stream is about to decode original bytes `[from, to)` itself: returns where it
    /// must stop instead (the first chunk after `from` this thread holds or decodes) and
    /// claims the rest so that this thread skips it.
    pub fn claim(&self, from: u64, to: u64) -> u64 {
        let mut st = self.shared.lock();
        let cut = match st.slots.range(from.saturating_add(1)..to).next() {
            Some((&s, _)) => s,
            None => to,
        };
        if cut > from {
            st.claimed.insert(from, cut);
        }
        cut
    }
}

impl EarlyDecode {
    /// The stream enters (`true`) or leaves a tensor read.
    pub fn set_reader_busy(&self, busy: bool) {
        let mut st = self.shared.lock();
        st.reader_busy = busy;
        if !busy {
            self.shared.changed.notify_all();
        }
    }

    /// Claims one chunk for the stream; `false` if this thread holds or decodes it.
    pub fn claim_chunk(&self, chunk: Range<u64>) -> bool {
        let mut st = self.shared.lock();
        if st.slots.contains_key(&chunk.start) {
            return false;
        }
        st.claimed.insert(chunk.start, chunk.end);
        true
    }
}

impl Drop for EarlyDecode {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if crate::llama::verbose() {
            let st = self.shared.lock();
            let first_read_ms = st
                .first_take
                .zip(st.started)
                .map_or(f64::NAN, |(t, s)| t.duration_since(s).as_secs_f64() * 1e3);
            let end_ms = st
                .started
                .map_or(f64::NAN, |s| s.elapsed().as_secs_f64() * 1e3);
            crate::log_line!(
                "dcgguf: early decode: {:.1} MB decoded ahead of llama.cpp, {:.1} MB used; \
                 first tensor read {first_read_ms:.0} ms, end {end_ms:.0} ms after the file \
                 was opened",
                st.decoded as f64 / 1e6,
                st.taken as f64 / 1e6,
            );
        }
    }
}

fn run(dc: &DcFile, shared: &Shared, throttle: Option<&Throttle>, limits: Limits) {
    shared.lock().started = Some(Instant::now());
    decode_ahead(dc, shared, throttle, limits);
}

fn decode_ahead(dc: &DcFile, shared: &Shared, throttle: Option<&Throttle>, limits: Limits) {
    let mut at = 0;
    // The compressed pages this thread reads stay mapped, in the RSS, until someone drops
    // them: the stream does every RELEASE_EVERY bytes it serves, but this thread can run a
    // whole model ahead of it (SmolLM2 without a budget: up to 12 MB more RSS, at a peak in
    // one load of three; page cache either way).
    let mut since_release = 0;
    while let Some(c) = dc.next_chunk_range(at) {
        at = c.end;
        let len = c.end - c.start;
        {
            let mut st = shared.lock();
            while !st.stop
                && (st.reader_busy || (st.pending > 0 && st.pending + len > limits.pending_bytes))
            {
                st = shared.wait(st);
            }
            if st.stop {
                return;
            }
            if st.is_claimed(&c) {
                continue;
            }
            st.slots.insert(c.start, Slot::Decoding);
        }
        let issued = Instant::now();
        // Anonymous pages of its own, so that the chunk's memory goes back to the system as
        // soon as the stream drops it (a freed heap buffer of this thread's arena would stay
        // resident).
        let buf = memmap2::MmapMut::map_anon(len as usize)
            .ok()
            .and_then(|mut buf| dc.read_at(c.start, &mut buf).is_ok().then_some(buf));
        if let Some(t) = throttle {
            t.charge(c.clone(), issued);
        }
        since_release += len;
        if since_release >= super::stream::RELEASE_EVERY {
            since_release = 0;
            dc.release_mapped_pages();
        }
        let mut st = shared.lock();
        let ok = buf.is_some();
        match buf {
            Some(buf) => {
                st.slots.insert(c.start, Slot::Ready(buf));
                st.pending += len;
                st.decoded += len;
            }
            // The stream decodes it again and reports the error with the tensor's name.
            None => {
                st.slots.remove(&c.start);
            }
        }
        shared.changed.notify_all();
        if !ok {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dc::test_files::small_dc;
    use crate::gguf::GgmlType;

    /// A two-tensor GGUF and its DC-GGUF with 4 KiB chunks.
    fn sample_dc(name: &str) -> (Vec<u8>, Arc<DcFile>) {
        let data = |n: usize, k: u8| (0..n).map(|i| (i / 7) as u8 ^ k).collect::<Vec<u8>>();
        let tensors = [
            ("a".into(), vec![3 * 1024], GgmlType::F32, data(3 * 4096, 1)),
            ("b".into(), vec![5 * 1024], GgmlType::F32, data(5 * 4096, 2)),
        ];
        let (original, dir, _, dc) = small_dc(&format!("early-{name}"), &tensors, 4096);
        std::fs::remove_dir_all(&dir).unwrap();
        (original, dc)
    }

    fn chunks(dc: &DcFile) -> Vec<Range<u64>> {
        let mut at = 0;
        std::iter::from_fn(|| {
            let c = dc.next_chunk_range(at)?;
            at = c.end;
            Some(c)
        })
        .collect()
    }

    #[test]
    fn every_chunk_is_served_once_either_decoded_early_or_claimed() {
        let (original, dc) = sample_dc("serve");
        let early = EarlyDecode::start(dc.clone(), None, Limits::default(), &[]);
        let all = chunks(&dc);
        assert_eq!(all.len(), 8);
        let (mut early_bytes, mut claimed) = (0, 0);
        for c in all {
            match early.take(c.clone()) {
                Some(buf) => {
                    assert_eq!(&buf[..], &original[c.start as usize..c.end as usize]);
                    early_bytes += buf.len();
                }
                None => claimed += 1,
            }
        }
        let st = early.shared.lock();
        assert_eq!(st.taken as usize, early_bytes);
        assert_eq!(st.pending, 0);
        assert!(early_bytes + claimed * 4096 == 8 * 4096);
    }

    /// Waits (at most 20 s: a loaded CI machine may start the thread late) until `done`
    /// holds of the early thread's state.
    fn wait_for(early: &EarlyDecode, done: impl Fn(&State) -> bool) {
        let deadline = Instant::now() + std::time::Duration::from_secs(20);
        let mut st = early.shared.lock();
        while !done(&st) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the early thread made no progress in 20 s");
            st = early
                .shared
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Resident bytes of this process's mapping that starts at `at` (its smaps `Rss:`).
    fn mapping_rss(at: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut lines = smaps.lines();
        let start = format!("{at:x}-");
        lines
            .by_ref()
            .find(|l| l.starts_with(&start))
            .expect("the mapping in smaps");
        lines
            .find_map(|l| l.strip_prefix("Rss:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("its Rss line")
            * 1024
    }

    #[test]
    fn decoding_ahead_drops_the_compressed_pages_it_read() {
        // 24 MiB that does not compress: as many compressed bytes, three times what the
        // thread may leave mapped.
        let data = crate::dc::test_files::incompressible(24 << 20);
        let tensors = [("w".into(), vec![6 << 20], GgmlType::F32, data)];
        let (_, dir, _, dc) = small_dc("early-release", &tensors, 1 << 20);
        let at = dc.mapped_at().expect("a mapped file");
        let limits = Limits {
            pending_bytes: u64::MAX,
        };
        let early = EarlyDecode::start(dc.clone(), None, limits, &[]);
        wait_for(&early, |st| st.decoded >= 24 << 20);
        let rss = mapping_rss(at);
        assert!(
            rss <= super::super::stream::RELEASE_EVERY + (2 << 20),
            "{rss} bytes of the DC file still mapped after decoding it all ahead"
        );
        drop(early);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pending_bytes_stay_within_the_limit() {
        let (_, dc) = sample_dc("limit");
        let limit = 2 * 4096;
        let early = EarlyDecode::start(
            dc.clone(),
            None,
            Limits {
                pending_bytes: limit,
            },
            &[],
        );
        // It fills the limit, then stops (it could decode all 8 chunks in this time).
        wait_for(&early, |st| st.decoded >= limit);
        std::thread::sleep(std::time::Duration::from_millis(50));
        {
            let st = early.shared.lock();
            assert!(st.pending <= limit && st.decoded == limit, "{}", st.decoded);
        }
        // Taking one frees room for the next.
        let first = chunks(&dc)[0].clone();
        assert!(early.take(first).is_some());
        wait_for(&early, |st| st.decoded == limit + 4096);
    }

    #[test]
    fn claimed_chunks_are_never_decoded_early() {
        let (_, dc) = sample_dc("claim");
        let early = EarlyDecode::start(dc.clone(), None, Limits::default(), &[]);
        let all = chunks(&dc);
        // As the stream does: take the chunk at the read position first (its buffer if this
        // thread got to it, else a claim, in one step), then claim the range. Claiming alone
        // raced with this thread starting the first chunk (seen once in a clean-clone CI run).
        let _ = early.take(all[0].clone());
        let cut = early.claim(all[0].start, all[7].end);
        assert!(cut > all[0].start);
        assert!(early.claim_chunk(all[7].clone()) || cut <= all[7].start);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let st = early.shared.lock();
        for &start in st.slots.keys() {
            let c = all
                .iter()
                .find(|c| c.start == start)
                .expect("a chunk start");
            assert!(
                !st.is_claimed(c),
                "chunk at {start} both claimed and decoded"
            );
        }
    }

    #[test]
    fn skipped_ranges_are_never_decoded_early() {
        let (_, dc) = sample_dc("skip");
        let all = chunks(&dc);
        // Tensor "a" (chunks 0-2), as a load that defers it passes it.
        let a = all[0].start..all[2].end;
        let early = EarlyDecode::start(
            dc.clone(),
            None,
            Limits::default(),
            std::slice::from_ref(&a),
        );
        wait_for(&early, |st| st.decoded == 5 * 4096);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let st = early.shared.lock();
        assert_eq!(st.decoded, 5 * 4096, "only tensor b's five chunks");
        assert!(st.slots.keys().all(|&start| !a.contains(&start)));
    }
}
