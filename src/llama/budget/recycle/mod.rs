//! Where streamed weights are decoded under a memory budget, and how the memory of evicted
//! ones is reused: two ways, chosen per model ([`arena_fits`]).
//!
//! - **Into an arena** ([`arena`]): each tensor decodes into a buffer of one arena per model
//!   and its `ggml_tensor` points there while it is present; evicted, it points back at its
//!   own (untouched) memory, and the next tensors decode into the space it leaves. Nothing
//!   moves in the page tables. (The runtime learns each weight's `ggml_tensor` at load from
//!   llama.cpp, else when a graph node first reads it; a weight it does not know yet decodes
//!   in place, as nothing would point it at the arena.)
//! - **In place** ([`pages`]): each tensor decodes into its own memory in llama.cpp's buffer,
//!   whose pages are moved over (`mremap`) from evicted tensors. Pointers never change.
//!
//! Why two. Every page move changes the process's page tables, which costs a TLB shootdown:
//! an interrupt to every other CPU running the process (the other compute thread), and in a
//! VM an exit to the hypervisor on both sides. SmolLM2 at a 50% `ram` budget made 33,162 of
//! them per 256 generated tokens in place, about 130 a token (plain llama.cpp with mmap: 8-10
//! a run), and 152 a run decoding into the arena, all of them the load's. But an arena hands
//! out contiguous space: a tensor that is big beside the room (SmolLM2's 28.7 MiB output
//! head in a 31.9 MiB room at 50% `file`) finds it only by evicting layers it could have
//! shared the room with, where moved pages assemble it from anywhere. Measured there, the
//! arena decoded the head every token against every other token in place (7.45 GB decoded
//! per 96 tokens against 6.09), and a token where no stretch could be freed cost a mapping of
//! the head's size on top of the arena. So a model whose streamed tensors each take at most
//! half the room (layers; a lookup-only token table aside, which row lookups fill in place)
//! takes the arena, others decode in place.

pub mod arena;
pub mod pages;

pub use arena::{Buffer, Buffers};
pub use pages::{Layout, Pool};

/// Whether a plan's streamed tensors (their decoded sizes `sizes`) suit an arena for a room
/// of `room` bytes: each takes at most half of it.
pub fn arena_fits(sizes: impl IntoIterator<Item = u64>, room: u64) -> bool {
    sizes.into_iter().all(|len| len <= room / 2)
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_arena_is_for_plans_of_tensors_small_beside_the_room() {
        assert!(super::arena_fits([1, 2, 50], 100));
        assert!(!super::arena_fits([1, 2, 51], 100));
        assert!(super::arena_fits([], 0));
    }
}
