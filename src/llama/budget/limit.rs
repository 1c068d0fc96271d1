//! The memory limit a load must fit in, and the default budget chosen from it.
//!
//! With no budget asked for (neither `DCGGUF_MEM_BUDGET` nor the C API), a DC load reads the
//! limit that applies to this process: the tightest `memory.max` (cgroup v2) or
//! `memory.limit_in_bytes` (cgroup v1) of its memory cgroup and that cgroup's ancestors, minus
//! what each already holds except file pages no process maps (page cache the kernel reclaims
//! under the limit before it kills anything), and the system's `MemAvailable`. When the decoded weights (lookup
//! tables the load keeps compressed counted at the rows their lookups hold, [`LookupTables`])
//! plus room for the rest of the process fit, the
//! load runs exactly as without a budget; when they do not, a load without a budget would
//! be killed (decoded weights are anonymous memory, which without swap cannot be evicted),
//! so it gets a budget that fits, the compressed bytes of streamed tensors kept mapped (`ram`:
//! measured under caps on SmolLM2, 8.4 t/s against 7.2 for `file` at 85% of plain mmap's
//! peak, plain mmap 8.0). When that budget cannot fit either (its plan's least need is over
//! the headroom: weights compression barely shrinks), or when it fits but would decode more
//! on every pass than the disk would give back ([`spill_instead`]), the load takes no budget
//! and moves part of the decoded weights ([`spill_quota`]) to a file on a disk
//! ([`super::spill`]), so that the limit reclaims those as it does plain llama.cpp's mapped
//! file.
//! The choice and its reason go to the log.

use std::path::{Path, PathBuf};

use super::mib;
use super::runtime::BudgetCost;
use super::spec::{Budget, CompressedHome, Settings};

/// Where the limit came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LimitSource {
    /// `memory.max` of this cgroup (v2 path under /sys/fs/cgroup).
    CgroupV2(PathBuf),
    /// `memory.limit_in_bytes` of this cgroup (v1 memory hierarchy).
    CgroupV1(PathBuf),
    /// No cgroup limit below the machine's memory: `MemAvailable` of /proc/meminfo.
    MemAvailable,
}

impl LimitSource {
    /// Whether the limit is a memory cgroup's (whose reclaim takes clean file pages, page
    /// cache included, once the limit is reached).
    pub fn is_cgroup(&self) -> bool {
        matches!(self, LimitSource::CgroupV1(_) | LimitSource::CgroupV2(_))
    }

    /// What the log calls it.
    pub fn name(&self) -> String {
        match self {
            LimitSource::CgroupV2(p) => format!("cgroup v2 {}", p.display()),
            LimitSource::CgroupV1(p) => format!("cgroup v1 {}", p.display()),
            LimitSource::MemAvailable => "MemAvailable".to_string(),
        }
    }
}

/// How much more memory this process may take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Headroom {
    pub bytes: u64,
    pub source: LimitSource,
}

/// Above this a cgroup v1 limit means "no limit" (the kernel's default is 2^63 rounded down
/// to the page size).
const V1_UNLIMITED: u64 = 1 << 62;

/// The headroom of this process now.
pub fn headroom() -> Option<Headroom> {
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    headroom_from(
        &read(Path::new("/proc/self/cgroup")).unwrap_or_default(),
        &read(Path::new("/proc/meminfo")).unwrap_or_default(),
        Path::new("/sys/fs/cgroup"),
        read,
    )
}

/// The memory cgroup whose limit is the tightest on this process ([`headroom`]), if one is:
/// `None` where `MemAvailable` is tighter, or nothing can be read.
pub fn binding_cgroup() -> Option<LimitSource> {
    headroom().map(|h| h.source).filter(LimitSource::is_cgroup)
}

/// [`headroom`] over the given file contents and reader (tested with a fake tree).
fn headroom_from(
    proc_cgroup: &str,
    meminfo: &str,
    root: &Path,
    read: impl Fn(&Path) -> Option<String>,
) -> Option<Headroom> {
    let number = |p: &Path| -> Option<u64> { read(p)?.trim().parse().ok() };
    let mut best: Option<Headroom> = mem_available(meminfo).map(|bytes| Headroom {
        bytes,
        source: LimitSource::MemAvailable,
    });
    let mut consider = |h: Headroom| {
        if best.as_ref().is_none_or(|b| h.bytes < b.bytes) {
            best = Some(h);
        }
    };
    for line in proc_cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        if controllers.is_empty() {
            // cgroup v2: the unified hierarchy.
            for dir in ancestors(&root.join(rel), root) {
                let max = read(&dir.join("memory.max"));
                let Some(limit) = max
                    .as_deref()
                    .map(str::trim)
                    .and_then(|m| m.parse::<u64>().ok())
                else {
                    continue; // "max", or no memory controller here
                };
                let used = number(&dir.join("memory.current")).unwrap_or(0);
                let stat = read(&dir.join("memory.stat")).unwrap_or_default();
                let reclaimable =
                    stat_value(&stat, "file").saturating_sub(stat_value(&stat, "file_mapped"));
                consider(Headroom {
                    bytes: limit.saturating_sub(used.saturating_sub(reclaimable)),
                    source: LimitSource::CgroupV2(dir),
                });
            }
        } else if controllers.split(',').any(|c| c == "memory") {
            let base = root.join("memory");
            for dir in ancestors(&base.join(rel), &base) {
                let Some(limit) = number(&dir.join("memory.limit_in_bytes")) else {
                    continue;
                };
                if limit >= V1_UNLIMITED {
                    continue;
                }
                let used = number(&dir.join("memory.usage_in_bytes")).unwrap_or(0);
                let stat = read(&dir.join("memory.stat")).unwrap_or_default();
                let reclaimable = (stat_value(&stat, "total_inactive_file")
                    + stat_value(&stat, "total_active_file"))
                .saturating_sub(stat_value(&stat, "total_mapped_file"));
                consider(Headroom {
                    bytes: limit.saturating_sub(used.saturating_sub(reclaimable)),
                    source: LimitSource::CgroupV1(dir),
                });
            }
        }
    }
    best
}

/// A `key value` line of a cgroup's memory.stat (0 when absent).
fn stat_value(stat: &str, key: &str) -> u64 {
    stat.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0)
}

/// `dir` and its parents up to and including `root`.
fn ancestors(dir: &Path, root: &Path) -> Vec<PathBuf> {
    dir.ancestors()
        .take_while(|d| d.starts_with(root))
        .map(Path::to_path_buf)
        .collect()
}

fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The lookup tables (untied token embeddings) a load without a budget keeps compressed
/// ([`super::refit`]): the load skips them, and each lookup decodes the chunks of the rows it
/// reads. Their compressed bytes are the DC file's pages, which the limit reclaims like any
/// clean file page (plain llama.cpp's mapped table is the same), so what they add to the
/// process is the rows a lookup holds decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LookupTables {
    /// Their decoded bytes, out of the decoded weights.
    pub decoded: u64,
    /// What their lookups hold decoded at most ([`super::plan::lookups_plan`]'s reserve).
    pub held: u64,
}

/// What a load without an asked-for budget does.
#[derive(Clone, Debug, PartialEq)]
pub enum DefaultChoice {
    /// Everything fits: no budget (today's load); `lookups`, the tables the load keeps
    /// compressed, counted at what their lookups hold.
    NoBudget {
        need: u64,
        headroom: Headroom,
        lookups: Option<LookupTables>,
    },
    /// It would not fit: this budget, compressed bytes kept mapped.
    Budget {
        settings: Settings,
        need: u64,
        headroom: Headroom,
    },
}

/// Room for what computing allocates besides the buffers a check sees (the CPU backend's
/// work buffer, small allocations): 1/64 of the decoded weights, at least 4 MiB. What the
/// process holds already (the program, the vocabulary) is out of the headroom.
pub fn other_memory(decoded_weights: u64) -> u64 {
    (decoded_weights / 64).max(4 << 20)
}

/// Room kept at load for the context created after it: its KV cache and the compute
/// buffers llama.cpp reserves when it creates the context. The batch-time check
/// ([`super::refit`]) counts only part of them, once (what the context has not written, up
/// to the size of the buffer it checks), so the load keeps room for them: [`other_memory`],
/// and at least [`MIN_CONTEXT_ROOM`].
pub fn context_room(decoded_weights: u64) -> u64 {
    other_memory(decoded_weights).max(MIN_CONTEXT_ROOM)
}

/// The least room kept for the context: 8 MiB. On SmolLM2 (92.1 MiB of weights,
/// llama-completion `-c 256`, 32 tokens, 2026-11-29 20:50 UTC, four runs per cap) a load
/// forced to no budget was killed under a 125 MiB cap (96 MiB free at load), thrashed under
/// 127 (0.3-1.7 s for 31 tokens) and ran at full speed from 129 (100 MiB free: 0.26-0.37 s);
/// the smallest budget (all the default can offer at this model's ratio: it streams half
/// the weights to save 0.8 MiB, and keeps their compressed bytes as evictable file pages)
/// took 3.2-3.9 s everywhere from 133 down to 128 and survived to 110. With 16 MiB (the
/// earlier value) the default took that budget under 128-133 MiB caps, 12x slower than no
/// budget. With 10 MiB (sessions 19-20) it switched at about 131 MiB, to moving the weights
/// to a file by then ([`spill_instead`]); once the preload library gave back its code and
/// heap (session 21, 2026-11-30 20:12 UTC, two runs each, generation t/s), no budget ran
/// at 104 and 93 under 131 MiB, 115 and 96 under 130, 64 and 89 under 129, where the moved
/// weights ran at 75 and 44, 34 and 46, 78 and 52 (plain mmap 85 and 95, 74 and 64, 35 and
/// 50). 8 MiB switches at about 129 MiB, four above the first kill. (With 4 MiB, session 10
/// saw a kill under 126.) Past 512 MiB of weights [`other_memory`] is larger and decides.
const MIN_CONTEXT_ROOM: u64 = 8 << 20;

/// The default for a model of `decoded_weights` bytes under `headroom`; `lookups`: the
/// lookup tables a load without a budget would keep compressed, when it can.
///
/// Counting such a table decoded made the default refuse loads that fit: Qwen2.5-Coder-1.5B
/// Q4_K_M, whose 125 MiB Q4_K token embedding the load never decodes, needed "1076 MiB" and
/// moved its weights to a file under a 1050 MiB cap (unrepacked there: 85-88% of its uncapped
/// generation speed), where the load without a budget peaks at 1042 MiB uncapped. Counted at
/// its rows, it needs 955 MiB and loads without a budget there (llama-completion, 32 tokens,
/// 2026-12-01 01:58 UTC: 54.3 t/s prompt, 19.5 generation, peak 1040.1 MiB; plain mmap 33.1
/// and 1.4).
pub fn choose(
    decoded_weights: u64,
    lookups: Option<LookupTables>,
    headroom: Headroom,
) -> DefaultChoice {
    let other = context_room(decoded_weights);
    let weights = lookups.map_or(decoded_weights, |l| {
        decoded_weights
            .saturating_sub(l.decoded)
            .saturating_add(l.held.min(l.decoded))
    });
    let need = weights.saturating_add(other);
    if need <= headroom.bytes {
        return DefaultChoice::NoBudget {
            need,
            headroom,
            lookups,
        };
    }
    // A budget streams more than the tables; its need is the whole decoded model's.
    let need = decoded_weights.saturating_add(other);
    // What is left for weights once the rest has its room; never nothing (the plan keeps
    // at least the working set of one streamed layer and says so).
    let budget = headroom.bytes.saturating_sub(other).max(1);
    DefaultChoice::Budget {
        settings: Settings {
            budget: Budget::Bytes(budget),
            home: CompressedHome::Ram,
            prefetch: None,
        },
        need,
        headroom,
    }
}

impl DefaultChoice {
    /// The log line that says what was chosen and why.
    pub fn describe(&self) -> String {
        let source = source_name;
        match self {
            DefaultChoice::NoBudget {
                need,
                headroom,
                lookups,
            } => format!(
                "dcgguf: memory: {:.0} MiB free under the limit ({}); the decoded model needs \
                 about {:.0} MiB{}: loading without a budget",
                mib(headroom.bytes),
                source(headroom),
                mib(*need),
                match lookups {
                    Some(l) => format!(
                        " (its lookup tables kept compressed: {:.0} MiB decoded, {:.0} MiB of \
                         rows held at most)",
                        mib(l.decoded),
                        mib(l.held.min(l.decoded))
                    ),
                    None => String::new(),
                }
            ),
            DefaultChoice::Budget {
                settings,
                need,
                headroom,
            } => format!(
                "dcgguf: memory: {:.0} MiB free under the limit ({}); the decoded model needs \
                 about {:.0} MiB, which would not fit: budget {:.0} MiB for weights, streamed \
                 tensors decoded before each use (set DCGGUF_MEM_BUDGET to choose yourself)",
                mib(headroom.bytes),
                source(headroom),
                mib(*need),
                mib(settings.budget.bytes(0))
            ),
        }
    }
}

/// Whether the budget `choose` picked can hold the model: the weight memory its plan needs
/// at least (`least_need`: resident, held compressed and the working set), with
/// [`context_room`] beside it, within the headroom. When not, the budget would run over the
/// limit like a load without one, and slower. SmolLM2 Q4_1 (compression saves 10% of its
/// weights): under a 127 MiB cap its least budget needs 91 MiB, the headroom is 98 MiB.
pub fn budget_fits(least_need: u64, decoded_weights: u64, headroom: &Headroom) -> bool {
    least_need.saturating_add(context_room(decoded_weights)) <= headroom.bytes
}

/// Bytes read back from the disk on each pass over the weights (a token, a batch), per byte
/// the limit lacks, when the weights are file pages the limit reclaims (plain llama.cpp's
/// mapped model, or decoded weights moved to a file): reclaim takes pages the pass is about
/// to use again, so a pass reads back more than the shortfall. Measured on this project's
/// dev VM (`/proc/vmstat` pgpgin over 32-token llama-completion runs, the load's reads
/// taken off, 2026-11-30): SmolLM2 Q4_1 moved to a file under a 127 MiB cap, about 3 MiB
/// short, read back about 10 MiB a pass; Qwen2.5-Coder-1.5B Q4_K_M under 875 MiB, 255 MiB
/// short, about 930 MiB a pass (3.6x).
pub const REREAD_PER_BYTE_SHORT: f64 = 3.5;

/// What the limit lacks for `decoded_weights` bytes with their [`context_room`]: their need
/// less the headroom, or nothing.
fn shortfall(decoded_weights: u64, headroom: &Headroom) -> u64 {
    decoded_weights
        .saturating_add(context_room(decoded_weights))
        .saturating_sub(headroom.bytes)
}

/// Why the default, with too little memory for the decoded weights, takes no budget and
/// moves them to a file instead ([`super::spill`]), where the limit reclaims them as it does
/// plain llama.cpp's mapped file.
#[derive(Clone, Debug, PartialEq)]
pub enum SpillReason {
    /// The smallest budget needs more than the headroom too ([`budget_fits`]).
    NoBudgetFits { least_need: u64 },
    /// The budget fits, but decoding its streamed tensors on every pass costs more than
    /// reading back, from the disk, what the limit lacks ([`REREAD_PER_BYTE_SHORT`] per
    /// byte). SmolLM2 Q4_1 under a 130 MiB cap: a budget decoding 41.7 MiB a token ran at
    /// 5.6-5.9 t/s, for a limit about 0.1 MiB short.
    BudgetSlower {
        cost: BudgetCost,
        shortfall: u64,
        /// Bytes the file would read back a pass: the shortfall times the factor.
        reread_bytes: f64,
        /// Seconds a pass, the budget's decode against the file's reads, where this machine's
        /// profile measured both speeds (then these decided, else the bytes did).
        seconds: Option<(f64, f64)>,
    },
}

impl SpillReason {
    /// What is wrong with the budget, in a few words.
    pub fn against_the_budget(&self) -> &'static str {
        match self {
            SpillReason::NoBudgetFits { .. } => "the budget below would not fit either",
            SpillReason::BudgetSlower { .. } => {
                "the budget below would decode more on every pass than the disk would read back"
            }
        }
    }
}

/// Whether a default load of `decoded_weights` bytes under `headroom` should move them to a
/// file rather than take the budget whose cost is `cost`, and why. Each pass costs the
/// budget its decode ([`BudgetCost::decode_seconds_per_pass`]) and the file its reads back
/// (the shortfall times [`REREAD_PER_BYTE_SHORT`] at `storage_bps`); without measured
/// speeds (no profile: `dcgguf probe` makes one) a byte decoded counts as much as a byte
/// read back.
pub fn spill_instead(
    decoded_weights: u64,
    cost: &BudgetCost,
    headroom: &Headroom,
    storage_bps: Option<f64>,
) -> Option<SpillReason> {
    if !budget_fits(cost.least_need, decoded_weights, headroom) {
        return Some(SpillReason::NoBudgetFits {
            least_need: cost.least_need,
        });
    }
    let shortfall = shortfall(decoded_weights, headroom);
    let reread_bytes = REREAD_PER_BYTE_SHORT * shortfall as f64;
    let seconds = match (cost.decode_seconds_per_pass, storage_bps) {
        (Some(decode), Some(bps)) if bps > 0.0 => Some((decode, reread_bytes / bps)),
        _ => None,
    };
    let file_is_cheaper = match seconds {
        Some((decode, reread)) => reread < decode,
        None => reread_bytes < cost.decoded_per_pass as f64,
    };
    file_is_cheaper.then(|| SpillReason::BudgetSlower {
        cost: cost.clone(),
        shortfall,
        reread_bytes,
        seconds,
    })
}

/// Bytes of the decoded weights a load that moves them to a file ([`super::spill`]) moves:
/// twice what the limit lacks for all of them with their [`context_room`], and
/// [`SPILL_SLACK`] more; at most all of them. The rest stay anonymous memory: no more than a
/// load without a budget would hold with the same room under a limit that much larger.
///
/// The limit reclaims only the moved pages, and a pass over the weights reads back at most
/// those: moving all of them let the kernel evict weight pages on every pass where part of
/// them fits. SmolLM2 Q4_1 (92.1 MiB decoded) under llama-completion, 32 tokens, two runs
/// each, generation t/s (2026-12-01 10:10-10:20 UTC, AMD EPYC VM, 2 vCPUs, cgroup v1): under
/// 129.9 MiB (1 MiB short) 106-123 moving 4-16 MiB against 36-37 moving all; 128 (3 short)
/// 101-132 moving 4-8, 63-76 moving 16, 76-119 all; 127 (4 short) 47-134 moving 4-8, 31-47
/// all; 126 (5 short) 84-109 moving 16, 57-61 all; 120 (11 short) 26-36 moving 20-32, 11-13
/// all; 112 (19 short) 12-14 moving 42 and all, 8-11 moving 20-32 (less than twice the
/// shortfall leaves the program's own pages to be evicted). Plain llama.cpp (mmap) in the
/// same conditions: see README's memcap tables.
///
/// A lookup table of `lookup_table` bytes (the token embedding of a model with its own
/// output head, [`crate::gguf::GgufHeader::lookup_table`]) moves first and counts once: a
/// token reads one row of it, so the limit reclaims its pages and the disk gives back a page
/// or so a token, where the other weights' moved pages are read back by every pass.
/// Qwen2.5-Coder-1.5B Q4_K_M (1060 MiB decoded, its 125 MiB token embedding loaded after
/// 862 MiB of layers) under llama-completion and a 962.5 MiB cap, generation t/s
/// (2026-12-01 21:36 UTC, same machine): 3.0 moving 353 MiB of the layers first, 4.4-5.3
/// moving the embedding and 228 MiB of layers (plain mmap 1.3).
///
/// Where less than a quarter of the weights would stay in memory, all of them move: SmolLM2
/// under llama-perplexity and a 93.8 MiB cap (38 MiB short, 79 of 92.1 MiB to move) took
/// 14.1-24.1 s in four runs and past 150 s in two of three more, moving all 14.3-14.4 s in
/// three (plain mmap 25-27 s; 2026-12-01 22:31-23:08 UTC); under 103.2 MiB (60 of 92 to
/// move) 10.3 / 11.9 s against 10.5 / 11.1 moving all, and Qwen under 800 MiB (552 of 1060)
/// generated 1.97 t/s against 1.66 moving all.
pub fn spill_quota(decoded_weights: u64, lookup_table: u64, headroom: &Headroom) -> u64 {
    let quota = to_move_for(shortfall(decoded_weights, headroom), lookup_table);
    all_where_little_stays(quota, decoded_weights, decoded_weights)
}

/// `quota` bytes of `decoded` weights to move, or `all` (at most, what moving every one
/// takes) where that leaves less than a quarter of them in memory ([`spill_quota`] says why).
fn all_where_little_stays(quota: u64, decoded: u64, all: u64) -> u64 {
    if quota >= decoded - decoded / 4 {
        all
    } else {
        quota.min(all)
    }
}

/// Bytes to move to a file for `short` bytes the limit lacks, where `lookup_table` bytes of
/// a lookup table not moved yet move first: twice the shortfall, the table's part of it
/// once ([`spill_quota`] says why), and [`SPILL_SLACK`]. The load's rule and a batch's
/// (`super::refit`) alike. Where a later check lacks much, less room for the moved pages
/// traded prompt for generation: Qwen2.5-Coder-1.5B `-c 4096` under 1000 MiB, its KV
/// cache's check 103 MiB short, moving that and at most 32 MiB more (139 MiB, not 210)
/// generated 3.30-3.65 t/s (median 3.55) against 2.77-3.06 (2.87), prompt 33.8-45.3 (38.8)
/// against 43.3-47.1 (45.6), five runs each interleaved (session 66); not taken. The same
/// room at the load (47.7 MiB moved, not 151) was killed.
pub fn to_move_for(short: u64, lookup_table: u64) -> u64 {
    short
        .saturating_mul(2)
        .saturating_sub(lookup_table.min(short))
        .saturating_add(SPILL_SLACK)
}

/// Of the `resident` bytes of moved weights still in memory, what a later buffer may take
/// from them (the limit reclaims them first): those beyond half of the `read_per_pass`
/// moved bytes that every pass over the weights reads back (the lookup table's moved part
/// not counted: a token reads a row of it). A load moves twice what it lacks
/// ([`to_move_for`]), which leaves the moved pages room for about half of them; a context or
/// a batch that took that room too left every page of them to be read back at every pass,
/// and with them the program's own. SmolLM2 Q4_1 under llama-completion `-c 1024` and a
/// 116 MiB cap (session 65, AMD EPYC VM, 2 vCPUs, cgroup v1, nine runs each, prompt / gen
/// t/s): its 22 MiB KV cache counted the 22 MiB of moved pages in memory as room, left them
/// none, and the prompt read 170-189 MiB from the disk for 35.8 MiB moved (plain mmap
/// 112-156 for its 93.8): 114-171 / 6.9-13.7, against plain mmap's 158-197 / 5.8-8.1;
/// keeping their half, it moved 31.1 MiB more: 172-201 / 9.9-13.6. Where the moved layers far
/// outgrow their room either way, the share costs reads: Qwen2.5-Coder-1.5B `-c 4096` under
/// 1000 MiB (112 MiB KV cache; nine runs each) moved 362.7 MiB where it moved 337.4 and
/// generated 2.97-3.65 t/s (median 3.22) against 3.07-3.72 (3.45); plain mmap 1.22.
/// One room shared by the pages moved before and those the check moves (spare enough that
/// what the move frees beyond the buffer's need, with the moved pages left in memory, is
/// half of those moved before: Qwen's move there would be session 64's, 2 x 90 MiB) cost
/// SmolLM2 its prompt: it moved 18.4 MiB where this moves 33.0, prompt 126-199 t/s
/// (median 161) against 168-199 (186), plain mmap 76-208 (183); generation alike (nine
/// runs each, session 66).
pub fn spare_of_moved(resident: u64, read_per_pass: u64) -> u64 {
    resident.saturating_sub(read_per_pass / 2)
}

/// Of `room` bytes that the moved weights' pages have in memory (measured after a batch:
/// those in memory, less a margin; `super::refit::after_compute`), how many the kernel is
/// asked to keep there ([`super::spill::Spiller::keep_in_memory`]): all but two of the
/// disk's `read_ahead` windows, which the rest, read in order every pass, take (the one
/// read and the next). Without it every moved page went first in, first out, and a pass
/// read back all of them wherever the room held fewer. SmolLM2 Q4_1 under llama-completion
/// `-c 1024` and a 116 MiB cap (8 MiB read-ahead; 68 MiB moved, 23 kept; session 67, AMD
/// EPYC VM, 2 vCPUs, cgroup v1, three runs each): the prompt and 32 tokens read 1674-1988
/// MiB from the disk in 2.6-3.1 s, against 1998-2451 MiB in 3.1-4.0 s. Generation t/s,
/// medians of six runs each interleaved against every moved page read in order: 13.3
/// against 12.8 under 119 MiB, 12.0 against 11.2 under 116, 10.1 against 9.8 under 110
/// (prompt 195 / 185, 192 / 186, 174 / 184), `-c 256` under 103 MiB 14.5 against 14.0;
/// Qwen2.5-Coder-1.5B Q4_K_M `-c 4096` under 1000 MiB (362 MiB moved, 88.5 kept; five
/// runs each) 3.40 against 3.02 (prompt 44.2 / 45.5). Kept from the room a check computes
/// instead (before the context's compute buffer is written, which it does not count), it
/// kept 27 of 81 MiB under 110 MiB where the batches then left the moved pages 38-49 and
/// generated 9.1 against 11.4 (medians of five). (Those runs kept it all at the first
/// measure; it now grows to at most twice a measure, `super::refit`'s precaution.)
pub fn moved_kept_in_memory(room: u64, read_ahead: u64) -> u64 {
    room.saturating_sub(read_ahead.saturating_mul(2))
}

/// What [`spill_quota`] moves beyond twice the shortfall: 4 MiB.
pub const SPILL_SLACK: u64 = 4 << 20;

/// Bytes of a budgeted model's weights that move to a file as it stops streaming
/// (`super::refit`): what the limit lacks for the `to_decode` bytes about to be
/// decoded and `also` (room for computing, [`other_memory`] of the `decoded` weights, and
/// the buffers of a batch about to run where one asked: a stop without them under
/// llama-perplexity and a 112.6 MiB cap moved 55.8 MiB where the batch needed 53 more, and
/// took 14.5 s against 9.2-10.9 moving every weight), moved
/// by the load's rule ([`to_move_for`]: twice the shortfall, a lookup table's part of
/// it once, and [`SPILL_SLACK`]); `most` (every weight) where the headroom cannot be
/// read, or where that leaves less than a quarter of the weights in memory
/// ([`spill_quota`] says why); nothing where it fits. Qwen2.5-Coder-1.5B under
/// llama-completion (48 tokens, `-c 512`) and a 1050 MiB cap, where its budgets thrash
/// (session 62, one run each): `40%,file` 8.6 t/s moving 124 MiB, against 4.6 moving every
/// weight; `50%,ram` 9.5 against 4.5 (plain mmap 1.0, the default 18.6). SmolLM2 `50%,file`
/// under 141 MiB moves nothing (49 MiB free once streaming let go), under 113 MiB 44 MiB.
pub fn stop_quota(
    decoded: u64,
    to_decode: u64,
    also: u64,
    lookup_unmoved: u64,
    headroom: Option<&Headroom>,
    most: u64,
) -> u64 {
    let Some(h) = headroom else {
        return most;
    };
    let short = to_decode.saturating_add(also).saturating_sub(h.bytes);
    if short == 0 {
        return 0;
    }
    all_where_little_stays(to_move_for(short, lookup_unmoved), decoded, most)
}

/// The log line for a load that moves `moved` bytes of its decoded weights to a file in
/// `dir` instead of taking a budget, for `reason`.
pub fn describe_spill(
    decoded_weights: u64,
    lookup_table: u64,
    moved: u64,
    reason: &SpillReason,
    headroom: &Headroom,
    dir: &Path,
) -> String {
    let room = context_room(decoded_weights);
    let head = format!(
        "dcgguf: memory: {:.0} MiB free under the limit ({}); the decoded model needs about \
         {:.0} MiB",
        mib(headroom.bytes),
        source_name(headroom),
        mib(decoded_weights.saturating_add(room)),
    );
    let why = match reason {
        SpillReason::NoBudgetFits { least_need } => format!(
            " and the smallest budget {:.0} MiB: neither fits",
            mib(least_need.saturating_add(room))
        ),
        SpillReason::BudgetSlower {
            cost,
            shortfall,
            reread_bytes,
            seconds,
        } => {
            let timed = match seconds {
                Some((decode, reread)) => format!(
                    " (this machine's profile: {:.1} ms against {:.1} ms)",
                    decode * 1e3,
                    reread * 1e3
                ),
                None => String::new(),
            };
            format!(
                ". A budget would fit but decode {:.1} MiB on every pass over the weights; \
                 without one the limit lacks {:.1} MiB, about {:.1} MiB read back from the \
                 disk a pass{timed}",
                mib(cost.decoded_per_pass),
                mib(*shortfall),
                reread_bytes / (1u64 << 20) as f64,
            )
        }
    };
    let what = if moved >= decoded_weights {
        "the decoded weights".to_string()
    } else if lookup_table > 0 {
        format!(
            "{:.1} MiB of the decoded weights (the token embedding first: a token reads a row \
             of it, so it counts once against what the limit lacks, the rest twice; and {:.0} \
             MiB; the rest stay in memory)",
            mib(moved),
            mib(SPILL_SLACK)
        )
    } else {
        format!(
            "{:.1} MiB of the decoded weights (twice what the limit lacks, and {:.0} MiB; the \
             rest stay in memory)",
            mib(moved),
            mib(SPILL_SLACK)
        )
    };
    format!(
        "{head}{why}. Loading without a budget, {what} moved to an unnamed file in {} as they \
         load, so that the limit can reclaim their pages and the disk gives them back, as \
         with plain llama.cpp's mapped file (set DCGGUF_MEM_BUDGET to choose yourself)",
        dir.display(),
    )
}

/// What a model loaded without a budget by the default does when a batch needs a new
/// buffer ([`super::refit`]): the load decided before any context existed, with
/// [`context_room`] as its guess of the context's needs.
#[derive(Clone, Debug, PartialEq)]
pub enum ContextChoice {
    /// The buffer fits next to the decoded weights.
    Fits { need: u64, headroom: Headroom },
    /// It would not: the model moves weights to a file, or, where it cannot, switches to
    /// this budget ([`super::refit`]).
    Short {
        budget: Settings,
        need: u64,
        headroom: Headroom,
    },
}

/// The CPU backend's work buffer for a batch of `batch_tokens` tokens through weights whose
/// widest row holds `widest_row` values: ggml converts a matrix product's F32 input to the
/// weights' dot type (BF16 and F16: 2 bytes a value, the 8-bit block types about 1.1)
/// in a buffer the CPU backend allocates with `new[]`, outside the buffers a check sees.
/// MiniLM BF16's batch of 2046 tokens through its 1536-wide FFN rows takes 6 MiB there:
/// under a cap where the check left its 30 MiB compute buffer 35 MiB with 4 MiB for
/// computing, the run was killed; 37 MiB ran (session 25, two runs per cap).
pub fn work_buffer(batch_tokens: u64, widest_row: u64) -> u64 {
    batch_tokens.saturating_mul(widest_row).saturating_mul(2)
}

/// The choice for a model of `decoded_weights` bytes, loaded without a budget (so counted
/// out of `headroom`), when `buffer` bytes are about to be allocated for a batch: they,
/// plus `work` (the batch's [`work_buffer`], 0 where the batch is unknown, and what the
/// context reserved that the batch may write) and
/// [`other_memory`] for what computing allocates besides, must fit in `headroom`. If not,
/// short, with the smallest budget for a model whose weights cannot move to a file: every
/// weight the plan can stream is decoded before each use (the budget cannot shrink later,
/// and the batch may still grow other buffers).
pub fn choose_at_context(
    decoded_weights: u64,
    buffer: u64,
    work: u64,
    headroom: Headroom,
) -> ContextChoice {
    let need = buffer
        .saturating_add(work)
        .saturating_add(other_memory(decoded_weights));
    if need <= headroom.bytes {
        return ContextChoice::Fits { need, headroom };
    }
    ContextChoice::Short {
        budget: Settings {
            budget: Budget::Bytes(1),
            home: CompressedHome::Ram,
            prefetch: None,
        },
        need,
        headroom,
    }
}

impl ContextChoice {
    /// The log line that says what was chosen and why, for a model of `decoded_weights`
    /// bytes and a buffer of `buffer` bytes that `who` needs ("a batch").
    pub fn describe(&self, who: &str, decoded_weights: u64, buffer: u64) -> String {
        let head = self.situation(who, decoded_weights, buffer);
        match self {
            ContextChoice::Fits { .. } => format!("{head}: it fits, no budget"),
            ContextChoice::Short { .. } => format!("{head}, which would not fit"),
        }
    }

    /// The log line for a model short here whose weights cannot move to a file (`why`).
    pub fn describe_budget_instead(
        &self,
        who: &str,
        decoded_weights: u64,
        buffer: u64,
        why: &dyn std::fmt::Display,
    ) -> String {
        let head = self.situation(who, decoded_weights, buffer);
        format!(
            "{head}, which would not fit, and the weights cannot move to a file ({why}): \
             switching to the smallest budget, streamed tensors decoded before each use (set \
             DCGGUF_MEM_BUDGET to choose yourself)"
        )
    }

    /// What `who` needs and what is free: the start of both log lines.
    fn situation(&self, who: &str, decoded_weights: u64, buffer: u64) -> String {
        let (need, headroom) = match self {
            ContextChoice::Fits { need, headroom }
            | ContextChoice::Short { need, headroom, .. } => (*need, headroom),
        };
        // What is free already leaves out the weights in memory (decoded, or a lookup
        // table's compressed chunks and rows): the model's size is said only as what the
        // room for computing was scaled by ([`other_memory`]).
        format!(
            "dcgguf: memory: {who} needs a {:.0} MiB buffer, {:.0} MiB with room for \
             computing (for a model of {:.0} MiB of decoded weights); {:.0} MiB free under \
             the limit ({})",
            mib(buffer),
            mib(need),
            mib(decoded_weights),
            mib(headroom.bytes),
            source_name(headroom),
        )
    }
}

pub fn source_name(h: &Headroom) -> String {
    h.source.name()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_that_stops_streaming_moves_what_the_limit_lacks_twice() {
        const MIB: u64 = 1 << 20;
        let h = |bytes: u64| Headroom {
            bytes,
            source: LimitSource::MemAvailable,
        };
        // SmolLM2: 92 MiB decoded, 39 MiB to decode, room for computing 4 MiB.
        let (decoded, most) = (92 * MIB, 80 * MIB);
        assert_eq!(
            stop_quota(decoded, 39 * MIB, 4 * MIB, 0, None, most),
            most,
            "no headroom known"
        );
        assert_eq!(
            stop_quota(decoded, 39 * MIB, 4 * MIB, 0, Some(&h(49 * MIB)), most),
            0,
            "it fits"
        );
        // A batch's buffers count too.
        assert_eq!(
            stop_quota(decoded, 39 * MIB, 53 * MIB, 0, Some(&h(70 * MIB)), most),
            48 * MIB
        );
        // 20 MiB short: twice that and the slack; a lookup table's part once.
        assert_eq!(
            stop_quota(decoded, 39 * MIB, 4 * MIB, 0, Some(&h(23 * MIB)), most),
            44 * MIB
        );
        assert_eq!(
            stop_quota(
                decoded,
                39 * MIB,
                4 * MIB,
                8 * MIB,
                Some(&h(23 * MIB)),
                most
            ),
            36 * MIB
        );
        // Less than a quarter would stay: all of it.
        assert_eq!(
            stop_quota(decoded, 80 * MIB, 4 * MIB, 0, Some(&h(44 * MIB)), most),
            most
        );
    }
    use std::collections::HashMap;

    const MEMINFO: &str = "MemTotal:       24000000 kB\nMemAvailable:   20000000 kB\n";

    fn fake(files: &[(&str, &str)]) -> impl Fn(&Path) -> Option<String> {
        let map: HashMap<PathBuf, String> = files
            .iter()
            .map(|(p, c)| (PathBuf::from(p), c.to_string()))
            .collect();
        move |p: &Path| map.get(p).cloned()
    }

    #[test]
    fn a_budget_fits_when_its_least_need_and_the_context_do() {
        let h = |mib: u64| Headroom {
            bytes: mib << 20,
            source: LimitSource::MemAvailable,
        };
        // SmolLM2 Q4_1 under a 127 MiB cap: least need 91.2 MiB, 98 MiB free.
        let (least, decoded) = ((912 << 20) / 10, (921 << 20) / 10);
        assert!(!budget_fits(least, decoded, &h(98)));
        assert!(budget_fits(least, decoded, &h(102)));
        // Past 512 MiB of weights the context room is 1/64 of them.
        assert!(!budget_fits(900 << 20, 1024 << 20, &h(915)));
        assert!(budget_fits(900 << 20, 1024 << 20, &h(916)));
        let cost = BudgetCost {
            least_need: least,
            decoded_per_pass: 40 << 20,
            decode_seconds_per_pass: None,
        };
        let reason = spill_instead(decoded, &cost, &h(98), None).expect("no budget fits");
        assert_eq!(reason, SpillReason::NoBudgetFits { least_need: least });
        let quota = spill_quota(decoded, 0, &h(98));
        let line = describe_spill(decoded, 0, quota, &reason, &h(98), Path::new("/models"));
        assert!(
            line.contains("98 MiB free")
                && line.contains("neither fits")
                && line.contains("/models")
                && line.contains("8.2 MiB of the decoded weights"),
            "{line}"
        );
    }

    #[test]
    fn a_spill_moves_twice_the_shortfall_and_the_slack_at_most_all() {
        let h = |mib: u64| Headroom {
            bytes: mib << 20,
            source: LimitSource::MemAvailable,
        };
        // SmolLM2 Q4_1: 92.1 MiB decoded and 8 MiB of context room.
        let decoded = (921 << 20) / 10;
        let short = |free: u64| decoded + (8 << 20) - (free << 20);
        // Under 129.9 MiB (99 free) 1.1 MiB short: 6.2 MiB move.
        assert_eq!(spill_quota(decoded, 0, &h(99)), 2 * short(99) + SPILL_SLACK);
        assert_eq!(spill_quota(decoded, 0, &h(81)), 2 * short(81) + SPILL_SLACK);
        // Nothing short (the budget was slower, not too big): the slack alone.
        assert_eq!(spill_quota(decoded, 0, &h(200)), SPILL_SLACK);
        // Far short: all of it, never more.
        assert_eq!(spill_quota(decoded, 0, &h(40)), decoded);
        // Less than a quarter would stay (SmolLM2 under 93.8 MiB, 63 free: 79 of 92.1 MiB
        // to move): all of it.
        assert_eq!(spill_quota(decoded, 0, &h(63)), decoded);
        assert_eq!(spill_quota(decoded, 0, &h(72)), 2 * short(72) + SPILL_SLACK);
        assert_eq!(spill_quota(1 << 20, 0, &h(0)), 1 << 20);
        // A batch's rule is the load's: what is left of the table counts once.
        let mib = |m: u64| m << 20;
        assert_eq!(to_move_for(mib(14), 0), mib(28) + SPILL_SLACK);
        assert_eq!(to_move_for(mib(14), mib(22)), mib(14) + SPILL_SLACK);
        assert_eq!(to_move_for(mib(14), mib(5)), mib(23) + SPILL_SLACK);
        assert_eq!(to_move_for(0, mib(22)), SPILL_SLACK);
        // A lookup table counts once: its pages, moved first, are read back a row a token.
        // Qwen2.5-Coder-1.5B under 962.5 MiB: 174 MiB short, a 125 MiB token embedding.
        let (qwen, embd) = (1060 << 20, 125 << 20);
        let qshort = |free: u64| qwen + (qwen >> 6) - (free << 20);
        assert_eq!(
            spill_quota(qwen, embd, &h(902)),
            2 * qshort(902) - embd + SPILL_SLACK
        );
        // A table bigger than the shortfall: once the shortfall, all from the table.
        assert_eq!(
            spill_quota(qwen, embd, &h(1000)),
            qshort(1000) + SPILL_SLACK
        );
        let line = describe_spill(
            qwen,
            embd,
            spill_quota(qwen, embd, &h(902)),
            &SpillReason::NoBudgetFits {
                least_need: 1127 << 20,
            },
            &h(902),
            Path::new("/m"),
        );
        assert!(line.contains("the token embedding first"), "{line}");
        let reason = SpillReason::NoBudgetFits {
            least_need: decoded,
        };
        let all = describe_spill(decoded, 0, decoded, &reason, &h(40), Path::new("/m"));
        assert!(all.contains("the decoded weights moved"), "{all}");
    }

    #[test]
    fn a_budget_that_fits_loses_to_the_file_when_it_decodes_more_each_pass_than_the_disk_reads_back()
     {
        let h = |mib: u64| Headroom {
            bytes: mib << 20,
            source: LimitSource::MemAvailable,
        };
        // SmolLM2 Q4_1 under a 128 MiB cap: the budget fits, decodes 41.7 MiB a token, and
        // the limit lacks 0.1 MiB of the 100.1 the decoded model needs with its context.
        let decoded = (921 << 20) / 10;
        let smol = BudgetCost {
            least_need: 87 << 20,
            decoded_per_pass: (417 << 20) / 10,
            decode_seconds_per_pass: None,
        };
        match spill_instead(decoded, &smol, &h(100), None) {
            Some(SpillReason::BudgetSlower { shortfall, .. }) => {
                assert_eq!(shortfall, decoded + (8 << 20) - (100 << 20));
            }
            other => panic!("{other:?}"),
        }
        // A model that compression shrinks by a third, 30 MiB short: reading back 3.5 x 30
        // MiB a pass costs more than decoding the 60 MiB that the budget streams.
        let bf16 = BudgetCost {
            least_need: 70 << 20,
            decoded_per_pass: 60 << 20,
            decode_seconds_per_pass: None,
        };
        assert_eq!(spill_instead(100 << 20, &bf16, &h(78), None), None);
        // Measured speeds decide where there are some: the same budget on a machine that
        // decodes at 0.2 GB/s (0.31 s a pass) from a disk that reads at 2 GB/s (0.055 s).
        let slow_decode = BudgetCost {
            decode_seconds_per_pass: Some((60u64 << 20) as f64 / 0.2e9),
            ..bf16.clone()
        };
        let reason =
            spill_instead(100 << 20, &slow_decode, &h(78), Some(2e9)).expect("the file is cheaper");
        let line = describe_spill(100 << 20, 0, 100 << 20, &reason, &h(78), Path::new("/m"));
        assert!(
            line.contains("decode 60.0 MiB on every pass")
                && line.contains("lacks 30.0 MiB")
                && line.contains("105.0 MiB read back")
                && line.contains("ms against"),
            "{line}"
        );
        assert_eq!(spill_instead(100 << 20, &bf16, &h(78), Some(2e9)), None);
    }

    #[test]
    fn without_a_cgroup_limit_mem_available_counts() {
        let h = headroom_from("0::/\n", MEMINFO, Path::new("/cg"), fake(&[])).unwrap();
        assert_eq!(h.bytes, 20_000_000 * 1024);
        assert_eq!(h.source, LimitSource::MemAvailable);
        let v1 = "4:memory:/a\n";
        let files = [("/cg/memory/a/memory.limit_in_bytes", "9223372036854771712")];
        let h = headroom_from(v1, MEMINFO, Path::new("/cg"), fake(&files)).unwrap();
        assert_eq!(h.source, LimitSource::MemAvailable, "v1's unlimited value");
        assert!(!h.source.is_cgroup());
    }

    #[test]
    fn cgroup_v1_limit_minus_usage_and_the_tightest_ancestor() {
        let v1 = "9:pids:/\n4:memory:/a/b\n";
        let files = [
            ("/cg/memory/a/b/memory.limit_in_bytes", "209715200"),
            ("/cg/memory/a/b/memory.usage_in_bytes", "52428800"),
            (
                "/cg/memory/a/b/memory.stat",
                "cache 1\ntotal_inactive_file 8388608\ntotal_active_file 4194304\ntotal_mapped_file 2097152\n",
            ),
            ("/cg/memory/a/memory.limit_in_bytes", "1073741824"),
            ("/cg/memory/a/memory.usage_in_bytes", "1000000000"),
        ];
        let h = headroom_from(v1, MEMINFO, Path::new("/cg"), fake(&files)).unwrap();
        // a: 1 GiB - 1e9 = 73,741,824 beats a/b's 200 - (50 - 10 reclaimable) MiB.
        assert_eq!(h.bytes, 1_073_741_824 - 1_000_000_000);
        assert_eq!(
            h.source,
            LimitSource::CgroupV1(PathBuf::from("/cg/memory/a"))
        );
        assert!(h.source.is_cgroup());
    }

    #[test]
    fn cgroup_v2_max_and_current() {
        let files = [
            ("/cg/s/t/memory.max", "max\n"),
            ("/cg/s/memory.max", "314572800\n"),
            ("/cg/s/memory.current", "104857600\n"),
            (
                "/cg/s/memory.stat",
                "anon 1\nfile 20971520\nfile_mapped 10485760\n",
            ),
        ];
        let h = headroom_from("0::/s/t\n", MEMINFO, Path::new("/cg"), fake(&files)).unwrap();
        // 300 MiB - (100 MiB used - 10 MiB of file pages nobody maps).
        assert_eq!(h.bytes, 210 << 20);
        assert_eq!(h.source, LimitSource::CgroupV2(PathBuf::from("/cg/s")));
    }

    #[test]
    fn ample_memory_means_no_budget_and_short_memory_a_budget_that_fits() {
        let h = |bytes| Headroom {
            bytes,
            source: LimitSource::MemAvailable,
        };
        let weights = 100 << 20;
        assert!(matches!(
            choose(weights, None, h(1 << 30)),
            DefaultChoice::NoBudget { need, .. } if need == weights + (8 << 20)
        ));
        // 8 MiB kept for the context: 108 MiB fit, 107 do not, and the budget is what is
        // left once the context has its room.
        assert!(matches!(
            choose(weights, None, h(108 << 20)),
            DefaultChoice::NoBudget { .. }
        ));
        match choose(weights, None, h(107 << 20)) {
            DefaultChoice::Budget { settings, .. } => {
                assert_eq!(settings.budget, Budget::Bytes(99 << 20));
                assert_eq!(settings.home, CompressedHome::Ram);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            choose(weights, None, h(107 << 20))
                .describe()
                .contains("would not fit")
        );
        // Past 1 GiB of weights the room grows with them (1/64).
        assert!(matches!(
            choose(2 << 30, None, h((2 << 30) + (32 << 20))),
            DefaultChoice::NoBudget { need, .. } if need == (2 << 30) + (32 << 20)
        ));
        assert!(
            choose(weights, None, h(1 << 30))
                .describe()
                .contains("without a budget")
        );
    }

    #[test]
    fn lookup_tables_kept_compressed_count_at_the_rows_they_hold() {
        let h = |bytes| Headroom {
            bytes,
            source: LimitSource::MemAvailable,
        };
        // Qwen2.5-Coder-1.5B Q4_K_M's shape: 1059 MiB decoded, 125 MiB of it a Q4_K token
        // embedding whose lookups hold at most 4 MiB of rows.
        let (decoded, table, held) = (1059u64 << 20, 125u64 << 20, 4u64 << 20);
        let lookups = Some(LookupTables {
            decoded: table,
            held,
        });
        let room = context_room(decoded);
        let need = decoded - table + held + room;
        match choose(decoded, lookups, h(need)) {
            DefaultChoice::NoBudget {
                need: n,
                lookups: l,
                ..
            } => {
                assert_eq!(n, need);
                assert_eq!(l, lookups);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            choose(decoded, lookups, h(need))
                .describe()
                .contains("lookup tables kept compressed: 125 MiB decoded, 4 MiB of rows")
        );
        // Without them the same headroom takes a budget, and a budget's need is the whole
        // decoded model's.
        match choose(decoded, None, h(need)) {
            DefaultChoice::Budget { need: n, .. } => assert_eq!(n, decoded + room),
            other => panic!("{other:?}"),
        }
        match choose(decoded, lookups, h(need - 1)) {
            DefaultChoice::Budget { need: n, .. } => assert_eq!(n, decoded + room),
            other => panic!("{other:?}"),
        }
        // A reserve larger than the table counts the table.
        let tiny = Some(LookupTables {
            decoded: 1 << 20,
            held: 4 << 20,
        });
        assert!(matches!(
            choose(decoded, tiny, h(decoded + room)),
            DefaultChoice::NoBudget { need: n, .. } if n == decoded + room
        ));
    }

    #[test]
    fn a_batch_buffer_that_does_not_fit_next_to_the_weights_is_short() {
        let h = |bytes| Headroom {
            bytes,
            source: LimitSource::CgroupV1(PathBuf::from("/cg")),
        };
        let weights = 44 << 20;
        // A 241 MiB buffer + 4 MiB for computing fit in 245 MiB.
        assert!(matches!(
            choose_at_context(weights, 241 << 20, 0, h(245 << 20)),
            ContextChoice::Fits { need, .. } if need == 245 << 20
        ));
        // MiniLM's 30 MiB compute buffer for 2046 tokens through 1536-wide rows: the work
        // buffer (6 MiB) counts, so 35 MiB (killed with the old 34 MiB need) is short.
        let work = work_buffer(2046, 1536);
        assert_eq!(work, 2046 * 1536 * 2);
        assert!(matches!(
            choose_at_context(weights, 30 << 20, work, h(35 << 20)),
            ContextChoice::Short { need, .. } if need == (34 << 20) + work
        ));
        let c = choose_at_context(weights, 241 << 20, 0, h(244 << 20));
        match &c {
            ContextChoice::Short { budget, .. } => {
                assert_eq!(budget.budget, Budget::Bytes(1));
                assert_eq!(budget.home, CompressedHome::Ram);
            }
            other => panic!("{other:?}"),
        }
        let short = c.describe("a batch", weights, 241 << 20);
        assert!(
            short.starts_with("dcgguf: memory: a batch needs a 241 MiB buffer"),
            "{short}"
        );
        assert!(short.ends_with("which would not fit"), "{short}");
        let budget = c.describe_budget_instead("a batch", weights, 241 << 20, &"/dev/shm: memory");
        assert!(
            budget.contains(
                "cannot move to a file (/dev/shm: memory): switching to the smallest budget"
            ),
            "{budget}"
        );
    }
}
