//! Keeps the code that runs on every compute (`.text.hot.*` sections: the interposers and
//! the callbacks they reach) together in one output section, `.text.hot`, which the dcgguf
//! crate's src/ffi/shed.rs keeps in the page cache while the rest of the library leaves it.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,keep-text-section-prefix");
}
