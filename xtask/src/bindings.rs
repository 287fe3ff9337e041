//! Runs bindgen over the userfaultfd and `PAGEMAP_SCAN` uAPI and returns the committed file's text.

use bindgen::callbacks::{DeriveTrait, ImplementsTrait, IntKind, ItemInfo, ParseCallbacks};

use std::path::Path;

use crate::{HeaderSource, Result};

/// The C side: the two headers whose items we take.
const WRAPPER: &str = "#include <linux/userfaultfd.h>\n#include <linux/fs.h>\n";

/// Items taken from the headers. Everything else `linux/fs.h` drags in is left out.
const ALLOW: &[&str] = &[
    "uffd_.*",
    "uffdio_.*",
    "UFFD_.*",
    "UFFDIO_.*",
    "_UFFDIO_.*",
    "USERFAULTFD_IOC",
    "UFFDIO",
    "pm_scan_arg",
    "page_region",
    "PAGE_IS_.*",
    "PM_SCAN_.*",
];

/// Ioctl request numbers are computed per architecture by hand-written `const fn`s in
/// `userfaultfd-sys/src/ioctl.rs`; clang would only give the host's values.
const BLOCK: &[&str] = &[
    "UFFDIO_API",
    "UFFDIO_REGISTER",
    "UFFDIO_UNREGISTER",
    "UFFDIO_WAKE",
    "UFFDIO_COPY",
    "UFFDIO_ZEROPAGE",
    "UFFDIO_MOVE",
    "UFFDIO_WRITEPROTECT",
    "UFFDIO_CONTINUE",
    "UFFDIO_POISON",
    "USERFAULTFD_IOC_NEW",
    "PAGEMAP_SCAN",
];

/// Readable names for the anonymous structs and unions inside `struct uffd_msg`, keyed by the
/// name bindgen derives for them (they are numbered in declaration order, which the kernel keeps
/// stable because the layout is ABI).
const RENAMES: &[(&str, &str)] = &[
    ("uffd_msg__bindgen_ty_1", "uffd_msg_arg"),
    ("uffd_msg__bindgen_ty_1__bindgen_ty_1", "uffd_msg_pagefault"),
    (
        "uffd_msg__bindgen_ty_1__bindgen_ty_1__bindgen_ty_1",
        "uffd_msg_pagefault_feat",
    ),
    ("uffd_msg__bindgen_ty_1__bindgen_ty_2", "uffd_msg_fork"),
    ("uffd_msg__bindgen_ty_1__bindgen_ty_3", "uffd_msg_remap"),
    ("uffd_msg__bindgen_ty_1__bindgen_ty_4", "uffd_msg_remove"),
    ("uffd_msg__bindgen_ty_1__bindgen_ty_5", "uffd_msg_reserved"),
];

/// The kernel's fixed-width typedefs and the Rust types that replace them.
const FIXED_WIDTH: [(&str, &str); 8] = [
    ("__u8", "u8"),
    ("__u16", "u16"),
    ("__u32", "u32"),
    ("__u64", "u64"),
    ("__s8", "i8"),
    ("__s16", "i16"),
    ("__s32", "i32"),
    ("__s64", "i64"),
];

#[derive(Debug)]
struct Callbacks;

impl ParseCallbacks for Callbacks {
    /// Gives each constant the Rust type of the kernel field it is used with.
    fn int_macro(&self, name: &str, _value: i64) -> Option<IntKind> {
        let kind = if name.starts_with("UFFD_EVENT_") {
            IntKind::U8
        } else if name.starts_with("_UFFDIO_") || name == "USERFAULTFD_IOC" || name == "UFFDIO" {
            IntKind::U32
        } else if name == "UFFD_USER_MODE_ONLY" {
            IntKind::Int
        } else {
            IntKind::U64
        };
        Some(kind)
    }

    /// The fixed-width typedefs left out (they become `u64` etc.) implement every trait.
    fn blocklisted_type_implements_trait(
        &self,
        name: &str,
        _derive_trait: DeriveTrait,
    ) -> Option<ImplementsTrait> {
        FIXED_WIDTH
            .iter()
            .any(|(c, _)| *c == name)
            .then_some(ImplementsTrait::Yes)
    }

    fn item_name(&self, item: ItemInfo<'_>) -> Option<String> {
        RENAMES
            .iter()
            .find(|(from, _)| *from == item.name)
            .map(|(_, to)| (*to).to_string())
    }
}

/// Generates the bindings and returns the formatted file, preamble included.
///
/// `dir` is a folder of this run's own, for the wrapper header and clang's macro fallback files.
pub fn generate(src: &HeaderSource, dir: &Path) -> Result<String> {
    // Clang's macro fallback (for `((__u64)1<<0)`-style constants) needs a real header file.
    let wrapper = dir.join("uffd-wrapper.h");
    std::fs::write(&wrapper, WRAPPER).map_err(|e| format!("{}: {e}", wrapper.display()))?;
    let mut builder = bindgen::Builder::default()
        .header(wrapper.display().to_string())
        .clang_macro_fallback_build_dir(dir)
        .clang_arg("-nostdinc")
        .clang_arg(format!("-I{}", src.include.display()))
        .clang_arg("--target=x86_64-unknown-linux-gnu")
        .use_core()
        .ctypes_prefix("core::ffi")
        .layout_tests(true)
        .derive_default(true)
        .derive_debug(true)
        .derive_copy(true)
        .derive_eq(true)
        .derive_partialeq(true)
        .generate_comments(true)
        .clang_macro_fallback()
        .sort_semantically(true)
        .merge_extern_blocks(true)
        .prepend_enum_name(false)
        .parse_callbacks(Box::new(Callbacks))
        .formatter(bindgen::Formatter::Rustfmt);
    if let Some(arch) = &src.arch_include {
        builder = builder.clang_arg(format!("-I{}", arch.display()));
    }
    for item in ALLOW {
        builder = builder.allowlist_item(item);
    }
    for item in BLOCK {
        builder = builder.blocklist_item(item);
    }
    // The kernel's fixed-width typedefs become Rust's own integer types (see `tidy`).
    for (t, _) in FIXED_WIDTH {
        builder = builder.blocklist_type(t);
    }
    let bindings = builder
        .generate()
        .map_err(|e| format!("bindgen failed: {e}"))?;
    let body = tidy(&bindings.to_string());
    Ok(format!(
        "// @generated by `cargo xtask bindgen` from {}\n\
         // with bindgen {}. Do not edit: change xtask/src/bindings.rs and regenerate.\n\n{body}",
        src.description,
        bindgen_version(),
    ))
}

/// Replaces the kernel's `__u64`-style typedef names with Rust integer types.
fn tidy(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let bytes = code.as_bytes();
    let mut i = 0;
    'outer: while i < code.len() {
        let boundary_before = i == 0 || !is_ident(bytes[i - 1]);
        if boundary_before && bytes[i] == b'_' {
            for (from, to) in FIXED_WIDTH {
                if code[i..].starts_with(from) {
                    let end = i + from.len();
                    if end == code.len() || !is_ident(bytes[end]) {
                        out.push_str(to);
                        i = end;
                        continue 'outer;
                    }
                }
            }
        }
        let ch = code[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The bindgen version recorded in the workspace's `Cargo.lock`.
fn bindgen_version() -> String {
    let lock =
        std::fs::read_to_string(crate::workspace_root().join("Cargo.lock")).unwrap_or_default();
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == "name = \"bindgen\"" {
            if let Some(v) = lines.next().and_then(|l| l.strip_prefix("version = ")) {
                return v.trim_matches('"').to_string();
            }
        }
    }
    "(unknown)".into()
}
