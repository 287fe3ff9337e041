//! `--source URL`: the guest memory image read from object storage (feature `object-store`).

use std::path::Path;
use std::sync::Arc;

use userfaultfd::serve::PageSource;

/// Opens the object `url` names, with `KEY=VALUE` settings and an optional cache file; returns
/// the source and its chunk size (the prefetch unit, so that a fault brings in its whole chunk).
#[cfg(feature = "object-store")]
pub fn open(
    url: &str,
    options: &[String],
    cache_file: Option<&Path>,
) -> Result<(Arc<dyn PageSource>, usize), String> {
    let mut builder = examples::object_source_builder(url, options)?;
    if let Some(path) = cache_file {
        builder = builder.cache_file(path);
    }
    let src = builder
        .open_blocking()
        .map_err(|e| format!("cannot open {url}: {e}"))?;
    let chunk = src.chunk_size() as usize;
    Ok((Arc::new(src), chunk))
}

/// Without the `object-store` feature, `--source` is refused with how to get it.
#[cfg(not(feature = "object-store"))]
pub fn open(
    url: &str,
    _options: &[String],
    _cache_file: Option<&Path>,
) -> Result<(Arc<dyn PageSource>, usize), String> {
    Err(format!(
        "--source {url}: this uffd-handler was built without object storage; build it with \
         `cargo build --release -p examples --features object-store --bin uffd-handler`"
    ))
}
