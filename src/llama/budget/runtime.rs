//! The per-model runtime: on-demand decoding under a memory budget ([`super::spec`]).
//!
//! At load, the tensors the plan ([`super::plan`]) streams are not read: llama.cpp
//! allocates their memory but its pages are never touched, so they cost no RSS. While
//! llama.cpp computes, its graph evaluation callback (`cb_eval`, chained with the caller's)
//! sees every node before it runs. When a node reads a streamed weight of a layer that is not
//! the current one, the whole layer is decoded first, its chunks spread over the threads
//! that compute the graph ([`super::team`]): into an arena of memory, the weight (and the
//! view of it the node reads) pointed there, or in place, into pages moved over from evicted
//! tensors ([`super::recycle`] says which and why). The range of nodes is cut there, so that
//! layers already computed can be evicted: their arena space goes to the next decodes (the
//! weight pointed back at its own memory), or their pages to the pool (or back to the
//! system), reading as zeros until decoded again. Eviction picks the layer needed furthest
//! ahead in the layer order seen in earlier graphs ([`super::eviction`]). A prefetch thread
//! can decode the next layer while the current one computes.
//!
//! Limits: CPU weights only (GPU offload and weight repacking are turned off for budgeted
//! loads); the model's weights must only be read by graph computations (llama.cpp reads them
//! nowhere else), and every node reading one is asked about before it computes (ggml asks
//! about every node when a graph callback is set), so its data pointer is right when it
//! runs; contexts of one model should not compute concurrently.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Instant;

use super::eviction::{Candidate, Protected, groups_ahead, victim};
use super::mib;
use super::plan::{ResidencyPlan, TensorCost, plan_for};
use super::recycle::{Buffer, Buffers, Layout, Pool, arena_fits};
use super::spec::{CompressedHome, Settings};
use crate::dc::DcFile;
use crate::gguf::GgmlType;
use crate::llama::sys;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Absent,
    Loading,
    /// Only the rows a row lookup (`GET_ROWS`) needed are decoded.
    Partial,
    Present,
}

struct Slot {
    tensor: usize,
    group: u32,
    /// Address of the tensor's memory in llama.cpp's buffer (0 until the load records it).
    addr: usize,
    len: usize,
    status: Status,
    last_use: u64,
    /// Epoch of the range that needs it; pinned while that range is pending.
    pin_epoch: u64,
    /// For `Partial`: which rows are decoded, and the bytes of the pages they touched.
    rows: Vec<bool>,
    partial: u64,
    /// How the tensor's whole pages are mapped, for moving them when it decodes in place
    /// ([`recycle`]); empty when they are released instead.
    ///
    /// [`recycle`]: super::recycle
    layout: Layout,
    /// The weight's `ggml_tensor`s that graph nodes have read (one, unless llama.cpp made
    /// two of the same memory): known, it decodes into the arena, if the model has one, and
    /// they are pointed there.
    nodes: Vec<usize>,
    /// The buffer its decoded bytes are in while it is Present (`None`: in its own memory).
    buf: Option<Buffer>,
}

/// Counters for reports and benches.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub decodes: u64,
    pub decoded_bytes: u64,
    pub decode_seconds: f64,
    pub prefetched: u64,
    pub evictions: u64,
    /// Most streamed bytes decoded at once.
    pub peak_present: u64,
    /// Most bytes the sync path had to go over its room by (every other tensor was in use).
    pub overshoot: u64,
    /// Time graph evaluation spent in the ask callback (decoding, or waiting for the
    /// prefetcher).
    pub stall_seconds: f64,
    /// Bytes decoded into memory an earlier decode had written (arena pages, or pages moved
    /// over from evicted tensors) instead of pages faulted in.
    pub recycled_bytes: u64,
    /// Bytes of the pages that row lookups copied rows into (the rest of a looked-up table
    /// stays untouched).
    pub looked_up_bytes: u64,
    /// Decodes into a mapping of their own: the arena had no room ([`super::recycle`]).
    pub outside_arena: u64,
    /// Tensors evicted to free a stretch of the arena for a decode.
    pub evicted_for_space: u64,
}

struct State {
    slots: Vec<Slot>,
    by_addr: HashMap<usize, usize>,
    by_node: HashMap<usize, usize>,
    /// The arena tensors decode into once their nodes are known (`None`: in place).
    buffers: Option<Buffers>,
    /// Pages of evicted tensors decoded in place, for the next in-place decodes.
    pool: Pool,
    present: u64,
    clock: u64,
    /// Ranges of graph nodes computed so far.
    epoch: u64,
    /// Group of the nodes asked about most recently.
    current: Option<u32>,
    /// Group the prefetch thread works on.
    prefetching: Option<u32>,
    /// Group order seen in earlier graphs.
    next_group: HashMap<u32, u32>,
    /// The model is being freed: no more decoding.
    closed: bool,
    /// Slots a row lookup decoded rows of since the last computed range.
    looked_up: Vec<usize>,
    stats: Stats,
}

/// The budget state of one loaded model.
pub struct Residency {
    dc: Arc<DcFile>,
    pub plan: ResidencyPlan,
    pub home: CompressedHome,
    /// Bytes streamed tensors may occupy decoded at once.
    room: u64,
    slot_of_tensor: Vec<Option<usize>>,
    state: Mutex<State>,
    ready: Condvar,
    failed: AtomicBool,
    error: Mutex<Option<String>>,
    prefetch: Mutex<Option<Sender<u32>>>,
    /// Whether `computed` hands the next layer to the prefetch thread.
    prefetch_on: AtomicBool,
    /// [`Stats::stall_seconds`], kept apart: it is added to at every graph node.
    stall_nanos: AtomicU64,
    /// The setting it came from (`None`: decided by [`Residency::set_compute_threads`]).
    prefetch_setting: Option<bool>,
    /// Give back a lookup table's rows once the lookup has run and they fill more than
    /// [`LOOKUP_KEEP`] (the default's lookups-only plan, [`Residency::lookups_only`]), not
    /// only when the room is needed.
    release_lookups: bool,
    /// [`Residency::lookup_memory_tight`]'s last answer and when it was read.
    lookup_tight: Mutex<Option<(Instant, bool)>>,
    /// Where the streamed tensors' compressed bytes lie in the DC file
    /// ([`DcFile::stored_spans`]): what a decode that read from the disk keeps cached around
    /// it ([`Residency::drop_read_around`]).
    streamed_spans: Vec<(usize, usize)>,
    /// Decodes left that [`Residency::drop_read_around`] drops after without counting faults.
    early_drops_left: AtomicU64,
    /// Every streamed tensor was decoded into its own memory for good
    /// ([`Residency::decode_for_good`]): nothing decodes, evicts or cuts a graph any more.
    for_good: AtomicBool,
    /// Layer decodes that read from the disk, over a window: [`Residency::note_pressure`].
    pressure: Mutex<PressureWindow>,
    /// Set where the limit reclaimed what the budget decodes from between passes
    /// ([`Residency::thrashing`]).
    thrashing: AtomicBool,
}

/// Layer decodes counted by [`Residency::note_pressure`].
#[derive(Default)]
struct PressureWindow {
    /// Decodes still to pass before counting: the first pass after a cold load reads its
    /// compressed bytes from the disk whatever the limit. `u64::MAX`: counting stopped.
    warmup_left: u64,
    /// In the window so far: decodes, and the bytes the process had read from the disk
    /// during them.
    decodes: u64,
    read: u64,
    /// Decodes a window counts: a pass.
    window: u64,
}

/// The share of the compressed bytes a window's pass decodes from that, read from the disk
/// during it, makes the budget [`Residency::thrashing`]: a quarter. Measured (session 61,
/// SmolLM2, llama-completion, two passes a window): under a limit that reclaims them 84-138
/// MiB a window at `50%,file` (68.6 MiB compressed a pass), 98-140 at `50%,ram` (41.9: the
/// kernel reads around them); with room, none at all.
const THRASHING_SHARE: u64 = 4;

/// How far around the chunks a decode read from the disk [`Residency::drop_read_around`]
/// looks: twice the largest readahead seen (8 MiB, this VM's disk), which a page fault
/// centres on the faulting page.
const READ_AROUND_WINDOW: usize = 16 << 20;

/// What a budget's log line says it saves: the decoded weights' bytes less what it holds
/// (`holds`: resident, compressed bytes kept in RAM, working set), and, in `file` mode, with
/// the `paged` compressed bytes it decodes from counted too: the page cache, which a memory
/// limit charges (SmolLM2's Q4_1 at `50%,file`: 44.3 MiB less in the process, 24.3 MiB more
/// with its 68.6 MiB of compressed bytes; its uncapped charged peak was 214.6 MiB against
/// plain mmap's 187.7 under llama-perplexity, session 61). Where the saving is under a tenth
/// of the decoded weights (weights that compression barely shrinks, such as that Q4_1 at
/// 1.13x: a 50% `ram` budget saves 0.8 of its 92.1 MiB), or none, it says that it pays with
/// `streamed` bytes decoded on every pass: a user then learns from the log that the budget
/// costs speed for little memory, or for none.
fn saving_words(decoded: u64, holds: u64, streamed: u64, paged: Option<u64>) -> String {
    let saves = decoded.saturating_sub(holds);
    let mut s = format!(
        "; it holds {:.1} MiB less than the decoded weights",
        mib(saves)
    );
    let net = match paged {
        None => saves,
        Some(paged) => {
            let all = holds.saturating_add(paged);
            if all > decoded {
                s.push_str(&format!(
                    ", but {:.1} MiB more with its {:.1} MiB of compressed bytes in the page \
                     cache, which a memory limit counts",
                    mib(all - decoded),
                    mib(paged)
                ));
            } else {
                s.push_str(&format!(
                    ", {:.1} MiB less with its {:.1} MiB of compressed bytes in the page cache",
                    mib(decoded - all),
                    mib(paged)
                ));
            }
            decoded.saturating_sub(all)
        }
    };
    if net == 0 {
        s.push_str(&format!(
            ": nothing saved, and {:.1} MiB decoded on every pass",
            mib(streamed)
        ));
    } else if net.saturating_mul(10) < decoded {
        s.push_str(&format!(
            ": little, for {:.1} MiB decoded on every pass",
            mib(streamed)
        ));
    }
    s
}

/// Rows of a lookup table a lookups-only plan keeps between lookups: a generated token's
/// row is then decoded once, not at every token, and a prompt's rows go right after use.
const LOOKUP_KEEP: u64 = 1 << 20;

/// See [`Residency::lookup_memory_tight`]: MiniLM BF16's table (14.8 MiB compressed) keeps
/// its bytes cached while 59 MiB or more are left. Its 241 MiB batch under a 362.8 MiB cap
/// leaves about 20; with no cap, gigabytes.
const LOOKUP_CACHE_ROOM: u64 = 4;

/// How long [`Residency::lookup_memory_tight`]'s answer holds.
const LOOKUP_TIGHT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// How many raw bytes of chunks a lookup of the lookups-only plan asks for ahead of its
/// decodes: with 1 MiB chunks, the next chunk of each of two decoding threads (4 held 0.7 MiB
/// more at MiniLM BF16's peak, in the same time). At least two chunks however small:
/// two 64 KiB chunks ahead left each decode waiting for its read (MiniLM BF16 in 64 KiB
/// chunks under a cap at plain mmap's peak, 2026-12-02: 83.2 emb/s against plain mmap's 97.3).
const LOOKUP_READ_WINDOW_BYTES: u64 = 2 << 20;

/// [`LOOKUP_READ_WINDOW_BYTES`] in chunks of `chunk` raw bytes, two at least.
fn lookup_read_window(chunk: u64) -> usize {
    usize::try_from(LOOKUP_READ_WINDOW_BYTES / chunk.max(1))
        .unwrap_or(usize::MAX)
        .max(2)
}

/// What a budget of `s` costs on `dc`: the weight memory its plan needs at least (resident,
/// held compressed and the working set) and what it decodes on each pass over the weights
/// (a token, a batch). `None` when it streams nothing.
pub fn budget_cost(dc: &DcFile, s: &Settings) -> Option<BudgetCost> {
    let costs = tensor_costs(dc);
    let plan = plan_for(&costs, s)?;
    // A row lookup decodes only the chunks of the rows asked for: nothing worth counting.
    let per_pass = || {
        costs
            .iter()
            .zip(&plan.streamed)
            .filter(|(c, streamed)| **streamed && !c.lookup_only)
            .map(|(c, _)| c)
    };
    Some(BudgetCost {
        least_need: plan.needed_bytes(s.home),
        decoded_per_pass: per_pass().map(|c| c.raw).sum(),
        decode_seconds_per_pass: crate::cost::machine_profile()
            .map(|_| per_pass().map(|c| c.raw as f64 / c.decode_bps).sum()),
    })
}

/// See [`budget_cost`].
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetCost {
    pub least_need: u64,
    pub decoded_per_pass: u64,
    /// From this machine's measured decode speeds, when it has a profile.
    pub decode_seconds_per_pass: Option<f64>,
}

/// The default's lookups-only plan of `dc` ([`super::plan::lookups_plan`]).
pub fn lookups_plan_of(dc: &DcFile) -> Option<ResidencyPlan> {
    super::plan::lookups_plan(&tensor_costs(dc))
}

/// The lookups-only plan of `dc` for a batch short under a memory limit
/// ([`super::plan::lookups_plan_under_a_limit`]).
pub fn lookups_plan_under_a_limit_of(dc: &DcFile) -> Option<ResidencyPlan> {
    super::plan::lookups_plan_under_a_limit(&tensor_costs(dc))
}

/// What the plan needs to know of each tensor of `dc`.
fn tensor_costs(dc: &DcFile) -> Vec<TensorCost> {
    let lookup = dc.original.lookup_table().map(|t| t.name.as_str());
    (0..dc.tensor_count())
        .map(|i| {
            let v = dc.tensor_view(i);
            TensorCost {
                lookup_only: lookup == Some(v.name.as_str()),
                chunk_bytes: u64::from(dc.index.tensors[i].chunk_raw),
                name: v.name,
                raw: v.raw_bytes,
                stored: v.stored_bytes,
                decode_bps: decode_bps_for(dc.tensor_info(i).ty),
            }
        })
        .collect()
}

fn decode_bps_for(ty: GgmlType) -> f64 {
    // Without a profile every type counts as equally fast: the plan then ranks by bytes saved.
    crate::cost::machine_profile().map_or(1e9, |p| p.decode_bps(ty, true))
}

impl Residency {
    /// The plan for `dc` under `s`; `None` when it streams nothing (the budget covers the
    /// whole model).
    pub fn new(dc: Arc<DcFile>, s: Settings) -> Option<Arc<Residency>> {
        let costs = tensor_costs(&dc);
        let plan = plan_for(&costs, &s)?;
        Some(Self::with_plan(dc, s, plan, false))
    }

    /// The default's plan when the decoded model fits ([`super::plan::lookups_plan`]): only
    /// lookup tables stream, their rows given back after each lookup that filled more than
    /// [`LOOKUP_KEEP`]. `None` when the model has no table worth it.
    pub fn lookups_only(dc: Arc<DcFile>) -> Option<Arc<Residency>> {
        let plan = lookups_plan_of(&dc)?;
        Some(Self::lookups_with(dc, plan))
    }

    /// The lookups-only residency of `plan` (a lookups-only plan of `dc`).
    pub fn lookups_with(dc: Arc<DcFile>, plan: ResidencyPlan) -> Arc<Residency> {
        let s = Settings {
            budget: super::spec::Budget::Bytes(plan.budget_bytes),
            home: CompressedHome::Ram,
            prefetch: Some(false),
        };
        Self::with_plan(dc, s, plan, true)
    }

    fn with_plan(
        dc: Arc<DcFile>,
        s: Settings,
        plan: ResidencyPlan,
        release_lookups: bool,
    ) -> Arc<Residency> {
        let mut slot_of_tensor = vec![None; plan.streamed.len()];
        let mut slots = Vec::new();
        for (i, of_tensor) in slot_of_tensor.iter_mut().enumerate() {
            if plan.streamed[i] {
                *of_tensor = Some(slots.len());
                slots.push(Slot {
                    tensor: i,
                    group: plan.group[i],
                    addr: 0,
                    len: dc.tensor_view(i).raw_bytes as usize,
                    status: Status::Absent,
                    last_use: 0,
                    pin_epoch: u64::MAX,
                    rows: Vec::new(),
                    partial: 0,
                    layout: Layout::default(),
                    nodes: Vec::new(),
                    buf: None,
                });
            }
        }
        let room = plan.streaming_room(s.home);
        // A lookup-only table decodes rows in place, never whole: its size does not count.
        let sizes = || {
            slots
                .iter()
                .filter(|s| !is_lookup_table(&dc, s.tensor))
                .map(|s| s.len as u64)
        };
        let buffers =
            arena_fits(sizes(), room).then(|| Buffers::new(room, sizes().min().unwrap_or(1)));
        let streamed: Vec<usize> = slots.iter().map(|s| s.tensor).collect();
        let streamed_spans = dc.stored_spans(&streamed);
        let mut groups: Vec<u32> = slots.iter().map(|s| s.group).collect();
        groups.sort_unstable();
        groups.dedup();
        // A pass decodes each group once at least.
        let one_pass = groups.len() as u64;
        let early_drops_left = AtomicU64::new(2 * one_pass);
        let res = Arc::new(Residency {
            room,
            plan,
            home: s.home,
            dc,
            slot_of_tensor,
            state: Mutex::new(State {
                slots,
                by_addr: HashMap::new(),
                by_node: HashMap::new(),
                buffers,
                pool: Pool::default(),
                present: 0,
                clock: 0,
                epoch: 0,
                current: None,
                prefetching: None,
                next_group: HashMap::new(),
                closed: false,
                looked_up: Vec::new(),
                stats: Stats::default(),
            }),
            ready: Condvar::new(),
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
            prefetch: Mutex::new(None),
            prefetch_on: AtomicBool::new(s.prefetch != Some(false)),
            stall_nanos: AtomicU64::new(0),
            prefetch_setting: s.prefetch,
            release_lookups,
            lookup_tight: Mutex::new(None),
            streamed_spans,
            early_drops_left,
            for_good: AtomicBool::new(false),
            pressure: Mutex::new(PressureWindow {
                warmup_left: one_pass,
                window: one_pass.max(1),
                ..PressureWindow::default()
            }),
            thrashing: AtomicBool::new(false),
        });
        if s.prefetch != Some(false) {
            let (tx, rx) = channel::<u32>();
            let weak: Weak<Residency> = Arc::downgrade(&res);
            let spawned = std::thread::Builder::new()
                .name("dcgguf-prefetch".into())
                .spawn(move || {
                    while let Ok(g) = rx.recv() {
                        match weak.upgrade() {
                            Some(r) => r.prefetch_group(g),
                            None => break,
                        }
                    }
                });
            if spawned.is_ok() {
                *res.prefetch.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
            }
        }
        res
    }

    /// A context will compute this model's graphs on up to `threads` threads. Without an
    /// explicit setting, the prefetch thread runs only if that leaves a CPU idle: when every
    /// CPU computes, it can only take time from the compute threads, which wait for each other
    /// at every node (measured on 2 cores, 2 threads: SmolLM2 at 50% gave pp64 245 t/s with
    /// it, 270 without). Between layers, the compute threads decode instead ([`team`]).
    ///
    /// [`team`]: super::team
    pub fn set_compute_threads(&self, threads: usize) {
        if self.prefetch_setting.is_none() {
            let idle_cpu = threads < super::team::decode_threads();
            let on = idle_cpu || !super::team::uses_openmp();
            self.prefetch_on.store(on, Ordering::Relaxed);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One line for stderr: what the plan does.
    pub fn summary(&self) -> String {
        let p = &self.plan;
        let mut s = format!(
            "dcgguf: memory budget {:.1} MiB of {:.1} MiB decoded weights: {} tensors decoded on \
             demand ({:.1} MiB, {:.1} MiB compressed, held in {}), {:.1} MiB resident, \
             {:.1} MiB working set",
            mib(p.budget_bytes),
            mib(p.decoded_weight_bytes),
            p.streamed_count(),
            mib(p.decoded_weight_bytes - p.resident_bytes),
            mib(p.streamed_stored_bytes),
            match self.home {
                CompressedHome::Ram => "RAM",
                CompressedHome::File => "the page cache",
            },
            mib(p.resident_bytes),
            mib(self.room),
        );
        s.push_str(match self.lock().buffers {
            Some(_) => ", decoded into an arena",
            None => ", decoded in place",
        });
        let needed = p.needed_bytes(self.home);
        if p.budget_bytes < needed {
            s.push_str(&format!(
                " (the budget is below the {:.1} MiB this model needs at least: using that)",
                mib(needed)
            ));
        }
        s.push_str(&saving_words(
            p.decoded_weight_bytes,
            p.budget_bytes.max(needed),
            p.decoded_weight_bytes - p.resident_bytes,
            (self.home == CompressedHome::File).then_some(p.streamed_stored_bytes),
        ));
        s.push_str(&format!(
            " [limit={} weights={}]",
            p.budget_bytes.max(needed),
            p.decoded_weight_bytes
        ));
        s
    }

    /// Load time: if `[offset, offset + len)` of the original file is exactly a streamed
    /// tensor, remember that llama.cpp keeps it at `addr` and tell the stream to skip it.
    pub fn defer_load(&self, offset: u64, addr: usize, len: usize) -> bool {
        let Some(i) = self.dc.tensor_starting_at(offset) else {
            return false;
        };
        let Some(slot) = self.slot_of_tensor[i] else {
            return false;
        };
        let mut st = self.lock();
        if st.slots[slot].len != len || st.slots[slot].addr != 0 || addr == 0 {
            return false;
        }
        st.slots[slot].addr = addr;
        st.slots[slot].layout = Layout::of(addr, len);
        st.by_addr.insert(addr, slot);
        true
    }

    /// Learns the `ggml_tensor` of each tensor the load left to this residency from
    /// `tensor_of` (its name -> the tensor and its data pointer), so that even its first
    /// decode goes to the arena; one whose data pointer is not where the load left it is
    /// learnt only when a graph node reads it.
    pub fn know_tensors(&self, tensor_of: impl Fn(&str) -> Option<(usize, usize)>) {
        let mut st = self.lock();
        for slot in 0..st.slots.len() {
            let (tensor, addr) = (st.slots[slot].tensor, st.slots[slot].addr);
            if addr == 0 || !st.slots[slot].nodes.is_empty() {
                continue;
            }
            let Some((node, data)) = tensor_of(&self.dc.tensor_view(tensor).name) else {
                continue;
            };
            if data == addr && !st.by_node.contains_key(&node) {
                st.by_node.insert(node, slot);
                st.slots[slot].nodes.push(node);
            }
        }
    }

    /// Original-file byte ranges of the tensors this plan streams: what a load that defers
    /// them ([`Residency::defer_load`]) does not read.
    pub fn streamed_ranges(&self) -> Vec<std::ops::Range<u64>> {
        let h = &self.dc.original;
        self.lock()
            .slots
            .iter()
            .map(|s| h.tensor_range(&h.tensors[s.tensor]))
            .collect()
    }

    /// The DC file's indices of the tensors whose compressed bytes stay mapped once read
    /// (`ram`): every tensor the plan streams but a lookup-only table, of which a lookup
    /// reads the chunks of its rows (Qwen2.5-Coder-1.5B: 94 MiB more cached with its table);
    /// none in `file`, which maps them anew on each use.
    pub fn kept_mapped_tensors(&self) -> Vec<usize> {
        if self.home == CompressedHome::File {
            return Vec::new();
        }
        self.lock()
            .slots
            .iter()
            .map(|s| s.tensor)
            .filter(|&t| !is_lookup_table(&self.dc, t))
            .collect()
    }

    /// Whether this is the default's lookups-only plan ([`Residency::lookups_only`]).
    pub fn is_lookups_only(&self) -> bool {
        self.release_lookups
    }

    /// Whether a lookup table's rows go back once their lookup is computed (beyond
    /// [`LOOKUP_KEEP`]): in the default's lookups-only plan, and once a budget stopped
    /// streaming, whose lookup-only table stays compressed ([`Residency::stays_compressed`]).
    fn releases_lookups(&self) -> bool {
        self.release_lookups || self.for_good.load(Ordering::Relaxed)
    }

    /// Whether tensor `t` (the DC file's index) stays compressed when the budget stops
    /// streaming ([`Residency::decode_for_good`]): a streamed lookup-only table, whose rows
    /// are decoded for each lookup then as in the default's lookups-only plan, never the
    /// whole table (Qwen2.5-Coder-1.5B: 125 MiB a stop decoded and moved to a file before).
    pub fn stays_compressed(&self, t: usize) -> bool {
        self.plan.streamed.get(t) == Some(&true) && is_lookup_table(&self.dc, t)
    }

    /// Decoded bytes of the tensors that stay compressed when the budget stops streaming
    /// ([`Residency::stays_compressed`]).
    pub fn stays_compressed_bytes(&self) -> u64 {
        (0..self.plan.streamed.len())
            .filter(|&t| self.stays_compressed(t))
            .map(|t| self.dc.tensor_view(t).raw_bytes)
            .sum()
    }

    /// After a load that deferred tensors: keeps each one that `memory_of` (as for
    /// [`Residency::adopt_loaded`]) finds exactly where llama.cpp read it, with its pages
    /// given back (the reads ahead of a load may have populated some), and forgets the
    /// others, whose read went to a buffer of llama.cpp's own (staging for a device or for
    /// repacking) and so never reached the tensor: returns their tensor indices. Their
    /// bytes must be written into the model before it computes.
    ///
    /// # Safety
    /// As for `adopt_loaded`.
    pub unsafe fn confirm_deferred(
        &self,
        memory_of: impl Fn(&str) -> Option<(usize, usize)>,
    ) -> Vec<usize> {
        let mut st = self.lock();
        let mut misplaced = Vec::new();
        for slot in 0..st.slots.len() {
            let (tensor, addr, len) = {
                let s = &st.slots[slot];
                (s.tensor, s.addr, s.len)
            };
            if addr == 0 {
                continue;
            }
            if memory_of(&self.dc.tensor_view(tensor).name) == Some((addr, len)) {
                release_pages(addr, len);
                continue;
            }
            st.by_addr.remove(&addr);
            let s = &mut st.slots[slot];
            s.addr = 0;
            s.layout = Layout::default();
            misplaced.push(tensor);
        }
        misplaced
    }

    /// How many tensors this residency holds (deferred at load or adopted after), and
    /// their decoded bytes.
    pub fn held(&self) -> (usize, u64) {
        let st = self.lock();
        st.slots
            .iter()
            .filter(|s| s.addr != 0)
            .fold((0, 0), |(n, b), s| (n + 1, b + s.len as u64))
    }

    /// Brings the compressed bytes of every streamed tensor taken over by
    /// [`Residency::adopt_loaded`] into the page cache as recently used
    /// ([`DcFile::warm_stored`]).
    pub fn warm_adopted(&self) {
        let tensors: Vec<usize> = {
            let st = self.lock();
            st.slots
                .iter()
                .filter(|s| s.addr != 0)
                .map(|s| s.tensor)
                .collect()
        };
        for t in tensors {
            self.dc.warm_stored(t);
        }
    }

    /// A model loaded without a budget switches to this one ([`super::refit`]): every
    /// streamed tensor that `memory_of` finds (its name -> the address and length of its
    /// decoded bytes in llama.cpp's CPU weight buffer, which must hold exactly the file's
    /// bytes) is taken over as if the load had deferred it, and its whole pages are given
    /// back; it is decoded again before its next use. Returns how many tensors and bytes
    /// were taken over; tensors not found stay resident as loaded.
    ///
    /// # Safety
    /// No graph of the model computes, and none will without this residency's graph
    /// callback: the tensors' memory reads as zeros until decoded again.
    pub unsafe fn adopt_loaded(
        &self,
        memory_of: impl Fn(&str) -> Option<(usize, usize)>,
    ) -> (usize, u64) {
        let mut st = self.lock();
        let (mut count, mut bytes) = (0, 0);
        for slot in 0..st.slots.len() {
            let s = &st.slots[slot];
            if s.addr != 0 {
                continue;
            }
            let name = self.dc.tensor_view(s.tensor).name;
            let Some((addr, len)) = memory_of(&name) else {
                continue;
            };
            if addr == 0 || len != s.len || st.by_addr.contains_key(&addr) {
                continue;
            }
            let s = &mut st.slots[slot];
            s.addr = addr;
            s.layout = Layout::of(addr, len);
            s.status = Status::Absent;
            st.by_addr.insert(addr, slot);
            release_pages(addr, len);
            count += 1;
            bytes += len as u64;
        }
        (count, bytes)
    }

    /// Stops streaming, first step: no decode starts from now on (one in flight finishes
    /// first), and what streaming held goes back to the system (the arena, pooled pages,
    /// this process's mappings of the compressed bytes); the tensors that were in the arena,
    /// and tables with some rows decoded, are evicted, to be decoded in place by
    /// [`Residency::decode_for_good`]. Returns the bytes that decode will write: what the
    /// caller must find room for. Calling it again does nothing more.
    ///
    /// # Safety
    /// As for [`Residency::decode_for_good`].
    pub unsafe fn release_streaming(&self) -> u64 {
        self.release_streaming_locked(self.lock()).1
    }

    /// [`Residency::release_streaming`] under the lock, which it gives back.
    fn release_streaming_locked<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
    ) -> (MutexGuard<'a, State>, u64) {
        // Released once: refit's stop releases first and decodes after, which calls this again.
        if !self.for_good.load(Ordering::Relaxed) {
            // No prefetch starts from now on, and one in flight finishes first.
            self.prefetch_on.store(false, Ordering::Relaxed);
            st.prefetching = None;
            while st.slots.iter().any(|s| s.status == Status::Loading) {
                st = self.ready.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            self.for_good.store(true, Ordering::Relaxed);
            // Tensors in the arena (their weights pointed back at their own memory) and tables
            // with some rows decoded are evicted, to be decoded again in place.
            for slot in 0..st.slots.len() {
                let s = &st.slots[slot];
                if s.buf.is_some() || s.status == Status::Partial {
                    self.evict(&mut st, slot);
                }
            }
            st.pool.trim(0);
            if let Some(mut arena) = st.buffers.take() {
                arena.unmap();
            }
            // In `ram` mode the compressed bytes are mapped, which a limit's headroom counts as
            // used: unmapped, their page cache counts as the room it is once they are decoded.
            let streamed: Vec<usize> = st.slots.iter().map(|s| s.tensor).collect();
            self.dc.unmap_stored(&streamed);
        }
        let to_decode = st
            .slots
            .iter()
            .filter(|s| s.addr != 0 && s.status == Status::Absent)
            .filter(|s| !self.stays_compressed(s.tensor))
            .map(|s| s.len as u64)
            .sum();
        (st, to_decode)
    }

    /// Stops streaming: every streamed tensor is decoded once more into its own memory in
    /// llama.cpp's buffer and stays there; what streaming held goes back to the system
    /// ([`Residency::release_streaming`], where the caller did not call it first), then the
    /// compressed bytes' mappings and their page cache where the load found it cold. From
    /// then on the graph callback only points each weight at its own memory, but for a
    /// lookup-only table ([`Residency::stays_compressed`]), which it goes on decoding the
    /// rows of for each lookup and giving back after, as the default's lookups-only plan
    /// does. `keep` gets each piece of memory once it holds its decoded bytes, `(address,
    /// length)`, a chunk of a tensor at most and a batch of about [`FOR_GOOD_BATCH`] bytes
    /// at a time, so that the caller can move them to a file before the next batch is
    /// written ([`super::refit`]); then the tensors decoded in place and present, whole, as
    /// they are. A batch decodes on the compute threads ([`super::team`]) while
    /// the kernel reads the next one's compressed bytes, asked for ahead: SmolLM2
    /// `50%,file` stopping under a 141 MiB cap (76.1 MiB decoded, all of it moved) took
    /// 202-355 ms, one chunk after another on this thread 275-386 (session 62, six runs
    /// each). Returns the decoded bytes of the tensors it holds now, or the first decode
    /// error (the residency has failed then: its model must not compute).
    ///
    /// # Safety
    /// No graph of the model computes (this runs on the thread inside its compute call,
    /// between graph computations), and none will without this residency's graph callback;
    /// `keep` must not call into this residency.
    pub unsafe fn decode_for_good(
        &self,
        mut keep: impl FnMut(usize, usize),
    ) -> Result<u64, crate::dc::DcError> {
        let (mut st, _) = self.release_streaming_locked(self.lock());
        let mut held = 0u64;
        let mut streamed = Vec::with_capacity(st.slots.len());
        let mut jobs: Vec<ChunkJob> = Vec::new();
        let mut decoded_slots = Vec::new();
        let mut present = Vec::new();
        for slot in 0..st.slots.len() {
            let s = &st.slots[slot];
            if s.status == Status::Absent && self.stays_compressed(s.tensor) {
                // Its rows decode for each lookup from now on: its compressed bytes stay.
                continue;
            }
            streamed.push(s.tensor);
            if s.addr == 0 {
                // Never found in llama.cpp's memory: not streamed, nothing to keep.
                continue;
            }
            held += s.len as u64;
            if s.status != Status::Absent {
                present.push((s.addr, s.len));
            } else {
                decoded_slots.push(slot);
            }
        }
        for &slot in &decoded_slots {
            let s = &st.slots[slot];
            let chunk = (self.dc.index.tensors[s.tensor].chunk_raw as usize).max(1);
            for (c, at) in (0..s.len).step_by(chunk).enumerate() {
                jobs.push(ChunkJob {
                    slot,
                    tensor: s.tensor,
                    chunk: c,
                    offset: at,
                    addr: s.addr + at,
                    len: chunk.min(s.len - at),
                    // Released a batch at a time, below.
                    release_each: false,
                });
            }
        }
        // Batches of about FOR_GOOD_BATCH decoded bytes: each decodes on the compute threads,
        // its compressed bytes asked for while the batch before it decodes, and goes to
        // `keep` before the next is written, so that what this holds at once stays bounded.
        let mut batches: Vec<std::ops::Range<usize>> = Vec::new();
        let (mut from, mut bytes) = (0, 0);
        for (j, job) in jobs.iter().enumerate() {
            if bytes > 0 && bytes + job.len > FOR_GOOD_BATCH {
                batches.push(from..j);
                (from, bytes) = (j, 0);
            }
            bytes += job.len;
        }
        if from < jobs.len() {
            batches.push(from..jobs.len());
        }
        let chunks_of = |r: &std::ops::Range<usize>| -> Vec<(usize, usize)> {
            jobs[r.clone()]
                .iter()
                .map(|j| (j.tensor, j.chunk))
                .collect()
        };
        let batch_chunks: Vec<Vec<(usize, usize)>> = batches.iter().map(chunks_of).collect();
        if let Some(first) = batch_chunks.first() {
            self.dc.ask_for_chunks(first);
        }
        for (b, batch) in batches.iter().enumerate() {
            if let Some(next) = batch_chunks.get(b + 1) {
                self.dc.ask_for_chunks(next);
            }
            let first_error: Mutex<Option<crate::dc::DcError>> = Mutex::new(None);
            let decode = |k: usize| {
                let j = &jobs[batch.start + k];
                // SAFETY: `addr..addr + len` is one chunk of a streamed tensor's memory in
                // llama.cpp's weight buffer (recorded at load); jobs cover disjoint chunks.
                // The tensor is Absent: no graph reads it (none computes, the caller's
                // contract) and no other decode writes it (none is in flight, and none
                // starts: `for_good`, the lock held).
                let dst = unsafe { std::slice::from_raw_parts_mut(j.addr as *mut u8, j.len) };
                if let Err(e) = self.dc.read_tensor(j.tensor, j.offset as u64, dst) {
                    first_error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert(e);
                }
            };
            let completed =
                super::team::for_each(batch.len(), super::team::decode_threads(), &decode);
            if let Some(e) = first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
                drop(st);
                self.fail(e.to_string());
                return Err(e);
            }
            // A decode that panicked was caught on its thread; it goes on here, as it would
            // have on this thread alone, to the callers' panic boundary (which fails the
            // residency).
            assert!(completed, "decoding a streamed tensor for good panicked");
            // Read once and decoded: the compressed bytes leave the process now.
            self.dc.release_chunks(&batch_chunks[b]);
            for j in &jobs[batch.clone()] {
                keep(j.addr, j.len);
            }
        }
        // Present already, counted by the limit as they are: after what the decodes added.
        for (addr, len) in present {
            keep(addr, len);
        }
        for slot in decoded_slots {
            let len = st.slots[slot].len as u64;
            st.slots[slot].status = Status::Present;
            st.present += len;
            st.stats.decodes += 1;
            st.stats.decoded_bytes += len;
        }
        drop(st);
        self.dc.release_stored(&streamed);
        Ok(held)
    }

    /// Whether every streamed tensor was decoded for good ([`Residency::decode_for_good`]).
    pub fn decoded_for_good(&self) -> bool {
        self.for_good.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> Stats {
        let mut s = self.lock().stats;
        s.stall_seconds = self.stall_nanos.load(Ordering::Relaxed) as f64 * 1e-9;
        s
    }

    /// After a layer decode of a pass (not a row lookup's), during which the process had
    /// `blocks` (of 512 bytes) read from the disk ([`crate::io::DiskReads::blocks`]: the decodes
    /// ask for their chunks ahead, so a major fault rarely counts what they wait for). Where
    /// the limit cannot hold the budget's memory next to the compressed bytes it decodes from,
    /// the kernel reclaims those pages between passes and the decodes read them back: SmolLM2
    /// at `50%,file` under llama-completion and plain mmap's peak (141.4 MiB) generated 10.9
    /// t/s against plain mmap's 96.7, at `50%,ram` under 90% of it 20.6 against 26.9 (session
    /// 61). Once a pass (after the pass of a cold start, which reads everything) has read a
    /// quarter of the compressed bytes it decodes from ([`THRASHING_SHARE`]), the budget is
    /// [`Residency::thrashing`]: the graph callback then has it stop streaming
    /// ([`super::refit::budget_thrashes`]). Without a limit pressing, a warm pass reads
    /// nothing from the disk. Costs a `getrusage` a decode where nothing counted faults.
    /// A window of one pass rather than two, after one pass rather than two (session 62,
    /// SmolLM2 `50%,file`, 32 tokens under 141 MiB, four runs each): 51.0-59.9 t/s against
    /// 30.0-37.2 (plain mmap 124.2-136.5); no stop in 13 runs with room (no cap, or 175 MiB,
    /// `file` and `ram`).
    fn note_pressure(&self, blocks: u64) {
        let mut w = self.pressure.lock().unwrap_or_else(|e| e.into_inner());
        if w.warmup_left > 0 {
            w.warmup_left = w.warmup_left.saturating_sub(1);
            return;
        }
        w.decodes += 1;
        w.read = w.read.saturating_add(blocks.saturating_mul(512));
        if w.decodes >= w.window {
            // A window decodes each group once: the streamed bytes once.
            let decoded_from = self.plan.streamed_stored_bytes;
            if w.read.saturating_mul(THRASHING_SHARE) >= decoded_from {
                self.thrashing.store(true, Ordering::Relaxed);
            }
            w.decodes = 0;
            w.read = 0;
        }
    }

    /// Whether the budget's decodes keep reading from the disk ([`Residency::note_pressure`])
    /// and it still streams.
    pub fn thrashing(&self) -> bool {
        self.thrashing.load(Ordering::Relaxed) && !self.decoded_for_good()
    }

    /// The thrashing was dealt with, or cannot be: no more counting.
    pub fn stop_counting_pressure(&self) {
        self.pressure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .warmup_left = u64::MAX;
        self.thrashing.store(false, Ordering::Relaxed);
    }

    /// Before a decode: the process's major page faults so far where the DC file's load was
    /// cold ([`DcFile::loaded_cold`]), for [`Residency::drop_read_around`] after it.
    fn faults_before_decode(&self) -> Option<u64> {
        self.dc.loaded_cold().then(crate::io::major_faults)
    }

    /// After a decode of `chunks` (`(tensor, chunk)`) that began at `before` major faults:
    /// where it read from the disk, drops from the page cache what the kernel's read-around
    /// brought back of the tensors the budget does not stream (decoded at the load, never
    /// read again; [`DcFile::uncache_around`]). SmolLM2 at `50%,file`, cold: the whole 83.2
    /// MiB file was cached after a run, 68.6 MiB of it streamed; MiniLM BF16 27.5 MiB, 20.6
    /// streamed (read_ahead_kb 8192). Where nothing was read from the disk (the pages were
    /// cached: every pass once the first has run, with no limit pressing) it costs a
    /// `getrusage`.
    ///
    /// The first decodes after the load (two passes' worth) drop it whatever the count says:
    /// a fault on the mark the kernel leaves in what it read around starts a read ahead of it
    /// that no fault waits for, so no count sees it (SmolLM2 `50%,file` in a CI run with
    /// other tests: 78 MiB of the file cached after the run, 70.1 alone).
    /// `after`: the count once the decode is done, read only where it is needed.
    fn drop_read_around(
        &self,
        before: Option<u64>,
        after: impl FnOnce() -> u64,
        chunks: &[(usize, usize)],
    ) {
        let Some(before) = before else {
            return;
        };
        let early = self
            .early_drops_left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if early || after() > before {
            self.dc
                .uncache_around(chunks, &self.streamed_spans, READ_AROUND_WINDOW);
        }
    }

    /// Whether a streamed tensor of `len` bytes has its compressed bytes released chunk by
    /// chunk as they are decoded (`file` mode, big tensors), rather than all at once after.
    fn releases_each_chunk(&self, len: usize) -> bool {
        self.home == CompressedHome::File && len > RELEASE_EACH_CHUNK
    }

    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    pub(super) fn fail(&self, msg: String) {
        let mut e = self.error.lock().unwrap_or_else(|e| e.into_inner());
        if e.is_none() {
            crate::log_line!("dcgguf: error: {}: {msg}", self.dc.path().display());
            *e = Some(msg);
        }
        self.failed.store(true, Ordering::Relaxed);
    }

    /// Stops prefetching and waits for decodes in flight: the model's memory is about to be
    /// freed.
    fn shut_down(&self) {
        let mut st = self.lock();
        st.closed = true;
        st.prefetching = None;
        while st.slots.iter().any(|s| s.status == Status::Loading) {
            st = self.ready.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        for slot in 0..st.slots.len() {
            if st.slots[slot].buf.is_some() {
                self.evict(&mut st, slot);
            }
        }
        st.pool.trim(0);
        if let Some(b) = &mut st.buffers {
            b.unmap();
        }
        drop(st);
        *self.prefetch.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Graph callback, ask phase: node `t` is about to be computed. Decodes the streamed
    /// weights it reads; returns whether the range of nodes must end at `t` (it starts a
    /// new layer, so the previous one is released once this range is computed).
    ///
    /// # Safety
    /// `t` is a live ggml tensor whose `src`/`view_src` are NULL or live tensors.
    pub unsafe fn ask(&self, t: *const sys::ggml_tensor) -> bool {
        let started = Instant::now();
        // SAFETY: forwarded from the caller.
        let boundary = unsafe { self.ask_inner(t) };
        let nanos = started.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
        self.stall_nanos.fetch_add(nanos, Ordering::Relaxed);
        boundary
    }

    /// [`Residency::ask`] without the timing.
    ///
    /// # Safety
    /// As for `ask`.
    unsafe fn ask_inner(&self, t: *const sys::ggml_tensor) -> bool {
        let mut boundary = false;
        let mut lookup_ends = false;
        // SAFETY: the caller guarantees `t` is live.
        let (srcs, op) = unsafe { ((*t).src, (*t).op) };
        for (k, src) in srcs.into_iter().enumerate() {
            if src.is_null() {
                continue;
            }
            // SAFETY: non-NULL sources of a live node are live tensors.
            let base = unsafe {
                let v = (*src).view_src;
                if v.is_null() { src } else { v }
            };
            let mut st = self.lock();
            let slot = match st.by_node.get(&(base as usize)) {
                Some(&slot) => slot,
                None => {
                    // SAFETY: as above. A tensor not in `by_node` has the data pointer
                    // llama.cpp gave it: this runtime writes only those of `by_node`.
                    let addr = unsafe { (*base).data } as usize;
                    let Some(&slot) = st.by_addr.get(&addr) else {
                        continue;
                    };
                    st.by_node.insert(base as usize, slot);
                    st.slots[slot].nodes.push(base as usize);
                    slot
                }
            };
            let g = st.slots[slot].group;
            if st.current != Some(g) {
                if let Some(prev) = st.current {
                    st.next_group.insert(prev, g);
                }
                st.current = Some(g);
                boundary = true;
                if !(k == 0 && op == sys::ggml_op_GGML_OP_GET_ROWS) {
                    st = self.ensure_group(st, g);
                }
            }
            if k == 0
                && op == sys::ggml_op_GGML_OP_GET_ROWS
                && st.slots[slot].status != Status::Present
            {
                // SAFETY: a GET_ROWS node's src[1] is its (live) index tensor. Row offsets
                // are the table's own, so only when it is not a view into another tensor.
                let rows = (base == src)
                    .then(|| unsafe { row_ids(srcs[1], src) })
                    .flatten();
                if let Some(rows) = rows.filter(|r| rows_fit(r, st.slots[slot].len as u64)) {
                    self.ensure_rows(st, slot, rows);
                    // SAFETY: `base` and `src` are live (caller); the slot is pinned.
                    unsafe { self.point(slot, base, src) };
                    // A lookups-only plan gives rows back once their lookup is computed
                    // (`computed`), which ggml reports only for a range that ends here: with
                    // one table, no later group change would end one.
                    lookup_ends |= self.releases_lookups();
                    continue;
                }
            }
            self.ensure(st, slot);
            // SAFETY: as above.
            unsafe { self.point(slot, base, src) };
        }
        // Decoded for good, a layer frees nothing once computed: cutting the graph there
        // would only make the compute threads wait for each other once more a layer. A
        // lookup's rows still go back (once a graph).
        (boundary && !self.for_good.load(Ordering::Relaxed)) || lookup_ends
    }

    /// Points weight `base` (and `src`, a view of it, if not itself) at where `slot`'s
    /// bytes are now: its decode buffer, or its own memory.
    ///
    /// # Safety
    /// `base` and `src` are live tensors, `base` is `slot`'s weight, and no graph computes
    /// (the ask phase).
    unsafe fn point(&self, slot: usize, base: *mut sys::ggml_tensor, src: *mut sys::ggml_tensor) {
        let st = self.lock();
        let s = &st.slots[slot];
        let data = s.buf.as_ref().map_or(s.addr, Buffer::addr);
        // SAFETY: live tensors (caller); nothing reads their data pointers meanwhile: the
        // compute threads are idle in the ask phase, and other threads of this runtime
        // read and write them only under the lock held here.
        unsafe {
            (*base).data = data as *mut c_void;
            if src != base {
                (*src).data = (data + (*src).view_offs) as *mut c_void;
            }
        }
    }

    /// Decodes the rows of `slot`'s table that a row lookup reads (`rows`: one row's byte
    /// range each, all of one length) and pins it. Each chunk holding a missing row is
    /// decoded, and checked, into a scratch buffer, and only those rows are copied into the
    /// tensor's memory: a lookup of a few thousand tokens touches a few MB of a 23 MB
    /// embedding table (MiniLM BF16), where decoding whole chunks in place touched nearly all.
    fn ensure_rows(&self, mut st: MutexGuard<'_, State>, slot: usize, rows: RowRanges) {
        while st.slots[slot].status == Status::Loading {
            st = self.ready.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        if st.slots[slot].status == Status::Present {
            return self.ensure(st, slot);
        }
        let tensor = st.slots[slot].tensor;
        let chunk = u64::from(self.dc.index.tensors[tensor].chunk_raw);
        let (addr, len) = (st.slots[slot].addr, st.slots[slot].len);
        // Its own pages still in the pool (evicted whole, not moved on yet) must not move
        // away under the rows written below.
        let state = &mut *st;
        state.pool.release_own(&state.slots[slot].layout);
        st.slots[slot].pin_epoch = st.epoch;
        let n_rows = (len as u64 / rows.row) as usize;
        if st.slots[slot].rows.len() != n_rows {
            st.slots[slot].rows = vec![false; n_rows];
        }
        let mut todo: Vec<u64> = rows
            .starts
            .iter()
            .map(|&start| start / rows.row)
            .filter(|&r| !st.slots[slot].rows[r as usize])
            .collect();
        todo.sort_unstable();
        todo.dedup();
        let copies = row_copies(&todo, rows.row, chunk, len as u64);
        let need = pages_touched(&todo, rows.row, addr);
        if !self.make_room(&mut st, need, false) {
            let over = st.present + need - self.room;
            st.stats.overshoot = st.stats.overshoot.max(over);
        }
        st.slots[slot].status = Status::Loading;
        st.present += need;
        st.stats.peak_present = st.stats.peak_present.max(st.present);
        trim_pool(&mut st, self.room);
        drop(st);
        let started = Instant::now();
        let release_each = self.releases_each_chunk(len);
        // Chunks decode in parallel on the compute threads, like a layer's ([`team`]): a
        // batch's lookup touches most chunks of the table (MiniLM BF16: 22 of 22 on its first
        // batch), one after another on this thread they took 48 ms of a 2.3 s run. Each
        // thread decodes into a chunk-sized scratch buffer of its own, taken from `scratch`.
        //
        // Every chunk's read is asked for first: the decodes then find most of them read.
        // Except in the lookups-only plan (only lookup tables kept compressed) when memory
        // has become tight ([`lookup_memory_tight`]): there at most LOOKUP_READ_WINDOW_BYTES
        // are asked for ahead, and each chunk's compressed bytes leave the page cache once
        // decoded. Asked for all at once and kept, a MiniLM BF16 batch's 10-15 MiB of them
        // were the run's peak (uncapped, llama-embedding: 377.4 MiB charged, 366.4 when
        // dropped; plain mmap 380.2), and under a 362.8 MiB cap the kernel reclaimed code
        // before them. Dropped where memory is ample, each lookup of a small batch read them
        // back from the disk (batches of 128 tokens: 0.10 s of lookups against 0.04).
        //
        // [`team`]: super::team
        let chunks: Vec<(usize, usize)> =
            copies.iter().map(|&(c, _)| (tensor, c as usize)).collect();
        let uncache = self.release_lookups && self.lookup_memory_tight();
        let window = if uncache {
            lookup_read_window(chunk)
        } else {
            chunks.len()
        };
        let faults = self.faults_before_decode();
        self.dc.prefetch_chunks(&chunks[..window.min(chunks.len())]);
        let scratch: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
        let failure: Mutex<Option<crate::dc::DcError>> = Mutex::new(None);
        let decoded = AtomicU64::new(0);
        let decode_chunk = |k: usize| {
            let (c, pieces) = &copies[k];
            let from = c * chunk;
            let n = (len as u64 - from).min(chunk) as usize;
            let mut buf = scratch
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop()
                .unwrap_or_default();
            buf.resize(n, 0);
            let r = self.dc.read_tensor(tensor, from, &mut buf[..n]);
            if release_each {
                self.dc.release_chunks(&[(tensor, *c as usize)]);
            } else if uncache {
                self.dc.release_and_uncache_chunks(&[(tensor, *c as usize)]);
                if let Some(next) = chunks.get(k + window) {
                    self.dc.prefetch_chunks(std::slice::from_ref(next));
                }
            }
            match r {
                Ok(()) => {
                    decoded.fetch_add(n as u64, Ordering::Relaxed);
                    for &(at, piece) in pieces {
                        let src = &buf[(at - from) as usize..(at - from + piece) as usize];
                        // SAFETY: `[at, at + piece)` lies inside the tensor's own memory
                        // (row_copies keeps every piece inside `len`, and each piece inside
                        // its chunk, so jobs write disjoint bytes); the tensor is Loading, so
                        // nothing else reads or writes it meanwhile, and the buffer is this
                        // job's.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                src.as_ptr(),
                                (addr + at as usize) as *mut u8,
                                piece as usize,
                            )
                        };
                    }
                }
                Err(e) => {
                    failure
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert(e);
                }
            }
            scratch.lock().unwrap_or_else(|e| e.into_inner()).push(buf);
        };
        let completed =
            super::team::for_each(copies.len(), super::team::decode_threads(), &decode_chunk);
        self.drop_read_around(faults, crate::io::major_faults, &chunks);
        let r = match failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(e.to_string()),
            None if !completed => Err("decoding panicked".to_string()),
            None => Ok(()),
        };
        let decoded = decoded.into_inner();
        // Once the budget stopped streaming, a lookup's compressed bytes are not kept mapped
        // in `ram` mode either: the table is all that still decodes, a token's chunk at a time.
        if (self.home == CompressedHome::File || self.for_good.load(Ordering::Relaxed))
            && !release_each
        {
            self.dc.release_chunks(&chunks);
        }
        let mut st = self.lock();
        st.clock += 1;
        let clock = st.clock;
        let s = &mut st.slots[slot];
        s.last_use = clock;
        if r.is_ok() {
            for &row in &todo {
                s.rows[row as usize] = true;
            }
        }
        s.partial += need;
        s.status = Status::Partial;
        st.stats.looked_up_bytes += need;
        if !st.looked_up.contains(&slot) {
            st.looked_up.push(slot);
        }
        st.stats.decodes += copies.len() as u64;
        st.stats.decoded_bytes += decoded;
        st.stats.decode_seconds += started.elapsed().as_secs_f64();
        drop(st);
        self.ready.notify_all();
        if let Err(e) = r {
            self.fail(e);
        }
    }

    /// Whether a lookup of the lookups-only plan drops its chunks' compressed bytes from the
    /// page cache: when what the memory limit leaves ([`super::limit::headroom`]) is less
    /// than [`LOOKUP_CACHE_ROOM`] times the tables' compressed bytes. Read at most every
    /// [`LOOKUP_TIGHT_EVERY`] (a generated token may look a row up).
    fn lookup_memory_tight(&self) -> bool {
        let mut last = self.lookup_tight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, tight)) = *last
            && at.elapsed() < LOOKUP_TIGHT_EVERY
        {
            return tight;
        }
        let room = self
            .plan
            .streamed_stored_bytes
            .saturating_mul(LOOKUP_CACHE_ROOM);
        let tight = super::limit::headroom().is_some_and(|h| h.bytes < room);
        *last = Some((Instant::now(), tight));
        tight
    }

    /// Graph callback: the range of nodes ending at the last asked node was computed.
    pub fn computed(&self) {
        let mut st = self.lock();
        st.epoch += 1;
        if self.releases_lookups() && !st.looked_up.is_empty() {
            for slot in std::mem::take(&mut st.looked_up) {
                if st.slots[slot].status == Status::Partial && st.slots[slot].partial > LOOKUP_KEEP
                {
                    self.evict(&mut st, slot);
                }
            }
        }
        let Some(cur) = st.current else {
            return;
        };
        if !self.prefetch_on.load(Ordering::Relaxed) {
            return;
        }
        let Some(&next) = st.next_group.get(&cur) else {
            return;
        };
        if st.prefetching == Some(next) {
            return;
        }
        st.prefetching = Some(next);
        drop(st);
        if let Some(tx) = &*self.prefetch.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = tx.send(next);
        }
    }

    /// Makes `slot` present and pins it for the pending range.
    fn ensure(&self, mut st: MutexGuard<'_, State>, slot: usize) {
        loop {
            match st.slots[slot].status {
                Status::Present => {
                    st.clock += 1;
                    let (clock, epoch) = (st.clock, st.epoch);
                    let s = &mut st.slots[slot];
                    s.last_use = clock;
                    s.pin_epoch = epoch;
                    return;
                }
                Status::Loading => {
                    st = self.ready.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                Status::Absent | Status::Partial => break,
            }
        }
        self.load_pinned(st, vec![slot]);
    }

    /// A new layer starts: decodes every tensor of group `g` that is not there yet, all at
    /// once, so that their chunks keep every core busy. (Decoding the layer expected next in
    /// the same go, as far as room allowed, was measured slower: tg 17 t/s against 21 for
    /// SmolLM2 at 50%.) Returns with the lock held again.
    fn ensure_group<'a>(&'a self, st: MutexGuard<'a, State>, g: u32) -> MutexGuard<'a, State> {
        let todo: Vec<usize> = (0..st.slots.len())
            .filter(|&i| {
                let s = &st.slots[i];
                s.group == g && s.addr != 0 && matches!(s.status, Status::Absent | Status::Partial)
            })
            .collect();
        if todo.is_empty() {
            return st;
        }
        let todo = self.with_idle_slots_filled(&st, g, todo);
        self.load_pinned(st, todo);
        self.lock()
    }

    /// `todo` (group `g`'s tensors to decode) plus tensors of the group expected next that
    /// fill the decoding threads' last round: with three one-chunk tensors a layer on two
    /// threads (SmolLM2 at 50%) the third leaves a thread idle for a whole chunk-time, and
    /// decoding one of the next layer's tensors there costs nothing and saves that layer a
    /// round (SmolLM2 `50%,ram`, session 56: 15.9-16.9 ms a token against 17.6-18.8 in
    /// the VM's quiet phases). Only tensors that fit the idle chunk-times and the budget's
    /// room beside what this range pins; never a lookup table (decoded by rows). Not in
    /// `file` mode, where it was measured slower (36-41 ms a token against 30-36: the
    /// compressed bytes read ahead there are the next layer's).
    fn with_idle_slots_filled(&self, st: &State, g: u32, mut todo: Vec<usize>) -> Vec<usize> {
        if self.home != CompressedHome::Ram {
            return todo;
        }
        let threads = super::team::decode_threads();
        let Some(&next) = st.next_group.get(&g).filter(|&&n| n != g) else {
            return todo;
        };
        let chunks = |slot: usize| {
            let chunk = self.dc.index.tensors[st.slots[slot].tensor].chunk_raw as usize;
            st.slots[slot].len.div_ceil(chunk.max(1))
        };
        let mut jobs: usize = todo.iter().map(|&s| chunks(s)).sum();
        if threads < 2 || jobs.is_multiple_of(threads) {
            return todo;
        }
        let held: u64 = st
            .slots
            .iter()
            .filter(|s| s.pin_epoch == st.epoch && s.status != Status::Absent)
            .map(|s| s.len as u64)
            .sum();
        let mut need: u64 = held + todo.iter().map(|&s| st.slots[s].len as u64).sum::<u64>();
        let lookup = self.dc.original.lookup_table().map(|t| t.name.as_str());
        for slot in 0..st.slots.len() {
            let idle = (threads - jobs % threads) % threads;
            if idle == 0 {
                break;
            }
            let s = &st.slots[slot];
            if s.group != next || s.addr == 0 || s.status != Status::Absent {
                continue;
            }
            let n = chunks(slot);
            if n > idle
                || need + s.len as u64 > self.room
                || lookup == Some(self.dc.tensor_view(s.tensor).name.as_str())
            {
                continue;
            }
            todo.push(slot);
            jobs += n;
            need += s.len as u64;
        }
        todo
    }

    /// Pins `slots` (Absent or Partial) for the pending range, makes room for them and
    /// decodes them, spread over the compute threads. Returns with the lock released.
    fn load_pinned(&self, mut st: MutexGuard<'_, State>, slots: Vec<usize>) {
        let epoch = st.epoch;
        let mut need = 0;
        for &s in &slots {
            st.slots[s].pin_epoch = epoch;
            need += st.slots[s].len as u64;
        }
        if !self.make_room(&mut st, need, false) {
            let over = st.present + need - self.room;
            st.stats.overshoot = st.stats.overshoot.max(over);
        }
        self.load(st, slots, true);
    }

    /// Decodes `slots` (Absent or Partial, room already made) into their memory: with
    /// `parallel`, chunk by chunk on the threads that compute the graph ([`team`]), else on
    /// this thread. Returns with the lock released.
    ///
    /// [`team`]: super::team
    fn load(&self, mut st: MutexGuard<'_, State>, slots: Vec<usize>, parallel: bool) {
        let mut jobs: Vec<ChunkJob> = Vec::new();
        for &slot in &slots {
            let partial = std::mem::take(&mut st.slots[slot].partial);
            st.present -= partial;
            let s = &mut st.slots[slot];
            s.rows.clear();
            s.status = Status::Loading;
            let (tensor, mut addr, len) = (s.tensor, s.addr, s.len);
            st.present += len as u64;
            // A tensor whose ggml_tensor is not known yet (not found at load, and no node
            // has read it) decodes in place: nothing would point it at the arena.
            if st.buffers.is_some()
                && !st.slots[slot].nodes.is_empty()
                && let Some((buf, written)) = self.buffer_for(&mut st, len)
            {
                if partial > 0 {
                    // The rows a lookup wrote into its own memory.
                    let state = &mut *st;
                    state.pool.release_own(&state.slots[slot].layout);
                    release_pages(addr, len);
                }
                st.stats.recycled_bytes += written;
                addr = buf.addr();
                st.slots[slot].buf = Some(buf);
            } else if !st.slots[slot].layout.is_empty() {
                let state = &mut *st;
                let before = state.pool.bytes();
                // SAFETY: the slot is Loading, so nothing reads or writes its memory until
                // the decode below has written all of it.
                state.slots[slot].layout = unsafe { state.pool.fill(&state.slots[slot].layout) };
                state.stats.recycled_bytes += before - state.pool.bytes();
            }
            let chunk = self.dc.index.tensors[tensor].chunk_raw as usize;
            let release_each = self.releases_each_chunk(len);
            for c in 0..len.div_ceil(chunk) {
                jobs.push(ChunkJob {
                    slot,
                    tensor,
                    chunk: c,
                    offset: c * chunk,
                    addr: addr + c * chunk,
                    len: (len - c * chunk).min(chunk),
                    release_each,
                });
            }
        }
        st.stats.peak_present = st.stats.peak_present.max(st.present);
        trim_pool(&mut st, self.room);
        drop(st);
        // Largest first: threads hand out jobs in order, so the last ones, run while other
        // threads may already wait, are the shortest.
        jobs.sort_by_key(|j| std::cmp::Reverse(j.len));
        // One `getrusage` on each side serves both the pressure count and the read-around
        // drop.
        let reads_before = crate::io::disk_reads();
        let started = Instant::now();
        let errors: Mutex<Vec<(usize, String)>> = Mutex::new(Vec::new());
        let decode = |j: usize| {
            let ChunkJob {
                slot,
                tensor,
                chunk,
                offset,
                addr,
                len,
                release_each,
            } = jobs[j];
            // SAFETY: `addr..addr + len` is one chunk of a tensor's memory inside llama.cpp's
            // weight buffer (recorded at load from the fread destination of exactly this
            // tensor); jobs cover disjoint chunks. Nobody reads it while the tensor is
            // Loading: graph nodes that use it wait in `ensure`, and nodes are computed only
            // after their ask returns.
            let dst = unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, len) };
            if let Err(e) = self.dc.read_tensor(tensor, offset as u64, dst) {
                errors
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((slot, e.to_string()));
            }
            if release_each {
                self.dc.release_chunks(&[(tensor, chunk)]);
            }
        };
        let completed = if parallel {
            super::team::for_each(jobs.len(), super::team::decode_threads(), &decode)
        } else {
            (0..jobs.len()).for_each(decode);
            true
        };
        let secs = started.elapsed().as_secs_f64();
        // Only where something uses them: `ram` after a warm load allocates nothing here.
        let cold = self.dc.loaded_cold();
        let chunks: Vec<(usize, usize)> = if self.home == CompressedHome::File || cold {
            jobs.iter().map(|j| (j.tensor, j.chunk)).collect()
        } else {
            Vec::new()
        };
        if self.home == CompressedHome::File {
            // The compressed bytes just decoded leave the process in one call (with the
            // neighbouring pages the kernel's fault-around mapped along), rather than one per
            // chunk: each call interrupts every other CPU running the process.
            self.dc.release_chunks(&chunks);
        }
        let reads_after = crate::io::disk_reads();
        self.note_pressure(reads_after.blocks.saturating_sub(reads_before.blocks));
        self.drop_read_around(
            cold.then_some(reads_before.major_faults),
            || reads_after.major_faults,
            &chunks,
        );
        let mut errors = errors.into_inner().unwrap_or_else(|e| e.into_inner());
        if !completed {
            errors.extend(slots.iter().map(|&s| (s, "decoding panicked".to_string())));
        }
        let mut st = self.lock();
        st.clock += 1;
        let clock = st.clock;
        for &slot in &slots {
            st.slots[slot].last_use = clock;
            if errors.iter().any(|(s, _)| *s == slot) {
                st.slots[slot].status = Status::Absent;
                st.present -= st.slots[slot].len as u64;
            } else {
                st.slots[slot].status = Status::Present;
                st.stats.decodes += 1;
                st.stats.decoded_bytes += st.slots[slot].len as u64;
            }
        }
        st.stats.decode_seconds += secs;
        drop(st);
        if let Some((_, e)) = errors.into_iter().next() {
            self.fail(e);
        }
        self.ready.notify_all();
    }

    /// A buffer for a tensor of `len` bytes about to be decoded, and the bytes of it written
    /// before: a free piece of the arena, else one that evicting tensors the pending range
    /// does not need frees (neither the current layer nor the one being prefetched), else
    /// a mapping of its own.
    fn buffer_for(&self, st: &mut State, len: usize) -> Option<(Buffer, u64)> {
        if let Some(b) = st.buffers.as_mut()?.take(len) {
            return Some(b);
        }
        let epoch = st.epoch;
        let (mut slots, mut held) = (Vec::new(), Vec::new());
        for (i, s) in st.slots.iter().enumerate() {
            if let Some(Buffer::Arena { addr, len }) = s.buf {
                let evictable = s.status == Status::Present
                    && s.pin_epoch != epoch
                    && st.current != Some(s.group)
                    && st.prefetching != Some(s.group);
                slots.push(i);
                held.push((addr, len, evictable));
            }
        }
        let buffers = st.buffers.as_mut()?;
        if let Some(evict) = buffers.window(len, &held) {
            for k in evict {
                self.evict(st, slots[k]);
                st.stats.evicted_for_space += 1;
            }
            let buffers = st.buffers.as_mut()?;
            if let Some(b) = buffers.take(len) {
                return Some(b);
            }
        }
        let buffers = st.buffers.as_mut()?;
        buffers.release_free(len);
        st.stats.outside_arena += 1;
        Buffers::own(len).map(|b| (b, 0))
    }

    /// Evicts streamed tensors until `need` more bytes fit: first those needed again the
    /// furthest ahead in the layer order seen in earlier graphs (for a model computed layer
    /// after layer, least recently used would evict exactly the layers needed soonest), then
    /// the least recently used. Never evicts a tensor the pending range needs; the prefetcher
    /// also spares the current and the prefetched layer. Returns false if not enough could be
    /// freed.
    fn make_room(&self, st: &mut State, need: u64, for_prefetch: bool) -> bool {
        // Decoded for good, nothing leaves: a lookup's rows are held beside the weights
        // until the lookup is computed (`computed`).
        if st.present + need <= self.room || self.for_good.load(Ordering::Relaxed) {
            return true;
        }
        let ahead = groups_ahead(st.current, &st.next_group);
        while st.present + need > self.room {
            let epoch = st.epoch;
            // Decoded tensors the pending range does not need.
            let candidates = st
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| matches!(s.status, Status::Present | Status::Partial))
                .filter(|(_, s)| s.pin_epoch != epoch)
                .map(|(slot, s)| Candidate {
                    slot,
                    group: s.group,
                    last_use: s.last_use,
                });
            let protect = Protected {
                current: st.current,
                prefetching: st.prefetching,
                spare: for_prefetch,
            };
            let Some(v) = victim(candidates, &ahead, protect) else {
                return false;
            };
            self.evict(st, v);
        }
        true
    }

    fn evict(&self, st: &mut State, slot: usize) {
        let s = &mut st.slots[slot];
        let (held, whole) = if s.status == Status::Partial {
            (s.partial, false)
        } else {
            (s.len as u64, true)
        };
        s.status = Status::Absent;
        s.partial = 0;
        s.rows.clear();
        let (addr, len) = (s.addr, s.len);
        st.present -= held;
        st.stats.evictions += 1;
        if let Some(buf) = st.slots[slot].buf.take() {
            for &node in &st.slots[slot].nodes {
                // SAFETY: a weight tensor of the model, which lives while its residency is
                // registered; this runtime writes its data pointer only under the lock held
                // here, and no graph node reads it: the tensor is not pinned, so no node of
                // the range being computed reads it, and a later node's ask points it again.
                unsafe { (*(node as *mut sys::ggml_tensor)).data = addr as *mut c_void };
            }
            if let Some(b) = &mut st.buffers {
                b.give(buf);
            }
            return;
        }
        // SAFETY: the tensor is Absent and not pinned: nothing reads its memory until a
        // decode writes it again.
        if !(whole
            && !st.slots[slot].layout.is_empty()
            && unsafe { st.pool.take(&mut st.slots[slot].layout) })
        {
            release_pages(addr, len);
        }
    }

    /// Prefetch thread: decodes group `g`'s absent tensors while room allows.
    fn prefetch_group(&self, g: u32) {
        let slots: Vec<usize> = {
            let st = self.lock();
            (0..st.slots.len())
                .filter(|&i| st.slots[i].group == g)
                .collect()
        };
        for slot in slots {
            let mut st = self.lock();
            if st.prefetching != Some(g)
                || st.closed
                || self.failed()
                || self.for_good.load(Ordering::Relaxed)
            {
                return;
            }
            if st.slots[slot].status != Status::Absent || st.slots[slot].addr == 0 {
                continue;
            }
            let len = st.slots[slot].len as u64;
            if !self.make_room(&mut st, len, true) {
                return;
            }
            st.stats.prefetched += 1;
            self.load(st, vec![slot], false);
        }
    }
}

/// One chunk of a tensor to decode into its memory.
#[derive(Clone, Copy)]
struct ChunkJob {
    slot: usize,
    tensor: usize,
    chunk: usize,
    /// Offset of the chunk in the tensor, and where it goes.
    offset: usize,
    addr: usize,
    len: usize,
    /// Release its compressed bytes right after decoding it (`file` mode, big tensors).
    release_each: bool,
}

/// Decoded bytes [`Residency::decode_for_good`] writes before handing them to its caller
/// (who moves them to a file): the spill file's piece, one write and write-back.
const FOR_GOOD_BATCH: usize = 8 << 20;

/// In `file` mode, tensors bigger than this release their compressed bytes chunk by chunk
/// while they decode, so that a big one (an output head) is never mapped whole; smaller
/// ones release a layer's worth at once.
const RELEASE_EACH_CHUNK: usize = 4 << 20;

/// The rows a row lookup reads: each row's first byte in the table, and the row length.
#[derive(Debug, PartialEq)]
struct RowRanges {
    starts: Vec<u64>,
    row: u64,
}

/// Whether tensor `t` of `dc` is its lookup-only table (a token embedding beside an output
/// head of its own, [`crate::gguf::GgufHeader::lookup_table`]), which a budget decodes a row
/// lookup's chunks of, never whole.
fn is_lookup_table(dc: &DcFile, t: usize) -> bool {
    dc.original
        .lookup_table()
        .is_some_and(|l| l.name == dc.original.tensors[t].name)
}

/// Whether every row of `rows` lies inside a table of `len` bytes (rows of a length > 0).
fn rows_fit(rows: &RowRanges, len: u64) -> bool {
    rows.row > 0
        && rows
            .starts
            .iter()
            .all(|&s| s % rows.row == 0 && s.checked_add(rows.row).is_some_and(|e| e <= len))
}

/// For rows `todo` (indices, sorted, distinct) of `row` bytes each in a tensor of `len`
/// bytes stored in chunks of `chunk` bytes: each chunk to decode, with the byte ranges
/// (tensor offset, length) to copy out of it. A row that crosses a chunk boundary is copied
/// in two pieces, one from each chunk.
fn row_copies(todo: &[u64], row: u64, chunk: u64, len: u64) -> Vec<(u64, Vec<(u64, u64)>)> {
    let mut out: Vec<(u64, Vec<(u64, u64)>)> = Vec::new();
    for &r in todo {
        let (mut at, end) = (r * row, (r * row + row).min(len));
        while at < end {
            let c = at / chunk;
            let piece = end.min((c + 1) * chunk) - at;
            match out.last_mut() {
                Some((last, pieces)) if *last == c => pieces.push((at, piece)),
                _ => out.push((c, vec![(at, piece)])),
            }
            at += piece;
        }
    }
    out
}

/// Bytes of the distinct pages that rows `todo` (sorted) of `row` bytes touch in memory
/// starting at `addr`: what copying them in adds to the process.
fn pages_touched(todo: &[u64], row: u64, addr: usize) -> u64 {
    let page = crate::io::page_size() as u64;
    let (mut pages, mut last) = (0u64, None);
    for &r in todo {
        let (from, to) = (addr as u64 + r * row, addr as u64 + r * row + row);
        for p in from / page..to.div_ceil(page) {
            if last.is_none_or(|l| p > l) {
                pages += 1;
                last = Some(p);
            }
        }
    }
    pages * page
}

/// The rows of `table` that a GET_ROWS node with index tensor `ids` reads. `None` when the
/// index tensor is not a plain contiguous I32 host tensor or an index is out of range.
///
/// # Safety
/// `ids` and `table` are NULL or live ggml tensors.
unsafe fn row_ids(
    ids: *const sys::ggml_tensor,
    table: *const sys::ggml_tensor,
) -> Option<RowRanges> {
    if ids.is_null() || table.is_null() {
        return None;
    }
    // SAFETY: both are live tensors (caller).
    let (ids, table) = unsafe { (&*ids, &*table) };
    if ids.type_ != sys::ggml_type_GGML_TYPE_I32 || ids.data.is_null() || ids.nb[0] != 4 {
        return None;
    }
    let n: i64 = ids.ne.iter().product();
    let contiguous = (1..4).all(|d| ids.nb[d] as i64 == ids.nb[d - 1] as i64 * ids.ne[d - 1]);
    if !contiguous || n <= 0 || n > (1 << 24) {
        return None;
    }
    let row = table.nb[1] as u64;
    let rows = table.ne[1];
    // SAFETY: a contiguous I32 tensor of `n` elements in host memory (CPU backend).
    let v = unsafe { std::slice::from_raw_parts(ids.data as *const i32, n as usize) };
    let starts = v
        .iter()
        .map(|&r| (0..rows).contains(&i64::from(r)).then(|| r as u64 * row))
        .collect::<Option<Vec<u64>>>()?;
    Some(RowRanges { starts, row })
}

/// Gives pooled pages back until the pool, the arena's written pages and the decoded
/// streamed tensors together hold at most `room`.
fn trim_pool(st: &mut State, room: u64) {
    let arena = st.buffers.as_ref().map_or(0, Buffers::written_bytes);
    let keep = room.saturating_sub(st.present.saturating_add(arena));
    st.pool.trim(keep);
}

/// Returns the whole pages inside `[addr, addr + len)` to the system; they read as zeros
/// until written again. Pages shared with neighbouring tensors are kept.
fn release_pages(addr: usize, len: usize) {
    let page = crate::io::page_size();
    let start = addr.div_ceil(page) * page;
    let end = (addr + len) / page * page;
    if end > start {
        // SAFETY: the range lies inside one tensor's memory in llama.cpp's anonymous,
        // private weight buffer (whole pages only, so no neighbour's bytes are touched), and
        // that tensor is Absent: nothing reads it until `load` writes it again.
        unsafe { libc::madvise(start as *mut c_void, end - start, libc::MADV_DONTNEED) };
    }
}

/// Models loaded with a budget, by `llama_model *`.
static MODELS: Mutex<Vec<(usize, Arc<Residency>)>> = Mutex::new(Vec::new());

pub fn register_model(model: *mut sys::llama_model, res: Arc<Residency>) {
    MODELS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((model as usize, res));
}

pub fn model_residency(model: *const sys::llama_model) -> Option<Arc<Residency>> {
    let m = MODELS.lock().unwrap_or_else(|e| e.into_inner());
    m.iter()
        .find(|(p, _)| *p == model as usize)
        .map(|(_, r)| r.clone())
}

/// Forgets a model about to be freed (at `llama_model_free`), after any decode into its
/// memory has finished; prints its counters when `DCGGUF_VERBOSE` is set.
pub fn unregister_model(model: *mut sys::llama_model) {
    let gone = {
        let mut m = MODELS.lock().unwrap_or_else(|e| e.into_inner());
        let at = m.iter().position(|(p, _)| *p == model as usize);
        at.map(|i| m.swap_remove(i).1)
    };
    if let Some(r) = gone {
        r.shut_down();
        if crate::llama::verbose() {
            crate::log_line!(
                "dcgguf: memory budget stats: {:?}; process {}",
                r.stats(),
                crate::io::rss_report()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tight lookup reads the same bytes ahead whatever its table's chunk size, and at
    /// least two chunks.
    #[test]
    fn a_tight_lookup_reads_ahead_a_fixed_number_of_bytes_two_chunks_at_least() {
        assert_eq!(lookup_read_window(1 << 20), 2);
        assert_eq!(lookup_read_window(64 << 10), 32);
        assert_eq!(lookup_read_window(4 << 20), 2);
        assert_eq!(lookup_read_window(0), usize::try_from(2u64 << 20).unwrap());
    }

    #[test]
    fn rows_are_copied_from_the_chunks_that_hold_them_split_at_chunk_boundaries() {
        // Rows of 300 bytes, chunks of 1000, a table of 3000 bytes (10 rows).
        let copies = row_copies(&[0, 3, 6, 9], 300, 1000, 3000);
        assert_eq!(
            copies,
            vec![
                (0, vec![(0, 300), (900, 100)]),
                (1, vec![(1000, 200), (1800, 200)]),
                (2, vec![(2000, 100), (2700, 300)]),
            ]
        );
        // Every byte of every row is copied once.
        let bytes: u64 = copies.iter().flat_map(|(_, p)| p).map(|&(_, n)| n).sum();
        assert_eq!(bytes, 4 * 300);
        assert!(row_copies(&[], 300, 1000, 3000).is_empty());
    }

    #[test]
    fn rows_outside_the_table_are_not_looked_up_row_by_row() {
        let rows = |starts: Vec<u64>| RowRanges { starts, row: 300 };
        assert!(rows_fit(&rows(vec![0, 2700]), 3000));
        assert!(!rows_fit(&rows(vec![2800]), 3000));
        assert!(!rows_fit(&rows(vec![150]), 3000));
        assert!(!rows_fit(
            &RowRanges {
                starts: vec![0],
                row: 0
            },
            3000
        ));
    }

    #[test]
    fn a_lookup_is_charged_the_pages_its_rows_touch() {
        let page = crate::io::page_size() as u64;
        // Two rows in one page, one in another, one spanning two pages.
        let row = page / 4;
        assert_eq!(pages_touched(&[0, 1, 8], row, 0), 2 * page);
        assert_eq!(
            pages_touched(&[0], row, (page - row / 2) as usize),
            2 * page
        );
        assert_eq!(pages_touched(&[], row, 0), 0);
    }
}

#[cfg(test)]
mod buffer_tests {
    use super::*;
    use crate::dc::test_files::{incompressible, small_dc};
    use crate::llama::budget::spec::Budget;

    /// Elements (F32) of each test layer's one tensor: 640 KiB, above MIN_STREAMED.
    const N: usize = 160 << 10;

    fn zeroed_tensor() -> sys::ggml_tensor {
        // SAFETY: ggml_tensor is plain data (integers, arrays and raw pointers), for which
        // all zero bytes is a valid value: an F32 tensor with no sources, view or data.
        unsafe { std::mem::zeroed() }
    }

    /// The `len` bytes at `addr`.
    ///
    /// # Safety
    /// `[addr, addr + len)` is readable memory that nothing writes meanwhile.
    unsafe fn bytes_at(addr: *mut c_void, len: usize) -> Vec<u8> {
        // SAFETY: forwarded from the caller.
        unsafe { std::slice::from_raw_parts(addr as *const u8, len) }.to_vec()
    }

    /// A model of three layers of one tensor each, all streamed under a budget that holds two
    /// of them decoded (no prefetch thread), in an anonymous "weight buffer" where the load
    /// left them, and a graph of one node a layer; layer 0's node reads it through a view
    /// 4 KiB in (as ggml_view_* makes one). Heap-allocated throughout: the nodes point at the
    /// weights and the view.
    struct ThreeLayers {
        res: Arc<Residency>,
        layer: Vec<Vec<u8>>,
        model: memmap2::MmapMut,
        homes: Vec<usize>,
        weights: Vec<sys::ggml_tensor>,
        view: Box<sys::ggml_tensor>,
        nodes: Vec<sys::ggml_tensor>,
    }

    /// A DC file of `tensors` (test `name`'s, in 1 MiB chunks) and a residency streaming all
    /// it can (a budget of one byte, `file` mode, no prefetch thread).
    fn streaming_everything(
        name: &str,
        tensors: &[crate::gguf::TensorEntry],
    ) -> (Arc<DcFile>, Arc<Residency>) {
        let (_, dir, _, dc) = small_dc(name, tensors, 1 << 20);
        std::fs::remove_dir_all(&dir).unwrap();
        let settings = Settings {
            budget: Budget::Bytes(1),
            home: CompressedHome::File,
            prefetch: Some(false),
        };
        let res = Residency::new(dc.clone(), settings).unwrap();
        (dc, res)
    }

    fn three_streamed_layers(name: &str) -> ThreeLayers {
        let bytes = incompressible(3 * N * 4);
        let layer: Vec<Vec<u8>> = (0..3)
            .map(|i| bytes[i * N * 4..(i + 1) * N * 4].to_vec())
            .collect();
        let tensors: Vec<crate::gguf::TensorEntry> = (0..3)
            .map(|i| {
                let name = format!("blk.{i}.ffn_up.weight");
                (name, vec![N as u64], GgmlType::F32, layer[i].clone())
            })
            .collect();
        let (dc, res) = streaming_everything(name, &tensors);
        assert_eq!(res.plan.streamed_count(), 3);
        assert_eq!(res.room, 2 * (N * 4) as u64, "the working set: two layers");

        let mut model = memmap2::MmapMut::map_anon(3 * N * 4).unwrap();
        let homes: Vec<usize> = (0..3)
            .map(|i| model.as_mut_ptr() as usize + i * N * 4)
            .collect();
        let mut weights: Vec<sys::ggml_tensor> = (0..3).map(|_| zeroed_tensor()).collect();
        let h = &dc.original;
        for (i, w) in weights.iter_mut().enumerate() {
            let info = h
                .tensors
                .iter()
                .find(|t| t.name == format!("blk.{i}.ffn_up.weight"))
                .unwrap();
            assert!(res.defer_load(h.tensor_range(info).start, homes[i], N * 4));
            w.data = homes[i] as *mut c_void;
        }
        let w: Vec<*mut sys::ggml_tensor> = weights.iter_mut().map(|w| w as *mut _).collect();
        let mut view = Box::new(zeroed_tensor());
        view.view_src = w[0];
        view.view_offs = 4096;
        view.data = (homes[0] + 4096) as *mut c_void;
        let mut nodes: Vec<sys::ggml_tensor> = (0..3).map(|_| zeroed_tensor()).collect();
        nodes[0].src[0] = &mut *view;
        nodes[1].src[0] = w[1];
        nodes[2].src[0] = w[2];
        nodes
            .iter_mut()
            .for_each(|n| n.op = sys::ggml_op_GGML_OP_MUL_MAT);
        ThreeLayers {
            res,
            layer,
            model,
            homes,
            weights,
            view,
            nodes,
        }
    }

    /// Three layers of one tensor each, all streamed under a budget that holds two of them
    /// decoded: the graph callback's ask points each weight (and a view of one) at the
    /// buffer its bytes were decoded into, an evicted weight's buffer goes to the next layer
    /// and the weight points back at its own memory, which no decode ever touched.
    #[test]
    fn streamed_weights_decode_into_buffers_that_pass_from_layer_to_layer() {
        let ThreeLayers {
            res,
            layer,
            model,
            homes,
            weights,
            view,
            nodes,
        } = three_streamed_layers("runtime-buffers");
        let layer = |i: usize| layer[i].clone();
        let data_of =
            |w: &[sys::ggml_tensor]| w.iter().map(|t| t.data as usize).collect::<Vec<_>>();

        // SAFETY (every ask and read below): live tensors of this test, whose data pointers
        // point at N * 4 readable bytes; no other thread uses them (no prefetch thread).
        assert!(unsafe { res.ask(&nodes[0]) });
        assert_ne!(weights[0].data as usize, homes[0], "decoded into a buffer");
        assert_eq!(unsafe { bytes_at(weights[0].data, N * 4) }, layer(0));
        assert_eq!(view.data as usize, weights[0].data as usize + 4096);
        res.computed();
        assert!(unsafe { res.ask(&nodes[1]) });
        assert_eq!(unsafe { bytes_at(weights[1].data, N * 4) }, layer(1));
        res.computed();
        let buffers = data_of(&weights[..2]);
        assert!(!buffers.contains(&homes[0]) && !buffers.contains(&homes[1]));

        // Layer 2 takes the buffer of the layer evicted for it, which points home again.
        assert!(unsafe { res.ask(&nodes[2]) });
        let now = data_of(&weights);
        let evicted = (0..2)
            .find(|&i| now[i] == homes[i])
            .expect("one layer evicted");
        assert_eq!(now[2], buffers[evicted]);
        assert_ne!(now[1 - evicted], homes[1 - evicted]);
        assert_eq!(unsafe { bytes_at(weights[2].data, N * 4) }, layer(2));
        res.computed();
        // Layer 0 again, through its view: its bytes, wherever they now are.
        assert!(unsafe { res.ask(&nodes[0]) });
        assert!(buffers.contains(&(weights[0].data as usize)));
        assert_eq!(view.data as usize, weights[0].data as usize + 4096);
        assert_eq!(unsafe { bytes_at(weights[0].data, N * 4) }, layer(0));

        let stats = res.stats();
        assert_eq!(
            stats.decodes,
            3 + u64::from(evicted == 0),
            "layer 0 again if evicted"
        );
        assert_eq!(
            stats.recycled_bytes,
            (stats.decodes - 2) * (N * 4) as u64,
            "two buffers in all"
        );
        // The model's own memory was never written: its pages read as zeros.
        assert!(model.iter().all(|&b| b == 0));
        res.shut_down();
        assert_eq!(data_of(&weights), homes);
    }

    /// Decoded for good (a batch that does not fit next to the budget: refit's
    /// `stop_streaming`), every streamed weight holds its bytes in its own memory and points
    /// there, each piece handed to the caller as soon as it is written, the arena given back;
    /// later asks decode nothing and cut no graph, and point a view at the weight's own
    /// memory again.
    #[test]
    fn decoded_for_good_every_weight_lies_in_its_own_memory_and_nothing_decodes_again() {
        let t = three_streamed_layers("runtime-for-good");
        let (res, homes, nodes) = (&t.res, &t.homes, &t.nodes);
        // SAFETY (every ask and read below): as in the test above.
        assert!(unsafe { res.ask(&nodes[0]) });
        assert_ne!(t.view.data as usize, homes[0] + 4096, "read from the arena");
        res.computed();
        assert!(unsafe { res.ask(&nodes[1]) });
        res.computed();
        let decodes = res.stats().decodes;

        let mut pieces: Vec<(usize, usize)> = Vec::new();
        // SAFETY: no graph computes; the closure does not call into the residency.
        let held = unsafe { res.decode_for_good(|at, len| pieces.push((at, len))) }.unwrap();
        assert_eq!(held, 3 * (N * 4) as u64);
        assert!(res.decoded_for_good());
        for (i, &home) in homes.iter().enumerate() {
            assert_eq!(t.weights[i].data as usize, home, "layer {i} points home");
            assert_eq!(
                &t.model[i * N * 4..(i + 1) * N * 4],
                &t.layer[i][..],
                "layer {i}'s bytes"
            );
        }
        // The pieces cover the three tensors' memory exactly, none larger than a chunk.
        pieces.sort_unstable();
        let mut at = homes[0];
        for &(start, len) in &pieces {
            assert_eq!(start, at, "pieces {pieces:?}");
            assert!(len <= 1 << 20);
            at += len;
        }
        assert_eq!(at, homes[2] + N * 4);
        assert!(res.lock().buffers.is_none(), "the arena was given back");

        for node in nodes {
            assert!(!unsafe { res.ask(node) }, "no graph is cut any more");
            res.computed();
        }
        assert_eq!(t.view.data as usize, homes[0] + 4096);
        let stats = res.stats();
        assert_eq!(
            stats.decodes,
            decodes + 3,
            "each layer decoded once more, then never"
        );
        res.shut_down();
        assert_eq!(
            &t.model[..],
            &t.layer.concat()[..],
            "shutting down leaves the bytes"
        );
    }

    /// A budget that stops streaming keeps a lookup-only table compressed: the stop decodes
    /// and hands over the layers only, and a lookup after it decodes the rows asked for
    /// into the table's own memory, ends the range there (a layer no longer does) and
    /// gives them back once computed, as the default's lookups-only plan does.
    #[test]
    fn a_budget_stopped_streaming_decodes_its_lookup_tables_rows_for_each_lookup() {
        const COLS: usize = 1024;
        const ROWS: usize = 1024;
        let row = COLS * 4;
        // Three layers (a budget with two groups or fewer keeps them resident), each on
        // pages of its own.
        let layers = 3 * N * 4;
        let bytes = incompressible(ROWS * row + layers + COLS * 4 * 8);
        let (table, rest) = bytes.split_at(ROWS * row);
        let (layer, output) = rest.split_at(layers);
        let mut tensors: Vec<crate::gguf::TensorEntry> = vec![
            (
                "token_embd.weight".into(),
                vec![COLS as u64, ROWS as u64],
                GgmlType::F32,
                table.to_vec(),
            ),
            // An output head of its own: the token embedding is read only by lookups.
            (
                "output.weight".into(),
                vec![COLS as u64, 8],
                GgmlType::F32,
                output.to_vec(),
            ),
        ];
        for i in 0..3 {
            let bytes = layer[i * N * 4..(i + 1) * N * 4].to_vec();
            tensors.push((
                format!("blk.{i}.ffn_up.weight"),
                vec![N as u64],
                GgmlType::F32,
                bytes,
            ));
        }
        let (dc, res) = streaming_everything("runtime-for-good-lookups", &tensors);
        let h = &dc.original;
        let index = |name: &str| h.tensors.iter().position(|t| t.name == name).unwrap();
        let t_table = index("token_embd.weight");
        let t_layers: Vec<usize> = (0..3)
            .map(|i| index(&format!("blk.{i}.ffn_up.weight")))
            .collect();
        assert_eq!(
            res.plan.streamed_count(),
            4,
            "the table and the layers stream"
        );
        assert!(res.stays_compressed(t_table));
        assert!(t_layers.iter().all(|&t| !res.stays_compressed(t)));
        assert_eq!(res.stays_compressed_bytes(), table.len() as u64);

        // The model's memory: the table, then the layers.
        let mut model = memmap2::MmapMut::map_anon(table.len() + layers).unwrap();
        let (table_home, layer_home) = (
            model.as_mut_ptr() as usize,
            model.as_mut_ptr() as usize + table.len(),
        );
        let range = |t: usize| h.tensor_range(&h.tensors[t]).start;
        assert!(res.defer_load(range(t_table), table_home, table.len()));
        for (i, &t) in t_layers.iter().enumerate() {
            assert!(res.defer_load(range(t), layer_home + i * N * 4, N * 4));
        }
        let mut weights: Vec<sys::ggml_tensor> = (0..2).map(|_| zeroed_tensor()).collect();
        weights[0].data = table_home as *mut c_void;
        weights[0].ne = [COLS as i64, ROWS as i64, 1, 1];
        weights[0].nb = [4, row, row * ROWS, row * ROWS];
        weights[1].data = layer_home as *mut c_void;
        let w: Vec<*mut sys::ggml_tensor> = weights.iter_mut().map(|w| w as *mut _).collect();
        // A lookup of `rows` (their ids in an I32 tensor) and a node reading the layer.
        let lookup_of = |rows: &mut Vec<i32>| {
            let mut ids = Box::new(zeroed_tensor());
            ids.type_ = sys::ggml_type_GGML_TYPE_I32;
            ids.data = rows.as_mut_ptr() as *mut c_void;
            ids.ne = [rows.len() as i64, 1, 1, 1];
            let n = 4 * rows.len();
            ids.nb = [4, n, n, n];
            let mut node = Box::new(zeroed_tensor());
            node.op = sys::ggml_op_GGML_OP_GET_ROWS;
            node.src[0] = w[0];
            node.src[1] = &mut *ids;
            (ids, node)
        };
        let mut layer_node = zeroed_tensor();
        layer_node.op = sys::ggml_op_GGML_OP_MUL_MAT;
        layer_node.src[0] = w[1];
        let row_at = |r: usize| {
            // SAFETY: a row of the table's memory, which nothing writes meanwhile (no graph
            // computes and no other thread decodes: no prefetch thread).
            unsafe { bytes_at((table_home + r * row) as *mut c_void, row) }
        };

        // Streaming: a lookup, then the layer.
        let mut first = vec![0, 5];
        let (_ids, node) = lookup_of(&mut first);
        // SAFETY (every ask below): live tensors of this test; the ids point at their rows.
        assert!(unsafe { res.ask(&*node) });
        assert_eq!(row_at(5), &table[5 * row..6 * row]);
        res.computed();
        assert!(unsafe { res.ask(&layer_node) });
        res.computed();

        let mut pieces: Vec<(usize, usize)> = Vec::new();
        // SAFETY: no graph computes; the closure does not call into the residency.
        let held = unsafe { res.decode_for_good(|at, len| pieces.push((at, len))) }.unwrap();
        assert_eq!(held, layers as u64, "the layers only");
        assert!(
            pieces
                .iter()
                .all(|&(at, len)| at >= layer_home && at + len <= layer_home + layers),
            "only the layers' memory is handed over: {pieces:?}"
        );
        assert_eq!(&model[table.len()..], layer, "the layers decoded in place");
        assert!(
            row_at(5).iter().all(|&b| b == 0),
            "the table's rows given back"
        );
        let decodes = res.stats().decodes;

        // After the stop: a lookup decodes its rows (one a page, 300 pages: more than
        // LOOKUP_KEEP) and ends its range; computed, they go back. The layer decodes nothing.
        let mut many: Vec<i32> = (0..300).map(|r| 3 * r + 1).collect();
        let (_ids, node) = lookup_of(&mut many);
        assert!(unsafe { res.ask(&*node) }, "a lookup ends its range");
        for r in [1, 100, 898] {
            assert_eq!(row_at(r), &table[r * row..(r + 1) * row], "row {r}");
        }
        assert!(row_at(2).iter().all(|&b| b == 0), "a row not asked for");
        assert!(res.stats().decodes > decodes);
        res.computed();
        assert!(row_at(100).iter().all(|&b| b == 0), "rows given back");
        let decodes = res.stats().decodes;
        assert!(
            !unsafe { res.ask(&layer_node) },
            "no graph is cut at a layer"
        );
        res.computed();
        assert_eq!(
            res.stats().decodes,
            decodes,
            "the layer never decodes again"
        );
        assert_eq!(weights[1].data as usize, layer_home);
        res.shut_down();
    }

    /// The budget thrashes once a pass, after the one of a cold start, has read from the
    /// disk a quarter of the compressed bytes it decodes from; less, or only in the cold
    /// start, it does not.
    #[test]
    fn a_budget_thrashes_when_its_passes_read_back_a_quarter_of_what_they_decode() {
        let ThreeLayers { res, .. } = three_streamed_layers("runtime-pressure");
        let stored = res.plan.streamed_stored_bytes;
        let blocks = |bytes: u64| bytes.div_ceil(512);
        // A pass of three layers: the cold start, which reads everything.
        for _ in 0..3 {
            res.note_pressure(blocks(stored));
        }
        assert!(!res.thrashing(), "the cold start counts for nothing");
        // A window (a pass) reading under a quarter of its compressed bytes.
        for _ in 0..3 {
            res.note_pressure(blocks(stored / 16));
        }
        assert!(!res.thrashing());
        // One reading over it.
        for _ in 0..3 {
            res.note_pressure(blocks(stored / 8));
        }
        assert!(res.thrashing());
        res.stop_counting_pressure();
        assert!(!res.thrashing());
        for _ in 0..6 {
            res.note_pressure(blocks(stored));
        }
        assert!(!res.thrashing(), "counting stopped");
    }

    #[test]
    fn a_budget_that_saves_little_says_so() {
        const MIB: u64 = 1 << 20;
        let little = super::saving_words(92 * MIB, 91 * MIB, 47 * MIB, None);
        assert_eq!(
            little,
            "; it holds 1.0 MiB less than the decoded weights: little, for 47.0 MiB decoded on \
             every pass"
        );
        let half = super::saving_words(44 * MIB, 22 * MIB, 31 * MIB, Some(15 * MIB));
        assert_eq!(
            half,
            "; it holds 22.0 MiB less than the decoded weights, 7.0 MiB less with its 15.0 MiB \
             of compressed bytes in the page cache"
        );
        // SmolLM2's Q4_1 at `50%,file`.
        let more = super::saving_words(92 * MIB, 48 * MIB, 76 * MIB, Some(69 * MIB));
        assert_eq!(
            more,
            "; it holds 44.0 MiB less than the decoded weights, but 25.0 MiB more with its 69.0 \
             MiB of compressed bytes in the page cache, which a memory limit counts: nothing \
             saved, and 76.0 MiB decoded on every pass"
        );
    }
}
