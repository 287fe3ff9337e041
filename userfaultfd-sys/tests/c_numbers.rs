//! The crate's `const fn`-computed ioctl request numbers (and the hand-spelled `UFFD_API_IOCTLS`)
//! against what a C program compiled for x86_64 against the same pinned headers prints.
//!
//! `tests/data/c-ioctl-numbers-x86_64.txt` is written by `cargo xtask bindgen` (which compiles
//! and runs that C program) and checked for staleness by `cargo xtask bindgen --check`. The file
//! holds one `NAME 0xHEX` per line, after `#` comment lines. Only meaningful on x86_64, the
//! architecture the C program was compiled for.
#![cfg(target_arch = "x86_64")]

use std::collections::BTreeMap;
use userfaultfd_sys::*;

const C_NUMBERS: &str = include_str!("data/c-ioctl-numbers-x86_64.txt");
const BINDINGS: &str = include_str!("../src/bindings.rs");

/// Every value the C program prints, as this crate defines it.
fn crate_values() -> BTreeMap<&'static str, u64> {
    [
        ("UFFDIO_API", u64::from(UFFDIO_API)),
        ("UFFDIO_REGISTER", u64::from(UFFDIO_REGISTER)),
        ("UFFDIO_UNREGISTER", u64::from(UFFDIO_UNREGISTER)),
        ("UFFDIO_WAKE", u64::from(UFFDIO_WAKE)),
        ("UFFDIO_COPY", u64::from(UFFDIO_COPY)),
        ("UFFDIO_ZEROPAGE", u64::from(UFFDIO_ZEROPAGE)),
        ("UFFDIO_MOVE", u64::from(UFFDIO_MOVE)),
        ("UFFDIO_WRITEPROTECT", u64::from(UFFDIO_WRITEPROTECT)),
        ("UFFDIO_CONTINUE", u64::from(UFFDIO_CONTINUE)),
        ("UFFDIO_POISON", u64::from(UFFDIO_POISON)),
        ("USERFAULTFD_IOC_NEW", u64::from(USERFAULTFD_IOC_NEW)),
        ("PAGEMAP_SCAN", u64::from(PAGEMAP_SCAN)),
        ("UFFD_API_IOCTLS", UFFD_API_IOCTLS),
    ]
    .into_iter()
    .collect()
}

/// Parses the data file; panics on a malformed or duplicated line.
fn c_values() -> BTreeMap<&'static str, u64> {
    let mut map = BTreeMap::new();
    for (i, line) in C_NUMBERS.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(name), Some(hex), None) = (words.next(), words.next(), words.next()) else {
            panic!("line {}: expected `NAME 0xHEX`, got {line:?}", i + 1);
        };
        let digits = hex
            .strip_prefix("0x")
            .unwrap_or_else(|| panic!("line {}: {hex:?} lacks the 0x prefix", i + 1));
        let value = u64::from_str_radix(digits, 16)
            .unwrap_or_else(|e| panic!("line {}: {hex:?}: {e}", i + 1));
        assert!(
            map.insert(name, value).is_none(),
            "line {}: {name} appears twice",
            i + 1
        );
    }
    map
}

#[test]
fn every_number_equals_the_c_one() {
    let ours = crate_values();
    let theirs = c_values();
    let mut problems = Vec::new();
    for (name, value) in &ours {
        match theirs.get(name) {
            None => problems.push(format!(
                "{name}: defined by the crate, missing from the C list"
            )),
            Some(c) if c != value => {
                problems.push(format!("{name}: crate {value:#x}, C {c:#x}"));
            }
            Some(_) => {}
        }
    }
    for name in theirs.keys() {
        if !ours.contains_key(name) {
            problems.push(format!(
                "{name}: printed by the C program, not checked by this test"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_ioctl_of_the_crate_table_is_compared() {
    // `ioctl::IOCTL_TABLE` is the crate's own list of requests; none may escape the comparison.
    let ours = crate_values();
    for (name, ..) in ioctl::IOCTL_TABLE {
        assert!(ours.contains_key(name), "{name} is not compared with C");
    }
    assert_eq!(
        ours.len(),
        ioctl::IOCTL_TABLE.len() + 1,
        "the table plus UFFD_API_IOCTLS"
    );
}

#[test]
fn numbers_and_bindings_come_from_the_same_headers() {
    // Both generated files name their header package in the preamble; they must agree, or the
    // C numbers were produced from other headers than the structs they encode the size of.
    let source_of = |text: &str| -> String {
        let line = text
            .lines()
            .take_while(|l| l.starts_with("//") || l.starts_with('#'))
            .find(|l| l.contains("linux-libc-dev") || l.contains("uAPI headers from"))
            .unwrap_or_else(|| panic!("no header source in the preamble of:\n{text:.300}"))
            .to_string();
        let start = line
            .find("Debian ")
            .or_else(|| line.find("uAPI headers from"))
            .expect("found above");
        let source = &line[start..];
        let source = source.split(" (").next().unwrap_or(source);
        source.trim_end_matches('.').to_string()
    };
    assert_eq!(source_of(C_NUMBERS), source_of(BINDINGS));
}
