//! dcgguf's graph callbacks on llama.cpp contexts, chained with the caller's own: on-demand
//! decoding for models loaded under a memory budget ([`super::runtime`]) and, when
//! `DCGGUF_ACT_MAX_OUT` / `DCGGUF_COV_OUT` are set, recording of matmul input maxima
//! ([`crate::llama::actmax`]) and second moments ([`crate::llama::covar`]).
//! Installed by the `llama_init_from_model` interposer, removed at `llama_free`.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::refit::Watch;
use super::runtime::{Residency, model_residency};
use crate::llama::{actmax, covar, sys};

/// The callbacks a hooked context runs with, and the caller's own.
pub struct EvalHook {
    res: Option<Arc<Residency>>,
    /// A model the default loaded without a budget: checks its memory, and holds the
    /// budget it may switch to ([`super::refit`]).
    watch: Option<Arc<Watch>>,
    /// Whether matmul inputs are recorded at all, and by which recorders.
    record: bool,
    record_max: bool,
    record_cov: bool,
    user_eval: sys::ggml_backend_sched_eval_callback,
    user_eval_data: *mut c_void,
    user_abort: sys::ggml_abort_callback,
    user_abort_data: *mut c_void,
    /// Whether the caller's callback asked for the last node (then it gets the result).
    user_asked: AtomicBool,
    /// Whether we asked for the last node to record its input.
    record_asked: AtomicBool,
}

/// Contexts with our callbacks, by `llama_context *`.
static CONTEXTS: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());

/// Puts our callbacks into `params` when the model is budgeted, may switch to a budget
/// (`watch`, from [`super::refit::watch_for`]) or recording is on; returns the hook to pass
/// to [`context_created`] (or `None`: nothing to do).
pub fn hook_context_params(
    model: *const sys::llama_model,
    params: &mut sys::llama_context_params,
    watch: Option<Arc<Watch>>,
) -> Option<*mut EvalHook> {
    let res = model_residency(model);
    if let Some(r) = &res {
        r.set_compute_threads(compute_threads(params));
    }
    let record_max = actmax::output().is_some();
    let record_cov = covar::output().is_some();
    let record = record_max || record_cov;
    let watch = watch.filter(|_| res.is_none());
    if res.is_none() && watch.is_none() && !record {
        return None;
    }
    let hook = Box::into_raw(Box::new(EvalHook {
        res,
        watch,
        record,
        record_max,
        record_cov,
        user_eval: params.cb_eval,
        user_eval_data: params.cb_eval_user_data,
        user_abort: params.abort_callback,
        user_abort_data: params.abort_callback_data,
        user_asked: AtomicBool::new(false),
        record_asked: AtomicBool::new(false),
    }));
    params.cb_eval = Some(eval_callback);
    params.cb_eval_user_data = hook as *mut c_void;
    params.abort_callback = Some(abort_callback);
    params.abort_callback_data = hook as *mut c_void;
    Some(hook)
}

/// The most threads a context computes on.
pub fn compute_threads(params: &sys::llama_context_params) -> usize {
    params.n_threads.max(params.n_threads_batch).max(1) as usize
}

impl EvalHook {
    /// The budget this context's model runs under: from its load, or switched to since.
    #[unsafe(link_section = ".text.hot.dcgguf")]
    fn residency(&self) -> Option<&Arc<Residency>> {
        self.res
            .as_ref()
            .or_else(|| self.watch.as_ref().and_then(|w| w.residency()))
    }
}

/// Records the hook of a created context, or frees it if creation failed.
///
/// # Safety
/// `hook` comes from [`hook_context_params`] and is passed here exactly once.
pub unsafe fn context_created(ctx: *mut sys::llama_context, hook: *mut EvalHook) {
    if ctx.is_null() {
        // SAFETY: `hook` came from Box::into_raw in hook_context_params and no context
        // holds it.
        drop(unsafe { Box::from_raw(hook) });
        return;
    }
    CONTEXTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((ctx as usize, hook as usize));
}

/// Frees the hook of a context llama.cpp has just freed.
pub fn context_freed(ctx: *mut sys::llama_context) {
    let hook = {
        let mut c = CONTEXTS.lock().unwrap_or_else(|e| e.into_inner());
        let at = c.iter().position(|(p, _)| *p == ctx as usize);
        at.map(|i| c.swap_remove(i).1)
    };
    if let Some(h) = hook {
        // SAFETY: made by Box::into_raw in hook_context_params; the context that called it
        // is gone, so nothing else refers to it.
        let hook = unsafe { Box::from_raw(h as *mut EvalHook) };
        if hook.record_max {
            actmax::flush();
        }
        if hook.record_cov {
            covar::flush();
        }
    }
}

#[unsafe(link_section = ".text.hot.dcgguf")]
unsafe extern "C" fn eval_callback(t: *mut sys::ggml_tensor, ask: bool, data: *mut c_void) -> bool {
    // SAFETY: `data` is the EvalHook we registered with this context; it lives until the
    // context is freed, after which llama.cpp calls no callbacks.
    let hook = unsafe { &*(data as *const EvalHook) };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if ask {
            // SAFETY: ggml passes a live node of the graph being computed.
            let decode = hook.residency().is_some_and(|r| unsafe { r.ask(t) });
            // SAFETY: as above.
            let record = hook.record && unsafe { actmax::wants(t) };
            // SAFETY: the caller's callback with its own data, as llama.cpp would call it.
            let theirs = hook
                .user_eval
                .is_some_and(|cb| unsafe { cb(t, true, hook.user_eval_data) });
            hook.user_asked.store(theirs, Ordering::Relaxed);
            hook.record_asked.store(record, Ordering::Relaxed);
            decode || record || theirs
        } else {
            if let Some(r) = hook.residency() {
                r.computed();
                // Between two ranges of nodes: no graph computes, none is pointed at
                // memory it has not yet read.
                if r.thrashing() {
                    super::refit::budget_thrashes(r);
                }
            }
            if hook.record_asked.load(Ordering::Relaxed) {
                if hook.record_max {
                    // SAFETY: the node we asked for, computed on the CPU backend.
                    unsafe { actmax::observe(t) };
                }
                if hook.record_cov {
                    // SAFETY: as above.
                    unsafe { covar::observe(t) };
                }
            }
            match hook.user_eval {
                // SAFETY: as above; the caller asked for this node, so it gets the result.
                Some(cb) if hook.user_asked.load(Ordering::Relaxed) => unsafe {
                    cb(t, false, hook.user_eval_data)
                },
                _ => true,
            }
        }
    }));
    r.unwrap_or_else(|_| {
        if let Some(res) = hook.residency() {
            res.fail("internal error (panic) in the graph callback".into());
        }
        true
    })
}

#[unsafe(link_section = ".text.hot.dcgguf")]
unsafe extern "C" fn abort_callback(data: *mut c_void) -> bool {
    // SAFETY: as in eval_callback.
    let hook = unsafe { &*(data as *const EvalHook) };
    hook.residency().is_some_and(|r| r.failed())
        // SAFETY: the caller's abort callback with its own data.
        || hook.user_abort.is_some_and(|cb| unsafe { cb(hook.user_abort_data) })
}
