//! Memory mappings (filled by its issue).
