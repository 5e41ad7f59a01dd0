//! Placeholder; see the exec helper.
