//! Placeholder; see the sim helper.
