//! End-to-end tests of the `nullspace` binary against the real test environment: the CNCF
//! registry with the debootstrap and multi-layer fixtures, e2fsprogs, and umoci as the oracle.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod dockerfile;
mod faults;
mod harness;
mod import;
mod remote;
mod tree;
