//! The second decision, once the batches' memory is known: the default's, and a budget's.
//!
//! With no budget asked for, a DC load decides from the memory limit ([`super::limit`])
//! before any context exists, so it can only guess what the context will take. Where the
//! context dominates, the guess is wrong: MiniLM BF16 under llama-embedding (`-c 512`, 159
//! sentences in batches of up to 2048 tokens) takes 44 MiB of weights, 58 MiB when the
//! context is created, and then, in its first `llama_process`, a 241 MiB output buffer
//! (logits for all 2046 tokens, cleared at once) and a compute buffer grown from 6 to
//! 30 MiB. A load without a budget was OOM-killed under caps that plain llama.cpp (mmap:
//! the kernel may drop its weight pages and re-read them) ran in.
//!
//! So a model loaded without a budget by that default stays *pending* here until freed, and its
//! contexts are created with dcgguf's graph callback ([`super::graph_hook`]), which does
//! nothing until the model switches to a budget. While the program is inside `llama_decode`,
//! `llama_encode` or `llama_process` (interposed, `crate::llama::hooks`), every
//! `posix_memalign` of 1 MiB or more (ggml's buffers) is checked first: a buffer allocated
//! there is one this batch needs (llama.cpp grows its output and compute buffers only when the
//! batch needs more, and clears the output buffer at once), so it must fit, with room for
//! computing ([`super::limit::other_memory`]), in what the limit leaves
//! ([`super::limit::choose_at_context`]). If not, part of the decoded weights moves to a file
//! ([`super::spill`], [`Pending::spill_instead`]: twice what is lacking, a lookup table's part
//! once, and 4 MiB), whose pages the limit reclaims and the disk gives back, as plain
//! llama.cpp's mapped file's; later batches move more where they need it. Where no file can be
//! made (no disk with room, only memory file systems), the model switches to the smallest
//! budget instead (a budget cannot shrink later, and a limit reached once will be reached again
//! by the next buffers of the same batch): the plan's streamed tensors are found in llama.cpp's
//! CPU weight buffer and their pages given back ([`Residency::adopt_loaded`]), and from the
//! next graph node on every context of the model decodes them before use, as after a budgeted
//! load. Sessions 24-29 switched to the budget first; moving weights was faster wherever
//! measured (session 30: llama-perplexity on SmolLM2 Q4_1, llama-embedding on MiniLM BF16; see
//! [`Pending::check`]), and a budget finds nothing to stream where llama.cpp repacked the
//! weights. Buffers allocated when a context is created are not checked then: llama.cpp
//! reserves its compute buffer there for the largest batch, which most programs never send
//! (llama-completion's SmolLM2 context reserves 49 MiB and writes part of it). They are noted,
//! and the first check in the context counts what of them no batch has written yet, up to the
//! size of the buffer checked ([`unwritten_reserved`]). But for the one it writes whole right
//! there: llama.cpp clears the KV cache as it creates it, so that clear is checked first
//! (`ggml_backend_buffer_clear`, interposed: [`hooks::buffer_clear_or_real`]); unchecked,
//! SmolLM2 under llama-completion or llama-server with `-c 1024` (a 24 MiB cache) was killed
//! under a 133 MiB cap that plain mmap ran in, the load having found 2 MiB to spare (session
//! 64).
//!
//! A model the default loaded with part of its decoded weights moved to a file
//! ([`super::spill`]: neither the model nor a budget fit) is checked the same way, but
//! moves more of its weights to the file where a batch's buffers would not fit
//! ([`register_spilled`]): twice what is lacking, as the load did for what it lacked,
//! counting as room the moved pages still in memory (the limit reclaims them first) beyond
//! the half of them that the load's rule leaves them ([`limit::spare_of_moved`]: a KV cache
//! that took that room too left every pass reading back all of them).
//! After batches (at most every [`MEASURE_EVERY_MS`], and after each check), the moved
//! pages the limit leaves in memory, less two of the disk's read-ahead windows and a
//! margin, are kept there, the rest read in order ([`after_compute`],
//! [`limit::moved_kept_in_memory`]): the kernel ignores the references of pages mapped
//! `MADV_SEQUENTIAL`, so that otherwise each pass read back every moved page.
//!
//! In a process without the budget hooks (a program linking libdcgguf, llama-cpp-python
//! through `import dcgguf.llama_cpp`) no allocation is interposed: a context's creation
//! through `dcgguf_llama_init_from_model` is checked instead, before (its KV cache,
//! estimated) and after (what it wrote and reserved), weights moving to a file where these
//! would not fit ([`creating_context_without_hooks`], [`context_created_without_hooks`]); such
//! a model never switches to a budget (a context created by llama.cpp's own function would
//! get no graph callback), and a thread measures the moved pages' room
//! ([`super::unhooked`]).
//!
//! A model loaded with a budget (asked for, or the default's at load) is checked the same
//! way ([`register_budgeted`]): a budget is sized at the load too, and a batch's buffers may
//! not fit next to it. Where one would not, the decoded bytes of the tensors the budget keeps
//! resident move to a file as far as the batch needs ([`Pending::spill_resident`]), and later
//! batches move more as above; the tensors it streams stay where the budget decodes them,
//! unless the batch is still short with every resident weight moved: then the budget's own
//! memory is what does not fit, and it stops streaming ([`Pending::stop_streaming`]): the
//! streamed tensors but a lookup-only table are decoded for good, and as much of the weights
//! moves to the file as the limit then lacks; the model holds those as plain llama.cpp's mmap
//! does, the rest as a load without a budget. A budget under a limit that no batch's buffer
//! tells about (llama-completion's tokens allocate none) is found out by its decodes instead:
//! where they keep reading back from the disk the compressed bytes the limit reclaimed
//! between passes ([`Residency::thrashing`]), the graph callback has it give up streaming
//! the same way ([`budget_thrashes`]).
//!
//! Until it switches, its lookup tables (untied token embeddings) stay compressed, rows
//! decoded per lookup ([`keep_lookups_compressed`]): the residency that serves them is the
//! one the graph callback uses, and a switch replaces it (the new budget streams them too).
//! The load does not read them at all ([`lookups_to_defer`]; MiniLM BF16: 22 of 46 MB, and
//! the load's time inside dcgguf fell from about 100 ms to 41); a table that llama.cpp holds
//! elsewhere than where it read it (a device, a repacked buffer) is decoded after the load
//! and written there.
//!
//! Cost while nothing switches: the graph callback runs at every node (an atomic read),
//! and the check reads the limit only for buffers allocated inside a compute call (none per
//! generated token: SmolLM2 under llama-completion read it once, at the load, by strace).
//! Once weights moved to a file, each batch's end reads a clock, and at most every
//! [`MEASURE_EVERY_MS`] asks the kernel which moved pages are in memory.
//!
//! Limits: contexts of one model must not compute concurrently (as for any budget), nor one
//! be created while another computes;
//! allocations of the compute threads are not checked: the CPU backend's work buffer is
//! estimated from the micro-batch's tokens ([`super::limit::work_buffer`]; `llama_process`,
//! whose batch is opaque, counts the context's `n_ubatch`) and room for computing covers
//! the rest.

use std::ffi::{CString, c_char, c_void};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::limit::{self, ContextChoice};
use super::mib;
use super::runtime::{Residency, register_model};
use super::spec::Settings;
use super::spill::Spiller;
use crate::dc::DcFile;
use crate::llama::{hooks, host, sys};

/// A model loaded without a budget by the default, which may still switch to one.
pub struct Pending {
    model: usize,
    dc: Arc<DcFile>,
    decoded: u64,
    /// Values in the widest row of its weights (the inner dimension of its matrix products),
    /// for the work buffer of a batch ([`limit::work_buffer`]).
    widest_row: u64,
    /// Set when it switched: every context of the model uses it from then on.
    res: OnceLock<Arc<Residency>>,
    /// Until then: its lookup tables, kept compressed from the end of the load
    /// ([`Residency::lookups_only`]).
    lookups: OnceLock<Arc<Residency>>,
    /// Compute threads of its contexts, for the residency's prefetch choice.
    threads: Mutex<usize>,
    /// Loaded with part of its decoded weights moved to a file ([`super::spill`]): a batch
    /// that would not fit moves more of them instead of switching to a budget.
    spilled: OnceLock<Spilled>,
    /// Where its decoded weights may move ([`super::spill::Spiller::open`]).
    spill_dirs: Vec<PathBuf>,
    /// Loaded with a budget ([`register_budgeted`]), whose residency says which tensors it
    /// streams: a batch that would not fit moves the other tensors' decoded bytes to a file
    /// instead of switching anything, then, where that is not enough, the streamed ones
    /// too ([`Pending::stop_streaming`]).
    budgeted: bool,
    /// No more checks: a switch or a move failed (said once), or every weight has moved.
    settled: AtomicBool,
    /// Whether this process runs the budget hooks (the preload library). Without them
    /// (a program linking libdcgguf, llama-cpp-python through `import dcgguf.llama_cpp`)
    /// no batch is checked and a context gets no graph callback it would need after a
    /// switch: the model never switches to a budget and keeps its lookup tables decoded;
    /// each context's creation is checked instead ([`context_created_without_hooks`]), and
    /// a thread measures the moved pages' room ([`super::unhooked`]).
    hooked: bool,
}

/// A model loaded with part of its decoded weights moved to a file.
struct Spilled {
    spiller: Arc<Mutex<Spiller>>,
    /// Its tensors in llama.cpp's CPU weight buffer: (address, length).
    ranges: Vec<(usize, usize)>,
    /// Those of them that move first: the lookup table ([`lookup_ranges`]).
    first: Vec<(usize, usize)>,
    /// The whole pages' bytes of `first`.
    lookup_bytes: u64,
    /// Their whole pages' bytes: what moves at most.
    movable: u64,
    /// Once the budget stopped streaming, the memory of its tensors decoded for good, which
    /// a later batch may move too ([`Pending::move_more`]), and its whole pages' bytes.
    decoded_at_stop: OnceLock<(Vec<(usize, usize)>, u64)>,
}

impl Spilled {
    fn new(
        spiller: Arc<Mutex<Spiller>>,
        ranges: Vec<(usize, usize)>,
        first: Vec<(usize, usize)>,
    ) -> Spilled {
        Spilled {
            movable: super::spill::movable_bytes(&ranges),
            lookup_bytes: super::spill::movable_bytes(&first),
            spiller,
            ranges,
            first,
            decoded_at_stop: OnceLock::new(),
        }
    }

    /// Bytes that move at most: the whole pages of every range, those decoded for good at a
    /// stop too.
    fn movable(&self) -> u64 {
        self.movable
            .saturating_add(self.decoded_at_stop.get().map_or(0, |(_, bytes)| *bytes))
    }

    /// The budget stopped streaming ([`Pending::stop_streaming`]): `ranges` hold its weights
    /// decoded for good, which a later batch may move too. Said once.
    fn decoded_for_good(&self, ranges: Vec<(usize, usize)>) {
        let bytes = super::spill::movable_bytes(&ranges);
        let _ = self.decoded_at_stop.set((ranges, bytes));
    }

    /// Moves what is left of the weights into `spiller`'s file, as far as its quota goes:
    /// the lookup table's last pages first, then the other resident weights, then those
    /// decoded for good at a stop.
    ///
    /// # Safety
    /// As for [`Spiller::take_rest`], for every range of `self`: the model's tensors in
    /// llama.cpp's CPU weight buffer, alive until the model is freed (which forgets them
    /// first), which no graph of the model computes with during the call.
    unsafe fn take_more(&self, spiller: &mut Spiller) {
        // SAFETY: forwarded from the caller.
        unsafe {
            spiller.take_rest_of_lookup(&self.first);
            spiller.take_rest(&self.ranges);
            if let Some((decoded, _)) = self.decoded_at_stop.get() {
                spiller.take_rest(decoded);
            }
        }
    }
}

/// What the graph callback of a pending model's context holds.
pub struct Watch {
    pending: Arc<Pending>,
}

static PENDING: Mutex<Vec<Arc<Pending>>> = Mutex::new(Vec::new());

/// Held while a model decides what to do about a batch that would not fit (switch to a
/// budget, open a file for its weights): one decision per model, whichever thread gets there
/// first.
static DECIDING: Mutex<()> = Mutex::new(());

fn deciding() -> std::sync::MutexGuard<'static, ()> {
    DECIDING.lock().unwrap_or_else(|e| e.into_inner())
}

fn pending() -> std::sync::MutexGuard<'static, Vec<Arc<Pending>>> {
    PENDING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Adds `p`, a model just loaded, to the pending ones. A model at the same address is gone:
/// freed by llama.cpp's own `llama_model_free` (a host linking libdcgguf that does not call
/// `dcgguf_llama_model_free`), so its state is forgotten rather than taken for this one's.
fn register(p: Arc<Pending>) {
    let mut all = pending();
    all.retain(|old| old.model != p.model);
    all.push(p);
}

/// Before a load that the default makes without a budget: the lookups-only plan
/// ([`Residency::lookups_only`]) whose tables the stream skips ([`Residency::defer_load`])
/// rather than decoding them only to give their pages back after the load. `None` when the
/// model has no table worth it, or when the functions that check, after the load, where
/// llama.cpp put them are missing from the host.
pub fn lookups_to_defer(dc: &Arc<DcFile>) -> Option<Arc<Residency>> {
    api().ok()?;
    Residency::lookups_only(dc.clone())
}

/// The lookup tables a load of `dc` without a budget would skip and keep compressed
/// ([`lookups_to_defer`] makes their residency), for the default's choice
/// ([`super::limit::choose`]). `None` when there are none, or when the functions that check
/// after the load where llama.cpp put them are missing from the host.
pub fn lookups_kept_compressed(dc: &DcFile) -> Option<limit::LookupTables> {
    api().ok()?;
    let plan = super::runtime::lookups_plan_of(dc)?;
    Some(limit::LookupTables {
        decoded: plan
            .decoded_weight_bytes
            .saturating_sub(plan.resident_bytes),
        held: plan.reserve_bytes,
    })
}

/// `model` was loaded from `dc` without a budget because the default found that its
/// `decoded` weight bytes fit: its lookup tables go back to compressed (a lookup decodes
/// only the rows it reads), and its memory is checked again as its batches allocate.
/// `deferred`: the residency whose tables the load skipped ([`lookups_to_defer`]).
///
/// An error leaves a model that must not compute: a table the load skipped could not be
/// written where llama.cpp holds it.
pub fn register_pending(
    model: *mut sys::llama_model,
    dc: Arc<DcFile>,
    decoded: u64,
    deferred: Option<Arc<Residency>>,
    spill_dirs: Vec<PathBuf>,
) -> Result<(), RefitError> {
    let p = Arc::new(Pending::new(model, dc, decoded, spill_dirs));
    if !p.hooked {
        // A table kept compressed is served by a graph callback, which a context gets only
        // where the hooks create it.
        register(p);
        return Ok(());
    }
    let skipped = deferred.is_some();
    // SAFETY: the model has just been loaded: no context of it exists, so no graph of it
    // computes, and every context created from now on runs the residency's callback
    // (`watch_for`).
    match unsafe { keep_lookups_compressed(&p, deferred) } {
        Ok(Some(res)) => {
            let _ = p.lookups.set(res);
        }
        Ok(None) => {}
        Err(e) if skipped => return Err(e),
        Err(e) => crate::log_line!("dcgguf: warning: {e}; lookup tables stay decoded"),
    }
    register(p);
    Ok(())
}

/// `model` was loaded from `dc` without a budget, `spiller` holding part of its `decoded`
/// weight bytes in a file: its batches are checked as a pending model's are, and one that
/// would not fit moves more of the weights (found at `ranges`) to the file
/// ([`Pending::move_more`]). llama-perplexity on SmolLM2 (`-c 256 -b 256`) under a 130 MiB
/// cap: the load moved 6.7 MiB for the 1 MiB the limit lacked, then the first batch wrote
/// a 49 MiB compute buffer and a 24 MiB output buffer and the run was killed, where plain
/// mmap finished (session 28).
pub fn register_spilled(
    model: *mut sys::llama_model,
    dc: Arc<DcFile>,
    decoded: u64,
    spiller: Arc<Mutex<Spiller>>,
    ranges: Vec<(usize, usize)>,
    spill_dirs: Vec<PathBuf>,
) {
    let p = Pending::new(model, dc, decoded, spill_dirs);
    let first = lookup_ranges(model, &p.dc, |_| false);
    let spilled = Spilled::new(spiller, ranges, first);
    // Everything moved at the load already: nothing more to check.
    let moved = spilled
        .spiller
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .moved();
    p.settled
        .store(moved >= spilled.movable(), Ordering::Relaxed);
    let _ = p.spilled.set(spilled);
    let p = Arc::new(p);
    register(p.clone());
    p.measure_moved_pages();
}

/// `model` was loaded from `dc` with the budget `res` (asked for, or the default's): its
/// batches are checked as a pending model's are, and one whose buffers would not fit next to
/// the budget's memory moves the decoded bytes of the tensors the budget keeps resident to a
/// file, as far as the batch needs ([`Pending::spill_resident`]). A budget is sized at the
/// load, before any context: MiniLM BF16 at `50%,file` (12.4 MiB resident, a 9.3 MiB arena)
/// under llama-embedding was OOM-killed under a cap of 90% of plain mmap's peak (343.7 MiB),
/// where plain mmap ran, when its first batch allocated a 241 MiB output buffer (session 59).
/// The tensors it streams stay as they are, the budget decoding them into its own memory,
/// unless the batch is still short with every other weight moved: then they are decoded for
/// good and move too ([`Pending::stop_streaming`]).
pub fn register_budgeted(
    model: *mut sys::llama_model,
    dc: Arc<DcFile>,
    res: &Residency,
    spill_dirs: Vec<PathBuf>,
) {
    let mut p = Pending::new(model, dc, res.plan.decoded_weight_bytes, spill_dirs);
    p.budgeted = true;
    register(Arc::new(p));
}

impl Pending {
    /// `model`, loaded from `dc` without a budget: nothing switched, moved or settled yet.
    fn new(
        model: *mut sys::llama_model,
        dc: Arc<DcFile>,
        decoded: u64,
        spill_dirs: Vec<PathBuf>,
    ) -> Pending {
        Pending {
            model: model as usize,
            widest_row: widest_row(&dc),
            dc,
            decoded,
            res: OnceLock::new(),
            lookups: OnceLock::new(),
            threads: Mutex::new(1),
            spilled: OnceLock::new(),
            spill_dirs,
            budgeted: false,
            settled: AtomicBool::new(false),
            hooked: hooks::budget_hooks_active().is_ok(),
        }
    }

    /// Its weights moved to a file: from now on their room is measured, after batches
    /// ([`after_compute`]) or, without the budget hooks, by a thread
    /// ([`super::unhooked::measure_moved_pages`]).
    fn measure_moved_pages(&self) {
        ANY_SPILLED.store(true, Ordering::Relaxed);
        if !self.hooked {
            super::unhooked::measure_moved_pages();
        }
    }
}

/// Whether the buffers a context of `model` reserves at its creation are noted for its
/// batches' checks ([`context_reserved`]): a pending model that may still switch or move.
pub fn notes_contexts_of(model: *const sys::llama_model) -> bool {
    pending().iter().any(|p| {
        p.model == model as usize
            && p.hooked
            && p.res.get().is_none()
            && !p.settled.load(Ordering::Relaxed)
    })
}

/// The graph callback found the budget `res` [`Residency::thrashing`] (once a range of nodes
/// has been computed, before the next is asked about): where a budgeted model loaded with
/// it, that model gives up streaming ([`Pending::give_up_streaming`]); else the pressure is
/// no longer counted.
pub fn budget_thrashes(res: &Arc<Residency>) {
    let _one = deciding();
    if !res.thrashing() {
        // Dealt with by another context's callback meanwhile.
        return;
    }
    let owner = pending()
        .iter()
        .find(|p| {
            p.budgeted
                && super::model_residency(p.model as *const sys::llama_model)
                    .is_some_and(|r| Arc::ptr_eq(&r, res))
        })
        .cloned();
    match owner {
        Some(p) => p.give_up_streaming(res),
        None => res.stop_counting_pressure(),
    }
}

/// Values in the widest row of `dc`'s weights (the inner dimension of its matrix products).
fn widest_row(dc: &DcFile) -> u64 {
    (0..dc.tensor_count())
        .map(|i| dc.tensor_view(i).shape)
        .filter(|shape| shape.len() >= 2)
        .map(|shape| shape[0])
        .max()
        .unwrap_or(0)
}

/// What the computes of a loaded model decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComputeDecoding {
    /// Nothing: every weight was decoded at the load.
    Nothing,
    /// The rows its lookups read of tables kept compressed (the default's plan when the
    /// decoded model fits: [`Residency::lookups_only`]).
    LookupRows,
    /// A budget's streamed weights.
    Weights,
}

/// What `model`'s computes decode.
pub fn compute_decoding(model: *const sys::llama_model) -> ComputeDecoding {
    let lookups_pending = || {
        pending()
            .iter()
            .any(|p| p.model == model as usize && p.lookups.get().is_some())
    };
    match super::model_residency(model) {
        Some(r) if r.is_lookups_only() => ComputeDecoding::LookupRows,
        Some(_) => ComputeDecoding::Weights,
        None if lookups_pending() => ComputeDecoding::LookupRows,
        None => ComputeDecoding::Nothing,
    }
}

/// Gives back the decoded pages of `p`'s lookup tables that compression shrinks, to be
/// decoded row by row at each lookup: the default's plan when the model fits. Tables that
/// the load skipped (`deferred`) are checked to lie where llama.cpp read them; one that does
/// not is decoded and written into the model now.
///
/// # Safety
/// As for [`switch`].
unsafe fn keep_lookups_compressed(
    p: &Pending,
    deferred: Option<Arc<Residency>>,
) -> Result<Option<Arc<Residency>>, RefitError> {
    let Some(res) = deferred.or_else(|| Residency::lookups_only(p.dc.clone())) else {
        return Ok(None);
    };
    let api = api()?;
    let model = p.model as *const sys::llama_model;
    // SAFETY: forwarded from the caller.
    let misplaced = unsafe { res.confirm_deferred(|name| api.tensor_memory(model, name)) };
    for tensor in misplaced {
        // SAFETY: the live model just loaded, no graph of it computing (the caller's).
        unsafe { api.write_tensor(model, &p.dc, tensor)? };
        crate::log_line!(
            "dcgguf: {}: skipped at load, but llama.cpp holds it elsewhere (a device or a \
             repacked buffer): decoded and written there",
            p.dc.tensor_view(tensor).name
        );
    }
    // SAFETY: forwarded from the caller.
    let kept = unsafe { hand_lookup_pages_over(p, &res, api) };
    let Some(kept) = kept else {
        return Ok(None);
    };
    crate::log_line!("dcgguf: memory: {kept} (DCGGUF_MEM_BUDGET=0 keeps them decoded)");
    Ok(Some(res))
}

/// Lookup tables whose decoded pages a residency took over ([`hand_lookup_pages_over`]).
struct KeptCompressed {
    count: usize,
    decoded: u64,
    stored: u64,
}

impl std::fmt::Display for KeptCompressed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} lookup table(s) kept compressed ({:.1} MiB decoded, {:.1} MiB stored): each \
             lookup decodes only the rows it reads",
            self.count,
            mib(self.decoded),
            mib(self.stored)
        )
    }
}

/// Hands the decoded pages of `res`'s lookup tables, where `p`'s model holds them in CPU
/// memory, over to `res`, which gives them back and decodes the rows of each lookup from
/// then on; `None` where the model holds none of them there. Their stored bytes are not read
/// ahead: a lookup reads just the chunks it decodes, one request each (MiniLM BF16, six runs
/// each: 2.01-2.37 s without reading ahead, 2.10-2.44 s with; a big vocabulary's table would
/// be read whole for a prompt's few rows).
///
/// # Safety
/// As for [`switch`]: no graph of the model computes, and every context of it runs the graph
/// callback, which decodes the rows of a lookup once `p.lookups` holds `res`.
unsafe fn hand_lookup_pages_over(
    p: &Pending,
    res: &Residency,
    api: &Api,
) -> Option<KeptCompressed> {
    let model = p.model as *const sys::llama_model;
    // SAFETY: forwarded from the caller.
    unsafe { res.adopt_loaded(|name| api.tensor_memory(model, name)) };
    let (count, decoded) = res.held();
    (count > 0).then_some(KeptCompressed {
        count,
        decoded,
        stored: res.plan.streamed_stored_bytes,
    })
}

/// The address and length of each of `dc`'s tensors that `model` holds in CPU memory that
/// ggml does not write after the load: a plain CPU buffer (the decoded bytes as llama.cpp
/// read them) or a repacked one (converted from them). What a spill may move.
pub fn loaded_ranges(
    model: *const sys::llama_model,
    dc: &DcFile,
) -> Result<Vec<(usize, usize)>, RefitError> {
    movable_ranges(model, dc, |_| false)
}

/// [`loaded_ranges`] but for the tensors `skip` names (by index in `dc`).
fn movable_ranges(
    model: *const sys::llama_model,
    dc: &DcFile,
    skip: impl Fn(usize) -> bool,
) -> Result<Vec<(usize, usize)>, RefitError> {
    let api = api()?;
    Ok((0..dc.tensor_count())
        .filter(|&i| !skip(i))
        .filter_map(|i| api.cpu_tensor_memory(model, &dc.tensor_view(i).name, true))
        .collect())
}

/// The memory of `dc`'s lookup table ([`crate::gguf::GgufHeader::lookup_table`]) where
/// `model` holds it as [`movable_ranges`] would, unless `skip` names it: what a spill moves
/// first (a token reads a row of it; every other weight, a token reads all of).
fn lookup_ranges(
    model: *const sys::llama_model,
    dc: &DcFile,
    skip: impl Fn(usize) -> bool,
) -> Vec<(usize, usize)> {
    let Some(table) = dc.original.lookup_table() else {
        return Vec::new();
    };
    let Ok(api) = api() else {
        return Vec::new();
    };
    let skipped = (0..dc.tensor_count()).any(|i| skip(i) && dc.tensor_view(i).name == table.name);
    if skipped {
        return Vec::new();
    }
    api.cpu_tensor_memory(model, &table.name, true)
        .into_iter()
        .collect()
}

/// The memory of `tensor` when it lies in a plain or repacked CPU buffer, for a spill that
/// moves what `ggml_backend_tensor_set` just wrote there ([`super::spill::staged`]).
///
/// # Safety
/// `tensor` is null or a live ggml tensor.
pub unsafe fn spillable_memory(tensor: *const sys::ggml_tensor) -> Option<(usize, usize)> {
    // SAFETY: forwarded from the caller.
    unsafe { api().ok()?.cpu_memory(tensor, true) }
}

/// Forgets a model about to be freed.
pub fn forget_model(model: *mut sys::llama_model) {
    let gone: Vec<Arc<Pending>> = {
        let mut all = pending();
        let (gone, kept) = all.drain(..).partition(|p| p.model == model as usize);
        *all = kept;
        gone
    };
    if crate::llama::verbose() {
        for r in gone.iter().filter_map(|p| p.lookups.get()) {
            crate::log_line!("dcgguf: lookup table stats: {:?}", r.stats());
        }
    }
}

/// Before a context of `model` is created with `threads` compute threads: what its graph
/// callback must hold, if the model is pending.
pub fn watch_for(model: *const sys::llama_model, threads: usize) -> Option<Arc<Watch>> {
    let pending = pending()
        .iter()
        // A model whose weights moved to a file needs no callback, but for its lookup tables.
        .find(|p| {
            p.model == model as usize
                && p.hooked
                && p.res.get().is_none()
                && (p.spilled.get().is_none() || p.lookups.get().is_some())
        })
        .cloned()?;
    {
        let mut t = pending.threads.lock().unwrap_or_else(|e| e.into_inner());
        *t = (*t).max(threads);
    }
    Some(Arc::new(Watch { pending }))
}

impl Watch {
    /// The budget the model switched to, if it did; else its lookup tables' residency.
    #[unsafe(link_section = ".text.hot.dcgguf")]
    pub fn residency(&self) -> Option<&Arc<Residency>> {
        self.pending
            .res
            .get()
            .or_else(|| self.pending.lookups.get())
    }
}

/// Allocations smaller than this are not checked.
pub const CHECKED_ALLOCATION: usize = 1 << 20;

/// The buffers of [`CHECKED_ALLOCATION`] bytes or more that llama.cpp allocated while it
/// created a context of a pending model (its KV cache, and its compute buffer, reserved for
/// the largest batch and written only by the batches that need it), by context.
static RESERVED: Mutex<Vec<ContextBuffers>> = Mutex::new(Vec::new());

/// A context's address and its buffers' (address, size).
type ContextBuffers = (usize, Vec<(usize, usize)>);

/// Notes the buffers `ctx` reserved at its creation ([`hooks::noting_buffers`]).
pub fn context_reserved(ctx: *mut sys::llama_context, buffers: Vec<(usize, usize)>) {
    if !buffers.is_empty() {
        let mut all = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|(c, _)| *c != ctx as usize);
        all.push((ctx as usize, buffers));
    }
}

/// A model the default loaded without a budget in a process without the budget hooks, whose
/// weights may still move: its contexts' creation is checked
/// ([`creating_context_without_hooks`], [`context_created_without_hooks`]).
fn unhooked(model: *const sys::llama_model) -> Option<Arc<Pending>> {
    pending()
        .iter()
        .find(|p| {
            p.model == model as usize
                && !p.hooked
                && !p.budgeted
                && !p.settled.load(Ordering::Relaxed)
        })
        .cloned()
}

/// Whether a context of `model` about to be created is checked, in a process without the
/// budget hooks ([`creating_context_without_hooks`]).
pub fn checks_contexts_without_hooks(model: *const sys::llama_model) -> bool {
    unhooked(model).is_some()
}

/// A context of `model` is about to be created with `params` in a process without the
/// budget hooks, where no batch will be checked (no interposed allocation) nor the clear of
/// its KV cache: the KV cache it will write, estimated from the model's metadata
/// ([`super::unhooked::kv_cache_bytes`]), with room for its largest micro-batch's work
/// buffer and for computing ([`limit::other_memory`]), must fit, or weights move to a file.
/// llama-cpp-python on SmolLM2 with a 1024-token context under a 150 MiB cap was killed
/// clearing its 22.5 MiB cache (session 68).
pub fn creating_context_without_hooks(
    model: *const sys::llama_model,
    params: &sys::llama_context_params,
) {
    let Some(p) = unhooked(model) else {
        return;
    };
    let Some(h) = limit::headroom() else {
        return;
    };
    let kv = super::unhooked::kv_cache_bytes(&p.dc.original, params);
    let work = limit::work_buffer(super::unhooked::micro_batch(params), p.widest_row);
    let who = match kv {
        0 => "a new context without a KV cache",
        _ => "a new context's KV cache",
    };
    checking_without_hooks(&p, who, kv, work, h);
}

/// The context of [`creating_context_without_hooks`] was created, writing `written` bytes of
/// anonymous memory (its KV cache) and reserving `unwritten` more (its compute buffer, for
/// the largest batch), measured ([`super::unhooked::creating_context`]). As much of the
/// reserve as it wrote must fit besides, standing in for the batches' checks a hooked process
/// makes (the reserve is mostly logits for a batch of outputs that few programs send:
/// Qwen2.5's at 512 tokens, 297 MiB), or more weights move.
pub fn context_created_without_hooks(
    model: *const sys::llama_model,
    ctx: *mut sys::llama_context,
    written: u64,
    unwritten: u64,
) {
    let Some(p) = unhooked(model) else {
        return;
    };
    let Some(h) = limit::headroom() else {
        return;
    };
    let work = limit::work_buffer(n_ubatch(ctx).unwrap_or(0), p.widest_row);
    if crate::llama::verbose() {
        crate::log_line!(
            "dcgguf: memory: a new context wrote {:.1} MiB and reserved {:.1} MiB more",
            mib(written),
            mib(unwritten)
        );
    }
    // The size is a stand-in for what batches will write, not a KV cache.
    let who = "a new context's batch reserve (as much of it as the context wrote)";
    checking_without_hooks(&p, who, unwritten.min(written), work, h);
}

/// Set where a model's weights moved to a file ([`register_spilled`]): batches then
/// measure the room the moved pages have ([`after_compute`]).
static ANY_SPILLED: AtomicBool = AtomicBool::new(false);
/// Set by a check (which moved pages or let a buffer take room): the next batch's end
/// measures the room again.
static ROOM_CHANGED: AtomicBool = AtomicBool::new(false);
/// When the room was last measured: milliseconds from the first measure's time base.
static LAST_MEASURE_MS: AtomicU64 = AtomicU64::new(0);
/// Measures of the room at most this often, but after a check: a measure asks the kernel
/// which of the moved pages are in memory (`mincore` over all of them).
pub(super) const MEASURE_EVERY_MS: u64 = 200;

/// A batch has been computed: where weights moved to a file, sets the part of the moved
/// pages kept in memory ([`Spiller::keep_in_memory`]) from the room they have now,
/// measured: the moved pages in memory, less [`limit::other_memory`] as a margin
/// ([`limit::moved_kept_in_memory`]); after a check changed it, and at most every
/// [`MEASURE_EVERY_MS`]. The headroom under the limit is not counted: it swings by 20 MiB
/// between batches as the kernel reclaims in bursts (SmolLM2 under 110 MiB: 0-24 MiB free
/// after batches), and the moved pages in memory by a few. Measured after batches, because
/// what a context writes of its compute buffer is known only once it wrote it:
/// llama-completion's prompt allocates
/// nothing that a check would see, nor says its tokens (`llama_process`). Until the first
/// measure every moved page is read in order.
#[unsafe(link_section = ".text.hot.dcgguf")]
pub fn after_compute() {
    if !ANY_SPILLED.load(Ordering::Relaxed) {
        return;
    }
    static BASE: OnceLock<std::time::Instant> = OnceLock::new();
    let now = u64::try_from(
        BASE.get_or_init(std::time::Instant::now)
            .elapsed()
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
    .max(1);
    let last = LAST_MEASURE_MS.load(Ordering::Relaxed);
    if ROOM_CHANGED.swap(false, Ordering::Relaxed)
        || last == 0
        || now.saturating_sub(last) >= MEASURE_EVERY_MS
    {
        LAST_MEASURE_MS.store(now, Ordering::Relaxed);
        measure_room_of_moved("after a batch");
    }
}

/// Whether some model's weights moved to a file (and it is not freed): their room is
/// measured.
pub(super) fn moved_pages_to_measure() -> bool {
    pending().iter().any(|p| p.spilled.get().is_some())
}

/// Sets the part of the moved pages kept in memory from their room now (`when`, for the log
/// line: "after a batch").
#[cold]
pub(super) fn measure_room_of_moved(when: &str) {
    let spilled: Vec<Arc<Pending>> = pending()
        .iter()
        .filter(|p| p.spilled.get().is_some())
        .cloned()
        .collect();
    for p in spilled {
        let Some(spilled) = p.spilled.get() else {
            continue;
        };
        let mut spiller = spilled.spiller.lock().unwrap_or_else(|e| e.into_inner());
        let in_memory = spiller.resident();
        // Growing to at most twice what it kept (one read-ahead window from none) a
        // measure: a measure right after a
        // check (llama-completion's warmup) comes before the prompt writes its compute
        // buffer, which then takes room the pages kept would hold. A precaution: SmolLM2
        // `-c 1024` under 127 MiB (five runs each, session 67) read 70.8-115.1 MiB in its
        // prompt's pass keeping at once, 80.4-87.9 growing so, 77.1-87.3 keeping none, in
        // 311-586 ms whichever (plain mmap 67.6-130.8 MiB, 303-392 ms).
        let keep = limit::moved_kept_in_memory(
            in_memory.saturating_sub(limit::other_memory(p.decoded)),
            spiller.read_ahead(),
        )
        .min(
            spiller
                .kept_in_memory()
                .saturating_mul(2)
                .max(spiller.read_ahead()),
        );
        // Pages in flight make the room vary by a read-ahead window or so from one measure
        // to the next: less than that changes nothing.
        if keep.abs_diff(spiller.kept_in_memory()) < spiller.read_ahead() {
            continue;
        }
        let kept = spiller.keep_in_memory(keep);
        crate::log_line!(
            "dcgguf: memory: {when}, {:.1} MiB of the moved pages in memory: {:.1} MiB \
             of them kept there (less two {:.1} MiB read-ahead windows for the rest and {:.0} \
             MiB of margin)",
            mib(in_memory),
            mib(kept),
            mib(spiller.read_ahead()),
            mib(limit::other_memory(p.decoded))
        );
    }
}

/// Forgets a context about to be freed (or freed).
pub fn forget_context(ctx: *mut sys::llama_context) {
    RESERVED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|(c, _)| *c != ctx as usize);
}

/// At the first check in `ctx`: bytes of the buffers it reserved at its creation that no
/// batch has written yet, which the batch about to run may write. llama-perplexity on
/// SmolLM2 (`-c 256 -b 256`) reserves a 49 MiB compute buffer and writes it in its first
/// batch (logits of all its tokens): with only that batch's 24 MiB output buffer checked, the
/// default was killed under a 170 MiB cap where plain mmap finished (session 28). Counted
/// once, then forgotten: ggml frees a buffer it outgrows (MiniLM BF16's first batch grows
/// its compute buffer from 6 to 30 MiB), and without an interposed `free` a later check
/// would count the freed one's pages too. A later batch that writes more of a reserve
/// without growing it is not foreseen.
fn unwritten_reserved(ctx: usize) -> u64 {
    let buffers = {
        let mut all = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
        match all.iter().position(|(c, _)| *c == ctx) {
            Some(i) => all.swap_remove(i).1,
            None => Vec::new(),
        }
    };
    buffers
        .iter()
        .map(|&(at, size)| crate::io::unwritten_bytes(at, size))
        .sum()
}

/// Who needs the buffer a check is about, for its log lines: what a check without the
/// hooks says ([`checking_without_hooks`]), else a batch (inside a compute call), else a
/// context being created, whose KV cache llama.cpp clears ([`before_allocation`]).
fn who() -> &'static str {
    if let Some(who) = UNHOOKED_WHO.get() {
        who
    } else if hooks::in_compute() {
        "a batch"
    } else {
        "a new context's KV cache"
    }
}

thread_local! {
    /// Who a check without the hooks on this thread is about ([`who`]).
    static UNHOOKED_WHO: std::cell::Cell<Option<&'static str>> =
        const { std::cell::Cell::new(None) };
}

/// `p.fit(size, work, h)` with `who` in its log lines: a context's creation checked without
/// the hooks, whose buffer is not always a KV cache (an encoder's context keeps none).
fn checking_without_hooks(
    p: &Pending,
    who: &'static str,
    size: u64,
    work: u64,
    h: limit::Headroom,
) {
    UNHOOKED_WHO.set(Some(who));
    let _reset = ResetWho;
    p.fit(size, work, h);
}

/// Clears [`UNHOOKED_WHO`] when a check ends, panicking or not.
struct ResetWho;

impl Drop for ResetWho {
    fn drop(&mut self) {
        UNHOOKED_WHO.set(None);
    }
}

/// `size` bytes are about to be charged to the limit: inside a `llama_decode` /
/// `llama_encode` / `llama_process` on this thread ggml allocates them (between graph
/// computations: ggml's CPU ops never call `posix_memalign`), or inside
/// `llama_init_from_model` llama.cpp is about to clear a buffer of that size, writing it
/// whole (its KV cache; [`hooks::buffer_clear_or_real`]), before any graph of the context
/// computes. Every pending model checks that they fit next to its weights.
pub fn before_allocation(size: usize) {
    if size < CHECKED_ALLOCATION {
        return;
    }
    let pending: Vec<Arc<Pending>> = pending()
        .iter()
        .filter(|p| p.res.get().is_none() && !p.settled.load(Ordering::Relaxed))
        .cloned()
        .collect();
    for p in pending {
        p.check(size as u64);
    }
}

impl Pending {
    /// Moves weights to a file (or, where it cannot, switches the model to a budget) if
    /// `size` bytes about to be allocated do not fit.
    fn check(&self, size: u64) {
        let Some(h) = limit::headroom() else {
            return;
        };
        // As much of it as the buffer checked: a language model's reserve is mostly the
        // logits of a batch of outputs only (Qwen2.5's, 512 tokens of a 151936-word
        // vocabulary: 297 MiB), of which a batch writes those of its outputs, as big as the
        // output buffer that holds them after (llama-perplexity on SmolLM2: 24 MiB).
        let unwritten =
            hooks::current_batch().map_or(0, |(ctx, _)| unwritten_reserved(ctx as usize).min(size));
        let work = limit::work_buffer(batch_tokens(), self.widest_row).saturating_add(unwritten);
        self.fit(size, work, h);
    }

    /// Makes room for `size` bytes about to be charged and `work` (the rest of the batch's
    /// needs) in `h`: moves weights to a file, or, where it cannot, switches the model to a
    /// budget (with the budget hooks only).
    fn fit(&self, size: u64, work: u64, h: limit::Headroom) {
        if self.budgeted {
            self.spill_resident(size, work, h);
            return;
        }
        if let Some(spilled) = self.spilled.get() {
            self.move_more(spilled, size, work, h);
            return;
        }
        let choice = limit::choose_at_context(self.decoded, size, work, h.clone());
        let ContextChoice::Short { budget, .. } = choice else {
            if crate::llama::verbose() {
                crate::log_line!("{}", choice.describe(who(), self.decoded, size));
            }
            return;
        };
        let _one = deciding();
        if self.res.get().is_some()
            || self.spilled.get().is_some()
            || self.settled.load(Ordering::Relaxed)
        {
            return;
        }
        // Weights moved to a file first, as far as the batch needs: their pages, as plain
        // llama.cpp's mapped file's, the limit reclaims and the disk gives back, where a
        // budget decodes its streamed tensors on every pass. Measured (session 30, AMD EPYC
        // VM, 2 vCPUs, two runs each): llama-perplexity on SmolLM2 Q4_1 under 131.4 MiB,
        // 9.2-10.3 s against 13.7-14.4 with the budget (plain mmap 11.5-11.9); under 150.2
        // MiB 8.9-9.3 against 9.8-10.7 (plain 9.0-9.4); llama-embedding on MiniLM BF16 under
        // 343.7 MiB, 1.35-1.40 s against 1.42-1.64 (plain 1.79-2.48). And a budget finds
        // nothing to stream where llama.cpp repacked the weights (SmolLM2 in Q4_0 on AVX2).
        crate::log_line!("{}", choice.describe(who(), self.decoded, size));
        if !self.hooked {
            if let Err(why) = self.spill_instead(size, work, h) {
                crate::log_line!(
                    "dcgguf: warning: the weights cannot move to a file ({why}), and a budget \
                     needs the preload library; the model stays as it is"
                );
                self.settled.store(true, Ordering::Relaxed);
            }
            return;
        }
        // SAFETY: as for `switch` below.
        let Some(h) = (unsafe { self.short_after_compressing_lookups(size, work, h) }) else {
            return;
        };
        let why = match self.spill_instead(size, work, h) {
            Ok(()) => return,
            Err(why) => why,
        };
        // SAFETY: no graph node of the model computes ([`before_allocation`]: between
        // graph computations of a compute call, or while a context is created), contexts of
        // one model do not compute concurrently nor while one is created (the budget's
        // documented limit), and every context of the model was created (or is being
        // created) with a graph callback that uses `self.res` once set.
        match unsafe { switch(self, budget) } {
            Ok(res) => {
                crate::log_line!(
                    "{}",
                    choice.describe_budget_instead(who(), self.decoded, size, &why)
                );
                let _ = self.res.set(res);
            }
            Err(e) => {
                crate::log_line!(
                    "dcgguf: warning: the weights cannot move to a file ({why}) and no budget \
                     can stream them ({e}); the model stays without a budget"
                );
                self.settled.store(true, Ordering::Relaxed);
            }
        }
    }

    /// A batch is short and no weight has moved to a file yet: gives back the decoded pages
    /// of the model's lookup tables ([`Residency::lookups_with`] of
    /// [`super::runtime::lookups_plan_under_a_limit_of`]) that the load kept decoded, each
    /// lookup decoding only the rows it reads from then on; what was given back, `None` where
    /// there was nothing to give back (tables compressed since the load, none worth it, or
    /// none found where llama.cpp holds the model in CPU memory).
    ///
    /// A table the load kept decoded because its compressed bytes and its rows would take
    /// nearly as much memory as decoded (MiniLM Q8_0's: 11.3 MiB stored in 1 MiB chunks, which
    /// a batch reads most of, and up to 4 MiB of rows against 11.9 decoded; F16's until files
    /// wrote its table in 64 KiB chunks, session 43), which counts where nothing presses.
    /// Under a limit that a batch reaches, the compressed bytes are the DC file's pages, which
    /// the limit reclaims as it does plain mmap's unread rows; moved to a file instead, the
    /// table was written out first (MiniLM F16 in 1 MiB chunks under 92% of plain mmap's
    /// peak: 30 MiB at its second batch, the table's rest and 16 MiB of layers, which every
    /// batch then read back).
    ///
    /// # Safety
    /// As for [`switch`].
    unsafe fn compress_lookups(&self) -> Option<KeptCompressed> {
        if self.lookups.get().is_some() || self.spilled.get().is_some() {
            return None;
        }
        let plan = super::runtime::lookups_plan_under_a_limit_of(&self.dc)?;
        let res = Residency::lookups_with(self.dc.clone(), plan);
        // SAFETY: forwarded from the caller; `lookups` holds `res` right after.
        let kept = unsafe { hand_lookup_pages_over(self, &res, api().ok()?) }?;
        let _ = self.lookups.set(res);
        Some(kept)
    }

    /// A batch of `size` bytes (and `work`) is short: gives back the decoded pages of the
    /// model's lookup tables where that helps ([`Pending::compress_lookups`]), then reads the
    /// headroom again. `None` where the batch fits now, else the headroom (`headroom` where
    /// nothing was given back).
    ///
    /// # Safety
    /// As for [`switch`].
    unsafe fn short_after_compressing_lookups(
        &self,
        size: u64,
        work: u64,
        headroom: limit::Headroom,
    ) -> Option<limit::Headroom> {
        // SAFETY: forwarded from the caller.
        let Some(kept) = (unsafe { self.compress_lookups() }) else {
            return Some(headroom);
        };
        // The freed pages change the headroom.
        let Some(h) = limit::headroom() else {
            return Some(headroom);
        };
        let fits = matches!(
            limit::choose_at_context(self.decoded, size, work, h.clone()),
            ContextChoice::Fits { .. }
        );
        crate::log_line!(
            "dcgguf: memory: {} is short: {kept} from now on; {:.0} MiB free under the \
             limit{}",
            who(),
            h.bytes as f64 / (1u64 << 20) as f64,
            if fits { ", the batch fits" } else { "" }
        );
        (!fits).then_some(h)
    }

    /// A batch is short: moves the weights (but the lookup tables kept compressed) to a file
    /// as far as `buffer` needs ([`Pending::move_more`]). An error: no file could be made.
    fn spill_instead(
        &self,
        buffer: u64,
        work: u64,
        headroom: limit::Headroom,
    ) -> Result<(), RefitError> {
        let lookups = self.lookups.get().map(|r| r.plan.streamed.clone());
        let kept_compressed = |i: usize| lookups.as_ref().is_some_and(|s| s.get(i) == Some(&true));
        self.spill_all_but(kept_compressed, "decoded weights", buffer, work, headroom)
            .map(|_short| ())
    }

    /// A batch of a budgeted model ([`register_budgeted`]) allocates `buffer` bytes (and
    /// `work`): where they would not fit, the decoded bytes of the tensors the budget keeps
    /// resident (those it does not stream) move to a file as far as the batch needs, once
    /// and then by [`Pending::move_more`]; where all of them are not enough, the streamed
    /// ones follow ([`Pending::stop_streaming`]). Where no file can be made, nothing more is
    /// checked.
    fn spill_resident(&self, buffer: u64, work: u64, headroom: limit::Headroom) {
        if self.lack(buffer, work, &headroom, 0) == 0 {
            if crate::llama::verbose() {
                crate::log_line!(
                    "dcgguf: memory: a batch of the budgeted model needs a {:.0} MiB buffer: \
                     it fits",
                    buffer as f64 / (1u64 << 20) as f64
                );
            }
            return;
        }
        let _one = deciding();
        if self.settled.load(Ordering::Relaxed) {
            return;
        }
        let Some(res) = super::model_residency(self.model as *const sys::llama_model) else {
            // Freed meanwhile: nothing to move.
            self.settled.store(true, Ordering::Relaxed);
            return;
        };
        let short = match self.spilled.get() {
            Some(spilled) => self.move_more(spilled, buffer, work, headroom),
            None => {
                let streams = &res.plan.streamed;
                let streamed = |i: usize| streams.get(i) == Some(&true);
                match self.spill_all_but(
                    streamed,
                    "budget's resident weights",
                    buffer,
                    work,
                    headroom,
                ) {
                    Ok(short) => short,
                    Err(e) => {
                        crate::log_line!(
                            "dcgguf: warning: a batch does not fit next to the memory budget \
                             and its resident weights cannot move to a file ({e}); they stay \
                             in memory"
                        );
                        self.settled.store(true, Ordering::Relaxed);
                        return;
                    }
                }
            }
        };
        if short > 0
            && !res.decoded_for_good()
            && let Some(spilled) = self.spilled.get()
        {
            let why = format!(
                "{} is {:.1} MiB short with the budget's resident weights in the file",
                who(),
                short as f64 / (1u64 << 20) as f64
            );
            self.stop_streaming(&res, spilled, self.need(buffer, work), &why);
        }
    }

    /// The budget's decodes keep reading from the disk what the limit reclaimed between
    /// passes ([`Residency::thrashing`]): it stops streaming ([`Pending::stop_streaming`]),
    /// with a file for its weights opened here where no batch opened one. Where no file can
    /// be made, it goes on as it is.
    fn give_up_streaming(&self, res: &Residency) {
        let streams = &res.plan.streamed;
        let streamed = |i: usize| streams.get(i) == Some(&true);
        let model = self.model as *const sys::llama_model;
        let spilled = match self.spilled.get() {
            Some(s) => s,
            None => {
                let opened = movable_ranges(model, &self.dc, streamed).and_then(|ranges| {
                    let spiller = Spiller::open(0, &self.spill_dirs).map_err(RefitError::Spill)?;
                    Ok((ranges, spiller))
                });
                let (ranges, spiller) = match opened {
                    Ok(o) => o,
                    Err(e) => {
                        crate::log_line!(
                            "dcgguf: warning: the memory budget's decodes keep reading from the \
                             disk, and its weights cannot move to a file ({e}); it goes on \
                             streaming"
                        );
                        res.stop_counting_pressure();
                        return;
                    }
                };
                self.spilled.get_or_init(|| {
                    let first = lookup_ranges(model, &self.dc, streamed);
                    Spilled::new(Arc::new(Mutex::new(spiller)), ranges, first)
                })
            }
        };
        self.stop_streaming(
            res,
            spilled,
            limit::other_memory(self.decoded),
            "the memory budget's decodes keep reading from the disk the compressed bytes the \
             limit reclaimed between passes",
        );
        res.stop_counting_pressure();
    }

    /// The budget's own memory (the streamed tensors' working set) and the compressed bytes
    /// it decodes from no longer fit, `why` (a batch of a budgeted model is still short with
    /// every resident weight moved to the file, or its decodes keep reading from the disk):
    /// what streaming held goes back ([`Residency::release_streaming`]), and its streamed
    /// tensors are decoded for good ([`Residency::decode_for_good`]). As much of the weights
    /// moves to the file, a batch of chunks at a time as they are written, as the limit then
    /// lacks for them and `also` (room for computing, and the buffers of the batch that
    /// asked; [`limit::stop_quota`]: the load's rule, the lookup table first); the
    /// model holds those as plain llama.cpp's mmap does, as pages the limit reclaims and the
    /// disk gives back, the rest as a load without a budget does, and decodes nothing more
    /// but a lookup-only table's rows ([`Residency::stays_compressed`]: Qwen2.5-Coder-1.5B
    /// `40%,file` under 1050 MiB, 48 tokens, session 63, four runs each: 14.2-15.2 t/s moving
    /// nothing, against 11.5-12.9 decoding its 125 MiB table too and moving 124 MiB). Where part
    /// stays in memory, a later batch that does not fit moves more of the weights, those
    /// decoded for good too ([`Pending::move_more`]).
    /// Measured before (session 60): SmolLM2 `50%,file` under llama-perplexity and a 112 MiB
    /// cap thrashed past 120 s or was OOM-killed, with 15.8 MiB resident moved and the batch
    /// still 13.2 MiB short, where plain mmap ran in 10.6 s.
    fn stop_streaming(&self, res: &Residency, spilled: &Spilled, also: u64, why: &str) {
        let model = self.model as *const sys::llama_model;
        // A lookup-only table stays compressed ([`Residency::stays_compressed`]).
        let by_rows = res.stays_compressed_bytes();
        let streamed = res
            .plan
            .decoded_weight_bytes
            .saturating_sub(res.plan.resident_bytes)
            .saturating_sub(by_rows);
        let page = crate::io::page_size() as u64;
        let mut spiller = spilled.spiller.lock().unwrap_or_else(|e| e.into_inner());
        let before = spiller.moved();
        let began = std::time::Instant::now();
        // At most every weight not moved yet: whole pages, a tensor's range may begin and end
        // inside a page each.
        let pages = 2 * page * res.plan.streamed_count() as u64;
        let most = streamed
            .saturating_add(pages)
            .saturating_add(spiller.unmoved_bytes(&spilled.ranges));
        if let Err(e) = spiller.allow(most) {
            crate::log_line!(
                "dcgguf: memory: {why}, and its streamed weights cannot move to the file ({e}); \
                 they stay streamed"
            );
            self.settled.store(true, Ordering::Relaxed);
            return;
        }
        // SAFETY: no graph of the model computes: this runs on the thread inside
        // llama_decode/encode/process or llama_init_from_model, either in a check
        // ([`before_allocation`]: `spill_resident`) or in the graph callback once a range of
        // nodes has been computed and before the next is asked about (`give_up_streaming`),
        // and contexts of one model do not compute concurrently, nor while one is created (a
        // budget's documented limit); every context of the model runs the residency's graph
        // callback.
        let to_decode = unsafe { res.release_streaming() };
        // What streaming held is back: as much of the weights moves as the limit needs for
        // the decoded bytes about to be written, as at a load without a budget.
        let headroom = limit::headroom();
        // A resident lookup table not moved yet (a streamed one stays compressed).
        let lookup_unmoved = spiller.unmoved_bytes(&spilled.first);
        let quota = limit::stop_quota(
            self.decoded,
            to_decode,
            also,
            lookup_unmoved,
            headroom.as_ref(),
            most,
        );
        spiller.cap(quota);
        // SAFETY: as above; the resident lookup table's and each piece `keep` gets are memory
        // of the model's weights in llama.cpp's CPU weight buffer (for `keep`, decoded), alive
        // until the model is freed, which nothing else touches meanwhile.
        unsafe { spiller.take_rest_of_lookup(&spilled.first) };
        let decoded = unsafe { res.decode_for_good(|addr, len| spiller.take(addr, len)) };
        // The pages tensors share with their neighbours, and those of tensors decoded in
        // place that were handed over whole: found where llama.cpp holds them, the weights
        // pointed back at their own memory by the decode. Then the resident ones, as far as
        // the quota goes.
        let streams = &res.plan.streamed;
        let decoded_ranges = movable_ranges(model, &self.dc, |i| {
            streams.get(i) != Some(&true) || res.stays_compressed(i)
        });
        if let Ok(ranges) = decoded_ranges {
            // SAFETY: as above, for the streamed tensors' memory, all of it decoded now.
            unsafe { spiller.take_rest(&ranges) };
            spilled.decoded_for_good(ranges);
        }
        // SAFETY: as above, for the resident tensors' memory.
        unsafe { spiller.take_rest(&spilled.ranges) };
        let moved = spiller.moved() - before;
        let all_moved = quota >= most;
        // Where part of the weights stays in memory, a later batch that does not fit moves
        // more of the resident ones ([`Pending::move_more`]).
        self.settled
            .store(all_moved || spiller.failure().is_some(), Ordering::Relaxed);
        let free = headroom.map_or_else(String::new, |h| {
            format!(
                " ({:.0} MiB free under the limit once streaming let go)",
                mib(h.bytes)
            )
        });
        let moves = if all_moved {
            format!(
                "all of the weights moved to the file ({:.1} MiB), which the limit may reclaim \
                 as plain llama.cpp's mapped model",
                mib(moved)
            )
        } else if moved == 0 {
            format!("none of the weights had to move to the file{free}")
        } else {
            format!(
                "{:.1} MiB of the weights moved to the file, as far as the limit needs{free}, \
                 which it may reclaim as plain llama.cpp's mapped model",
                mib(moved)
            )
        };
        let table = if by_rows > 0 {
            format!(
                " (but for the lookup table, {:.1} MiB, whose rows decode for each lookup)",
                mib(by_rows)
            )
        } else {
            String::new()
        };
        match (decoded, spiller.failure()) {
            (Ok(bytes), None) => crate::log_line!(
                "dcgguf: memory: {why}: the budget stops streaming; its {:.1} MiB of streamed \
                 weights are decoded for good{table}, and {moves}; {:.0} ms",
                mib(bytes),
                began.elapsed().as_secs_f64() * 1e3
            ),
            (Ok(_), Some(e)) => crate::log_line!(
                "dcgguf: memory: {why}: the budget stopped streaming, but moving its weights \
                 to the file stopped after {:.1} MiB ({e}); the rest stay in memory",
                mib(moved)
            ),
            // Said by the residency's failure, which stops the model's computes.
            (Err(_), _) => {}
        }
    }

    /// Opens a file for the decoded weights of every tensor `skip` does not name (by index
    /// in `dc`), `what` in the log, and moves them there as far as the batch needs
    /// ([`Pending::move_more`]): what the batch still lacks after. An error: no file could be
    /// made, or the tensors could not be found in llama.cpp's memory.
    fn spill_all_but(
        &self,
        skip: impl Fn(usize) -> bool + Copy,
        what: &str,
        buffer: u64,
        work: u64,
        headroom: limit::Headroom,
    ) -> Result<u64, RefitError> {
        let model = self.model as *const sys::llama_model;
        let ranges = movable_ranges(model, &self.dc, skip)?;
        let first = lookup_ranges(model, &self.dc, skip);
        let spiller = Spiller::open(0, &self.spill_dirs).map_err(RefitError::Spill)?;
        crate::log_line!(
            "dcgguf: memory: moving the {what} to an unnamed file in {}, as far as {} needs",
            spiller.dir().display(),
            who()
        );
        let spilled = self
            .spilled
            .get_or_init(|| Spilled::new(Arc::new(Mutex::new(spiller)), ranges, first));
        let short = self.move_more(spilled, buffer, work, headroom);
        self.measure_moved_pages();
        Ok(short)
    }
}

impl Pending {
    /// What a batch allocating `buffer` bytes (and `work`) needs free under the limit: both,
    /// and room for computing ([`limit::other_memory`]).
    fn need(&self, buffer: u64, work: u64) -> u64 {
        buffer
            .saturating_add(work)
            .saturating_add(limit::other_memory(self.decoded))
    }

    /// What that batch lacks in `headroom` and `spare` bytes of moved weights still in memory
    /// that it may take (the limit reclaims them first; [`limit::spare_of_moved`]): 0 where
    /// it fits.
    fn lack(&self, buffer: u64, work: u64, headroom: &limit::Headroom, spare: u64) -> u64 {
        self.need(buffer, work)
            .saturating_sub(headroom.bytes.saturating_add(spare))
    }

    /// Moves more of a spilled model's weights to its file if `buffer` bytes, with `work`
    /// and room for computing, do not fit in `headroom` and the moved pages in memory beyond
    /// the room the moved weights keep (which the limit may reclaim: `headroom` counts them
    /// as used; [`limit::spare_of_moved`]): twice what is lacking, what
    /// is left of the lookup table to move once, and [`limit::SPILL_SLACK`], as at the load
    /// ([`limit::to_move_for`]). Returns what the batch still lacks after: 0 where it fits
    /// (or nothing more can move), else what moving every weight it may move left short.
    fn move_more(
        &self,
        spilled: &Spilled,
        buffer: u64,
        work: u64,
        headroom: limit::Headroom,
    ) -> u64 {
        let need = self.need(buffer, work);
        let mut spiller = spilled.spiller.lock().unwrap_or_else(|e| e.into_inner());
        let in_memory = spiller.resident();
        let lookup_moved = spilled
            .lookup_bytes
            .saturating_sub(spiller.unmoved_bytes(&spilled.first));
        let read_per_pass = spiller.moved().saturating_sub(lookup_moved);
        let spare = limit::spare_of_moved(in_memory, read_per_pass);
        let lack = self.lack(buffer, work, &headroom, spare);
        let head = format!(
            "dcgguf: memory: {} needs a {:.0} MiB buffer, {:.0} MiB with room for \
             computing; {:.0} MiB free under the limit ({}), and {:.0} MiB of the weights \
             moved to a file in memory, which the limit may reclaim but for half of the \
             {:.0} MiB that every pass reads back",
            who(),
            mib(buffer),
            mib(need),
            mib(headroom.bytes),
            limit::source_name(&headroom),
            mib(in_memory),
            mib(read_per_pass)
        );
        // The buffer takes room from the moved pages, or this moves more: the next batch's
        // end measures their room again ([`after_compute`]).
        ROOM_CHANGED.store(true, Ordering::Relaxed);
        if lack == 0 {
            if crate::llama::verbose() {
                crate::log_line!("{head}: it fits");
            }
            return 0;
        }
        let before = spiller.moved();
        // The lookup table's part counts once, as at the load: a token reads a row of it, so
        // the limit reclaims the rows no token reads. MiniLM F16 under llama-embedding and a
        // 366.6 MiB cap, 14 MiB short at its first batch, moved its 22.4 MiB token table and
        // 9.9 MiB of layers, read back from the disk at every batch: 1.043 s a run, against
        // 1.021 moving 18.1 MiB of the table alone (plain mmap 0.999; medians of eight
        // alternating cold runs, 2026-12-03).
        let more = limit::to_move_for(lack, spiller.unmoved_bytes(&spilled.first))
            .min(spilled.movable().saturating_sub(before));
        if let Err(e) = spiller.allow(more) {
            crate::log_line!("{head}: cannot move more of them ({e}); the rest stay in memory");
            self.settled.store(true, Ordering::Relaxed);
            return 0;
        }
        // SAFETY: the model's tensors in llama.cpp's CPU weight buffer, alive until the model
        // is freed (which forgets it first); no graph of the model computes
        // ([`before_allocation`]), and contexts of one model do not compute concurrently,
        // nor while one is created (the documented limit of a budget, and of this check).
        unsafe { spilled.take_more(&mut spiller) };
        // Every moved page read in order until then.
        spiller.keep_in_memory(0);
        let moved = spiller.moved();
        match spiller.failure() {
            None => crate::log_line!(
                "{head}: {:.1} MiB short; moved {:.1} MiB more of the decoded weights to \
                 the file ({:.1} of {:.1} MiB now)",
                mib(lack),
                mib(moved - before),
                mib(moved),
                mib(spilled.movable())
            ),
            Some(e) => crate::log_line!(
                "{head}: {:.1} MiB short; moving more of the decoded weights stopped \
                 after {:.1} MiB ({e}); the rest stay in memory",
                mib(lack),
                mib(moved - before)
            ),
        }
        if spiller.failure().is_some() {
            self.settled.store(true, Ordering::Relaxed);
            return 0;
        }
        if moved >= spilled.movable() {
            self.settled.store(true, Ordering::Relaxed);
        }
        lack.saturating_sub(moved - before)
    }
}

/// Tokens a graph of the batch this thread computes holds at most: llama.cpp computes a
/// batch in micro-batches of at most the context's `n_ubatch` tokens (MiniLM under
/// llama-embedding: 2048, one sentence array a micro-batch), and the batch's own count where
/// the call gives it. 0 outside a compute call or where neither is known.
fn batch_tokens() -> u64 {
    let Some((ctx, tokens)) = hooks::current_batch() else {
        return 0;
    };
    match (tokens, n_ubatch(ctx)) {
        (Some(t), Some(u)) => t.min(u),
        (Some(n), None) | (None, Some(n)) => n,
        (None, None) => 0,
    }
}

/// The micro-batch size of `ctx` (a live context: the one this thread computes in, or one
/// just created), where the host has `llama_n_ubatch`.
fn n_ubatch(ctx: *mut sys::llama_context) -> Option<u64> {
    type NUbatchFn = unsafe extern "C" fn(*const sys::llama_context) -> u32;
    static N_UBATCH: OnceLock<Option<usize>> = OnceLock::new();
    N_UBATCH
        .get_or_init(|| host::real_function(c"llama_n_ubatch", 0))
        .map(|f| {
            // SAFETY: the host's llama_n_ubatch (signature NUbatchFn, llama.h at the pinned
            // commit), called with a live context (the caller's contract).
            u64::from(unsafe { std::mem::transmute::<usize, NUbatchFn>(f)(ctx) })
        })
}

/// Why a loaded model could not switch to a budget.
#[derive(Debug, thiserror::Error)]
pub enum RefitError {
    #[error("the budget streams no tensor of this model")]
    NothingStreamed,
    #[error("llama.cpp function {0} not found in this process: the loaded weights cannot be found")]
    Missing(&'static str),
    #[error("no weight that the budget streams is in llama.cpp's CPU weight buffer")]
    NotFound,
    #[error("tensor {0} is not in the loaded model")]
    TensorMissing(String),
    #[error(transparent)]
    Decode(#[from] crate::dc::DcError),
    #[error(transparent)]
    Spill(super::spill::SpillError),
}

/// Switches `p`'s model to a budget of `settings`: its streamed tensors' pages are given
/// back and decoded again before each use.
///
/// # Safety
/// No graph of the model computes, and every one to come runs the residency's callback.
unsafe fn switch(p: &Pending, settings: Settings) -> Result<Arc<Residency>, RefitError> {
    let api = api()?;
    let res = Residency::new(p.dc.clone(), settings).ok_or(RefitError::NothingStreamed)?;
    res.set_compute_threads(*p.threads.lock().unwrap_or_else(|e| e.into_inner()));
    let model = p.model as *const sys::llama_model;
    // SAFETY: forwarded from the caller.
    let (count, bytes) = unsafe { res.adopt_loaded(|name| api.tensor_memory(model, name)) };
    if count == 0 {
        return Err(RefitError::NotFound);
    }
    // As after a budgeted load: compressed bytes stay mapped between decodes, and are in the
    // page cache as recently used.
    p.dc.set_release_after_decode(false);
    res.warm_adopted();
    crate::log_line!(
        "{} ({} tensors, {:.1} MiB given back)",
        res.summary(),
        count,
        bytes as f64 / (1u64 << 20) as f64
    );
    // SAFETY: the live model whose pending switch this is; no graph computes (the caller's).
    res.know_tensors(|name| unsafe { weight_tensor(p.model as *const sys::llama_model, name) });
    register_model(p.model as *mut sys::llama_model, res.clone());
    Ok(res)
}

/// The `ggml_tensor` of `model`'s weight `name` and its data pointer, where the host's
/// llama.cpp can be asked for it ([`Residency::know_tensors`]).
///
/// # Safety
/// `model` is a live model that no graph computes with yet.
pub unsafe fn weight_tensor(model: *const sys::llama_model, name: &str) -> Option<(usize, usize)> {
    let api = api().ok()?;
    let name = CString::new(name).ok()?;
    // SAFETY: a live model (the caller's) and a C string; get_tensor only looks the name
    // up.
    let t = unsafe { (api.get_tensor)(model, name.as_ptr()) };
    if t.is_null() {
        return None;
    }
    // SAFETY: a tensor of the live model; no graph computes yet, so nothing writes it.
    let data = unsafe { (*t).data } as usize;
    Some((t as usize, data))
}

/// `const ggml_tensor * llama_model::get_tensor(const char * name) const` of the pinned
/// llama.cpp (src/llama-model.h), which llama.h does not export in C: its Itanium C++ ABI
/// name, called with `this` as the first argument.
const GET_TENSOR: &std::ffi::CStr = c"_ZNK11llama_model10get_tensorEPKc";

type GetTensorFn =
    unsafe extern "C" fn(*const sys::llama_model, *const c_char) -> *const sys::ggml_tensor;
type BufferTypeFn = unsafe extern "C" fn(sys::ggml_backend_buffer_t) -> *mut c_void;
type CpuBufferTypeFn = unsafe extern "C" fn() -> *mut c_void;
type NbytesFn = unsafe extern "C" fn(*const sys::ggml_tensor) -> usize;
type TensorSetFn = unsafe extern "C" fn(*mut sys::ggml_tensor, *const c_void, usize, usize);
type BuftNameFn = unsafe extern "C" fn(*mut c_void) -> *const c_char;

/// The name of ggml-cpu's repacking buffer type (ggml/src/ggml-cpu/repack.cpp at the pinned
/// commit): CPU memory from the plain CPU buffer type, written once by the conversion in its
/// `set_tensor`.
const REPACKED_CPU: &std::ffi::CStr = c"CPU_REPACK";

/// The host functions that find a loaded tensor's memory.
struct Api {
    get_tensor: GetTensorFn,
    buffer_type: BufferTypeFn,
    cpu_buffer_type: CpuBufferTypeFn,
    nbytes: NbytesFn,
    tensor_set: TensorSetFn,
    buft_name: BuftNameFn,
}

/// Resolved once: a load that moves repacked weights looks them up for every tensor it
/// stages, and the batch-time checks on every checked allocation.
static API: OnceLock<Result<Api, &'static str>> = OnceLock::new();

fn api() -> Result<&'static Api, RefitError> {
    API.get_or_init(resolve_api)
        .as_ref()
        .map_err(|missing| RefitError::Missing(missing))
}

/// The host's functions, or the name of the first one missing.
fn resolve_api() -> Result<Api, &'static str> {
    let need = |name: &'static std::ffi::CStr| {
        host::real_function(name, 0).ok_or(name.to_str().unwrap_or("?"))
    };
    let get_tensor = need(GET_TENSOR)?;
    let buffer_type = need(c"ggml_backend_buffer_get_type")?;
    let cpu_buffer_type = need(c"ggml_backend_cpu_buffer_type")?;
    let nbytes = need(c"ggml_nbytes")?;
    let tensor_set = need(c"ggml_backend_tensor_set")?;
    let buft_name = need(c"ggml_backend_buft_name")?;
    // SAFETY: each address is the named function of the host's llama.cpp/ggml, whose
    // signature at the pinned commit is the type it is transmuted to (ggml-backend.h,
    // ggml-cpu.h, ggml.h; llama_model::get_tensor is a non-virtual const member function,
    // which the Itanium C++ ABI calls with `this` first).
    unsafe {
        Ok(Api {
            get_tensor: std::mem::transmute::<usize, GetTensorFn>(get_tensor),
            buffer_type: std::mem::transmute::<usize, BufferTypeFn>(buffer_type),
            cpu_buffer_type: std::mem::transmute::<usize, CpuBufferTypeFn>(cpu_buffer_type),
            nbytes: std::mem::transmute::<usize, NbytesFn>(nbytes),
            tensor_set: std::mem::transmute::<usize, TensorSetFn>(tensor_set),
            buft_name: std::mem::transmute::<usize, BuftNameFn>(buft_name),
        })
    }
}

impl Api {
    /// Decodes `dc`'s tensor `tensor` and writes it into `model`'s tensor of that name,
    /// wherever llama.cpp holds it (a device, a repacked buffer), a chunk at a time.
    ///
    /// # Safety
    /// `model` is live and none of its graphs computes.
    unsafe fn write_tensor(
        &self,
        model: *const sys::llama_model,
        dc: &DcFile,
        tensor: usize,
    ) -> Result<(), RefitError> {
        let view = dc.tensor_view(tensor);
        let missing = || RefitError::TensorMissing(view.name.clone());
        let name = CString::new(view.name.as_str()).map_err(|_| missing())?;
        // SAFETY: a live model (the caller's) and a C string; get_tensor only looks it up.
        let t = unsafe { (self.get_tensor)(model, name.as_ptr()) };
        // SAFETY: a tensor of the live model.
        if t.is_null() || unsafe { (self.nbytes)(t) } as u64 != view.raw_bytes {
            return Err(missing());
        }
        let chunk = u64::from(dc.index.tensors[tensor].chunk_raw).clamp(1, view.raw_bytes.max(1));
        let mut buf = vec![0u8; chunk as usize];
        let mut at = 0;
        while at < view.raw_bytes {
            let n = (view.raw_bytes - at).min(chunk) as usize;
            dc.read_tensor(tensor, at, &mut buf[..n])?;
            // SAFETY: `t` is a live tensor of `nbytes == raw_bytes` bytes, `[at, at + n)` lies
            // inside it, and `buf` holds `n` bytes; ggml_backend_tensor_set copies them into
            // the tensor's buffer, whatever its backend, while no graph computes (the
            // caller's). get_tensor returns a const pointer to the model's own (mutable)
            // tensor.
            unsafe {
                (self.tensor_set)(
                    t as *mut sys::ggml_tensor,
                    buf.as_ptr().cast(),
                    at as usize,
                    n,
                )
            };
            at += n as u64;
        }
        Ok(())
    }

    /// The address and length of tensor `name`'s bytes when they lie in a plain CPU buffer
    /// (the file's bytes as they are: not repacked, not on a device), else `None`.
    fn tensor_memory(&self, model: *const sys::llama_model, name: &str) -> Option<(usize, usize)> {
        self.cpu_tensor_memory(model, name, false)
    }

    /// [`Api::tensor_memory`], or also, with `repacked`, in a repacked CPU buffer
    /// ([`Api::cpu_memory`]).
    fn cpu_tensor_memory(
        &self,
        model: *const sys::llama_model,
        name: &str,
        repacked: bool,
    ) -> Option<(usize, usize)> {
        let name = CString::new(name).ok()?;
        // SAFETY: a live model (the caller's, not freed while contexts are created for it)
        // and a C string; get_tensor only looks the name up.
        let t = unsafe { (self.get_tensor)(model, name.as_ptr()) };
        // SAFETY: a tensor of the live model, or null.
        unsafe { self.cpu_memory(t, repacked) }
    }

    /// The address and length of `t`'s own bytes (not a view) when they lie in a plain CPU
    /// buffer, or also, with `repacked`, in llama.cpp's repacked CPU buffer (CPU memory
    /// holding the bytes converted for faster kernels).
    ///
    /// # Safety
    /// `t` is null or a live ggml tensor.
    unsafe fn cpu_memory(
        &self,
        t: *const sys::ggml_tensor,
        repacked: bool,
    ) -> Option<(usize, usize)> {
        if t.is_null() {
            return None;
        }
        // SAFETY: a live tensor (the caller's).
        let (buffer, data, view) = unsafe { ((*t).buffer, (*t).data, (*t).view_src) };
        if buffer.is_null() || data.is_null() || !view.is_null() {
            return None;
        }
        // SAFETY: a live buffer of the tensor; the CPU buffer type is a static object.
        let buft = unsafe { (self.buffer_type)(buffer) };
        // SAFETY: the CPU buffer type is a static object.
        let cpu = buft == unsafe { (self.cpu_buffer_type)() };
        let in_place = cpu
            || (repacked && {
                // SAFETY: a live buffer type; its name is a static C string.
                let name = unsafe { (self.buft_name)(buft) };
                // SAFETY: ggml returns a NUL-terminated static string (checked not null).
                !name.is_null() && unsafe { std::ffi::CStr::from_ptr(name) } == REPACKED_CPU
            });
        // SAFETY: a live tensor.
        let len = unsafe { (self.nbytes)(t) };
        in_place.then_some((data as usize, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A later batch that does not fit moves the weights a stop decoded for good too, once
    /// the lookup table and the resident weights have moved: [`Spilled::movable`] counts them
    /// from the stop on, and [`Spilled::take_more`] reaches them last.
    #[test]
    fn a_later_move_takes_the_weights_decoded_at_a_stop_after_the_resident_ones() {
        let page = crate::io::page_size();
        let len = 48 * page;
        let (mut buf, want, base) = super::super::spill::patterned_memory(len, 9);
        let at = |p: usize| base + p * page;
        // Resident weights in pages 0-15, the first four a lookup table; pages 16-31 the
        // streamed weights a stop decodes; pages 32-47 not the model's.
        let lookup = vec![(at(0), 4 * page)];
        let resident = vec![(at(0), 4 * page), (at(4), 12 * page)];
        let decoded = vec![(at(16), 10 * page), (at(26), 6 * page)];
        let here = std::env::current_dir().unwrap();
        let spiller = Spiller::open(6 * page as u64, &[std::env::temp_dir(), here]).unwrap();
        let spilled = Spilled::new(
            Arc::new(Mutex::new(spiller)),
            resident.clone(),
            lookup.clone(),
        );
        assert_eq!(spilled.movable() as usize, 16 * page);
        let mut s = spilled.spiller.lock().unwrap();
        // SAFETY: the buffer is ours and untouched during the calls.
        unsafe { spilled.take_more(&mut s) };
        assert!(s.failure().is_none());
        assert_eq!(s.moved() as usize, 6 * page);
        assert_eq!(s.unmoved_bytes(&lookup), 0, "the lookup table first");
        assert_eq!(s.unmoved_bytes(&resident) as usize, 10 * page);
        // The stop: its weights decoded for good count from now on, and move after the
        // resident ones.
        spilled.decoded_for_good(decoded.clone());
        assert_eq!(spilled.movable() as usize, 32 * page);
        s.allow(14 * page as u64).unwrap();
        // SAFETY: as above.
        unsafe { spilled.take_more(&mut s) };
        assert!(s.failure().is_none());
        assert_eq!(s.moved() as usize, 20 * page);
        assert_eq!(s.unmoved_bytes(&resident), 0, "every resident weight moved");
        assert_eq!(
            s.unmoved_bytes(&decoded) as usize,
            12 * page,
            "four pages of the decoded weights moved, from their first on"
        );
        assert_eq!(s.unmoved_bytes(&[(at(16), 4 * page)]), 0);
        // All of them, then nothing more: the rest of the buffer is not the model's.
        s.allow(u64::try_from(len).unwrap()).unwrap();
        // SAFETY: as above.
        unsafe { spilled.take_more(&mut s) };
        assert_eq!(s.moved(), spilled.movable());
        assert_eq!(s.unmoved_bytes(&[(at(32), 16 * page)]) as usize, 16 * page);
        assert_eq!(crate::io::hash::xxh3_64(&buf), want, "same bytes");
        drop(s);
        drop(spilled);
        buf[len - 1] ^= 1;
        drop(buf);
    }
}
