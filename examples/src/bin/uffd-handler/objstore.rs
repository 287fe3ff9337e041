//! `--source URL`: the guest memory image read from object storage (feature `object-store`).

use std::sync::Arc;

use userfaultfd::serve::PageSource;

/// Opens the object `url` names, with `KEY=VALUE` settings; returns the source and its chunk
/// size (the prefetch unit, so that a fault brings in its whole chunk).
#[cfg(feature = "object-store")]
pub fn open(url: &str, options: &[String]) -> Result<(Arc<dyn PageSource>, usize), String> {
    let src = examples::object_source_builder(url, options)?
        .open_blocking()
        .map_err(|e| format!("cannot open {url}: {e}"))?;
    let chunk = src.chunk_size() as usize;
    Ok((Arc::new(src), chunk))
}

/// Without the `object-store` feature, `--source` is refused with how to get it.
#[cfg(not(feature = "object-store"))]
pub fn open(url: &str, _options: &[String]) -> Result<(Arc<dyn PageSource>, usize), String> {
    Err(format!(
        "--source {url}: this uffd-handler was built without object storage; build it with \
         `cargo build --release -p examples --features object-store --bin uffd-handler`"
    ))
}
