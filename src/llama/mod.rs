//! llama.cpp integration: load a DC-GGUF through llama.cpp's own loader.
//!
//! The DC file is opened with [`DcFile`] and wrapped in a read-only `FILE *` (glibc
//! `fopencookie`, see [`stream`]) that serves the ORIGINAL GGUF bytes, decoding chunks as
//! llama.cpp reads them. That `FILE *` goes to the host's `llama_model_load_from_file_ptr`
//! with a non-mmap load mode; llama.cpp does the rest. Plain GGUF files go straight to the
//! host's `llama_model_load_from_file`.
//!
//! The host's llama.cpp is found at run time ([`host`]); nothing of llama.cpp or ggml is
//! linked into this crate. [`sys`] holds bindgen output for the few llama.h items used.

pub mod actmax;
pub mod budget;
pub mod covar;
pub mod early;
mod fit_pass;
pub mod fread;
pub mod hooks;
pub mod host;
pub mod prefault;
pub mod stream;
#[cfg(feature = "bench-throttle")]
pub mod throttle;
#[cfg(not(feature = "bench-throttle"))]
#[path = "throttle_off.rs"]
pub mod throttle;
#[rustfmt::skip]
pub mod sys;
pub mod user_load;

use std::ffi::CStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use crate::dc::{DcError, DcFile};
use crate::gguf::split::SplitName;
use budget::Residency;
use stream::{CookieFile, Source, Stream};
use throttle::throttle_from_env;

/// Whether `DCGGUF_VERBOSE` asks for dcgguf's diagnostic lines (set, and not "0").
pub fn verbose() -> bool {
    std::env::var_os("DCGGUF_VERBOSE").is_some_and(|v| v != "0")
}

/// Why a model did not load.
#[derive(Debug, thiserror::Error)]
pub enum LlamaError {
    /// The host process has no (compatible) llama.cpp.
    #[error(transparent)]
    Host(#[from] host::HostError),
    #[error(transparent)]
    Dc(#[from] DcError),
    #[error(
        "{path}: is part {index} of a {count}-part split DC-GGUF model, which llama.cpp cannot \
         load through a FILE*. Merge it first: `dcgguf decompress` each part, \
         `llama-gguf-split --merge <first-part>.gguf merged.gguf`, then \
         `dcgguf compress merged.gguf merged.dc.gguf` (or load the decompressed parts directly)"
    )]
    Split {
        path: String,
        index: u64,
        count: u64,
    },
    /// llama.cpp gave up on a DC-GGUF; `cause` is what our stream hit first, if anything
    /// (a corrupt chunk, an I/O error), else llama.cpp refused the decoded model itself.
    #[error("{path}: llama.cpp failed to load the model{}", cause.as_ref().map(|c| format!(": {c}")).unwrap_or_default())]
    LoadFailed {
        path: String,
        cause: Option<stream::StreamError>,
    },
    /// `llama_model_init_from_user` gave up on a DC-GGUF ([`user_load`]); `cause` is what
    /// our tensor callback hit first, if anything, else llama.cpp refused the model itself.
    #[error("{path}: llama.cpp failed to load the model (user route){}", cause.as_ref().map(|c| format!(": {c}")).unwrap_or_default())]
    UserLoadFailed {
        path: String,
        cause: Option<user_load::UserRouteError>,
    },
    /// A plain (non-DC) file that the host's llama.cpp refused; it has said why.
    #[error("{0}: llama.cpp failed to load the model")]
    PlainFailed(String),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// A model path that cannot be passed on (NULL, or with a NUL byte inside).
    #[error("model path {0:?} is not a usable path")]
    BadPath(String),
    /// A lookup table that the load skipped, to be decoded at each lookup, could not be
    /// put where llama.cpp holds it (the model was freed).
    #[error("{path}: {source}")]
    Lookups {
        path: String,
        source: budget::refit::RefitError,
    },
    /// A memory budget that cannot be used as given.
    #[error(transparent)]
    Budget(#[from] budget::spec::SpecError),
}

/// What is at a model path.
pub enum ModelKind {
    /// Not a DC-GGUF file (a plain GGUF, or something llama.cpp will judge itself).
    Plain,
    Dc(Arc<DcFile>),
}

/// Opens `path` if it is a DC-GGUF file. Files that are not DC-GGUF (including unreadable or
/// non-GGUF ones) are [`ModelKind::Plain`], so llama.cpp reports on them as usual.
pub fn classify(path: &Path) -> Result<ModelKind, LlamaError> {
    match DcFile::open_without_arrays(path) {
        Ok(dc) => Ok(ModelKind::Dc(Arc::new(dc))),
        Err(DcError::NotDc { .. } | DcError::Gguf { .. } | DcError::Io { .. }) => {
            Ok(ModelKind::Plain)
        }
        Err(e) => Err(e.into()),
    }
}

/// Parameters for loading through the cookie stream: non-mmap (a cookie `FILE *` has no file
/// descriptor to map), mlock kept if asked for, lazy reading (which needs mmap) off.
pub fn stream_params(mut p: sys::llama_model_params) -> sys::llama_model_params {
    p.load_mode = match p.load_mode {
        sys::llama_load_mode_LLAMA_LOAD_MODE_MLOCK
        | sys::llama_load_mode_LLAMA_LOAD_MODE_MMAP_MLOCK => {
            sys::llama_load_mode_LLAMA_LOAD_MODE_MLOCK
        }
        _ => sys::llama_load_mode_LLAMA_LOAD_MODE_NONE,
    };
    p.lazy_mode = sys::llama_lazy_mode_LLAMA_LAZY_MODE_OFF;
    p
}

fn split_info(dc: &DcFile, path: &Path) -> Option<(u64, u64)> {
    let count = dc.original.get("split.count").and_then(|v| v.as_u64());
    let index = dc.original.get("split.no").and_then(|v| v.as_u64());
    match (count, index) {
        (Some(c), i) if c > 1 => Some((i.unwrap_or(0) + 1, c)),
        _ => {
            let name = SplitName::parse(path.file_name()?.to_str()?)?;
            (name.count > 1).then_some((u64::from(name.index), u64::from(name.count)))
        }
    }
}

/// Whether a load with `params` reads only the model's metadata: llama.cpp's fitting pass
/// (`no_alloc`, before the load that follows it) or a vocabulary-only load.
pub(crate) fn reads_only_metadata(params: &sys::llama_model_params) -> bool {
    params.vocab_only || params.no_alloc
}

/// Ends a load's uncaching of `dc` ([`DcFile::finish_uncache`]). One that read only the
/// metadata keeps the metadata cached: the full load that follows reads it again, and drops
/// it itself ([`DcFile::uncache_metadata`]).
fn finish_uncache(dc: &DcFile, params: &sys::llama_model_params) {
    if reads_only_metadata(params) {
        dc.finish_uncache_keeping_metadata();
    } else {
        dc.finish_uncache();
    }
}

/// Loads a DC-GGUF that is already open through `load_from_file_ptr`.
pub fn load_dc(
    host: &host::Host,
    dc: Arc<DcFile>,
    path: &Path,
    params: sys::llama_model_params,
) -> Result<*mut sys::llama_model, LlamaError> {
    if let Some((index, count)) = split_info(&dc, path) {
        return Err(LlamaError::Split {
            path: path.display().to_string(),
            index,
            count,
        });
    }
    let mut budget = budget::spec::settings().map_err(LlamaError::Budget)?;
    let pool = load_pool();
    // The decoded weight bytes where the default chose no budget: its batches check again
    // (budget::refit), whether it moved part of them to a file (`spill`) or not.
    let mut default_none = None;
    let mut spill = None;
    let mut spill_decoded = None;
    if budget.is_none() && !budget::spec::asked() && !reads_only_metadata(&params) {
        if let Some(short) = short_without_hooks(&dc, &params)
            && let Some(loaded) =
                load_decoded_file(host, &dc, path, params, &short, pool.as_deref())
        {
            return loaded;
        }
        let decoded;
        (budget, decoded, spill) = default_budget(&dc, path);
        default_none = decoded.filter(|_| budget.is_none() && spill.is_none());
        spill_decoded = decoded.filter(|_| spill.is_some());
    }
    // A budget and a spill both work on the reads of the FILE* stream.
    let route = match user_load::route_from_env() {
        user_load::Route::User if budget.is_some() || spill.is_some() => {
            crate::log_line!(
                "dcgguf: {} needs the stream route; ignoring {}=user",
                if budget.is_some() {
                    "a memory budget"
                } else {
                    "moving the decoded weights to a file"
                },
                user_load::ROUTE_ENV
            );
            user_load::Route::Stream
        }
        route => route,
    };
    if verbose() {
        crate::log_line!(
            "dcgguf: loading {} (DC-GGUF, {} -> {} bytes) through llama.cpp's {}",
            path.display(),
            dc.stored_size(),
            dc.original_size(),
            match route {
                user_load::Route::Stream => "FILE* loader",
                user_load::Route::User => "llama_model_init_from_user",
            }
        );
    }
    if route == user_load::Route::User {
        match user_load::load_dc_user(host, &dc, path, params, pool.clone())? {
            user_load::UserLoad::Loaded(model) => {
                release_decode_buffers(pool.as_deref());
                return Ok(model);
            }
            user_load::UserLoad::Unsupported(why) => crate::log_line!(
                "dcgguf: {}: user route not possible ({why}); loading through the FILE* stream",
                path.display()
            ),
        }
    }
    // A model the default loads without a budget keeps its lookup tables compressed
    // (budget::refit): the stream skips them, where decoding them would only fill pages given
    // back right after the load (MiniLM BF16: 22.4 of its 44 MiB).
    let deferred_lookups = (default_none.is_some() && can_defer_lookups(route))
        .then(|| budget::refit::lookups_to_defer(&dc))
        .flatten();
    let mut params = params;
    let res = match budget {
        None => None,
        Some(settings) => match hooks::budget_hooks_active() {
            Ok(()) => {
                // Budgeted tensors are decoded in place in CPU memory: no GPU copies, no
                // repacked copies.
                keep_on_cpu(&mut params, "a memory budget keeps the model on the CPU");
                Residency::new(dc.clone(), settings)
            }
            Err(why) => {
                crate::log_line!("dcgguf: warning: {why}; loading without a memory budget");
                None
            }
        },
    };
    if let Some(r) = &res {
        crate::log_line!("{}", r.summary());
    }
    if spill.is_some() {
        // llama.cpp then reads each tensor into its CPU weight buffer, or into a staging
        // buffer that a repacked CPU buffer converts from: CPU memory the spill moves
        // (Stream::with_spill, budget::spill::staged). Repacking stays on: the same
        // computation, so the same output, as plain llama.cpp's.
        keep_layers_on_cpu(&mut params, "weights moved to a file stay on the CPU");
    }
    // Compressed bytes leave our RSS as soon as they are decoded; in a budgeted run with
    // compressed bytes "in RAM" they are kept mapped after the load instead. A cold file's
    // bytes leave the page cache too, a budget's included: the load does not read the
    // tensors a budget streams (they are deferred), so what it decodes is never read again,
    // and a limit would charge it twice (SmolLM2 `50%,ram`: 182.8 MiB charged, 145 of them
    // the process's own, against plain mmap's 141.4).
    dc.set_release_after_decode(true);
    dc.set_uncache_after_decode(true);
    let stream = Stream::new(path, Source::Dc(dc.clone()), throttle_from_env())
        .map_err(|source| LlamaError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .with_pool(pool.clone())
        // Before early decoding, which skips what the stream defers.
        .with_residency(res.clone().or_else(|| deferred_lookups.clone()))
        // Not with a spill: chunks decoded ahead wait in anonymous memory, which a limit that
        // the model does not fit in cannot reclaim.
        .with_early_decode(
            res.is_none()
                && spill.is_none()
                && !reads_only_metadata(&params)
                && early_decode_enabled(),
        )
        .with_spill(spill.clone());
    if verbose() {
        crate::log_line!("dcgguf: loading; process {}", crate::io::rss_report());
    }
    let model = load_stream(host, stream, path, params);
    if spill.is_some() {
        // SAFETY: this thread's load is over: its last read is the loaded model's memory if
        // it loaded (a staging buffer was taken back by `staged` before it was freed).
        unsafe { budget::spill::finish_reads(model.is_ok()) };
    }
    dc.release_mapped_pages();
    finish_uncache(&dc, &params);
    if let Some(r) = &res {
        // Its decodes read through the mapping from now on. A fitting pass's model decodes
        // nothing: its file is rewound for the full load (fit_pass), which asks.
        let ahead = if reads_only_metadata(&params) {
            Vec::new()
        } else {
            r.kept_mapped_tensors()
        };
        dc.end_chunk_reads(&ahead);
    }
    let model = model?;
    if params.no_alloc && !params.vocab_only {
        // llama.cpp's fitting pass: the full load comes next, and takes this open file with
        // its decoded header instead of opening and checking the file again.
        fit_pass::keep(path, dc.clone());
    } else {
        // llama.cpp has read the header; a budget or the batch-time switch keeps `dc` for the
        // model's life, and the header (mostly the vocabulary) would stay resident with it.
        // The stream releases it at the first tensor read already; this is for loads that
        // read none (vocabulary only).
        dc.release_original_header();
    }
    if res.is_some() {
        // `ram` keeps compressed bytes mapped; `file` releases them per layer or per big
        // chunk (Residency::load).
        dc.set_release_after_decode(false);
    }
    release_decode_buffers(pool.as_deref());
    // The stream's chunk buffers are freed, but glibc keeps freed heap memory resident: give
    // it back, or every DC load (llama-completion's allocation-free fitting load included)
    // leaves the process that much bigger than a plain one.
    // SAFETY: malloc_trim only returns free heap memory to the system.
    unsafe { libc::malloc_trim(0) };
    if verbose() {
        crate::log_line!("dcgguf: loaded; process {}", crate::io::rss_report());
    }
    if let Some(r) = res {
        // SAFETY: the model just loaded; no context, so no graph, exists for it yet.
        r.know_tensors(|name| unsafe { budget::refit::weight_tensor(model, name) });
        // A budget is sized before any context exists: its batches are checked as they
        // allocate, and the resident weights move to a file where one would not fit.
        if !params.no_alloc {
            budget::refit::register_budgeted(model, dc.clone(), &r, spill_dirs(path));
        }
        budget::register_model(model, r);
    } else if let Some(shared) = &spill {
        let mut spill = shared.lock().unwrap_or_else(|e| e.into_inner());
        spill.stop_keeping();
        let ranges = match budget::refit::loaded_ranges(model, &dc) {
            Ok(ranges) => {
                // SAFETY: the model's tensors in llama.cpp's CPU weight buffer, just loaded:
                // no context exists yet, so nothing reads them; llama.cpp frees the buffer
                // with free() or munmap.
                unsafe { spill.take_rest(&ranges) };
                Some(ranges)
            }
            Err(e) => {
                crate::log_line!("dcgguf: warning: {e}; tensors' shared pages stay in memory");
                None
            }
        };
        let mib = spill.moved() as f64 / (1u64 << 20) as f64;
        let lookup = match spill.lookup_moved() {
            0 => String::new(),
            b => format!(
                " ({:.1} MiB of them the token embedding's)",
                b as f64 / (1u64 << 20) as f64
            ),
        };
        match spill.failure() {
            None => crate::log_line!(
                "dcgguf: memory: {mib:.1} MiB of decoded weights moved to a file in {}{lookup}",
                spill.dir().display()
            ),
            Some(e) => crate::log_line!(
                "dcgguf: warning: moving decoded weights to a file stopped after {mib:.1} MiB \
                 ({e}); the rest stay in memory"
            ),
        }
        let failed = spill.failure().is_some();
        drop(spill);
        // Its batches move more where they would not fit (the load guessed the context's
        // needs), through the allocation check of the budget hooks; without them, its
        // contexts' creation does (budget::unhooked).
        if let (Some(ranges), Some(decoded), false) = (ranges, spill_decoded, failed) {
            budget::refit::register_spilled(
                model,
                dc.clone(),
                decoded,
                shared.clone(),
                ranges,
                spill_dirs(path),
            );
        }
    } else if let Some(decoded) = default_none
        && route == user_load::Route::Stream
        && let Err(e) =
            budget::refit::register_pending(model, dc, decoded, deferred_lookups, spill_dirs(path))
    {
        // A lookup table the stream skipped is not in the model: it must not compute.
        hooks::model_freed(model, hooks::interposers().model_free);
        return Err(LlamaError::Lookups {
            path: path.display().to_string(),
            source: e,
        });
    }
    Ok(model)
}

/// Loads every weight into llama.cpp's CPU buffer, unrepacked (what a budget works on),
/// warning with `why` when the caller asked for layers on a GPU.
fn keep_on_cpu(params: &mut sys::llama_model_params, why: &str) {
    keep_layers_on_cpu(params, why);
    params.use_extra_bufts = false;
}

/// Loads every layer into CPU memory (repacked where llama.cpp repacks), warning with `why`
/// when the caller asked for layers on a GPU.
fn keep_layers_on_cpu(params: &mut sys::llama_model_params, why: &str) {
    if params.n_gpu_layers > 0 {
        // Explicitly asked for (`-ngl N`, also for RPC devices); -1 is llama.cpp's
        // "automatic" default and says nothing.
        crate::log_line!(
            "dcgguf: warning: {why}; ignoring the request to offload {} layers (n_gpu_layers)",
            params.n_gpu_layers
        );
    }
    params.n_gpu_layers = 0;
}

/// The threads that decode one load, one per CPU; they end with it. Rayon's global pool
/// would start on the first load and stay for the process's life: two idle threads (their
/// stacks, glibc arenas, the kernel's task memory, all charged to the host's memory cgroup)
/// in every host that loaded a DC model once, though a model loaded without a budget
/// decodes nothing more, and one with a budget decodes on the compute threads
/// ([`budget::team`]). None where the system gives no threads: the load then decodes on
/// rayon's global pool, as before.
fn load_pool() -> Option<Arc<rayon::ThreadPool>> {
    crate::io::thread_pool(budget::team::decode_threads(), "dcgguf-load")
        .ok()
        .map(Arc::new)
}

/// Frees the plane buffers and zstd contexts of the threads that decoded a load (this one and
/// the pool's, which end with the load but may outlive this call while llama.cpp still holds
/// the stream): about a chunk's planes each (SmolLM2 through the preload: 0.8 MiB in two
/// threads).
fn release_decode_buffers(pool: Option<&rayon::ThreadPool>) {
    crate::codec::release_thread_buffers();
    if let Some(p) = pool {
        p.broadcast(|_| crate::codec::release_thread_buffers());
    }
}

/// `DCGGUF_EARLY_DECODE=0` turns off decoding during llama.cpp's metadata phase
/// ([`early`]), for comparisons.
fn early_decode_enabled() -> bool {
    std::env::var_os("DCGGUF_EARLY_DECODE").is_none_or(|v| v != "0")
}

fn load_stream(
    host: &host::Host,
    stream: Stream,
    path: &Path,
    params: sys::llama_model_params,
) -> Result<*mut sys::llama_model, LlamaError> {
    let file = CookieFile::open(stream).map_err(|source| LlamaError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // SAFETY: `file` is a valid readable FILE* for the whole call; llama.cpp does not take
    // ownership (llama_file(FILE*) never closes it) nor keep it after returning (lazy mode,
    // the only way to read later, is off and needs mmap).
    let model = unsafe { (host.load_from_file_ptr)(file.as_ptr(), stream_params(params)) };
    let cause = file.take_error();
    drop(file);
    if model.is_null() {
        return Err(LlamaError::LoadFailed {
            path: path.display().to_string(),
            cause,
        });
    }
    Ok(model)
}

use budget::spill::SharedSpiller;

/// Whether a load by `route` without a budget can skip its lookup tables and keep them
/// compressed ([`budget::refit`]): the stream route reads through the hooks that skip them,
/// and the budget hooks serve their rows afterwards.
fn can_defer_lookups(route: user_load::Route) -> bool {
    route == user_load::Route::Stream && hooks::budget_hooks_active().is_ok()
}

/// The budget of a load that asked for none ([`budget::limit`], said in the log): none when
/// the decoded model fits under the memory limit, else one that fits; else, when no budget
/// fits either or the one that fits would cost more each pass than the disk
/// ([`budget::limit::spill_instead`]), none and a file for the decoded weights to move to.
/// Also the decoded weight bytes, when a limit was found.
fn default_budget(
    dc: &DcFile,
    path: &Path,
) -> (Option<budget::Settings>, Option<u64>, Option<SharedSpiller>) {
    let Some(headroom) = budget::limit::headroom() else {
        return (None, None, None);
    };
    let decoded = decoded_weight_bytes(dc);
    // The tables a load without a budget keeps compressed (`load_dc`'s `deferred_lookups`).
    let lookups = can_defer_lookups(user_load::route_from_env())
        .then(|| budget::refit::lookups_kept_compressed(dc))
        .flatten();
    let choice = budget::limit::choose(decoded, lookups, headroom.clone());
    match choice {
        budget::limit::DefaultChoice::NoBudget { .. } => {
            if verbose() {
                crate::log_line!("{}", choice.describe());
            }
            (None, Some(decoded), None)
        }
        budget::limit::DefaultChoice::Budget { settings, .. } => {
            let storage_bps = crate::cost::machine_profile().map(|p| p.storage_bps());
            if let Some(reason) = budget::runtime::budget_cost(dc, &settings).and_then(|cost| {
                budget::limit::spill_instead(decoded, &cost, &headroom, storage_bps)
            }) {
                let lookup = dc.original.lookup_table().map_or(0, |t| t.nbytes);
                let quota = budget::limit::spill_quota(decoded, lookup, &headroom);
                match budget::spill::Spiller::open(quota, &spill_dirs(path)) {
                    Ok(mut s) => {
                        // Its lookup table first, wherever llama.cpp's load reads it.
                        s.keep_for_lookups(lookup);
                        crate::log_line!(
                            "{}",
                            budget::limit::describe_spill(
                                decoded,
                                lookup,
                                quota,
                                &reason,
                                &headroom,
                                s.dir()
                            )
                        );
                        return (
                            None,
                            Some(decoded),
                            Some(Arc::new(std::sync::Mutex::new(s))),
                        );
                    }
                    Err(e) => crate::log_line!(
                        "dcgguf: memory: {}, but the decoded weights cannot move to a file \
                         ({e}): taking it anyway",
                        reason.against_the_budget()
                    ),
                }
            }
            crate::log_line!("{}", choice.describe());
            (Some(settings), Some(decoded), None)
        }
    }
}

/// Where this process lacks the budget hooks (the preload library) and the model of `dc`
/// decoded does not fit under the limit with llama.cpp's own load memory, and `params` let
/// llama.cpp map a file (else it would read the decoded file into memory all the same): what
/// the limit offers and what the load needs. Without the hooks a load cannot move weights to
/// a file as it goes and nothing is checked until the first context is created, so the need
/// counts what llama.cpp writes besides the weights (its vocabulary,
/// [`budget::unhooked::load_memory_bytes`]) and [`DECODING_ROOM`]; no room for the context
/// beyond what the default's choice keeps ([`budget::limit::context_room`]), as its
/// creation is checked and moves weights. With the context room alone (8 MiB), a C program
/// linking libdcgguf (SmolLM2, 17 MiB of vocabulary) was killed in the load under a 115 MiB
/// cap where plain mmap ran.
fn short_without_hooks(dc: &DcFile, params: &sys::llama_model_params) -> Option<ShortAtLoad> {
    let maps = matches!(
        params.load_mode,
        sys::llama_load_mode_LLAMA_LOAD_MODE_AUTO | sys::llama_load_mode_LLAMA_LOAD_MODE_MMAP
    );
    (maps && hooks::budget_hooks_active().is_err()).then_some(())?;
    let headroom = budget::limit::headroom()?;
    let decoded = decoded_weight_bytes(dc);
    // At least what the default's choice counts (a large model's context room, 1/64 of its
    // weights, can pass llama.cpp's load memory), where it would take a budget that needs
    // the hooks.
    let load_memory =
        budget::unhooked::load_memory_bytes(&dc.original).saturating_add(DECODING_ROOM);
    let need = decoded.saturating_add(load_memory.max(budget::limit::context_room(decoded)));
    (need > headroom.bytes).then_some(ShortAtLoad {
        headroom,
        decoded,
        need,
    })
}

/// Room for the load's decoders and the stream's buffers beside the weights and llama.cpp's
/// load memory, where no hook checks the load: 4 MiB. SmolLM2 Q4_1 (92.1 MiB decoded, 17.0
/// of vocabulary estimated) in a C program linking libdcgguf (ffi/examples/generate.c,
/// 2026-12-07): ran under a 120 MiB cap (110 MiB free at the load; three runs over two
/// sessions), was killed in the load under 115 (105 free; three runs).
const DECODING_ROOM: u64 = 4 << 20;

/// A load that does not fit under the limit ([`short_without_hooks`]).
struct ShortAtLoad {
    headroom: budget::limit::Headroom,
    /// Decoded bytes of the model's tensors.
    decoded: u64,
    /// Those with llama.cpp's load memory and [`DECODING_ROOM`], or a context's room where
    /// larger.
    need: u64,
}

/// Decoded bytes of all the tensors of `dc`.
fn decoded_weight_bytes(dc: &DcFile) -> u64 {
    (0..dc.tensor_count())
        .map(|i| dc.tensor_view(i).raw_bytes)
        .sum()
}

/// Loads `dc`, which does not fit under the limit in a process without the budget hooks
/// ([`short_without_hooks`]), by writing its original GGUF to an unnamed file
/// ([`budget::unhooked::write_decoded`]) that the host's llama.cpp loads as a plain GGUF, by
/// its descriptor's name (`/proc/self/fd/N`): mapped with the default parameters, so the
/// limit reclaims its pages as plain llama.cpp's. The file goes when llama.cpp unmaps it
/// (the model is freed) and closes it. `None` where no file could be made (said): the model
/// loads as it would have.
fn load_decoded_file(
    host: &host::Host,
    dc: &Arc<DcFile>,
    path: &Path,
    params: sys::llama_model_params,
    short: &ShortAtLoad,
    pool: Option<&rayon::ThreadPool>,
) -> Option<Result<*mut sys::llama_model, LlamaError>> {
    let head = format!(
        "dcgguf: memory: {:.0} MiB free under the limit ({}); the decoded model needs about \
         {:.0} MiB ({:.0} MiB of weights, the rest for llama.cpp's load and the decoders), and \
         this process lacks the preload library's hooks, which move weights to a file as the \
         load goes",
        budget::mib(short.headroom.bytes),
        budget::limit::source_name(&short.headroom),
        budget::mib(short.need),
        budget::mib(short.decoded)
    );
    let began = std::time::Instant::now();
    dc.set_uncache_after_decode(true);
    let dirs = spill_dirs(path);
    // On the load's threads, which end with it (rayon's global pool would keep two threads
    // and their decoders' buffers for the process's life: 4.8 MiB more anonymous memory
    // than plain llama-cpp-python's under 140 MiB, where 5 MiB less page cache for the
    // weights costs a fifth of the tokens a second).
    let written = match pool {
        Some(p) => p.install(|| budget::unhooked::write_decoded(dc, &dirs)),
        None => budget::unhooked::write_decoded(dc, &dirs),
    };
    dc.finish_uncache();
    // As after any DC load: the decoders' buffers and the heap glibc keeps go back.
    release_decode_buffers(pool);
    // SAFETY: malloc_trim only returns free heap memory to the system.
    unsafe { libc::malloc_trim(0) };
    let (file, dir) = match written {
        Ok(written) => written,
        Err(budget::unhooked::DecodedFileError::Decode(e)) => return Some(Err(e.into())),
        Err(e) => {
            crate::log_line!("{head}; it cannot go to a file ({e})");
            return None;
        }
    };
    crate::log_line!(
        "{head}: the decoded model ({:.1} MiB) went to an unnamed file in {} in {:.2} s, \
         which llama.cpp maps as a plain GGUF (the limit reclaims its pages, the disk gives \
         them back)",
        budget::mib(dc.original_size()),
        dir.display(),
        began.elapsed().as_secs_f64()
    );
    // A number has no NUL byte.
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    let name = std::ffi::CString::new(format!("/proc/self/fd/{fd}")).ok()?;
    // SAFETY: the real llama_model_load_from_file with a NUL-terminated path and the
    // caller's parameters; `file` stays open until it returns.
    let model = unsafe { (host.load_from_file)(name.as_ptr(), params) };
    drop(file);
    Some(if model.is_null() {
        Err(LlamaError::LoadFailed {
            path: path.display().to_string(),
            cause: None,
        })
    } else {
        Ok(model)
    })
}

/// The one directory decoded weights may move to, if set ([`spill_dirs`]).
pub const SPILL_DIR_ENV: &str = "DCGGUF_SPILL_DIR";

/// Where decoded weights may move ([`budget::spill`]): `DCGGUF_SPILL_DIR` if set, else next
/// to the model, else the temporary directories (the first on a disk with room wins).
fn spill_dirs(model: &Path) -> Vec<std::path::PathBuf> {
    // The user's choice alone (a directory on a memory file system, `/dev/shm`, keeps
    // decoded weights out of files altogether).
    if let Some(dir) = std::env::var_os(SPILL_DIR_ENV).filter(|d| !d.is_empty()) {
        return vec![dir.into()];
    }
    let mut dirs = Vec::new();
    match model.parent() {
        Some(p) if !p.as_os_str().is_empty() => dirs.push(p.to_path_buf()),
        _ => dirs.push(".".into()),
    }
    dirs.push(std::env::temp_dir());
    dirs.push("/var/tmp".into());
    dirs
}

/// Loads `path` with the host's llama.cpp: DC-GGUF through the cookie stream, anything else
/// through the real `llama_model_load_from_file`. `not_this` is the address of our own
/// exported `llama_model_load_from_file` (so the real one is found, not ours).
pub fn load_model(
    path: &CStr,
    params: sys::llama_model_params,
    not_this: usize,
) -> Result<*mut sys::llama_model, LlamaError> {
    let host = host::host(not_this).map_err(LlamaError::Host)?;
    let p = Path::new(std::ffi::OsStr::from_bytes(path.to_bytes()));
    let kind = match fit_pass::take(p) {
        Some(dc) => {
            if verbose() {
                crate::log_line!(
                    "dcgguf: {}: reusing the file that llama.cpp's fitting pass opened and checked",
                    p.display()
                );
            }
            ModelKind::Dc(dc)
        }
        None => classify(p)?,
    };
    match kind {
        ModelKind::Dc(dc) => load_dc(host, dc, p, params),
        ModelKind::Plain => {
            if throttle_from_env().is_some() && !params.vocab_only {
                // Bench mode: plain GGUF through the same (throttled) FILE* path.
                if let Ok(f) = std::fs::File::open(p) {
                    let stream = Stream::new(p, Source::Plain(f), throttle_from_env()).map_err(
                        |source| LlamaError::Io {
                            path: p.to_path_buf(),
                            source,
                        },
                    )?;
                    return load_stream(host, stream, p, params);
                }
            }
            // SAFETY: the real llama_model_load_from_file with the caller's arguments.
            let model = unsafe { (host.load_from_file)(path.as_ptr(), params) };
            if model.is_null() {
                return Err(LlamaError::PlainFailed(p.display().to_string()));
            }
            Ok(model)
        }
    }
}

/// Loads a GGUF or DC-GGUF model with the llama.cpp already loaded in this process (link
/// libllama, or dlopen it with RTLD_GLOBAL, before calling). Free the model with the host's
/// `llama_model_free`.
pub fn load(
    path: &Path,
    params: sys::llama_model_params,
) -> Result<*mut sys::llama_model, LlamaError> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| LlamaError::BadPath(path.display().to_string()))?;
    load_model(&c, params, hooks::interposer_address())
}

/// The host's `llama_model_default_params()` (checked against our bindings).
pub fn default_params() -> Result<sys::llama_model_params, LlamaError> {
    host::host(hooks::interposer_address())
        .map(|h| h.default_params)
        .map_err(LlamaError::Host)
}
