//! regionkv-engine: see ARCHITECTURE.md. Filled in by its issue.
