//! The hand-written C header (ffi/dcgguf.h) is a contract: every `dcgguf_*` function it
//! declares must be exported by the Rust code with the same parameter and return types, and
//! every exported `dcgguf_*` function must be declared; every struct with a body and every
//! function-pointer type it defines must match the `#[repr(C)]` struct / `Option<extern "C"
//! fn>` alias of the same name in src/ffi, field by field and parameter by parameter. (The
//! error enum is checked against the Rust enum by a unit test in src/ffi.) Runs without a C
//! compiler: both sides are parsed and the Rust types translated to C.

use std::collections::BTreeMap;
use std::path::Path;

/// name -> (return type, parameter types), each normalized: single spaces, `*` attached to
/// the type (`const char *`).
type Signatures = BTreeMap<String, (String, Vec<String>)>;

fn strip_comments(src: &str, line: &str, block: Option<(&str, &str)>) -> String {
    let mut out = String::new();
    let mut rest = src;
    loop {
        let next_line = rest.find(line);
        let next_block = block.and_then(|(open, _)| rest.find(open));
        match (next_line, next_block) {
            (None, None) => {
                out.push_str(rest);
                return out;
            }
            (Some(l), b) if b.is_none_or(|b| l < b) => {
                out.push_str(&rest[..l]);
                rest = rest[l..].find('\n').map_or("", |e| &rest[l + e..]);
            }
            (_, Some(b)) => {
                out.push_str(&rest[..b]);
                let close = block.unwrap().1;
                rest = rest[b..]
                    .find(close)
                    .map_or("", |e| &rest[b + e + close.len()..]);
            }
            _ => unreachable!(),
        }
    }
}

fn squash(s: &str) -> String {
    let s = s.replace('*', " * ");
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    // `const char * *` -> `const char **`
    s.replace("* *", "**")
}

/// `dcgguf_result dcgguf_open(const char *path, dcgguf_file **out);` and the like.
fn header_signatures(header: &str) -> Signatures {
    let src = strip_comments(header, "//", Some(("/*", "*/")));
    let src: String = src
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join(" ");
    let mut out = Signatures::new();
    for decl in src.split(';') {
        // The function name is the identifier right before the first '('.
        let Some(paren) = decl.find('(') else {
            continue;
        };
        if decl.contains("typedef") || decl.contains('{') {
            continue;
        }
        let before = decl[..paren].trim_end();
        let open = before
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
            .map_or(0, |i| i + 1);
        let name = before[open..].to_string();
        if !name.starts_with("dcgguf_") {
            continue;
        }
        let ret = squash(&decl[..open]);
        let params = decl[paren + 1..decl.rfind(')').unwrap()].trim();
        let params: Vec<String> = if params == "void" {
            Vec::new()
        } else {
            params
                .split(',')
                .map(|p| {
                    // Drop the parameter name: the last identifier.
                    let p = squash(p);
                    let cut = p.rfind([' ', '*']).expect("named parameter");
                    squash(&p[..=cut])
                })
                .collect()
        };
        out.insert(name, (ret, params));
    }
    out
}

/// A Rust FFI type as C would spell it.
fn rust_to_c(t: &str) -> String {
    let t = t.trim();
    for (prefix, qual) in [("*const ", "const "), ("*mut ", "")] {
        if let Some(inner) = t.strip_prefix(prefix) {
            let inner_c = rust_to_c(inner);
            // Pointer to pointer: `dcgguf_file **`; `const` binds to the pointee.
            return if inner_c.ends_with('*') {
                format!("{qual}{inner_c}*")
            } else {
                format!("{qual}{inner_c} *")
            };
        }
    }
    let base = t.rsplit("::").next().unwrap();
    match base {
        "c_char" => "char".into(),
        "c_int" => "int".into(),
        "c_void" => "void".into(),
        "u8" => "uint8_t".into(),
        "u32" => "uint32_t".into(),
        "u64" => "uint64_t".into(),
        "i32" => "int32_t".into(),
        "i64" => "int64_t".into(),
        "usize" => "size_t".into(),
        "f32" => "float".into(),
        "f64" => "double".into(),
        "()" | "" => "void".into(),
        b if b.starts_with("llama_") => format!("struct {b}"),
        b => b.into(),
    }
}

/// `#[unsafe(no_mangle)] pub [unsafe] extern "C" fn dcgguf_x(a: T, ...) -> R {` in src/ffi.
fn rust_signatures(root: &Path) -> Signatures {
    let mut out = Signatures::new();
    for entry in std::fs::read_dir(root.join("src/ffi")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let src = strip_comments(&std::fs::read_to_string(&path).unwrap(), "//", None);
        let mut rest = src.as_str();
        while let Some(at) = rest.find("#[unsafe(no_mangle)]") {
            rest = &rest[at..];
            let fn_at = rest.find("fn ").unwrap();
            let body = rest.find('{').unwrap();
            let sig = &rest[fn_at + 3..body];
            rest = &rest[body..];
            let name = sig[..sig.find('(').unwrap()].trim().to_string();
            let close = sig.rfind(')').unwrap();
            let params: Vec<String> = sig[sig.find('(').unwrap() + 1..close]
                .split(',')
                .filter(|p| !p.trim().is_empty())
                .map(|p| squash(&rust_to_c(p.split_once(':').unwrap().1)))
                .collect();
            let ret = sig[close + 1..]
                .trim()
                .strip_prefix("->")
                .map_or("void".to_string(), |r| squash(&rust_to_c(r)));
            out.insert(name, (ret, params));
        }
    }
    out
}

/// Struct name -> [(field name, C type)], and function-pointer type name -> (return type,
/// parameter types), each type normalized with [`squash`].
#[derive(Debug, Default, PartialEq)]
struct Types {
    structs: BTreeMap<String, Vec<(String, String)>>,
    fn_ptrs: Signatures,
}

/// `TYPE name` -> (name, TYPE) for a declaration without array brackets.
fn split_decl(decl: &str) -> (String, String) {
    let d = squash(decl);
    let cut = d.rfind([' ', '*']).expect("named declaration");
    (d[cut + 1..].to_string(), squash(&d[..=cut]))
}

/// `typedef struct N { T a; ... } N;` and `typedef R (*N)(P a, ...);` in the header.
fn header_types(header: &str) -> Types {
    let src = strip_comments(header, "//", Some(("/*", "*/")));
    let mut t = Types::default();
    let mut rest = src.as_str();
    while let Some(at) = rest.find("typedef ") {
        rest = &rest[at + "typedef ".len()..];
        let end = rest.find(';').unwrap();
        if let Some(body) = rest.strip_prefix("struct ") {
            let Some(open) = body.find('{').filter(|&o| o < end) else {
                continue;
            };
            let name = body[..open].trim().to_string();
            let close = body.find('}').unwrap();
            let fields = body[open + 1..close]
                .split(';')
                .filter(|f| !f.trim().is_empty())
                .map(split_decl)
                .collect();
            t.structs.insert(name, fields);
            rest = &body[close..];
        } else if let Some(star) = rest[..end].find("(*") {
            let decl = &rest[..end];
            let name_end = decl[star..].find(')').unwrap() + star;
            let name = decl[star + 2..name_end].trim().to_string();
            let params = &decl[name_end + 1..];
            let params = &params[params.find('(').unwrap() + 1..params.rfind(')').unwrap()];
            let params = params.split(',').map(|p| split_decl(p).1).collect();
            t.fn_ptrs.insert(name, (squash(&decl[..star]), params));
        }
    }
    t
}

/// `#[repr(C)] ... pub struct N { pub a: T, ... }` and `pub type N = Option<unsafe extern
/// "C" fn(a: T, ...) -> R>;` in src/ffi.
fn rust_types(root: &Path) -> Types {
    let mut t = Types::default();
    for entry in std::fs::read_dir(root.join("src/ffi")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let src = strip_comments(&std::fs::read_to_string(&path).unwrap(), "//", None);
        let mut rest = src.as_str();
        while let Some(at) = rest.find("#[repr(C)]") {
            rest = &rest[at..];
            let item = &rest[..rest.find('{').unwrap()];
            rest = &rest[item.len()..];
            let Some(s) = item.find("pub struct ") else {
                continue;
            };
            let name = item[s + "pub struct ".len()..].trim().to_string();
            let fields = rest[1..rest.find('}').unwrap()]
                .split(',')
                .filter(|f| !f.trim().is_empty())
                .map(|f| {
                    let (n, ty) = f.split_once(':').unwrap();
                    let n = n.trim().trim_start_matches("pub ").trim().to_string();
                    (n, squash(&rust_to_c(ty)))
                })
                .collect();
            t.structs.insert(name, fields);
        }
        let mut rest = src.as_str();
        while let Some(at) = rest.find("pub type ") {
            rest = &rest[at + "pub type ".len()..];
            let decl = &rest[..rest.find(';').unwrap()];
            let Some(f) = decl.find("extern \"C\" fn(") else {
                continue;
            };
            let name = decl[..decl.find('=').unwrap()].trim().to_string();
            let params_start = f + "extern \"C\" fn(".len();
            let close = decl.rfind(')').unwrap();
            let params = decl[params_start..close]
                .split(',')
                .filter(|p| !p.trim().is_empty())
                .map(|p| squash(&rust_to_c(p.split_once(':').unwrap().1)))
                .collect();
            let ret = decl[close + 1..]
                .trim()
                .trim_end_matches('>')
                .trim()
                .strip_prefix("->")
                .map_or("void".to_string(), |r| squash(&rust_to_c(r)));
            t.fn_ptrs.insert(name, (ret, params));
        }
    }
    t
}

#[test]
fn header_structs_and_callbacks_match_the_rust_types() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let header = header_types(&std::fs::read_to_string(root.join("ffi/dcgguf.h")).unwrap());
    let rust = rust_types(root);
    assert!(
        header.structs.contains_key("dcgguf_options")
            && header.fn_ptrs.contains_key("dcgguf_progress_fn"),
        "parsed too little header: {header:?}"
    );
    assert_eq!(header, rust);
}

#[test]
fn header_declares_exactly_the_rust_exports_with_the_same_types() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let header = header_signatures(&std::fs::read_to_string(root.join("ffi/dcgguf.h")).unwrap());
    let rust = rust_signatures(root);
    assert!(
        rust.len() >= 20 && rust.contains_key("dcgguf_open"),
        "parsed too little Rust: {rust:?}"
    );
    assert!(
        header.len() >= 20 && header.contains_key("dcgguf_read_at"),
        "parsed too little header: {header:?}"
    );
    let only_rust: Vec<_> = rust.keys().filter(|k| !header.contains_key(*k)).collect();
    let only_header: Vec<_> = header.keys().filter(|k| !rust.contains_key(*k)).collect();
    assert!(
        only_rust.is_empty() && only_header.is_empty(),
        "exported but not declared: {only_rust:?}; declared but not exported: {only_header:?}"
    );
    let mut mismatches = Vec::new();
    for (name, sig) in &rust {
        if header[name] != *sig {
            mismatches.push(format!("{name}: header {:?}, Rust {:?}", header[name], sig));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn the_parsers_see_a_difference() {
    // A check that cannot fail proves nothing: a changed type must show.
    let h = header_signatures("dcgguf_result dcgguf_f(const dcgguf_file *f, uint64_t *out);");
    assert_eq!(
        h["dcgguf_f"],
        (
            "dcgguf_result".to_string(),
            vec!["const dcgguf_file *".to_string(), "uint64_t *".to_string()]
        )
    );
    assert_eq!(rust_to_c("*mut *mut dcgguf_file"), "dcgguf_file **");
    assert_eq!(rust_to_c("*const c_char"), "const char *");
    assert_eq!(
        rust_to_c("sys::llama_model_params"),
        "struct llama_model_params"
    );
    assert_ne!(rust_to_c("*mut u64"), rust_to_c("*mut u32"));
    let t = header_types(
        "typedef struct s { uint32_t size; const char *p; float x; } s;\n\
         typedef int (*cb)(uint64_t done, void *user);",
    );
    assert_eq!(
        t.structs["s"],
        [
            ("size".to_string(), "uint32_t".to_string()),
            ("p".to_string(), "const char *".to_string()),
            ("x".to_string(), "float".to_string()),
        ]
    );
    assert_eq!(
        t.fn_ptrs["cb"],
        (
            "int".to_string(),
            vec!["uint64_t".to_string(), "void *".to_string()]
        )
    );
}
