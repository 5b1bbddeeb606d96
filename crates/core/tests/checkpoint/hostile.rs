//! Hostile files (issue 14).
